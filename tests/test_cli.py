"""The command line as a user meets it: real subprocesses, real files, exit codes."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from tests.cli_run import cli
from tests.support import dicom_series, limit_file_size, one_error_line


@pytest.fixture(scope="module")
def broken_inputs(tmp_path_factory, ct_small_path):
    d = tmp_path_factory.mktemp("broken")
    data = Path(ct_small_path).read_bytes()
    (d / "truncated.dcm").write_bytes(data[: len(data) - 5000])
    (d / "random.bin").write_bytes(os.urandom(4096))
    return d


@pytest.mark.parametrize(
    "name, code",
    [
        ("truncated.dcm", "INPUT_TRUNCATED"),
        ("random.bin", "INPUT_"),
        ("missing.dcm", "INPUT_NOT_FOUND"),
    ],
)
def test_run_bad_input_exits_3_with_one_line(broken_inputs, tmp_path, name, code):
    proc = cli("run", str(broken_inputs / name), "--out", str(tmp_path / "out"))
    assert proc.returncode == 3, proc.stderr
    one_error_line(proc, code)
    assert not (tmp_path / "out" / "result.json").exists()


def test_debug_shows_traceback(broken_inputs, tmp_path):
    proc = cli("--debug", "run", str(broken_inputs / "truncated.dcm"), "--out", str(tmp_path))
    assert proc.returncode == 3 and "Traceback" in proc.stderr


def test_one_bad_file_does_not_stop_the_others(broken_inputs, ct_small_path, tmp_path):
    proc = cli("run", str(broken_inputs / "random.bin"), ct_small_path, "--out", str(tmp_path))
    assert proc.returncode == 3
    assert (tmp_path / "input-0002" / "result.json").is_file()
    assert not (tmp_path / "input-0001").exists()
    index = json.loads((tmp_path / "index.json").read_text())
    # Every input by position, with its status and error code; never a file name.
    assert index == {
        "complete": True,
        "inputs": 2,
        "ok": 1,
        "failed": 1,
        "results": [
            {"input": 1, "status": "failed", "error": "INPUT_UNSUPPORTED_FORMAT"},
            {"input": 2, "status": "ok", "dir": "input-0002"},
        ],
    }
    assert "random.bin" not in (tmp_path / "index.json").read_text()


def test_tampered_bundle_exits_4(tmp_path, ct_small_path):
    import edgemed

    bundle = tmp_path / "bundle"
    shutil.copytree(edgemed.demo_bundle(), bundle)
    model = bundle / "model.onnx"
    data = bytearray(model.read_bytes())
    data[len(data) // 2] ^= 0xFF
    model.write_bytes(bytes(data))
    proc = cli("run", ct_small_path, "--bundle", str(bundle), "--out", str(tmp_path / "o"))
    assert proc.returncode == 4
    one_error_line(proc, "BUNDLE_INTEGRITY")
    proc = cli("info", str(bundle))
    assert proc.returncode == 4


def test_unavailable_backend_exits_5(ct_small_path, tmp_path):
    proc = cli("run", ct_small_path, "--backend", "tensorrt", "--out", str(tmp_path))
    assert proc.returncode == 5
    one_error_line(proc, "BACKEND_UNAVAILABLE")


def test_missing_precision_exits_2(ct_small_path, tiny_bundle, tmp_path):
    bundle = tiny_bundle("segmentation")  # FP32 only: INT8 is never silently substituted
    out = tmp_path / "out"
    proc = cli(
        "run", ct_small_path, "--bundle", str(bundle), "--precision", "int8", "--out", str(out)
    )
    assert proc.returncode == 2  # the bundle is fine; the precision asked for is not in it
    one_error_line(proc, "USAGE_PRECISION_MISSING")
    assert not out.exists() and not list(tmp_path.glob(".out.*"))  # staging removed


def test_usage_errors_exit_2(tmp_path):
    assert cli("run").returncode == 2  # argparse: no inputs
    proc = cli("run", "x.dcm", "--out", str(tmp_path), "--batch-size", "0")
    assert proc.returncode == 2
    one_error_line(proc, "USAGE")


def test_info_describes_the_demo_bundle():
    proc = cli("info")
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert "edgemed-demo-ct-tissue" in out and "segmentation" in out
    assert "1:lung" in out and "4:bone" in out and "sha256 verified" in out
    as_json = json.loads(cli("info", "--json").stdout)
    assert as_json["schema_version"] == 1 and as_json["labels"][0] == "background"


def test_demo_writes_three_files(tmp_path):
    proc = cli("demo", "--out", str(tmp_path / "demo"))
    assert proc.returncode == 0, proc.stderr
    out = tmp_path / "demo"
    assert {p.name for p in out.iterdir()} == {"result.json", "overlay.png", "mask.nii.gz"}
    result = json.loads((out / "result.json").read_text())
    assert set(result["timings_ms"]) == {"read", "preprocess", "infer", "postprocess", "total"}
    prov = result["provenance"]
    from edgemed._lazy import available

    # auto: OpenVINO where the extra is installed (tests/test_backend_openvino.py), else ORT.
    cpu_backend = "openvino" if available("openvino") else "onnxruntime"
    assert prov["backend"] == cpu_backend and prov["precision"] == "fp32"
    assert prov["bundle"]["name"] == "edgemed-demo-ct-tissue"
    assert result["input"]["shape"] == [128, 128] and result["input"]["modality"] == "CT"
    labels = result["outputs"]["labels"]
    assert sum(v["pixels"] for v in labels.values()) == 128 * 128
    assert "timings" in proc.stdout and "lung" in proc.stdout


def test_run_on_a_series_directory(tmp_path, ct_small_path):
    import numpy as np

    def brighter(ds, k: int) -> None:
        ds.PixelData = (ds.pixel_array + np.int16(10 * k)).astype(ds.pixel_array.dtype).tobytes()

    series = dicom_series(
        ct_small_path, tmp_path / "series", 3, name=lambda k: f"slice{2 - k}.dcm", edit=brighter
    )
    proc = cli("run", str(series), "--out", str(tmp_path / "out"))
    assert proc.returncode == 0, proc.stderr
    result = json.loads((tmp_path / "out" / "result.json").read_text())
    assert result["input"]["shape"] == [3, 128, 128]
    assert result["input"]["spacing_mm"][0] == pytest.approx(5.0)
    assert "volume_mm3" in result["outputs"]["labels"]["lung"]
    import nibabel as nib

    assert nib.load(tmp_path / "out" / "mask.nii.gz").shape == (128, 128, 3)


def test_full_disk_gives_exit_7_and_no_file_that_looks_complete(tmp_path, ct_small_path):
    out = tmp_path / "out"
    proc = cli("run", ct_small_path, "--out", str(out), preexec_fn=limit_file_size(50_000))
    assert proc.returncode == 7, proc.stderr
    one_error_line(proc, "OUTPUT_WRITE_FAILED")
    names = sorted(p.name for p in out.iterdir())
    # overlay.png (> 50 kB) failed: no partial copy, no temp file; result.json, which is
    # written last to mark a complete result, is absent.
    assert "overlay.png" not in names and "result.json" not in names
    assert not [n for n in names if n.startswith(".tmp")]


def test_reader_caps_from_the_environment(ct_small_path, tmp_path):
    args = ("run", ct_small_path, "--out", str(tmp_path))
    proc = cli(*args, env={"EDGEMED_MAX_FILE_BYTES": "10000"})  # CT_small is ~39 kB
    assert proc.returncode == 3
    one_error_line(proc, "INPUT_INVALID")
    proc = cli(*args, env={"EDGEMED_MAX_FILE_BYTES": "lots"})
    assert proc.returncode == 2
    one_error_line(proc, "USAGE")


def _bundle_with_provenance(tmp_path, provenance) -> Path:
    import edgemed

    bundle = tmp_path / "bundle"
    shutil.copytree(edgemed.demo_bundle(), bundle)
    manifest = json.loads((bundle / "bundle.json").read_text())
    manifest["provenance"] = provenance  # unsigned: the artifacts' hashes still hold
    (bundle / "bundle.json").write_text(json.dumps(manifest))
    return bundle


def test_info_summarises_an_exported_bundles_nested_provenance(tmp_path):
    import edgemed

    demo = json.loads((edgemed.demo_bundle() / "bundle.json").read_text())["provenance"]
    # what `edgemed export` writes, and nothing else: every value is nested
    exported = {k: demo[k] for k in ("export", "parity", "calibration", "accuracy")}
    proc = cli("info", str(_bundle_with_provenance(tmp_path, exported)))
    assert proc.returncode == 0, proc.stderr
    section = proc.stdout.split("\n  provenance", 1)[1].splitlines()[1:]
    e, p, c, a = (exported[k] for k in ("export", "parity", "calibration", "accuracy"))
    worst = max(case["max_rel"] for case in p["cases"].values())
    assert section == [
        f"    export: {e['source']['model']} ({e['source']['kind']}), ONNX opset "
        f"{e['onnx']['opset']} (dynamo), fp16+int8, torch {e['versions']['torch']}",
        f"    parity: max relative error {worst:.1e} over {len(p['cases'])} cases "
        f"(tolerance {p['tolerance']})",
        f"    calibration: calibration {c['calibration']['images']} images "
        f"({c['calibration']['slices']} slices); validation {c['validation']['images']} "
        f"images ({c['validation']['slices']} slices)",
        "    accuracy: "
        + ", ".join(
            f"{name} passed (mean_dice {v['mean_dice']:g})" for name, v in a["variants"].items()
        ),
    ]


def test_info_prints_no_empty_provenance_heading(tmp_path):
    bundle = _bundle_with_provenance(tmp_path, {"note": "", "extra": {}, "list": []})
    proc = cli("info", str(bundle))
    assert proc.returncode == 0, proc.stderr
    assert "provenance" not in proc.stdout


def test_provenance_of_another_shape_is_summarised_generically():
    from edgemed.cli.info import provenance_lines

    lines = provenance_lines(
        {
            "tool": "other-exporter 2.0",
            "accuracy": {"variants": ["fp16"], "note": "not edgemed's shape"},
            "data": {"sets": [{"a": 1}, {"b": 2}], "seed": 7, "ok": True},
            "long": "x" * 300,
        }
    )
    assert lines[:3] == [
        "    tool: other-exporter 2.0",
        "    accuracy: variants fp16; note not edgemed's shape",
        "    data: sets 2 entries; seed 7; ok True",
    ]
    assert len(lines[3]) == 120 and lines[3].endswith("…")


@pytest.mark.parametrize(
    "task, postprocess",
    [
        ("classification", "  postprocess  activation softmax, top_k"),
        ("embedding", "  postprocess  normalize l2"),
    ],
)
def test_info_describes_bundles_of_every_task(tiny_bundle, task, postprocess):
    proc = cli("info", str(tiny_bundle(task)))  # each head's own postprocess fields
    assert proc.returncode == 0, proc.stderr
    assert f"({task})" in proc.stdout
    assert any(line.startswith(postprocess) for line in proc.stdout.splitlines()), proc.stdout

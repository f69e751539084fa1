"""``edgemed check``: the demo bundle's shipped validation gate on this machine."""

from __future__ import annotations

import json
import shutil
import subprocess

import pytest

import edgemed
from edgemed.bundle import Bundle, write_manifest
from edgemed.errors import BundleError
from tests.cli_run import cli


def _check(*args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    return cli("check", *args, timeout=timeout)


def test_demo_ships_its_validation_set():
    bundle = Bundle.load(edgemed.demo_bundle())
    v = bundle.validation
    assert v is not None and v.thresholds == bundle.provenance["accuracy"]["thresholds"]
    assert 3 <= len(v.files) <= 8
    assert sum(f.bytes for f in v.files) <= 1 << 20  # the bundle stays small
    # The shipped images are among the ones the export gated with.
    gated = {i["sha256"] for i in bundle.provenance["calibration"]["validation"]["inputs"]}
    assert {f.sha256 for f in v.files} <= gated


def test_onnxruntime_fp32_passes_with_exact_agreement():
    proc = _check(str(edgemed.demo_bundle()), "--backend", "onnxruntime", "--json")
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert report["passed"] and report["metric"]["pixel_agreement"] == 1.0
    assert report["images"] == len(Bundle.load(edgemed.demo_bundle()).validation.files)


def test_onnxruntime_int8_passes_and_a_too_tight_gate_fails():
    bundle = str(edgemed.demo_bundle())
    ok = _check(bundle, "--backend", "onnxruntime", "--precision", "int8", "--json")
    assert ok.returncode == 0, ok.stderr
    drop = json.loads(ok.stdout)["metric"]["mean_dice_drop"]
    assert 0 < drop <= 0.01  # really the INT8 model, within the export's gate
    tight = _check(
        bundle,
        "--backend",
        "onnxruntime",
        "--precision",
        "int8",
        "--threshold",
        f"max_dice_drop={drop / 2}",
    )
    assert tight.returncode == 6, tight.stderr
    assert "ACCURACY_DEVICE" in tight.stderr
    assert "mean" in tight.stdout and "!" in tight.stdout  # the per-label table, marked
    assert "fat" in tight.stdout and "soft_tissue" in tight.stdout


@pytest.mark.parametrize("bad", ["max_dice_drop=0.5", "nonsense=0.1", "max_dice_drop"])
def test_thresholds_only_tighten(bad):
    proc = _check(str(edgemed.demo_bundle()), "--backend", "onnxruntime", "--threshold", bad)
    assert proc.returncode == 2 and "--threshold" in proc.stderr


def test_bundle_without_validation_set(tmp_path):
    root = tmp_path / "b"
    shutil.copytree(edgemed.demo_bundle(), root)
    manifest = Bundle.load(root).to_dict()
    del manifest["validation"]
    write_manifest(root, manifest)
    proc = _check(str(root), "--backend", "onnxruntime")
    assert proc.returncode == 4 and "BUNDLE_NO_VALIDATION" in proc.stderr


def test_a_swapped_validation_image_is_refused(tmp_path):
    root = tmp_path / "b"
    shutil.copytree(edgemed.demo_bundle(), root)
    first = Bundle.load(root).validation.files[0]
    data = bytearray((root / first.path).read_bytes())
    data[-1] ^= 0xFF
    (root / first.path).write_bytes(bytes(data))
    with pytest.raises(BundleError) as e:
        Bundle.load(root)
    assert e.value.code == "BUNDLE_INTEGRITY"
    proc = _check(str(root), "--backend", "onnxruntime")
    assert proc.returncode == 4 and "BUNDLE_INTEGRITY" in proc.stderr


def test_validation_paths_stay_inside(tmp_path):
    root = tmp_path / "b"
    shutil.copytree(edgemed.demo_bundle(), root)
    manifest = Bundle.load(root).to_dict()
    manifest["validation"]["files"][0]["path"] = "../outside.dcm"
    with pytest.raises(BundleError) as e:
        write_manifest(root, manifest)
    assert e.value.code == "BUNDLE_INVALID"


def test_openvino_checks(tmp_path):
    """fp32 on OpenVINO agrees with the reference pixel for pixel; the verdict for int8
    is whatever the gate says on this CPU, and the exit code follows it."""
    pytest.importorskip("openvino", reason="the openvino extra is not installed")
    bundle = str(edgemed.demo_bundle())
    cache = ["--engine-cache", str(tmp_path)]
    fp32 = _check(bundle, "--backend", "openvino", "--json", *cache)
    assert fp32.returncode == 0, fp32.stderr
    report = json.loads(fp32.stdout)
    assert report["metric"]["pixel_agreement"] == 1.0
    assert report["backend"]["inference_precision"] == "f32"
    int8 = _check(bundle, "--backend", "openvino", "--precision", "int8", "--json", *cache)
    verdict = json.loads(int8.stdout)
    assert verdict["backend"]["precision"] == "int8" and verdict["metric"]["pixel_agreement"] < 1
    assert int8.returncode == (0 if verdict["passed"] else 6), int8.stderr


def test_ship_takes_the_smallest_single_images_within_budget(tmp_path, ct_small_path):
    from edgemed.export.validation_set import ship

    src = tmp_path / "val"
    src.mkdir()
    shutil.copyfile(ct_small_path, src / "a.dcm")  # ~39 kB
    (src / "b.dcm").write_bytes(bytes(200) + (src / "a.dcm").read_bytes())  # larger
    (src / "notes.txt").write_text("not an image")
    (src / "series").mkdir()  # folders are not shipped
    shutil.copyfile(ct_small_path, src / "series" / "1.dcm")
    out = tmp_path / "bundle"
    out.mkdir()
    size = (src / "a.dcm").stat().st_size
    block = ship(src, out, {"max_dice_drop": 0.01}, max_bytes=size + 100)
    assert block == {
        "thresholds": {"max_dice_drop": 0.01},
        "files": [{"path": "validation/01.dcm"}],  # never the file's own name
    }
    assert (out / "validation" / "01.dcm").read_bytes() == (src / "a.dcm").read_bytes()
    both = ship(src, out, {"max_dice_drop": 0.01})
    assert [f["path"] for f in both["files"]] == ["validation/01.dcm", "validation/02.dcm"]
    assert (out / "validation" / "02.dcm").read_bytes() == (src / "b.dcm").read_bytes()
    assert ship(src, out, {}, max_bytes=10) is None

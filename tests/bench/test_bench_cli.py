"""``edgemed bench`` as a user runs it: the real command on the demo bundle, and bad
options (exit 2, one line)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from edgemed.cli import main


def test_bench_demo_bundle_at_tiny_settings(tmp_path):
    out = tmp_path / "bench"
    env = dict(os.environ, EDGEMED_ORT_THREADS="1")
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "edgemed.cli",
            "bench",
            "--iterations",
            "5",
            "--warmup",
            "1",
            "--precision",
            "fp32",
            "--time-cap",
            "5",
            "--out",
            str(out),
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""  # not a TTY: no progress bar
    assert "e2e p50" in proc.stdout and f"wrote    {out}/ (bench.json" in proc.stdout
    doc = json.loads((out / "bench.json").read_text())
    c, syn = doc["configs"]  # default inputs: the real CT_small.dcm, a synthetic 512x512
    assert (c["precision"], c["batch"], c["input"]["label"]) == ("fp32", 1, "CT_small.dcm")
    assert syn["input"]["label"] == "synthetic 512x512" and syn["input"]["shape"] == [512, 512]
    from edgemed._lazy import available

    cpu_backend = "openvino" if available("openvino") else "onnxruntime"  # what auto picks
    assert c["backend"] == cpu_backend and doc["bundle"]["name"].startswith("edgemed-demo")
    assert c["preprocess_device"] == "cpu" and doc["settings"]["engine_cache"] is None
    for config in (c, syn):
        st = config["stages"]
        assert set(st) == {"read", "preprocess", "h2d", "infer", "d2h", "postprocess", "end_to_end"}
        for name, s in st.items():
            if s is None:  # CPU: no copies; synthetic: nothing to read. Reasons, no fake 0
                assert name in ("h2d", "d2h") or (name, config) == ("read", syn)
                assert config["absent"][name]
                continue
            assert s["count"] >= 5 or not config["stability"]["stable"]
            figures = [s[k] for k in ("min_ms", "p50_ms", "p90_ms", "p99_ms", "max_ms")]
            present = [v for v in figures if v is not None]
            assert present == sorted(present)
            assert s["p99_ms"] is None  # fewer than 100 calls
        # Each end_to_end call contains its own infer call.
        e2e, inf = (config["samples_ms"][k] for k in ("end_to_end", "infer"))
        assert all(e >= i for e, i in zip(e2e, inf, strict=True))
        assert config["throughput_ips"] == pytest.approx(
            1000.0 / st["end_to_end"]["mean_ms"], rel=1e-3
        )
        assert 0 <= config["overhead"]["min"] <= config["overhead"]["max"] < 1
        assert config["accuracy"]["is_reference"] and config["accuracy"]["mean_dice"] == 1.0
        assert "percentiles" in config["absent"]
    assert "— for a percentile: too few calls" in proc.stdout
    assert doc["schema_version"] == 2 and doc["reference"]["extra_calls"] == 0
    assert "--iterations 5 --warmup 1" in doc["command"]
    for name in ("bench.csv", "bench.md", "latency_cdf.png", "stages.png"):
        assert (out / name).stat().st_size > 0


def test_bench_in_process_batches_precisions_synthetic(tmp_path, capsys):
    rc = main(
        [
            "bench",
            "--precision",
            "fp32,int8",
            "--batch",
            "2",
            "--synthetic",
            "64x80",
            "--iterations",
            "2",
            "--warmup",
            "0",
            "--time-cap",
            "1",
            "--no-plots",
            "--quiet",
            "--threads",
            "1",
            "--out",
            str(tmp_path),
        ]
    )
    assert rc == 0
    doc = json.loads((tmp_path / "bench.json").read_text())
    assert [(c["precision"], c["batch"]) for c in doc["configs"]] == [("fp32", 2), ("int8", 2)]
    int8 = doc["configs"][1]
    assert not int8["accuracy"]["is_reference"] and 0.5 < int8["accuracy"]["mean_dice"] <= 1
    assert int8["accuracy"]["bundle_reported"]["passed"] is True  # copied from the bundle
    assert int8["images_per_call"] == 2 and int8["stages"]["read"] is None
    assert not (tmp_path / "stages.png").exists()
    assert "int8 b2 synthetic 64x80" in capsys.readouterr().out


def test_any_modality_runs_a_dicom_input_the_bundle_does_not_list(tmp_path, capsys):
    # The demo model is for CT: an MR slice is refused, and the message names
    # --any-modality, which bench (like run) accepts.
    from pydicom.data import get_testdata_file

    mr = get_testdata_file("MR_small.dcm")
    common = ["bench", "--input", mr, "--precision", "fp32", "--iterations", "2", "--warmup",
              "0", "--time-cap", "0.5", "--no-plots", "--quiet", "--threads", "1"]  # fmt: skip
    assert main([*common, "--out", str(tmp_path / "refused")]) == 3
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("edgemed: error INPUT_MODALITY:")
    assert "--any-modality" in err[0] and "MR_small" not in err[0]
    assert not (tmp_path / "refused").exists()
    assert main([*common, "--any-modality", "--out", str(tmp_path / "ran")]) == 0
    doc = json.loads((tmp_path / "ran" / "bench.json").read_text())
    assert doc["settings"]["check_modality"] is False and "--any-modality" in doc["command"]
    (c,) = doc["configs"]
    assert c["input"]["modality"] == "MR" and c["stages"]["end_to_end"]["count"] >= 1
    assert doc["configs"][0]["accuracy"]["is_reference"]


def test_time_cap_bounds_the_whole_run(tmp_path):
    # The demo bundle's defaults: 3 precisions x 2 inputs = 6 configurations. Each takes
    # its cap (warm-up included) plus at most the call in flight; the run adds loading.
    cap = 0.5
    proc = subprocess.run(
        [sys.executable, "-m", "edgemed.cli", "bench", "--time-cap", str(cap), "--no-plots",
         "--out", str(tmp_path)],
        capture_output=True, text=True, env=dict(os.environ, EDGEMED_ORT_THREADS="1"),
        timeout=120,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    doc = json.loads((tmp_path / "bench.json").read_text())
    assert len(doc["configs"]) == 6 and doc["settings"]["time_cap_s"] == cap
    spent = 0.0
    for c in doc["configs"]:
        st = c["stability"]
        longest_s = (c["stages"]["end_to_end"]["max_ms"] + 50) / 1e3  # + reading the file
        # warm-up stops at half the cap (after the call that reaches it)...
        assert st["warmup_s"] <= cap / 2 + 2 * longest_s + 0.2
        # ...and measuring at the cap (after the call in flight).
        assert cap <= st["warmup_s"] + st["elapsed_s"] <= cap + 2 * longest_s + 0.2
        spent += st["warmup_s"] + st["elapsed_s"]
    assert doc["reference"]["extra_calls"] == 0  # fp32 is measured: its result is it
    assert doc["elapsed_s"] <= spent + 3.0  # loading three small models and the bundle


@pytest.mark.parametrize(
    ("args", "code"),
    [
        (["--iterations", "0"], "USAGE"),
        (["--iterations", "many"], "USAGE"),
        (["--warmup", "-1"], "USAGE"),
        (["--batch", "0"], "USAGE"),
        (["--batch", "1,x"], "USAGE"),
        (["--synthetic", "12x"], "USAGE"),
        (["--synthetic", "4x4"], "USAGE"),
        (["--stability", "-5"], "USAGE"),
        (["--windows", "1"], "USAGE"),
        (["--time-cap", "0"], "USAGE"),
        (["--precision", "fp64"], "USAGE_PRECISION_MISSING"),
    ],
)
def test_bad_options_exit_2_with_one_line(args, code, tmp_path, capsys):
    rc = main(["bench", *args, "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2
    assert len(err) == 1 and err[0].startswith(f"edgemed: error {code}:"), err
    assert not (tmp_path / "o").exists()  # refused before anything ran

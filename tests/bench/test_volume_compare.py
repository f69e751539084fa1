"""benchmarks/volume_compare.py: its quick mode runs the three pipelines (each in its own
processes, in alternating rounds) and edgemed's mask is voxel for voxel MONAI + ONNX
Runtime's; README's table comes from its JSON."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from benchmarks import readme_tables as tables

REPO = Path(__file__).resolve().parents[2]
PIPELINES = ("edgemed", "MONAI + PyTorch eager", "MONAI + ONNX Runtime")


def test_quick_run_records_times_memory_and_identical_masks(tmp_path):
    pytest.importorskip("torch")
    pytest.importorskip("monai")
    pytest.importorskip("nibabel")
    proc = subprocess.run(
        [
            sys.executable,
            "benchmarks/volume_compare.py",
            "--quick",
            "--rounds",
            "2",
            "--repeats",
            "1",
            "--warmup",
            "0",
            "--pipelines",
            ",".join(PIPELINES),
            "--out",
            str(tmp_path),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    data = json.loads((tmp_path / "volume_compare.json").read_text())
    assert data["benchmark"] == "volume_compare" and data["quick"] is True
    assert data["volume"]["shape_zyx"] == [64, 128, 128]  # Z below the ROI: padded
    assert data["sliding_window"]["roi_size"] == [96, 96, 96]
    assert data["model"]["network"] == "monai.networks.nets.UNet"
    assert list(data["pipelines"]) == list(PIPELINES)
    for name, r in data["pipelines"].items():
        # Two alternating rounds of one process each, one timed run per process.
        assert r["rounds"] == 2 and len(r["runs_s"]) == 2, name
        assert r["end_to_end_s"] == pytest.approx(float(np.median(r["runs_s"])), abs=1e-3)
        assert r["end_to_end_s"] > 0, name
        assert r["first_run_s"] is None  # --warmup 0
        assert r["peak_rss_mb"] >= r["rss_after_startup_mb"] > 0, name
        ph = r["phases_median_s"]
        assert set(ph) == {"read_s", "preprocess_s", "model_s", "blend_decide_s", "write_s"}
        assert 0 < ph["model_s"] < r["end_to_end_s"], name
        assert sum(ph.values()) == pytest.approx(r["end_to_end_s"], rel=0.02, abs=0.01), name
    # The speed-up and memory ratio are edgemed against each row, in this run.
    ours, torch_row = data["pipelines"]["edgemed"], data["pipelines"]["MONAI + PyTorch eager"]
    # (Recorded to 3 decimals: within half a unit of the last.)
    assert torch_row["edgemed_speedup"] == pytest.approx(
        torch_row["end_to_end_s"] / ours["end_to_end_s"], abs=5.01e-4
    )
    assert torch_row["edgemed_memory_ratio"] == pytest.approx(
        ours["peak_rss_mb"] / torch_row["peak_rss_mb"], abs=5.01e-4
    )
    goals = data["goals"]
    assert goals["speedup_vs_torch"]["measured"] == torch_row["edgemed_speedup"]
    assert goals["memory_ratio_vs_torch"]["goal"] == 0.5
    # Same windows, same blending, same decision: not one voxel differs from MONAI + ORT.
    same = data["masks_vs_edgemed"]["MONAI + ONNX Runtime"]
    assert same["differing_voxels"] == 0 and same["identical"] is True
    assert same["voxels"] == 64 * 128 * 128
    assert goals["identical_to_monai_ort"] == {"differing_voxels": 0, "met": True}
    # A mask that labels the phantom, not one class everywhere.
    assert len(data["labels_found"]) >= 3
    # PyTorch computes the same network in other float order: close, not necessarily equal.
    assert data["masks_vs_edgemed"]["MONAI + PyTorch eager"]["dice"]["mean_dice"] > 0.99
    md = (tmp_path / "volume_compare.md").read_text()
    assert "| MONAI + ONNX Runtime |" in md and "0 voxels differ" in md


def _row(e2e: float, model: float, rss: float, speedup: float, share: float) -> dict:
    return {
        "end_to_end_s": e2e, "runs_s": [e2e], "first_run_s": e2e + 1.0,
        "phases_median_s": {"read_s": 0.1, "preprocess_s": 0.1, "model_s": model,
                            "blend_decide_s": e2e - model - 0.3, "write_s": 0.1},
        "startup_s": 1.0, "rss_after_startup_mb": 100.0, "peak_rss_mb": rss,
        "edgemed_speedup": speedup, "edgemed_memory_ratio": share,
    }  # fmt: skip


DATA = {
    "benchmark": "volume_compare",
    "environment": {
        "date": "2026-12-07 07:00 UTC",
        "machine": {"cpu": "Test CPU", "cores": 2},
        "command": "python benchmarks/volume_compare.py --out R",
    },
    "threads": 2,
    "repeats": 3,
    "warmup_runs": 1,
    "volume": {"shape_zyx": [160, 256, 256]},
    "model": {"channels": [16, 32, 64, 128], "num_res_units": 2, "labels": 5},
    "sliding_window": {"roi_size": [96, 96, 96], "overlap": 0.25, "mode": "gaussian",
                       "sw_batch_size": 4},
    "pipelines": {
        "edgemed": _row(30.0, 28.0, 400.0, 1.0, 1.0),
        "MONAI + PyTorch eager": _row(66.0, 55.0, 1000.0, 2.2, 0.4),
        "MONAI + ONNX Runtime": _row(33.0, 28.0, 800.0, 1.1, 0.5),
    },
    "masks_vs_edgemed": {
        "MONAI + PyTorch eager": {"differing_voxels": 1234, "dice": {"mean_dice": 0.99991}},
        "MONAI + ONNX Runtime": {"differing_voxels": 0, "dice": {"mean_dice": 1.0}},
    },
    "goals": {
        "speedup_vs_torch": {"goal": 2.0, "measured": 2.2, "met": True},
        "memory_ratio_vs_torch": {"goal": 0.5, "measured": 0.4, "met": True},
        "identical_to_monai_ort": {"differing_voxels": 0, "met": True},
    },
}  # fmt: skip


def test_readme_table_rows_goals_and_source():
    lines = tables.render({"volume_compare": DATA}).splitlines()
    assert "volume_compare" in tables.ORDER
    assert any(line.startswith("### 3D sliding window") for line in lines)
    assert "| edgemed | 30.00 s | 28.00 s | 2.00 s | 31.00 s | 400 MiB | - | - | - |" in lines
    assert (
        "| MONAI + PyTorch eager | 66.00 s | 55.00 s | 11.00 s | 67.00 s | 1000 MiB | 2.20x "
        "| 0.40 | 1,234 voxels differ (Dice 0.9999) |" in lines
    )
    assert any("0 voxels differ (Dice 1.0000)" in line for line in lines)
    assert any("2.20x faster" in line and "goal >= 2x: met" in line for line in lines)
    assert any("0.40 of MONAI" in line and "goal <= 0.5: met" in line for line in lines)
    assert lines[-1].endswith("by `python benchmarks/volume_compare.py --out R`._")
    missed = json.loads(json.dumps(DATA))
    missed["goals"]["speedup_vs_torch"].update(measured=1.1, met=False)
    assert any("**not met**" in line for line in tables.volume_table(missed))


def test_compare_counts_differing_voxels():
    from benchmarks.volume_compare import compare

    a = np.zeros((4, 5, 6), np.uint8)
    a[1:3, 1:4, 2:5] = 2
    b = a.copy()
    b[0, 0, 0] = 1
    assert compare(a, a)["differing_voxels"] == 0 and compare(a, a)["identical"]
    r = compare(a, b)
    assert r["differing_voxels"] == 1 and not r["identical"] and r["voxels"] == a.size
    assert compare(a, b[:2])["differing_voxels"] is None

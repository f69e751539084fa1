"""README's Triton table from benchmarks/triton_compare.py's JSON (no server)."""

from __future__ import annotations

from benchmarks.readme_tables import render, triton_table


def _point(ips: float, p50: float, p99: float) -> dict:
    return {"images_per_s": ips, "p50_ms": p50, "p99_ms": p99}


def _data() -> dict:
    per = {
        "1": _point(50.0, 20.0, 25.0),
        "4": _point(80.0, 45.0, 60.0),
        "16": _point(90.0, 170.0, 210.0),
    }
    return {
        "environment": {
            "date": "2026-12-07 04:00 UTC",
            "machine": {"cpu": "AMD EPYC", "cores": 2},
            "command": ".venv-test/bin/python benchmarks/triton_compare.py",
        },
        "threads": 2,
        "inputs": {
            "CT_small.dcm 128x128": {
                "in_process": {
                    "latency": {"p50_ms": 18.5, "p99_ms": None},
                    "run_batch_images_per_s": {"1": 55.0, "4": 95.0, "8": 100.0, "16": 98.0},
                },
                "triton_1": per,
                "triton_2": per,
                "serve": {"skipped": "hey is not installed"},
                "goals": {
                    "triton_added_p50_ms_c1": 1.5,
                    "triton_c16_share_of_batched_percent": 90.0,
                    "best_triton": "triton 1 instance(s)",
                },
            }
        },
    }


def test_triton_table_rows():
    lines = triton_table(_data())
    assert (
        "| CT_small.dcm 128x128 | in-process | 18.50 ms | — | - "
        "| 100.0 (run_batch, best batch) | - | - |" in lines
    )
    assert (
        "| CT_small.dcm 128x128 | Triton, 1 instance | 20.00 ms | 25.00 ms | 80.0 | 90.0 "
        "| 170.00 ms | 210.00 ms |" in lines
    )
    assert (
        "| CT_small.dcm 128x128 | edgemed serve | _optional row: hey is not installed_ | | | | | |"
        in lines
    )
    assert any("adds +1.50 ms p50 at c=1" in line and "90 %" in line for line in lines)
    assert lines[-1].startswith("_Measured 2026-12-07 04:00 UTC on AMD EPYC (2 cores)")


def test_the_goal_line_gives_the_paired_measurement():
    data = _data()
    row = data["inputs"]["CT_small.dcm 128x128"]
    row["paired_c1"] = {"requests": 200, "errors": 0, "in_process_p50_ms": 18.4,
                        "remote_p50_ms": 19.9, "added_p50_ms": 1.5}  # fmt: skip
    row["goals"]["blocks_added_p50_ms_c1"] = 2.25
    line = next(x for x in triton_table(data) if x.startswith("- CT_small"))
    assert "adds +1.50 ms p50 at c=1 (median over 200 pairs" in line
    assert "18.4 / 19.9 ms p50; +2.25 ms between the blocks above)" in line


def test_rendered_into_the_performance_section():
    assert "edgemed on Triton Inference Server" in render({"triton_compare": _data()})


def test_the_goal_line_gives_tritons_own_floor():
    """The empty model's figure (what Triton adds with no edgemed code) sits beside the
    goal figure, so a reader can tell Triton's cost from edgemed's."""
    data = _data()
    row = data["inputs"]["CT_small.dcm 128x128"]
    row["floor_c1"] = {"requests": 200, "errors": 0, "in_process_p50_ms": 29.0,
                       "remote_p50_ms": 31.2, "added_p50_ms": 2.2, "wait_ms": 28.96}  # fmt: skip
    line = next(x for x in triton_table(data) if x.startswith("- CT_small"))
    assert "an empty Python-backend model that waits 29.0 ms" in line
    assert "adds +2.20 ms measured the same way" in line

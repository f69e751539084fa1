"""benchmarks/readme_tables.py renders known results into the expected README tables."""

from __future__ import annotations

import json

import pytest

from benchmarks import readme_tables as tables


def _env(command: str) -> dict:
    return {
        "date": "2026-11-25 17:00 UTC",
        "machine": {"cpu": "Test CPU", "cores": 2},
        "versions": {"onnxruntime": "1.32.0"},
        "command": command,
    }


def _stat(p50: float) -> dict:
    return {"p50_ms": p50, "p90_ms": p50 * 1.1, "p99_ms": p50 * 1.2}


OVERHEAD = {
    "benchmark": "pipeline_overhead",
    "environment": _env("python benchmarks/pipeline_overhead.py --out R"),
    "target_percent": 10.0,
    "inputs": {
        "phantom 512x512": {
            "end_to_end": _stat(20.5),
            "infer": _stat(18.25),
            "overhead_percent_p50": 9.87,
            "overhead_percent_p90": 12.04,
        }
    },
}

PREPROCESS = {
    "benchmark": "preprocess_compare",
    "environment": _env("python benchmarks/preprocess_compare.py"),
    "cases": [
        {
            "slice": "512x512",
            "batch": 8,
            "implementations": {
                "edgemed": _stat(2.0),
                "OpenCV (plain)": _stat(7.0),
                "MONAI": _stat(50.0),
            },
            "speedup_p50": {"edgemed": 1.0, "OpenCV (plain)": 3.5, "MONAI": 25.0},
        },
        {  # a run without MONAI installed: its column shows '-'
            "slice": "256x256",
            "batch": 1,
            "implementations": {"edgemed": _stat(0.1), "OpenCV (plain)": _stat(0.4)},
            "speedup_p50": {"edgemed": 1.0, "OpenCV (plain)": 4.0},
        },
    ],
}


def test_rows_carry_the_numbers_machine_and_command():
    text = tables.render({"pipeline_overhead": OVERHEAD, "preprocess_compare": PREPROCESS})
    lines = text.splitlines()
    assert lines[0] == "## Performance"
    assert "| phantom 512x512 | 20.50 ms | 18.25 ms | 9.9 % | 12.0 % |" in lines
    assert "| 512x512 | 8 | 2.000 ms | 7.000 ms | 50.000 ms | 3.50x / 25.00x |" in lines
    assert "| 256x256 | 1 | 0.100 ms | 0.400 ms | - | 4.00x / - |" in lines
    sources = [line for line in lines if line.startswith("_Measured")]
    assert sources == [
        "_Measured 2026-11-25 17:00 UTC on Test CPU (2 cores) by "
        "`python benchmarks/pipeline_overhead.py --out R`._",
        "_Measured 2026-11-25 17:00 UTC on Test CPU (2 cores) by "
        "`python benchmarks/preprocess_compare.py`._",
    ]
    # Tables in the fixed order, whatever the mapping's order.
    again = tables.render({"preprocess_compare": PREPROCESS, "pipeline_overhead": OVERHEAD})
    assert again == text
    assert text.index("Pipeline overhead") < text.index("CPU preprocessing")


def test_section_between_markers_is_replaced_and_the_rest_kept(tmp_path):
    (tmp_path / "pipeline_overhead.json").write_text(json.dumps(OVERHEAD))
    (tmp_path / "unrelated.json").write_text("{}")
    readme = tmp_path / "README.md"
    readme.write_text(f"# Title\n\nbefore\n{tables.START}\nold table\n{tables.END}\nafter\n")
    args = ["--results", str(tmp_path), "--readme", str(readme)]
    assert tables.main([*args, "--check"]) == 1  # stale
    assert tables.main(args) == 0
    text = readme.read_text()
    assert text.startswith(f"# Title\n\nbefore\n{tables.START}\n## Performance\n")
    assert text.endswith(f"{tables.END}\nafter\n")
    assert "old table" not in text and "| phantom 512x512 | 20.50 ms |" in text
    assert tables.main([*args, "--check"]) == 0  # idempotent


def test_missing_markers_are_an_error():
    with pytest.raises(ValueError, match="markers"):
        tables.replace_section("# no markers\n", "x")


def test_a_run_cut_short_keeps_its_missing_percentiles():
    # --budget-s stops a script after 20 samples: p99 (which needs 100) is None in the
    # JSON and "—" in its table, never a crash and never the maximum under p99's name.
    from benchmarks._common import figure, stats

    s = stats([float(v) for v in range(30, 0, -1)])
    assert (s["p50_ms"], s["p90_ms"], s["p95_ms"], s["p99_ms"]) == (15.0, 27.0, 29.0, None)
    assert (figure(s["p99_ms"]), figure(s["p90_ms"], 3)) == ("—", "27.000")


def test_engine_rows_gates_and_model_calls():
    """OpenVINO runs beside ONNX Runtime (pipeline_overhead ``runs``), the validation gate
    per precision and the model-call table (cpu_compare) reach the README."""
    overhead = {
        **OVERHEAD,
        "runs": {
            "openvino:int8": {
                "inputs": {
                    "phantom 512x512": {
                        "end_to_end": _stat(8.0),
                        "infer": _stat(5.5),
                        "overhead_ms_p50": 2.5,
                        "overhead_percent_p50": 31.25,
                        "overhead_percent_p90": 35.0,
                    }
                }
            }
        },
    }
    tool = {"edgemed": 1.0, "edgemed OpenVINO bf16": 0.5, "MONAI + PyTorch eager": 3.0}
    compare = {
        "benchmark": "cpu_compare",
        "environment": _env("python benchmarks/cpu_compare.py"),
        "threads": 2,
        "inputs": {
            "phantom 512x512": {
                "tools": {t: _stat(10.0 * v) for t, v in tool.items()},
                "speedup_p50": tool,
                "outside_model_p50_ms": {t: 1.0 for t in tool},
                "dice_vs_edgemed": {t: {"mean_dice": 0.99} for t in tool if t != "edgemed"},
                "best_gated": {"tool": "edgemed OpenVINO bf16", "speedup_vs_torch": 6.0},
            }
        },
        "gates": {
            "edgemed OpenVINO int8": {"passed": False, "mean_dice_drop": 0.0169},
            "edgemed OpenVINO bf16": {"passed": True, "mean_dice_drop": 0.0005},
        },
        "model_calls": {"OpenVINO int8 (bundle)": {"p50_ms": 5.6, "vs_ort_fp32": 0.39}},
    }
    lines = tables.render({"pipeline_overhead": overhead, "cpu_compare": compare}).splitlines()
    assert "| openvino:int8 | phantom 512x512 | 5.50 ms | 2.50 ms | 31.2 % |" in lines
    assert "- edgemed OpenVINO int8: mean Dice drop 0.0169, **refused** (outside the gate)" in lines
    assert "- edgemed OpenVINO bf16: mean Dice drop 0.0005, passed" in lines
    assert (
        "- phantom 512x512: the fastest gated edgemed (edgemed OpenVINO bf16) is 6.00x faster "
        "than MONAI + PyTorch eager"
    ) in lines
    assert "| OpenVINO int8 (bundle) | 5.60 ms | 0.39x |" in lines
    assert "| phantom 512x512 | edgemed OpenVINO bf16 | 5.00 ms | - | 1.00 ms | 0.9900 |" in lines

"""README's "Service under load" table comes from benchmarks/serve_load.py's JSON."""

from __future__ import annotations

from benchmarks import readme_tables as tables


def _row(p50: float, p99: float | None, tput: float, errors: int = 0) -> dict:
    return {"requests": 100, "errors": errors, "p50_ms": p50, "p99_ms": p99,
            "mean_ms": p50, "throughput_per_s": tput}  # fmt: skip


DATA = {
    "benchmark": "serve_load",
    "environment": {
        "date": "2026-12-07 04:00 UTC",
        "machine": {"cpu": "Test CPU", "cores": 2},
        "command": "python benchmarks/serve_load.py --out R",
    },
    "backend": "onnxruntime 1.32.0",
    "threads": 2,
    "workers": 1,
    "load_generator": "hey",
    "goals": {"http_added_p50_ms_at_c1": 2.0, "throughput_ratio_at_c4": 1.0},
    "inputs": {
        "CT_small.dcm 128x128": {
            "in_process": {"1": _row(30.0, 41.5, 33.0), "4": _row(120.0, None, 33.1)},
            "http": {"1": _row(31.25, 44.0, 31.9), "4": _row(110.0, None, 36.4, errors=1)},
            "http_added_p50_ms": 1.25,
            "throughput_ratio_c4": 1.1,
        }
    },
    "rss": {
        "after_warmup_mb": 300.0,
        "after_mb": 303.0,
        "requests": 5000,
        "growth_percent": 1.0,
        "goal_percent": 5.0,
        "errors": 0,
    },  # fmt: skip
}


def test_serve_table_rows_goals_and_source():
    text = tables.render({"serve_load": DATA})
    lines = text.splitlines()
    assert "### Service under load (`edgemed serve`, CPU)" in lines
    assert "| CT_small.dcm 128x128 | 1 | 30.0 / 41.5 | 31.2 / 44.0 | 33.0 / 31.9 | 0 |" in lines
    assert "| CT_small.dcm 128x128 | 4 | 120.0 / — | 110.0 / — | 33.1 / 36.4 | 1 |" in lines
    assert any("HTTP adds +1.25 ms p50 at concurrency 1" in line for line in lines)
    assert any("1.10x in-process" in line for line in lines)
    assert any("+1.00 % (goal under 5 %)" in line for line in lines)
    assert lines[-1].endswith("by `python benchmarks/serve_load.py --out R`._")
    assert "serve_load" in tables.ORDER


def _goal_line(**fields) -> str:
    """CT_small's goal line as rendered with ``fields`` added to its row of DATA."""
    data = {**DATA, "inputs": {k: dict(v) for k, v in DATA["inputs"].items()}}
    data["inputs"]["CT_small.dcm 128x128"].update(fields)
    return next(x for x in tables.render({"serve_load": data}).splitlines() if "HTTP adds" in x)


def _pair(in_process: float, remote: float, added: float) -> dict:
    return {"requests": 200, "errors": 0, "in_process_p50_ms": in_process,
            "remote_p50_ms": remote, "added_p50_ms": added}  # fmt: skip


def test_serve_table_judges_the_paired_measurement():
    """Where the run measured pairs, the goal line gives their median difference first
    and the blocks' difference beside it."""
    line = _goal_line(paired_c1=_pair(30.2, 32.1, 1.875))
    assert "HTTP adds +1.88 ms p50 at concurrency 1, the median over 200 pairs" in line
    assert "(30.2 / 32.1 ms p50; +1.25 ms between hey's and the threads' blocks)" in line
    assert "(goal <= 2 ms)" in line


def test_serve_table_gives_the_hand_written_peer():
    """The plain FastAPI endpoint's paired figure sits beside edgemed serve's."""
    line = _goal_line(peer_paired_c1=_pair(30.0, 31.1, 1.104))
    assert "a hand-written FastAPI endpoint around the same pipeline" in line
    assert "adds +1.10 ms, measured the same way" in line


def test_serve_table_judges_c4_on_the_rounds_median():
    """Where the run kept each round's ratio, the goal's figure is their median and the
    ratio over all requests is given beside it."""
    line = _goal_line(
        throughput_ratio_c4_rounds=[0.98, 1.04, 1.02, 1.07, 1.01, 0.99, 1.03, 1.05],
        throughput_ratio_c4=1.025,
        throughput_ratio_c4_all=0.97,
    )
    assert "throughput at concurrency 4 is 1.02x in-process, the median of 8" in line
    assert "(0.97x over all requests) (goal >= 1x)" in line

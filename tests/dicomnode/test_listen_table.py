"""benchmarks/readme_tables.py renders listen_load.py's results into README's table."""

from __future__ import annotations

from benchmarks import readme_tables as tables

RESULT = {
    "benchmark": "listen_load",
    "environment": {
        "date": "2026-12-07 04:00 UTC",
        "machine": {"cpu": "Test CPU", "cores": 2},
        "versions": {},
        "command": "python benchmarks/listen_load.py",
    },
    "ingest": {
        "images": 300,
        "slice": "512x512",
        "repeats": 3,
        "images_per_s": {"storescp": 250.0, "edgemed (fsync)": 60.0, "edgemed (no fsync)": 110.0},
        "vs_storescp": {"edgemed (fsync)": 0.24, "edgemed (no fsync)": 0.44},
    },
    "latency": {
        "slices": 100,
        "repeats": 3,
        "stable_seconds": 1.0,
        "p50_s": 20.5,
        "processing_p50_ms": 18000.0,
        "infer_p50_ms": 12000.0,
        "inference_share_percent": 58.5,
    },
    "seg_sr": {
        "shape": [300, 512, 512],
        "labels": 5,
        "frames": 1200,
        "seg_encode_ms": 3400.0,
        "seg_bytes": 39_900_000,
        "sr_encode_ms": 210.0,
        "sr_bytes": 45_000,
        "series_infer_ms": 41_000.0,
        "share_of_infer_percent": 8.8,
    },
}


def test_listen_table():
    text = tables.render({"listen_load": RESULT})
    assert "### DICOM node (`edgemed listen`, CPU)" in text
    assert "| storescp | 250.0 | 1.00x |" in text
    assert "| edgemed (fsync) | 60.0 | 0.24x |" in text
    assert "p50 20.50 s over 3 runs" in text and "12.00 s = 58 % of the latency" in text
    assert "SEG 3400 ms / 39.9 MB" in text and "8.8 % of the series' inference" in text
    assert "`python benchmarks/listen_load.py`" in text

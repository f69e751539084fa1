"""Soak: many inferences in one process; resident memory and file descriptors must not grow.

Usage:  python benchmarks/soak.py [--iterations 10000] [--warmup 200] [--input FILE]

Runs the demo bundle (ONNX Runtime, CPU) on a real CT file through the whole pipeline
(read -> preprocess -> infer -> postprocess) and prints JSON with resident memory after
warm-up and at the end, its growth in percent, open file descriptors before and after,
and the latency of the run. Targets (issue "Hardening"): RSS growth < 1 % after warm-up,
no file-descriptor growth. `tests/test_soak.py` (marker `slow`) asserts them.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Any

import numpy as np

import edgemed


def rss_bytes() -> int:
    """Resident set size of this process, from /proc (Linux)."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def soak(iterations: int = 10_000, warmup: int = 200, path: str | None = None) -> dict[str, Any]:
    """Run the demo pipeline ``warmup + iterations`` times on ``path``; return figures."""
    if path is None:
        from pydicom.data import get_testdata_file

        path = get_testdata_file("CT_small.dcm")
    samples = []
    with edgemed.Pipeline.from_bundle(edgemed.demo_bundle(), "onnxruntime") as pipe:
        for _ in range(warmup):
            pipe(path)
        rss0, fds0 = rss_bytes(), open_fds()
        t0 = time.perf_counter()
        for i in range(iterations):
            result = pipe(path)
            samples.append(result.timings["total"])
            if i % 1000 == 999:
                print(f"  {i + 1}/{iterations}  rss {rss_bytes() / 2**20:.1f} MiB", file=sys.stderr)
        elapsed = time.perf_counter() - t0
        rss1, fds1 = rss_bytes(), open_fds()
    lat = np.array(samples)
    return {
        "iterations": iterations,
        "warmup": warmup,
        "seconds": round(elapsed, 1),
        "rss_after_warmup_mib": round(rss0 / 2**20, 2),
        "rss_end_mib": round(rss1 / 2**20, 2),
        "rss_growth_percent": round(100.0 * (rss1 - rss0) / rss0, 3),
        "fds_after_warmup": fds0,
        "fds_end": fds1,
        "total_ms_p50": round(float(np.percentile(lat, 50)), 3),
        "total_ms_p99": round(float(np.percentile(lat, 99)), 3),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--iterations", type=int, default=10_000)
    p.add_argument("--warmup", type=int, default=200)
    p.add_argument("--input", default=None, help="image file (default: pydicom's CT_small.dcm)")
    a = p.parse_args()
    print(json.dumps(soak(a.iterations, a.warmup, a.input), indent=2))


if __name__ == "__main__":
    main()

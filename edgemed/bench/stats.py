"""Latency statistics as trtexec reports them, and a perf_analyzer-style stability rule.

Percentiles use the nearest-rank definition (the smallest sample with at least p% of
the samples at or below it), as trtexec does: every reported figure is a latency that
was actually measured, never an interpolation between two.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from edgemed.errors import UsageError

__all__ = ["PERCENTILES", "Stability", "nearest_rank", "summarize", "windows_agree"]

#: Percentiles every stage reports.
PERCENTILES = (50, 90, 95, 99)


def nearest_rank(sorted_ms: np.ndarray, p: float) -> float:
    """The nearest-rank ``p``-th percentile of already sorted samples."""
    if not 0 < p <= 100:
        raise UsageError(f"percentile must be in (0, 100], got {p}")
    rank = max(1, math.ceil(p / 100.0 * len(sorted_ms)))
    return float(sorted_ms[rank - 1])


def summarize(samples_ms: Sequence[float], items_per_sample: int = 1) -> dict[str, float]:
    """min, mean, median (p50), p90, p95, p99, max in ms, and throughput.

    Args:
        samples_ms: one latency per measured call, in milliseconds.
        items_per_sample: images per call (the batch size), for ``throughput_ips``.

    Returns:
        ``{"count", "min_ms", "mean_ms", "p50_ms", "p90_ms", "p95_ms", "p99_ms",
        "max_ms", "throughput_ips"}``; throughput is items divided by the summed time.
    """
    x = np.sort(np.asarray(samples_ms, dtype=np.float64))
    if x.size == 0:
        raise UsageError("no samples to summarize")
    if not np.isfinite(x).all() or x[0] < 0:
        raise UsageError("latency samples must be finite and non-negative")
    out = {"count": float(x.size), "min_ms": float(x[0]), "mean_ms": float(x.mean())}
    out.update({f"p{p}_ms": nearest_rank(x, p) for p in PERCENTILES})
    out["max_ms"] = float(x[-1])
    total_s = float(x.sum()) / 1e3
    out["throughput_ips"] = items_per_sample * x.size / total_s if total_s > 0 else math.inf
    return out


@dataclass(frozen=True)
class Stability:
    """Whether the last windows agreed, and by how much they differed."""

    stable: bool
    spread_percent: float
    window_means_ms: tuple[float, ...]


def windows_agree(
    samples_ms: Sequence[float], window: int, count: int = 3, tolerance_percent: float = 10.0
) -> Stability:
    """perf_analyzer's rule: the last ``count`` windows of ``window`` samples agree when
    (max mean - min mean) / min mean <= ``tolerance_percent``.

    Fewer than ``count * window`` samples are never stable.
    """
    if window < 1 or count < 2:
        raise UsageError("window must be >= 1 and count >= 2")
    x = np.asarray(samples_ms, dtype=np.float64)
    if x.size < window * count:
        return Stability(False, math.inf, ())
    tail = x[x.size - window * count :].reshape(count, window)
    means = tail.mean(axis=1)
    lo, hi = float(means.min()), float(means.max())
    spread = math.inf if lo <= 0 else 100.0 * (hi - lo) / lo
    return Stability(spread <= tolerance_percent, spread, tuple(float(m) for m in means))

"""Latency statistics as trtexec reports them, and a perf_analyzer-style stability rule.

Percentiles use the nearest-rank definition (the smallest sample with at least p% of
the samples at or below it), as trtexec does: every reported figure is a latency that
was actually measured, never an interpolation between two.

A percentile is reported only from enough samples to be one: the ``p``-th needs at
least ``100 / (100 - p)`` samples (p50 from 2, p90 from 10, p95 from 20, p99 from 100).
With fewer, nearest rank would return the maximum (one sample: that sample) under a
percentile's name; the figure is ``None`` instead and :func:`too_few` says why.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from edgemed.errors import UsageError

__all__ = [
    "PERCENTILES",
    "Stability",
    "distribution",
    "min_samples",
    "nearest_rank",
    "summarize",
    "too_few",
    "windows_agree",
]

#: Percentiles every stage reports.
PERCENTILES = (50, 90, 95, 99)


def min_samples(p: float) -> int:
    """Fewest samples whose nearest-rank ``p``-th percentile is not their maximum."""
    return math.ceil(100.0 / (100.0 - p) - 1e-9)


def too_few_text() -> str:
    """Why a percentile is missing, for reports and the terminal (one wording)."""
    needs = ", ".join(f"p{p} needs {min_samples(p)}" for p in PERCENTILES)
    return f"too few calls for it ({needs}; with fewer it would only be the maximum)"


def too_few(count: int) -> str | None:
    """Why some percentiles of ``count`` samples are ``None``; ``None`` if none are."""
    missing = [p for p in PERCENTILES if count < min_samples(p)]
    if not missing:
        return None
    needs = ", ".join(f"p{p} {min_samples(p)}" for p in missing)
    return (
        f"{count} call{'s' if count != 1 else ''} measured: too few for "
        f"{', '.join(f'p{p}' for p in missing)} (needs at least: {needs}; with fewer it "
        "would only be the maximum)"
    )


def distribution(values: Sequence[float] | np.ndarray, suffix: str = "") -> dict[str, float | None]:
    """count, min, mean, the :data:`PERCENTILES` and max of ``values`` (keys ``min`` +
    ``suffix`` and so on); a percentile from too few values is ``None``."""
    x = np.sort(np.asarray(values, dtype=np.float64))
    if x.size == 0:
        raise UsageError("no samples to summarize")
    if not np.isfinite(x).all():
        raise UsageError("samples must be finite")
    out: dict[str, float | None] = {
        "count": float(x.size),
        f"min{suffix}": float(x[0]),
        f"mean{suffix}": float(x.mean()),
    }
    for p in PERCENTILES:
        out[f"p{p}{suffix}"] = nearest_rank(x, p) if x.size >= min_samples(p) else None
    out[f"max{suffix}"] = float(x[-1])
    return out


def nearest_rank(sorted_ms: np.ndarray, p: float) -> float:
    """The nearest-rank ``p``-th percentile of already sorted samples."""
    if not 0 < p <= 100:
        raise UsageError(f"percentile must be in (0, 100], got {p}")
    rank = max(1, math.ceil(p / 100.0 * len(sorted_ms)))
    return float(sorted_ms[rank - 1])


def summarize(samples_ms: Sequence[float], items_per_sample: int = 1) -> dict[str, float | None]:
    """min, mean, median (p50), p90, p95, p99, max in ms, and throughput.

    Args:
        samples_ms: one latency per measured call, in milliseconds.
        items_per_sample: images per call (the batch size), for ``throughput_ips``.

    Returns:
        ``{"count", "min_ms", "mean_ms", "p50_ms", "p90_ms", "p95_ms", "p99_ms",
        "max_ms", "throughput_ips"}``; throughput is items divided by the summed time.
        A percentile from too few samples (see the module doc) is ``None``.
    """
    x = np.asarray(samples_ms, dtype=np.float64)
    if x.size and x.min() < 0:
        raise UsageError("latency samples must be non-negative")
    out = distribution(x, "_ms")  # no samples, or not finite: UsageError
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

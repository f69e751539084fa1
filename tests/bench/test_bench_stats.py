from __future__ import annotations

import math

import numpy as np
import pytest

from edgemed.bench import summarize, windows_agree
from edgemed.bench.stats import distribution, min_samples, nearest_rank, too_few
from edgemed.errors import UsageError


def test_summary_of_1_to_100_ms():
    s = summarize(list(range(100, 0, -1)), items_per_sample=2)  # order must not matter
    assert (s["min_ms"], s["max_ms"], s["mean_ms"]) == (1.0, 100.0, 50.5)
    assert (s["p50_ms"], s["p90_ms"], s["p95_ms"], s["p99_ms"]) == (50.0, 90.0, 95.0, 99.0)
    assert s["throughput_ips"] == pytest.approx(2 * 100 / 5.050)
    assert s["count"] == 100


def test_nearest_rank_never_interpolates():
    x = np.array([10.0, 20.0, 30.0, 40.0])
    assert nearest_rank(x, 50) == 20.0  # numpy's linear percentile would say 25
    assert nearest_rank(x, 51) == 30.0
    assert nearest_rank(x, 100) == 40.0


def test_a_percentile_needs_enough_samples_to_be_one():
    # One call is not a distribution: its p50..p99 would all be that call.
    one = summarize([7.0])
    assert (one["count"], one["min_ms"], one["mean_ms"], one["max_ms"]) == (1, 7.0, 7.0, 7.0)
    assert [one[f"p{p}_ms"] for p in (50, 90, 95, 99)] == [None] * 4
    assert too_few(1).startswith("1 call measured: too few for p50, p90, p95, p99")
    assert [min_samples(p) for p in (50, 90, 95, 99)] == [2, 10, 20, 100]
    # Below its minimum a percentile would be the maximum; from it on, a lower sample.
    nine, ten = summarize(range(1, 10)), summarize(range(1, 11))
    assert (nine["p50_ms"], nine["p90_ms"]) == (5.0, None)
    assert (ten["p90_ms"], ten["max_ms"], ten["p95_ms"]) == (9.0, 10.0, None)
    assert summarize(range(1, 100))["p99_ms"] is None
    assert summarize(range(1, 101))["p99_ms"] == 99.0
    assert "too few for p99 (needs at least: p99 100" in too_few(30)
    assert too_few(100) is None
    shares = distribution([0.1, 0.3, 0.2])  # any quantity: the overhead shares
    assert (shares["min"], shares["p50"], shares["max"], shares["p90"]) == (0.1, 0.2, 0.3, None)


@pytest.mark.parametrize("bad", [[], [1.0, -1.0], [1.0, math.nan]])
def test_bad_samples_are_usage_errors(bad):
    with pytest.raises(UsageError):
        summarize(bad)


def test_windows_agree_rule():
    steady = [10.0] * 30 + [10.5] * 10
    st = windows_agree(steady, window=10, count=3, tolerance_percent=10)
    assert st.stable and st.spread_percent == pytest.approx(5.0)
    assert st.window_means_ms == (10.0, 10.0, 10.5)
    drifting = [10.0] * 10 + [12.0] * 10 + [14.0] * 10
    st = windows_agree(drifting, window=10, count=3, tolerance_percent=10)
    assert not st.stable and st.spread_percent == pytest.approx(40.0)
    assert not windows_agree([1.0] * 29, window=10).stable  # too few samples

from __future__ import annotations

import math

import numpy as np
import pytest

from edgemed.bench import summarize, windows_agree
from edgemed.bench.stats import nearest_rank
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
    assert summarize([7.0])["p99_ms"] == 7.0


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

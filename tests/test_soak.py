"""10,000 inferences in one process (marker ``slow``: ``pytest -m slow``; 5-11 min here)."""

from __future__ import annotations

import pytest

from benchmarks import soak

pytestmark = pytest.mark.slow


def test_soak_memory_and_fds_stay_flat():
    figures = soak.soak(iterations=10_000, warmup=200)
    assert figures["rss_growth_percent"] < 1.0, figures
    assert figures["fds_end"] <= figures["fds_after_warmup"], figures

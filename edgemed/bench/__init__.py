"""Benchmark building blocks (the ``edgemed bench`` command builds on these)."""

from __future__ import annotations

from edgemed.bench.stats import Stability, summarize, windows_agree

__all__ = ["Stability", "summarize", "windows_agree"]

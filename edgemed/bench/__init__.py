"""Benchmarks: ``edgemed bench`` and its library.

Modules (the ones beyond :mod:`~edgemed.bench.stats` load the pipeline and, when used,
the ``bench`` extra; import them directly):

* :mod:`~edgemed.bench.stats`: nearest-rank percentiles, summaries, the window rule.
* :mod:`~edgemed.bench.runner`: :func:`~edgemed.bench.runner.run_bench`, the measuring
  loop and per-precision accuracy.
* :mod:`~edgemed.bench.inputs`: real files, DICOM series, synthetic CT-like slices.
* :mod:`~edgemed.bench.monitor`: device info, peak RSS, GPU/temperature/power sensors.
* :mod:`~edgemed.bench.report` and :mod:`~edgemed.bench.plots`: bench.json/csv/md, PNGs.
"""

from __future__ import annotations

from edgemed.bench.stats import Stability, summarize, windows_agree

__all__ = ["Stability", "summarize", "windows_agree"]

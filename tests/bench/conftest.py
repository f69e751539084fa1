"""Shared bench fixtures: tiny real bundles and one small measured document."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import pytest

from edgemed.bench.inputs import synthetic
from edgemed.bench.runner import BenchOptions, run_bench

# A run small enough for tests (well under a second): a few calls, two batch sizes.
TINY = BenchOptions(iterations=3, warmup=1, windows=3, time_cap_s=0.5, batches=(1, 2), threads=1)


def _root_conftest() -> Any:
    # tests/ is no package and several folders have a conftest.py, so `from conftest
    # import` is ambiguous: load tests/conftest.py by path (as tests/test_tamper.py does).
    spec = importlib.util.spec_from_file_location(
        "_edgemed_bench_root_conftest", Path(__file__).parent.parent / "conftest.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


make_bundle = _root_conftest().make_bundle


@pytest.fixture
def tiny_opts() -> BenchOptions:
    return TINY


@pytest.fixture(scope="module")
def seg_bundle(tmp_path_factory) -> Path:
    """A real segmentation bundle around a 1x1-conv ONNX model (16 x 16 input)."""
    return make_bundle(tmp_path_factory.mktemp("bundle") / "seg", "segmentation", classes=3)


@pytest.fixture(scope="module")
def tiny_doc(seg_bundle) -> dict:
    """A bench.json document from a real run of the tiny segmentation bundle."""
    return run_bench(seg_bundle, [synthetic("40x48")], TINY, command="edgemed bench (test)")

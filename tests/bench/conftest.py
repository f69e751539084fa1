"""Shared bench fixtures: tiny real bundles and one small measured document."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from edgemed.bench.inputs import synthetic
from edgemed.bench.runner import BenchOptions, run_bench
from edgemed.bundle import Bundle, write_manifest
from tests.bundles import make_bundle

# A run small enough for tests (well under a second): a few calls, two batch sizes.
TINY = BenchOptions(iterations=3, warmup=1, windows=3, time_cap_s=0.5, batches=(1, 2), threads=1)


@pytest.fixture
def tiny_opts() -> BenchOptions:
    return TINY


@pytest.fixture(scope="module")
def seg_bundle(tmp_path_factory) -> Path:
    """A real segmentation bundle around a 1x1-conv ONNX model (16 x 16 input)."""
    return make_bundle(tmp_path_factory.mktemp("bundle") / "seg", "segmentation", classes=3)


@pytest.fixture(scope="module")
def two_precisions(tmp_path_factory) -> Path:
    """A real bundle with fp32 and an "fp16" model (other weights: they disagree)."""
    root = make_bundle(tmp_path_factory.mktemp("bundle") / "two", "segmentation", classes=3)
    other = make_bundle(tmp_path_factory.mktemp("bundle") / "other", "segmentation", seed=1)
    shutil.copyfile(other / "model.onnx", root / "model.fp16.onnx")
    manifest = Bundle.load(root).to_dict()
    manifest["artifacts"].append({"path": "model.fp16.onnx", "kind": "onnx", "precision": "fp16"})
    write_manifest(root, manifest)
    return root


@pytest.fixture(scope="module")
def tiny_doc(seg_bundle) -> dict:
    """A bench.json document from a real run of the tiny segmentation bundle."""
    return run_bench(seg_bundle, [synthetic("40x48")], TINY, command="edgemed bench (test)")

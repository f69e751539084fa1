"""Fixtures for the engine tests: the demo bundle copied where engines may be written."""

from __future__ import annotations

import shutil

import onnxruntime as ort
import pytest

from edgemed.bundle import Bundle
from edgemed.pipeline import demo_bundle


@pytest.fixture
def demo_copy(tmp_path):
    """A writable copy of the demo bundle (engines go to ``<copy>/engines``)."""
    dest = tmp_path / "demo"
    shutil.copytree(demo_bundle(), dest)
    return dest


@pytest.fixture
def demo(demo_copy) -> Bundle:
    return Bundle.load(demo_copy)


@pytest.fixture(scope="session")
def reference():
    """The demo's FP32 ONNX in ONNX Runtime, straight from the packaged file."""
    session = ort.InferenceSession(
        str(demo_bundle() / "model.onnx"), providers=["CPUExecutionProvider"]
    )
    return lambda x: session.run(None, {"image": x})[0]


@pytest.fixture
def standin_gpu(monkeypatch):
    """A stand-in GPU, pycuda and TensorRT (see ``tests/engine/standin_trt.py``) in
    ``sys.modules``.

    Returns the :class:`~tests.engine.standin_trt.Sim` (change its GPU before use;
    ``sim.trt`` is the stand-in ``tensorrt`` module, whose ``__version__`` may be changed
    too)."""
    return _standin(monkeypatch)


def _standin(monkeypatch, host_kernels=None):
    from tests.engine.standin_trt import Sim, install

    sim = Sim()
    sim.trt = install(monkeypatch, sim, host_kernels)
    monkeypatch.delenv("EDGEMED_ENGINE_CACHE", raising=False)
    return sim


@pytest.fixture
def standin_gpu_with_kernels(monkeypatch, host_kernels):
    """:func:`standin_gpu` whose pycuda also loads and runs edgemed's CUDA kernels (their
    host build, tests/conftest.py's ``host_kernels``), so the whole GPU pipeline runs:
    kernels -> engine -> kernels."""
    return _standin(monkeypatch, host_kernels)

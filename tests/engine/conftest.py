"""Fixtures for the engine tests: the demo bundle copied where engines may be written."""

from __future__ import annotations

import shutil

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


@pytest.fixture
def standin_gpu(monkeypatch):
    """A stand-in GPU, pycuda and TensorRT (see ``standin_trt.py``) in ``sys.modules``.

    Returns the :class:`standin_trt.Sim` (change its GPU before use; ``sim.trt`` is the
    stand-in ``tensorrt`` module, whose ``__version__`` may be changed too)."""
    from standin_trt import Sim, install

    sim = Sim()
    sim.trt = install(monkeypatch, sim)
    monkeypatch.delenv("EDGEMED_ENGINE_CACHE", raising=False)
    return sim

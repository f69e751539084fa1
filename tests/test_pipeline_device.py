"""Where the pipeline preprocesses: ``preprocess="auto" | "cpu" | "cuda"``.

Without pycuda (this machine), ``cuda`` must be refused with the extra to install, and
``auto`` must stay on the CPU beside ONNX Runtime. A spec the kernels cannot honour is
refused before any CUDA code is touched. The GPU side is tests/test_pipeline_gpu.py.
"""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys

import numpy as np
import pytest

from edgemed import Bundle, Pipeline
from edgemed._lazy import available
from edgemed.backends import create_backend
from edgemed.errors import MissingDependencyError, UsageError
from edgemed.settings import load_settings


def _slice(seed=0, shape=(20, 30)):
    return np.random.default_rng(seed).normal(0, 400, shape).astype(np.float32)


@pytest.mark.parametrize("mode", ["auto", "cpu"])
def test_cpu_modes_beside_onnxruntime_preprocess_on_the_cpu(tiny_bundle, mode):
    with Pipeline.from_bundle(tiny_bundle("segmentation"), "onnxruntime", preprocess=mode) as p:
        res = p(_slice())
    assert res.provenance["preprocess_device"] == "cpu"
    assert res.mask.shape == (20, 30)


def test_unknown_mode_is_a_usage_error(tiny_bundle):
    with pytest.raises(UsageError):
        Pipeline.from_bundle(tiny_bundle("segmentation"), "onnxruntime", preprocess="gpu")


@pytest.mark.skipif(available("pycuda.driver"), reason="pycuda is installed here")
def test_cuda_without_pycuda_names_the_extra_and_closes_the_backend(tiny_bundle, monkeypatch):
    from edgemed.backends.ort import OnnxRuntimeBackend

    closed = []
    original = OnnxRuntimeBackend.close
    monkeypatch.setattr(
        OnnxRuntimeBackend, "close", lambda self: closed.append(1) or original(self)
    )
    with pytest.raises(MissingDependencyError) as err:
        Pipeline.from_bundle(tiny_bundle("segmentation"), "onnxruntime", preprocess="cuda")
    assert err.value.extra == "gpu" and err.value.code == "DEPENDENCY_MISSING"
    assert closed == [1]  # the backend made for the pipeline is not leaked


def test_cuda_with_a_spec_the_kernels_cannot_honour_is_refused_first(tiny_bundle):
    # An edge channel has no kernel: refused as unsupported (never silently on the CPU),
    # before pycuda is needed at all.
    bundle = Bundle.load(tiny_bundle("segmentation", channels=2))
    bundle.preprocess = dataclasses.replace(bundle.preprocess, edges=True)
    backend = create_backend("onnxruntime", bundle)
    with pytest.raises(UsageError) as err:
        Pipeline(bundle, backend, preprocess="cuda")
    assert err.value.code == "USAGE_GPU_UNSUPPORTED"
    # auto beside ONNX Runtime never looks at the kernels
    with Pipeline(bundle, backend, preprocess="auto") as pipe:
        assert pipe(_slice()).provenance["preprocess_device"] == "cpu"


def test_engine_cache_setting():
    assert load_settings({}).engine_cache is None
    s = load_settings({"EDGEMED_ENGINE_CACHE": "/var/cache/edgemed"})
    assert str(s.engine_cache) == "/var/cache/edgemed"


@pytest.mark.skipif(available("pycuda.driver"), reason="pycuda is installed here")
def test_cli_preprocess_cuda_exits_5_with_one_line(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "edgemed.cli", "demo", "--out", str(tmp_path / "o")]
        + ["--backend", "onnxruntime", "--preprocess", "cuda"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 5, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and 'pip install "edgemed[gpu]"' in lines[0]
    assert not (tmp_path / "o").exists()


def test_result_json_records_the_preprocess_device(tiny_bundle):
    with Pipeline.from_bundle(tiny_bundle("segmentation"), "onnxruntime") as p:
        d = json.loads(json.dumps(p(_slice()).to_dict()))
    assert d["provenance"]["preprocess_device"] == "cpu"

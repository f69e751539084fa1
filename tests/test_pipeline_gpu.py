"""The pipeline with CUDA preprocessing on a real GPU (skipped without pycuda or a GPU).

Beside ONNX Runtime (``preprocess="cuda"``) the kernels' input must give the same masks
as the CPU path; beside TensorRT (``auto``) the batch is written into the engine's
input and the masks come from the postprocessing kernel. ``benchmarks/gpu_check.sh``
runs these on a GPU machine.
"""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from edgemed import Pipeline, demo_bundle
from edgemed.errors import BackendError

pytestmark = pytest.mark.gpu


@pytest.fixture(scope="module")
def gpu():
    pytest.importorskip("pycuda.driver", reason="pycuda is not installed (edgemed[gpu])")
    from edgemed.cuda.device import query_device

    try:
        return query_device(0)
    except BackendError as exc:
        pytest.skip(f"no usable GPU: {exc.message}")


def _agreement(a: np.ndarray, b: np.ndarray) -> float:
    assert a.shape == b.shape
    return float((a == b).mean())


def test_cuda_preprocessing_beside_onnxruntime_matches_the_cpu_path(gpu, ct_small_path):
    with Pipeline.from_bundle(demo_bundle(), "onnxruntime", preprocess="cpu") as cpu:
        ref = cpu(ct_small_path)
    with Pipeline.from_bundle(demo_bundle(), "onnxruntime", preprocess="cuda") as pipe:
        res = pipe(ct_small_path)
        again = pipe(ct_small_path)  # buffers reused
    assert res.provenance["preprocess_device"] == "cuda"
    # The kernels match the CPU input to float32 rounding: masks may differ only at ties.
    assert _agreement(res.mask, ref.mask) >= 0.9999
    np.testing.assert_array_equal(res.mask, again.mask)


def test_tensorrt_pipeline_writes_into_the_engine_and_segments_on_the_gpu(
    gpu, ct_small_path, tmp_path
):
    pytest.importorskip("tensorrt", reason="tensorrt is not installed")
    from edgemed.backends.tensorrt.builder import BuildOptions, build_engine
    from edgemed.bundle import Bundle

    root = tmp_path / "demo"
    shutil.copytree(demo_bundle(), root)
    build_engine(Bundle.load(root), BuildOptions(precision="fp32"), progress=lambda _: None)
    with Pipeline.from_bundle(root, "onnxruntime") as cpu:
        ref = cpu(ct_small_path)
    with Pipeline.from_bundle(root, "tensorrt") as pipe:
        res = pipe(ct_small_path)
    assert res.provenance["backend"] == "tensorrt"
    assert res.provenance["preprocess_device"] == "cuda"
    assert res.mask.shape == ref.mask.shape == (128, 128)
    assert _agreement(res.mask, ref.mask) >= 0.999

"""The pycuda launchers on a real GPU against the CPU reference (same cases and
tolerances as tests/kernels). Skipped, with the reason, without pycuda or a GPU;
benchmarks/gpu_check.sh runs them on a GPU machine."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from edgemed.errors import BackendError, UsageError
from edgemed.postprocess import segment
from edgemed.preprocess import PreprocessSpec, Window, preprocess
from tests.kernels.kernel_cases import (
    check_masks,
    check_preprocess,
    demo_logits,
    preprocess_cases,
    segment_specs,
)

pytestmark = pytest.mark.gpu

CASES = preprocess_cases()
LABELS = ["background", "lung", "fat", "soft_tissue", "bone"]


@pytest.fixture(scope="module")
def device():
    pytest.importorskip("pycuda.driver", reason="pycuda is not installed (edgemed[gpu])")
    from edgemed.cuda.device import CudaDevice

    try:
        dev = CudaDevice.open(0)
    except BackendError as exc:
        pytest.skip(f"no usable CUDA GPU: {exc}")
    yield dev
    dev.close()


def _preprocess_on_gpu(device, case, cubin_dir=None):
    from edgemed.cuda.device import DeviceBuffer
    from edgemed.cuda.launchers import CudaPreprocessor

    spec = case.spec
    n = len(case.raw)
    out = np.empty((n, len(spec.ranges), spec.height, spec.width), dtype=spec.dtype)
    with device.active():
        pre = CudaPreprocessor(spec, n, max(r.size for r in case.raw), cubin_dir=cubin_dir)
        dst = DeviceBuffer(out.nbytes)
        placements = pre.run(case.raw, case.slopes, case.intercepts, dst.ptr, device.stream)
        dst.download(out, device.stream)
        device.stream.synchronize()
        dst.free()
    return out, placements


@pytest.mark.parametrize("dtype", ["float32", "float16"])
@pytest.mark.parametrize("name", sorted(CASES))
def test_gpu_preprocess_matches_cpu(device, name, dtype):
    case = CASES[name].with_dtype(dtype)
    got, placements = _preprocess_on_gpu(device, case)
    ref, ref_placements = preprocess(case.physical(), case.spec)
    assert placements == ref_placements
    err = check_preprocess(got, ref, dtype)
    print(f"GPU {name} {dtype}: {err:.3g}")


def test_gpu_preprocess_from_stored_cubins(device, tmp_path):
    if shutil.which("nvcc") is None:
        pytest.skip("nvcc is not on PATH")
    from edgemed.cuda.build import build_cubin

    major, minor = device.compute_capability
    build_cubin(tmp_path, f"sm_{major}{minor}")
    case = CASES["batch3-zscore-letterbox"]
    got, _ = _preprocess_on_gpu(device, case, cubin_dir=tmp_path)
    ref, _ = preprocess(case.physical(), case.spec)
    check_preprocess(got, ref, "float32")


def test_gpu_preprocessor_is_reusable_across_batches(device):
    """The pinned staging buffer is reused: the second, smaller batch must not see the
    first one's pixels or parameters."""
    from edgemed.cuda.device import DeviceBuffer
    from edgemed.cuda.launchers import CudaPreprocessor

    first, second = CASES["batch3-zscore-letterbox"], CASES["batch3-zscore-letterbox"]
    spec = first.spec
    with device.active():
        pre = CudaPreprocessor(spec, 3, max(r.size for r in first.raw))
        dst = DeviceBuffer(3 * len(spec.ranges) * spec.height * spec.width * 4)
        pre.run(first.raw, first.slopes, first.intercepts, dst.ptr, device.stream)
        pre.run(second.raw[1:], second.slopes[1:], second.intercepts[1:], dst.ptr, device.stream)
        out = np.empty((2, len(spec.ranges), spec.height, spec.width), np.float32)
        dst.download(out, device.stream)
        device.stream.synchronize()
        dst.free()
    ref, _ = preprocess(second.physical()[1:], spec)
    check_preprocess(out, ref, "float32")


def test_gpu_preprocessor_refuses_what_the_kernel_lacks(device):
    from edgemed.cuda.launchers import CudaPreprocessor

    spec = PreprocessSpec(size=(64, 64), windows=(Window(40.0, 400.0),), edges=True)
    with device.active(), pytest.raises(UsageError) as exc:
        CudaPreprocessor(spec, 1, 64 * 64)
    assert exc.value.code == "USAGE_GPU_UNSUPPORTED"


@pytest.mark.parametrize("logits_dtype", ["float32", "float16"])
@pytest.mark.parametrize("name", sorted(segment_specs()))
def test_gpu_segment_matches_cpu(device, name, logits_dtype):
    from edgemed.cuda.device import DeviceBuffer
    from edgemed.cuda.launchers import CudaSegmentPostprocessor

    logits, placements = demo_logits()
    logits = np.ascontiguousarray(logits.astype(logits_dtype))
    post = segment_specs()[name]
    with device.active():
        src = DeviceBuffer(logits.nbytes)
        src.upload(logits, device.stream)
        seg = CudaSegmentPostprocessor(
            post, LABELS, len(placements), max(p.source[0] * p.source[1] for p in placements)
        )
        got = seg.run(src.ptr, logits.shape, placements, device.stream, logits.dtype)
        src.free()
    ref = segment(logits, placements, post, LABELS)
    agreement, gap = check_masks(got, ref, logits, placements, post)
    print(f"GPU {name} {logits_dtype}: agreement {agreement:.6f}, gap {gap:.3g}")

"""The whole GPU pipeline with the real pycuda and kernels and the stand-in TensorRT.

On a GPU machine (``benchmarks/gpu_check.sh`` runs these), everything but TensorRT
itself runs for real: pycuda's context, streams, pinned and device memory, the CUDA
kernels, the copies, the frees, and CUDA graphs through cuda-bindings. The stand-in
engine copies its input out of real device memory, runs the network in ONNX Runtime and
copies its output back (:class:`tests.engine.standin_trt.RealGpu`).

Here (no GPU), the same hybrid runs on the stand-in pycuda, so the hybrid itself is
tested wherever the suite runs.
"""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest

from edgemed.backends.tensorrt.builder import BuildOptions, build_engine
from edgemed.bundle import Bundle
from edgemed.pipeline import Pipeline
from tests.engine.standin_trt import install_tensorrt_only


def _real_gpu() -> str:
    """Why the real pycuda cannot drive a GPU here ("" when it can)."""
    if importlib.util.find_spec("pycuda") is None:
        return "pycuda is not installed"
    try:
        import pycuda.driver as drv

        drv.init()
        if drv.Device.count() < 1:
            return "no CUDA GPU"
    except Exception as exc:  # noqa: BLE001 (any failure: no usable GPU)
        return f"no usable CUDA GPU: {exc}"
    return ""


def _run_hybrid(demo_copy, image, reloads: int):
    """Build (stand-in TensorRT), then the pipeline with CUDA pre- and postprocessing
    ``reloads`` times; returns the masks and the ONNX Runtime reference mask."""
    build_engine(Bundle.load(demo_copy), BuildOptions())
    with Pipeline.from_bundle(demo_copy, "onnxruntime") as ref_pipe:
        want = ref_pipe(image).mask
    masks = []
    for _ in range(reloads):
        with Pipeline.from_bundle(demo_copy, "tensorrt", preprocess="cuda") as pipe:
            assert pipe.preprocess_device == "cuda" and pipe.backend.name == "tensorrt"
            masks.append(pipe(image).mask)
    return masks, want


def test_hybrid_on_the_standin_pycuda(standin_gpu_with_kernels, demo_copy, monkeypatch):
    import pycuda.driver as drv

    sim = standin_gpu_with_kernels
    gpu = install_tensorrt_only(monkeypatch, drv)
    image = np.random.default_rng(5).normal(0, 400, (60, 50)).astype(np.float32)
    masks, want = _run_hybrid(demo_copy, image, reloads=3)
    assert gpu.n("execute") == 3 and sim.n("kernel") >= 6  # engine and kernels ran
    for mask in masks:
        assert (mask == want).mean() >= 0.9999
    assert sim.live()["device_bytes"] == 0 and sim.live()["pinned_bytes"] == 0


@pytest.mark.gpu
def test_hybrid_on_a_real_gpu_matches_onnxruntime_and_leaks_nothing(
    demo_copy, ct_small_path, monkeypatch
):
    why = _real_gpu()
    if why:
        pytest.skip(why)
    import pycuda.driver as drv

    from edgemed.cuda.device import CudaDevice

    install_tensorrt_only(monkeypatch, drv)
    probe = CudaDevice.open(0)
    try:
        image = np.asarray(
            __import__("edgemed").read_image(ct_small_path).array, np.float32
        ).squeeze()
        _run_hybrid(demo_copy, image, reloads=2)  # warm: kernels compiled, caches filled
        with probe.active():
            free_before = drv.mem_get_info()[0]
        masks, want = _run_hybrid(demo_copy, image, reloads=20)
        with probe.active():
            free_after = drv.mem_get_info()[0]
    finally:
        probe.close()
    for mask in masks:
        assert (mask == want).mean() >= 0.9999
    # One reload holds ~20 MB of buffers: 20 leaking reloads would lose ~400 MB.
    assert free_before - free_after < 8 << 20, (free_before, free_after)


@pytest.mark.gpu
def test_cuda_graph_replays_real_work_on_pycudas_stream():
    """CudaGraph on a real GPU: capture a memset and a copy on pycuda's stream through
    cuda-bindings, replay it, and see the replay's effect."""
    why = _real_gpu() or (
        "" if importlib.util.find_spec("cuda.bindings") else "cuda-bindings is not installed"
    )
    if why:
        pytest.skip(why)
    import pycuda.driver as drv

    from edgemed.cuda.device import CudaDevice, CudaGraph, DeviceBuffer, PinnedBuffer

    gpu = CudaDevice.open(0)
    try:
        with gpu.active():
            dev, host = DeviceBuffer(4096), PinnedBuffer((4096,), np.uint8)
            value = [7]

            def enqueue() -> None:
                drv.memset_d8_async(dev.ptr, value[0], 4096, gpu.stream)
                dev.download(host.array, gpu.stream)

            graph = CudaGraph(gpu.stream_handle, enqueue)
            host.array[:] = 0
            gpu.stream.synchronize()
            assert not host.array.any()  # captured, not run
            graph.launch()
            gpu.stream.synchronize()
            assert (host.array == 7).all()
            graph.destroy()
    finally:
        gpu.close()

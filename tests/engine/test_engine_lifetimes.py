"""GPU resource lifetimes on the stand-ins: nothing leaks across pipeline reloads, and
CUDA graphs go through the driver API (cuda-bindings) with typed errors.

pycuda frees memory, streams and events in the context that made them and silently
skips that once the context is detached; the stand-in does the same (so a late free
leaks here as it does on a device, where TensorRT keeps the primary context alive).
"""

from __future__ import annotations

import sys
import threading

import numpy as np
import pytest

from edgemed.backends.tensorrt.backend import TensorRTBackend
from edgemed.backends.tensorrt.builder import BuildOptions, build_engine
from edgemed.bundle import Bundle
from edgemed.errors import BackendError, MissingDependencyError
from edgemed.pipeline import Pipeline

NOTHING = {"device_bytes": 0, "pinned_bytes": 0, "streams": 0, "events": 0, "graphs": 0}


def _build(root) -> None:
    build_engine(Bundle.load(root), BuildOptions())


# -- the stand-in behaves as pycuda where it decides leaks -----------------------------


def test_a_free_after_detach_is_skipped_silently_and_leaks(standin_gpu):
    import pycuda.driver as drv

    sim = standin_gpu
    ctx = drv.Device(0).retain_primary_context()
    ctx.push()
    mem, host = drv.mem_alloc(1024), drv.pagelocked_empty((64,), np.float32)
    stream, event = drv.Stream(), drv.Event()
    drv.Context.pop()
    assert sim.live() == {**NOTHING, "device_bytes": 1024, "pinned_bytes": 256, "streams": 1,
                          "events": 1}  # fmt: skip
    ctx.detach()
    mem.free()  # no error, as pycuda: "cannot activate dead context" is swallowed
    host.base.free()
    del stream, event
    assert sim.live()["device_bytes"] == 1024 and sim.live()["pinned_bytes"] == 256
    assert (sim.live()["streams"], sim.live()["events"]) == (1, 1)
    assert sim.n("free_skipped") == 2 and sim.n("mem_free") == 0
    with pytest.raises(drv.LogicError):
        mem.free()  # a second free is an error, as in pycuda


def test_a_free_from_another_thread_outside_the_context_warns_and_leaks(standin_gpu):
    import pycuda.driver as drv

    sim = standin_gpu
    ctx = drv.Device(0).retain_primary_context()
    ctx.push()
    mem = drv.mem_alloc(512)
    drv.Context.pop()
    caught: list = []

    def free() -> None:
        with pytest.warns(UserWarning, match="out-of-thread context") as w:
            mem.free()
        caught.extend(w)

    t = threading.Thread(target=free)
    t.start()
    t.join()
    assert caught and sim.live()["device_bytes"] == 512


# -- 100 pipeline reloads -----------------------------------------------------------------


def test_reloading_a_gpu_pipeline_100_times_leaks_nothing(
    standin_gpu_with_kernels, demo_copy, ct_small_path
):
    """TensorRT, CUDA preprocessing into the engine, the mask kernel, a CUDA graph:
    everything is freed inside the context before it is detached, every time."""
    sim = standin_gpu_with_kernels
    _build(demo_copy)
    image = np.random.default_rng(0).normal(0, 300, (48, 40)).astype(np.float32)
    masks = []
    for i in range(100):
        with Pipeline.from_bundle(
            demo_copy, "tensorrt", preprocess="cuda", cuda_graphs=True
        ) as pipe:
            assert pipe.preprocess_device == "cuda"
            masks.append(pipe(image).mask)
            if i % 10 == 0:  # a second call of one shape captures a graph
                masks.append(pipe(image).mask)
                assert sim.live()["graphs"] == 2  # the graph and its executable
            live = sim.live()
            assert live["device_bytes"] > 16 << 20 and live["pinned_bytes"] > 16 << 20
        assert sim.live() == NOTHING, f"after close {i + 1}"
        assert sim.contexts == [] and sim.n("ctx_detach") == sim.n("ctx_retain")
    assert sim.n("graph_instantiate") == 10 and sim.n("free_skipped") == 0
    assert all(np.array_equal(m, masks[0]) for m in masks)


def test_reloading_cuda_preprocessing_beside_onnxruntime_leaks_nothing(
    standin_gpu_with_kernels, demo_copy, ct_small_path
):
    """With ONNX Runtime the CUDA stages own their context: freed before it detaches."""
    sim = standin_gpu_with_kernels
    for _ in range(20):
        with Pipeline.from_bundle(demo_copy, "onnxruntime", preprocess="cuda") as pipe:
            assert pipe.preprocess_device == "cuda"
            pipe(ct_small_path)
            assert sim.live()["device_bytes"] > 0
        assert sim.live() == NOTHING
    assert sim.n("free_skipped") == 0 and sim.n("ctx_detach") == sim.n("ctx_retain")


def test_close_on_a_lost_context_still_frees_inside_it(standin_gpu_with_kernels, demo_copy):
    sim = standin_gpu_with_kernels
    _build(demo_copy)
    image = np.zeros((32, 32), np.float32)
    pipe = Pipeline.from_bundle(demo_copy, "tensorrt", preprocess="cuda")
    pipe(image)
    sim.fault_next_execute = "kernel wrote out of bounds"
    with pytest.raises(BackendError) as e:
        pipe(image)
    assert e.value.code == "GPU_FATAL"
    pipe.close()
    assert sim.live() == NOTHING and sim.contexts == []


# -- CUDA graphs through cuda-bindings ------------------------------------------------------


def _backend(demo, **kw) -> TensorRTBackend:
    build_engine(demo, BuildOptions())
    return TensorRTBackend.from_bundle(demo, "fp32", cuda_graphs=True, **kw)


def _x(n: int = 1) -> dict[str, np.ndarray]:
    return {"image": np.random.default_rng(n).random((n, 3, 256, 256), dtype=np.float32)}


def test_cuda_graphs_use_the_driver_api_on_pycudas_stream(standin_gpu, demo):
    import pycuda.driver as drv

    sim = standin_gpu
    assert not hasattr(drv.Stream, "begin_capture")  # pycuda has no capture API at all
    with _backend(demo) as be:
        for n in (2, 2, 2, 1, 1, 1, 2, 2):
            be.infer(_x(n))
            assert sim.live()["graphs"] <= 2  # a graph for other shapes is destroyed
        # 2 plain, 2 captured, 2 replayed; 1 plain, 1 captured, 1 replayed; 2 plain,
        # 2 captured: each change of shape destroyed the graph of the last one
        assert (sim.n("begin_capture"), sim.n("graph_launch")) == (3, 2)
        assert sim.n("graph_exec_destroy") == sim.n("graph_destroy") == 2
    assert sim.n("graph_exec_destroy") == sim.n("graph_destroy") == 3  # and at close
    assert sim.live() == NOTHING


def test_cuda_graphs_without_cuda_bindings_are_refused_at_load(standin_gpu, demo, monkeypatch):
    monkeypatch.setitem(sys.modules, "cuda.bindings.driver", None)
    with pytest.raises(MissingDependencyError) as e:
        _backend(demo)
    assert "edgemed[gpu]" in str(e.value) and "CUDA graphs" in str(e.value)
    assert standin_gpu.live() == NOTHING and standin_gpu.contexts == []


@pytest.mark.parametrize(
    ("call", "result", "code"),
    [
        ("cuStreamBeginCapture", "CUDA_ERROR_ILLEGAL_STATE", "GPU_FATAL"),
        ("cuGraphInstantiate", "CUDA_ERROR_OUT_OF_MEMORY", "GPU_OOM"),
        ("cuGraphLaunch", "CUDA_ERROR_ILLEGAL_ADDRESS", "GPU_FATAL"),
    ],
)
def test_a_failing_driver_call_is_a_typed_error_and_frees_the_graph(
    standin_gpu, demo, monkeypatch, call, result, code
):
    import cuda.bindings.driver as cu

    sim = standin_gpu
    with _backend(demo) as be:
        real = getattr(cu, call)

        def failing(*args):  # the driver refuses (and makes nothing)
            error = cu.CUresult[result]
            return (error, cu.CUgraphExec()) if call == "cuGraphInstantiate" else (error,)

        monkeypatch.setattr(cu, call, failing)
        be.infer(_x(1))
        with pytest.raises(BackendError) as e:
            be.infer(_x(1))  # captures (and for cuGraphLaunch, fails at the next call)
            be.infer(_x(1))
        assert e.value.code == code and result in e.value.message
        if call != "cuGraphLaunch":  # nothing half-made is kept
            assert sim.live()["graphs"] == 0 and be._graph is None
        monkeypatch.setattr(cu, call, real)
        assert be.infer(_x(1))["logits"].shape == (1, 5, 256, 256)  # the stream works on
    assert sim.live() == NOTHING


def test_a_binding_that_raises_is_a_typed_error(standin_gpu, demo, monkeypatch):
    """cuda-bindings raises (not returns) when the driver lacks a function."""
    import cuda.bindings.driver as cu

    def missing(*args):
        raise RuntimeError("function cuStreamBeginCapture_v2 is not found")

    with _backend(demo) as be:
        monkeypatch.setattr(cu, "cuStreamBeginCapture", missing)
        be.infer(_x(1))
        with pytest.raises(BackendError) as e:
            be.infer(_x(1))
        assert e.value.code == "GPU_FATAL" and "is not found" in e.value.message


def test_a_synchronising_call_inside_the_capture_ends_it_with_a_typed_error(
    standin_gpu, demo, monkeypatch
):
    """Work that is illegal during capture fails the capture, which is ended (the stream
    stays usable) and reported; plain runs go on."""
    sim = standin_gpu
    with _backend(demo) as be:
        be.infer(_x(1))
        plain = be._execute

        def syncing() -> None:
            plain()
            be.stream.synchronize()  # not allowed while the stream captures

        monkeypatch.setattr(be, "_execute", syncing)
        with pytest.raises(BackendError) as e:
            be.infer(_x(1))
        assert "capturing" in e.value.message
        monkeypatch.setattr(be, "_execute", plain)
        assert all(q.capture is None for q in sim.streams.values())  # capture ended
        assert sim.live()["graphs"] == 0
        out = be.infer(_x(2))["logits"]
        assert out.shape == (2, 5, 256, 256)
    assert sim.live() == NOTHING

"""Which memory the TensorRT I/O lives in on an integrated GPU (Jetson), through the
stand-in ``tensorrt``/``pycuda`` (``standin_trt.py``: its "memory" records the kind of
every allocation).

Mapped pinned memory only where the host reads or writes (``infer``'s inputs, outputs a
call fetches); what stays on the GPU (an input the CUDA preprocessor writes, logits the
mask kernel reads about eight times per channel and pixel) is device memory, which the
GPU caches.
"""

from __future__ import annotations

import numpy as np

from edgemed.backends.tensorrt.backend import TensorRTBackend
from edgemed.backends.tensorrt.builder import BuildOptions, build_engine
from edgemed.bundle import Bundle
from edgemed.pipeline import Pipeline
from tests.engine.support import IN, OUT, batch, live


def jetson(sim) -> None:
    sim.gpu_name, sim.cc, sim.integrated = "Orin", (8, 7), True
    sim.multiprocessors, sim.total_memory = 16, 61 << 30


def build(bundle: Bundle) -> None:
    build_engine(bundle, BuildOptions(), progress=lambda line: None)


def kind_at(sim, address: int) -> str:
    for base, (size, kind, _) in sim.mem.items():
        if base <= address < base + size:
            return kind
    raise AssertionError(f"{address:#x} is in no live allocation")


def test_device_path_reads_and_writes_device_memory(standin_gpu, demo, reference):
    """A CUDA preprocessor writes the input, the mask kernel reads the logits: both in
    device memory; nothing mapped is allocated for them."""
    import pycuda.driver as drv

    sim = standin_gpu
    jetson(sim)
    build(demo)
    with TensorRTBackend.from_bundle(demo, "fp32") as be:
        assert live(sim, "mapped") == live(sim, "device") == []  # nothing until used
        ptr, shape, _ = be.device_input("image", (2, 3, 256, 256))
        assert kind_at(sim, ptr) == "device"
        data = batch(2, 1)  # alive until the stream has copied it
        with be.gpu.active():
            drv.memcpy_htod_async(ptr, data, be.stream)
        assert be.infer_device(fetch=()) == {}
        optr, oshape, odtype = be.device_output("logits")
        assert kind_at(sim, optr) == "device"
        assert live(sim, "device") == [8 * IN, 8 * OUT] and live(sim, "mapped") == []
        host = np.empty(oshape, odtype)
        with be.gpu.active():
            drv.memcpy_dtoh_async(host, optr, be.stream)
            be.stream.synchronize()
        np.testing.assert_allclose(host, reference(data), atol=1e-5)
        # an output the call fetches is read by the host: mapped, no copy
        got = be.infer_device()["logits"]
        np.testing.assert_allclose(got, reference(data), atol=1e-5)
        assert kind_at(sim, be.device_output("logits")[0]) == "mapped"
        assert live(sim, "mapped") == [8 * OUT]
    assert sim.mem == {}


def test_host_path_stays_zero_copy(standin_gpu, demo, reference):
    sim = standin_gpu
    jetson(sim)
    build(demo)
    with TensorRTBackend.from_bundle(demo, "fp32") as be:
        for n, seed in ((3, 2), (1, 3)):
            np.testing.assert_allclose(
                be.infer({"image": batch(n, seed)})["logits"], reference(batch(n, seed)), atol=1e-5
            )
        assert live(sim, "mapped") == [8 * IN, 8 * OUT] and live(sim, "device") == []
        assert (sim.n("htod"), sim.n("dtoh")) == (0, 0)


def test_gpu_pipeline_on_jetson_keeps_the_logits_in_device_memory(
    standin_gpu_with_kernels, demo_copy, ct_small_path
):
    """The whole GPU pipeline (preprocess kernel -> engine -> mask kernel): the engine's
    input and logits are device memory, and only the masks are mapped or pinned."""
    sim = standin_gpu_with_kernels
    jetson(sim)
    build(Bundle.load(demo_copy))
    with Pipeline.from_bundle(demo_copy, "onnxruntime") as ref_pipe:
        ref = ref_pipe(ct_small_path)
    with Pipeline.from_bundle(demo_copy, "tensorrt", preprocess="cuda") as pipe:
        got = pipe(ct_small_path)
        be = pipe.backend
        assert kind_at(sim, be.device_input("image", (1, 3, 256, 256))[0]) == "device"
        assert kind_at(sim, be.device_output("logits")[0]) == "device"
        assert live(sim, "mapped") == []  # no TensorRT tensor is mapped on this path
    assert got.provenance["preprocess_device"] == "cuda"
    assert (got.mask == ref.mask).mean() >= 0.9999


def test_a_cuda_graph_is_not_replayed_with_other_addresses(standin_gpu, demo, reference):
    """Captured on the host path (mapped input), then the device path binds the device
    input: replaying the old graph would run on the mapped input's stale data."""
    import pycuda.driver as drv

    sim = standin_gpu
    jetson(sim)
    build(demo)
    with TensorRTBackend.from_bundle(demo, "fp32", cuda_graphs=True) as be:
        for seed in (4, 5, 6):  # plain, captured, replayed
            be.infer({"image": batch(1, seed)})
        ptr, _, _ = be.device_input("image", (1, 3, 256, 256))
        data = batch(1, 7)
        with be.gpu.active():
            drv.memcpy_htod_async(ptr, data, be.stream)
        np.testing.assert_allclose(be.infer_device()["logits"], reference(data), atol=1e-5)

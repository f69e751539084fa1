"""The TensorRT backend and the engine builder, run for real on stand-in ``tensorrt`` and
``pycuda`` modules (``standin_trt.py``): no GPU or TensorRT here, so the network itself
runs in ONNX Runtime inside the stand-in's ``execute_async_v3``, and every result is
compared with the same ONNX run in ONNX Runtime directly.

What this checks: edgemed's orchestration (cache, keys, sidecars, buffers, copies,
streams, CUDA graphs, mapped memory, error codes, cleanup). What it cannot check: real
kernels and TensorRT's numerics (tests/engine/test_engine_gpu.py, on a GPU).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import stat
from pathlib import Path

import numpy as np
import pytest

from edgemed.backends.tensorrt.backend import TensorRTBackend
from edgemed.backends.tensorrt.builder import BuildOptions, build_engine
from edgemed.bundle import Bundle
from edgemed.cli import main
from edgemed.errors import BackendError, UsageError
from edgemed.pipeline import Pipeline
from tests.engine.standin_trt import CACHE_MAGIC, PLAN_MAGIC
from tests.engine.support import IN, OUT, batch, live, without_nvcc


def build(bundle: Bundle, **kw) -> tuple[object, list[str]]:
    lines: list[str] = []
    return build_engine(bundle, BuildOptions(**kw), progress=lines.append), lines


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


# -- 1. edgemed build ------------------------------------------------------------------------


def test_cli_build_writes_private_plan_sidecar_and_reused_timing_cache(
    standin_gpu, demo_copy, capsys, monkeypatch
):
    sim = standin_gpu
    without_nvcc(monkeypatch)  # `edgemed build` then skips compiling kernels (not our subject)
    assert main(["build", str(demo_copy)]) == 0
    out = capsys.readouterr().out
    assert "building fp32 engine for NVIDIA H100 80GB HBM3 (cc 9.0), TensorRT 10.13.0.35" in out
    assert "profile image:1x3x256x256/8x3x256x256/8x3x256x256" in out
    assert "Building engine (2 steps)" in out and "  Tactic selection done (" in out
    assert "built in " in out and "nvcc not found" in out

    engines = demo_copy / "engines"
    (plan,) = engines.glob("*.plan")
    sidecar_path = plan.with_suffix(".json")
    side = json.loads(sidecar_path.read_text())
    data = plan.read_bytes()
    assert data.startswith(PLAN_MAGIC)  # what the stand-in builder serialised, as is
    assert side["plan_sha256"] == hashlib.sha256(data).hexdigest()
    assert side["plan_bytes"] == len(data) and side["plan"] == plan.name
    onnx_sha = hashlib.sha256((demo_copy / "model.onnx").read_bytes()).hexdigest()
    assert side["onnx_sha256"] == onnx_sha
    assert (side["gpu_name"], side["compute_capability"]) == ("NVIDIA H100 80GB HBM3", "9.0")
    assert (side["trt_version"], side["precision"]) == ("10.13.0.35", "fp32")
    assert side["profile"] == {
        "input": "image",
        "min": [1, 3, 256, 256],
        "opt": [8, 3, 256, 256],
        "max": [8, 3, 256, 256],
    }
    timing = engines / side["timing_cache"]
    assert timing.name == "timing-NVIDIA_H100_80GB_HBM3-cc9.0-trt10.13.0.35.cache"
    assert timing.read_bytes().startswith(CACHE_MAGIC)
    assert {mode(p) for p in (plan, sidecar_path, timing)} == {0o600}
    assert (sim.n("build"), sim.n("timing_hit")) == (1, 0)

    assert main(["build", str(demo_copy)]) == 0  # up to date: nothing built
    assert "up to date" in capsys.readouterr().out and sim.n("build") == 1

    assert main(["build", str(demo_copy), "--force"]) == 0  # the timing cache is read back
    assert (sim.n("build"), sim.n("timing_hit")) == (2, 1)
    device, entries = json.loads(timing.read_bytes()[len(CACHE_MAGIC) :])
    assert device == ["NVIDIA H100 80GB HBM3", [9, 0], "10.13.0.35"] and len(entries) == 1
    assert main(["build", str(demo_copy), "--force", "--no-timing-cache"]) == 0
    assert (sim.n("build"), sim.n("timing_hit")) == (3, 1)
    assert len(list(engines.glob("*.plan"))) == 1  # rebuilt in place under one key


def test_engine_cache_dir_is_private_whatever_the_umask(standin_gpu, demo):
    old = os.umask(0o002)  # Ubuntu's default for users with a private group
    try:
        result, _ = build(demo)
    finally:
        os.umask(old)
    # Loads: under umask 002 a 0775 engines/ would be refused (ENGINE_INTEGRITY).
    TensorRTBackend.from_bundle(demo, "fp32").close()
    assert mode(result.plan_path.parent) == 0o700


def test_build_refuses_a_profile_tensorrt_refuses(standin_gpu, demo):
    """The builder's own errors (through the logger) become ENGINE_BUILD_FAILED."""
    standin_gpu.trt.Builder._standin_check = lambda self, network, profile: "no tactic fits"
    with pytest.raises(BackendError) as e:
        build(demo)
    assert e.value.code == "ENGINE_BUILD_FAILED" and "no tactic fits" in e.value.message
    assert not list((demo.root / "engines").glob("*.json"))


# -- 2. infer against ONNX Runtime -----------------------------------------------------------


def test_backend_matches_onnxruntime_and_slices_max_size_buffers(standin_gpu, demo, reference):
    sim = standin_gpu
    build(demo)
    with TensorRTBackend.from_bundle(demo, "fp32") as be:
        assert be.inputs[0].shape == ("batch", 3, 256, 256)
        assert be.outputs[0].shape == ("batch", 5, 256, 256)
        assert be._runtime.engine_host_code_allowed is False
        assert be.device == "NVIDIA H100 80GB HBM3 (cc 9.0, discrete)"
        assert live(sim, "device") == [8 * IN, 8 * OUT]  # once, for the profile's max
        assert live(sim, "pinned") == [8 * IN, 8 * OUT] and live(sim, "mapped") == []
        for n, seed in ((8, 1), (3, 2), (1, 3), (3, 4)):
            x = batch(n, seed)
            out = be.infer({"image": x})["logits"]
            assert out.shape == (n, 5, 256, 256)
            np.testing.assert_allclose(out, reference(x), rtol=1e-5, atol=1e-5)
        assert (sim.n("mem_alloc"), sim.n("execute")) == (2, 4)
        with pytest.raises(BackendError) as e:
            be.infer({"image": np.zeros((9, 3, 256, 256), np.float32)})
        assert e.value.code == "BACKEND_IO_MISMATCH" and "1x3" not in e.value.message
        assert sim.n("execute") == 4  # refused before anything ran


def test_device_input_infer_device_and_device_output(standin_gpu, demo, reference):
    import pycuda.driver as drv

    build(demo)
    x = batch(2, 6)
    with TensorRTBackend.from_bundle(demo, "fp32") as be:
        ptr, shape, dtype = be.device_input("image", (2, 3, 256, 256))
        assert (shape, dtype) == ((2, 3, 256, 256), np.float32)
        with be.gpu.active():
            drv.memcpy_htod_async(ptr, x, be.stream)
        assert be.infer_device(fetch=[]) == {}  # left on the GPU, not waited for
        optr, oshape, odtype = be.device_output("logits")
        assert oshape == (2, 5, 256, 256) and odtype == np.float32
        host = np.empty(oshape, odtype)
        with be.gpu.active():
            drv.memcpy_dtoh_async(host, optr, be.stream)
            be.stream.synchronize()
        np.testing.assert_allclose(host, reference(x), atol=1e-5)
        np.testing.assert_allclose(be.infer_device()["logits"], reference(x), atol=1e-5)
        for call in (lambda: be.device_input("nope", (1,)), lambda: be.device_output("image")):
            with pytest.raises(BackendError) as e:
                call()
            assert e.value.code == "BACKEND_IO_MISMATCH"


def test_infer_device_before_device_input_is_refused(standin_gpu, demo):
    build(demo)
    with TensorRTBackend.from_bundle(demo, "fp32") as be:
        with pytest.raises(BackendError) as e:
            be.infer_device()  # runs 8 slices of never-written device memory instead
        assert e.value.code == "BACKEND_IO_MISMATCH"


# -- 3. the pipeline ------------------------------------------------------------------------


def test_pipeline_tensorrt_mask_equals_onnxruntime(standin_gpu, demo_copy, ct_small_path):
    build(Bundle.load(demo_copy))
    with Pipeline.from_bundle(demo_copy, "tensorrt", preprocess="cpu") as pipe:
        got = pipe(ct_small_path)
    with Pipeline.from_bundle(demo_copy, "onnxruntime") as ref_pipe:
        ref = ref_pipe(ct_small_path)
    assert got.provenance["backend"] == "tensorrt" and got.provenance["engine"].endswith(".plan")
    assert got.provenance["preprocess_device"] == "cpu"
    assert got.mask.shape == ref.mask.shape == (128, 128)
    assert len(np.unique(ref.mask)) >= 4  # a real segmentation, not a blank
    np.testing.assert_array_equal(got.mask, ref.mask)
    assert got.stats == ref.stats


def test_pipeline_respects_a_smaller_engine_profile(standin_gpu, demo_copy):
    """`edgemed build --batch 1:2:4` then a 6-slice volume with the default batch_size 8."""
    build(Bundle.load(demo_copy), ranges={"batch": "1:2:4"})
    volume = np.random.default_rng(7).uniform(-1000, 1000, (6, 64, 64)).astype(np.float32)
    with Pipeline.from_bundle(demo_copy, "onnxruntime") as ref_pipe:
        ref = ref_pipe(volume)
    with Pipeline.from_bundle(demo_copy, "tensorrt", preprocess="cpu") as pipe:
        np.testing.assert_array_equal(pipe(volume).mask, ref.mask)


# -- 4. integrated GPU ----------------------------------------------------------------------


def test_integrated_gpu_uses_mapped_memory_and_copies_nothing(standin_gpu, demo, reference):
    sim = standin_gpu
    sim.gpu_name, sim.cc, sim.integrated = "Orin", (8, 7), True
    build(demo)
    with TensorRTBackend.from_bundle(demo, "fp32") as be:
        assert be.device == "Orin (cc 8.7, integrated)"
        # allocated at first use, as the kind each tensor is used as
        assert live(sim, "mapped") == live(sim, "device") == []
        for n, seed in ((3, 8), (1, 9)):
            x = batch(n, seed)
            np.testing.assert_allclose(be.infer({"image": x})["logits"], reference(x), atol=1e-5)
        assert live(sim, "mapped") == [8 * IN, 8 * OUT] and live(sim, "device") == []
        assert (sim.n("mem_alloc"), sim.n("htod"), sim.n("dtoh")) == (0, 0, 0)
        assert set(be.last_stage_ms()) == {"device_h2d", "device_infer", "device_d2h"}
    assert sim.mem == {}


# -- 5. CUDA graphs -------------------------------------------------------------------------


def test_cuda_graph_captured_on_second_call_replayed_on_third(standin_gpu, demo, reference):
    sim = standin_gpu
    build(demo)
    with TensorRTBackend.from_bundle(demo, "fp32", cuda_graphs=True) as be:

        def run(n: int, seed: int) -> None:
            x = batch(n, seed)
            np.testing.assert_allclose(be.infer({"image": x})["logits"], reference(x), atol=1e-5)

        run(2, 10)  # plain: TensorRT's shape setup happens here
        assert (sim.n("begin_capture"), sim.n("execute"), sim.n("graph_launch")) == (0, 1, 0)
        run(2, 11)  # plain again, then captured
        assert (sim.n("begin_capture"), sim.n("execute"), sim.n("graph_launch")) == (1, 3, 0)
        run(2, 12)  # replayed: new input data, no execute_async_v3 call
        run(2, 13)
        assert (sim.n("begin_capture"), sim.n("execute"), sim.n("graph_launch")) == (1, 3, 2)
        run(1, 14)  # new shape: the graph is dropped, a plain run
        assert be._graph is None
        assert (sim.n("begin_capture"), sim.n("execute"), sim.n("graph_launch")) == (1, 4, 2)
        run(1, 15)
        run(1, 16)
        assert (sim.n("begin_capture"), sim.n("execute"), sim.n("graph_launch")) == (2, 6, 3)


# -- 6. wrong engine: incompatible, tampered, undeserialisable --------------------------------


@pytest.mark.parametrize(
    ("field", "value"),
    [("gpu_name", "NVIDIA A100-SXM4-80GB"), ("cc", (8, 0)), ("version", "10.3.0.30")],
)
def test_engine_for_another_gpu_or_version_is_incompatible(
    standin_gpu, demo, reference, field, value
):
    sim = standin_gpu
    build(demo)
    if field == "version":
        sim.trt.__version__ = value
    else:
        setattr(sim, field, value)
    with pytest.raises(BackendError) as e:
        TensorRTBackend.from_bundle(demo, "fp32")
    assert e.value.code == "ENGINE_INCOMPATIBLE" and "edgemed build" in e.value.message
    assert sim.n("deserialize") == 0
    assert sim.n("ctx_detach") == sim.n("ctx_retain") and sim.contexts == []
    with TensorRTBackend.from_bundle(demo, "fp32", build=True) as be:  # rebuilt for here
        x = batch(1, 17)
        np.testing.assert_allclose(be.infer({"image": x})["logits"], reference(x), atol=1e-5)
    assert sim.n("build") == 2 and len(list((demo.root / "engines").glob("*.plan"))) == 2


def test_hardware_compatible_engine_runs_on_another_ampere_plus_gpu(standin_gpu, demo):
    sim = standin_gpu
    sim.gpu_name, sim.cc = "NVIDIA A100-SXM4-80GB", (8, 0)
    build(demo, hardware_compat="ampere_plus")
    sim.gpu_name, sim.cc = "NVIDIA H100 80GB HBM3", (9, 0)  # TensorRT loads this plan here
    TensorRTBackend.from_bundle(demo, "fp32").close()


def test_tampered_plan_is_never_deserialized_nor_rebuilt(standin_gpu, demo):
    sim = standin_gpu
    result, _ = build(demo)
    data = bytearray(result.plan_path.read_bytes())
    data[len(data) // 2] ^= 0x01
    result.plan_path.write_bytes(bytes(data))
    for rebuild in (False, True):
        with pytest.raises(BackendError) as e:
            TensorRTBackend.from_bundle(demo, "fp32", build=rebuild)
        assert e.value.code == "ENGINE_INTEGRITY"
    assert (sim.n("deserialize"), sim.n("build")) == (0, 1)


def test_verified_plan_tensorrt_cannot_read_is_incompatible(standin_gpu, demo):
    """A plan whose sidecar matches but which TensorRT rejects: None, and its message."""
    sim = standin_gpu
    result, _ = build(demo)
    garbage = b"\x00not a plan\x00" * 10
    result.plan_path.write_bytes(garbage)
    side = json.loads(result.plan_path.with_suffix(".json").read_text())
    side.update(plan_sha256=hashlib.sha256(garbage).hexdigest(), plan_bytes=len(garbage))
    result.plan_path.with_suffix(".json").write_text(json.dumps(side))
    with pytest.raises(BackendError) as e:
        TensorRTBackend.from_bundle(demo, "fp32")
    assert e.value.code == "ENGINE_INCOMPATIBLE" and "magic tag does not match" in e.value.message
    assert sim.n("deserialize") == 1 and sim.contexts == []


# -- 7. CUDA failures ------------------------------------------------------------------------


def test_illegal_address_is_gpu_fatal_and_the_pipeline_stops(standin_gpu, demo_copy, ct_small_path):
    sim = standin_gpu
    build(Bundle.load(demo_copy))
    pipe = Pipeline.from_bundle(demo_copy, "tensorrt", preprocess="cpu")
    pipe(ct_small_path)
    sim.fault_next_execute = "kernel wrote out of bounds"
    with pytest.raises(BackendError) as e:
        pipe(ct_small_path)
    assert e.value.code == "GPU_FATAL" and "illegal memory access" in e.value.message
    executed = sim.n("execute")
    with pytest.raises(BackendError) as e:
        pipe(ct_small_path)
    assert e.value.code == "GPU_FATAL" and "refuses work" in e.value.message
    assert sim.n("execute") == executed
    pipe.close()  # frees even on a lost context (pycuda's frees only warn there)
    assert sim.mem == {} and sim.contexts == []


@pytest.mark.parametrize(
    ("total", "where"), [(12 << 20, "allocating"), (512 << 10, "execution context")]
)
def test_out_of_gpu_memory_is_gpu_oom(standin_gpu, demo, total, where):
    sim = standin_gpu
    build(demo)
    sim.used = sim.total_memory - total  # others hold the rest: our buffers (16.8 MB) or even
    # the context (1 MB) do not fit (the GPU itself, and so the engine key, is unchanged)
    with pytest.raises(BackendError) as e:
        TensorRTBackend.from_bundle(demo, "fp32")
    assert e.value.code == "GPU_OOM" and where in e.value.message
    assert sim.n("ctx_detach") == sim.n("ctx_retain") and sim.contexts == []


# -- 8. stage times --------------------------------------------------------------------------


def test_last_stage_ms_on_a_discrete_gpu(standin_gpu, demo):
    build(demo)
    with TensorRTBackend.from_bundle(demo, "fp32") as be:
        assert be.last_stage_ms() == {}
        be.infer({"image": batch(2, 18)})
        ms = be.last_stage_ms()
    assert set(ms) == {"device_h2d", "device_infer", "device_d2h", "h2d", "d2h"}
    assert ms["h2d"] == ms["device_h2d"] >= 0 and ms["d2h"] == ms["device_d2h"] >= 0
    assert ms["device_infer"] > max(ms["device_h2d"], ms["device_d2h"])  # the network ran there


# -- 9. close --------------------------------------------------------------------------------


def test_close_frees_everything_and_refuses_work(standin_gpu, demo):
    sim = standin_gpu
    build(demo)
    be = TensorRTBackend.from_bundle(demo, "fp32")
    be.infer({"image": batch(1, 19)})
    assert (sim.n("mem_alloc"), sim.n("host_alloc")) == (2, 2)
    be.close()
    assert (sim.n("mem_free"), sim.n("host_free"), sim.n("gc_free")) == (2, 2, 0)
    assert sim.mem == {} and sim.used == 0
    assert sim.n("ctx_detach") == sim.n("ctx_retain") and sim.contexts == []
    be.close()  # idempotent
    for call in (
        lambda: be.infer({"image": batch(1, 20)}),
        be.infer_device,
        lambda: be.device_input("image", (1, 3, 256, 256)),
    ):
        with pytest.raises(BackendError) as e:
            call()
        assert e.value.code == "BACKEND_CLOSED"


def test_device_output_after_close_is_backend_closed(standin_gpu, demo):
    build(demo)
    be = TensorRTBackend.from_bundle(demo, "fp32")
    be.close()
    with pytest.raises(BackendError) as e:
        be.device_output("logits")
    assert e.value.code == "BACKEND_CLOSED"


# -- where preprocessing runs beside TensorRT, and edgemed bench on TensorRT ----------------


def test_auto_preprocesses_on_the_cpu_where_kernels_cannot_load(
    standin_gpu, demo_copy, ct_small_path, monkeypatch, caplog
):
    """A device image with engines built elsewhere: no stored cubins, no nvcc."""
    build(Bundle.load(demo_copy))
    without_nvcc(monkeypatch)
    with Pipeline.from_bundle(demo_copy, "tensorrt") as pipe:  # preprocess="auto"
        result = pipe(ct_small_path)
    assert result.provenance["preprocess_device"] == "cpu"
    assert any("no CUDA kernel cubins for sm_90" in r.getMessage() for r in caplog.records)
    with pytest.raises(BackendError) as e:  # asked for explicitly: refused, not replaced
        Pipeline.from_bundle(demo_copy, "tensorrt", preprocess="cuda")
    assert e.value.code == "GPU_TOOLCHAIN" and "edgemed build" in e.value.message


def test_bench_on_tensorrt_reports_copies_and_device_times(standin_gpu, demo_copy, monkeypatch):
    from edgemed.bench.inputs import synthetic
    from edgemed.bench.runner import BenchOptions, run_bench

    build(Bundle.load(demo_copy))
    without_nvcc(monkeypatch)  # no kernels here: bench's pipeline preprocesses on the CPU
    # The cap covers warm-up too: room for 1 warm-up and 2 measured calls of the
    # stand-in's ~0.5 s batch-2 call on a busy machine.
    opts = BenchOptions(
        backend="tensorrt", precisions=("fp32",), batches=(1, 2), iterations=2, warmup=1,
        windows=2, time_cap_s=4.0,
    )  # fmt: skip
    doc = run_bench(demo_copy, [synthetic((64, 64))], opts)
    assert [(c["backend"], c["batch"]) for c in doc["configs"]] == [
        ("tensorrt", 1),
        ("tensorrt", 2),
    ]
    for c in doc["configs"]:
        assert c["stages"]["h2d"]["count"] >= 2 and c["stages"]["d2h"]["count"] >= 2
        # CUDA-event times next to the host's, per stage (the stand-in's events tick too)
        assert set(c["device_stages"]) == {"h2d", "infer", "d2h"}
        assert all(s["count"] >= 2 for s in c["device_stages"].values())
        assert c["accuracy"]["is_reference"] and c["accuracy"]["pixel_agreement"] == 1.0
    assert not any(c["cuda_graphs"] for c in doc["configs"])
    _valid_bench_json(doc)
    with pytest.raises(UsageError) as e:  # the default profile is 1:8:8
        run_bench(demo_copy, [synthetic((64, 64))], dataclasses.replace(opts, batches=(16,)))
    assert e.value.code == "USAGE_BATCH_FIXED" and "at most 8" in e.value.message
    # --cuda-graphs: the measured calls (one shape) replay the captured graph.
    doc = run_bench(demo_copy, [synthetic((64, 64))], dataclasses.replace(opts, cuda_graphs=True))
    assert all(c["cuda_graphs"] for c in doc["configs"]) and doc["settings"]["cuda_graphs"]
    # per config (one shape): warm-up call plain, first measured call captures, the next
    # replays; bench times the pipeline's own calls, one per iteration
    assert standin_gpu.n("graph_launch") >= 2
    _valid_bench_json(doc)


def _valid_bench_json(doc) -> None:
    from importlib import resources

    import jsonschema

    schema = json.loads(resources.files("edgemed").joinpath("data/bench.schema.json").read_text())
    jsonschema.validate(json.loads(json.dumps(doc)), schema)


def test_doctor_says_where_auto_preprocesses_and_why(standin_gpu, demo, monkeypatch):
    from edgemed.cuda.build import kernel_sources
    from edgemed.doctor import backend_facts

    build(demo)
    without_nvcc(monkeypatch)
    facts = backend_facts(demo)
    assert facts["auto"] == "tensorrt"
    assert (
        facts["preprocess"] == "cpu"
        and "no CUDA kernel cubins for sm_90" in facts["preprocess_reason"]
    )
    kernels = demo.root / "engines" / "kernels"  # what `edgemed build` stores with nvcc
    kernels.mkdir(mode=0o700)
    for src in kernel_sources():
        (kernels / f"{src.stem}.sm_90.cubin").write_bytes(b"cubin")
    assert backend_facts(demo)["preprocess"] == "cuda"


# -- the whole GPU pipeline: CUDA preprocessing into the engine, masks from the kernel ------


@pytest.mark.parametrize("integrated", [False, True], ids=["discrete", "integrated"])
def test_gpu_pipeline_kernels_write_the_engine_input_and_read_its_output(
    standin_gpu_with_kernels, demo_copy, ct_small_path, integrated
):
    """preprocess.cu writes straight into the engine's input, the engine runs, and
    postprocess.cu turns its logits into masks on the "GPU": only masks come back."""
    sim = standin_gpu_with_kernels
    sim.integrated = integrated
    build(Bundle.load(demo_copy))
    volume = np.stack(
        [np.random.default_rng(k).normal(0, 400, (70, 90)).astype(np.float32) for k in range(3)]
    )
    with Pipeline.from_bundle(demo_copy, "onnxruntime") as ref_pipe:
        refs = [ref_pipe(ct_small_path), ref_pipe(volume)]
    with Pipeline.from_bundle(demo_copy, "tensorrt", preprocess="cuda") as pipe:
        assert pipe.preprocess_device == "cuda"
        dtoh_before = sim.n("dtoh")
        got = [pipe(ct_small_path), pipe(volume)]
    assert sim.n("compile") == 2 and sim.n("kernel") >= 4  # both kernels, each call
    if not integrated:
        assert sim.n("dtoh") - dtoh_before == 2  # one copy per call: the masks alone
    for g, r in zip(got, refs, strict=True):
        assert g.provenance["preprocess_device"] == "cuda"
        assert g.mask.shape == r.mask.shape
        # The kernels follow the CPU reference to float32 rounding: masks may differ
        # only at near-ties (tests/kernels checks which pixels); here all but a handful.
        assert (g.mask == r.mask).mean() >= 0.9999
    assert len(np.unique(refs[0].mask)) >= 4


def test_pipeline_cuda_graphs_replay_with_cuda_preprocessing(
    standin_gpu_with_kernels, demo_copy, ct_small_path
):
    """--cuda-graphs through the pipeline: the engine's launch is captured on the second
    same-shape call and replayed after, with the kernels writing its input each time."""
    sim = standin_gpu_with_kernels
    build(Bundle.load(demo_copy))
    with Pipeline.from_bundle(demo_copy, "tensorrt", preprocess="cuda") as plain:
        want = plain(ct_small_path).mask
    with Pipeline.from_bundle(demo_copy, "tensorrt", preprocess="cuda", cuda_graphs=True) as pipe:
        results = [pipe(ct_small_path) for _ in range(4)]
    assert (sim.n("begin_capture"), sim.n("graph_launch")) == (1, 2)  # captured at call 2
    for r in results:
        np.testing.assert_array_equal(r.mask, want)
        assert r.provenance["cuda_graphs"] is True


def test_cuda_graphs_are_a_tensorrt_option(demo_copy):
    with pytest.raises(UsageError):
        Pipeline.from_bundle(demo_copy, "onnxruntime", cuda_graphs=True)
    with Pipeline.from_bundle(demo_copy, "auto", cuda_graphs=True) as pipe:  # a CPU backend
        assert pipe.backend.name in ("onnxruntime", "openvino")

"""The TensorRT backend on a real GPU: build, verify, run, compare with ONNX Runtime.

Skipped (with the reason) where tensorrt, pycuda or a GPU is missing, which is the
normal case on development and CI machines; ``benchmarks/gpu_check.sh`` runs these on
a machine with a GPU.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from edgemed.errors import BackendError

pytestmark = pytest.mark.gpu


@pytest.fixture(scope="module")
def gpu():
    trt = pytest.importorskip("tensorrt", reason="tensorrt is not installed")
    pytest.importorskip("pycuda.driver", reason="pycuda is not installed")
    from edgemed.cuda.device import query_device

    try:
        info = query_device(0)
    except BackendError as exc:
        pytest.skip(f"no usable GPU: {exc.message}")
    return info, trt


def _build(bundle, precision, **kw):
    from edgemed.backends.tensorrt.builder import BuildOptions, build_engine

    lines: list[str] = []
    options = BuildOptions(precision=precision, ranges={"batch": "1:2:4"}, **kw)
    return build_engine(bundle, options, progress=lines.append), lines


def test_build_writes_a_verified_plain_plan(gpu, demo):
    info, trt = gpu
    result, lines = _build(demo, "fp32", workspace_mib=1024)
    assert result.built and lines and lines[-1].startswith("built in")
    side = json.loads(result.plan_path.with_suffix(".json").read_text())
    assert side["gpu_name"] == info.name and side["compute_capability"] == info.cc
    assert side["trt_version"] == trt.__version__ and side["precision"] == "fp32"
    assert side["profile"]["max"] == [4, 3, 256, 256]
    assert oct(result.plan_path.stat().st_mode & 0o777) == "0o600"
    again, _ = _build(demo, "fp32", workspace_mib=1024)
    assert not again.built and again.key == result.key
    assert (result.plan_path.parent / side["timing_cache"]).is_file()


@pytest.mark.parametrize(("precision", "tol"), [("fp32", 1e-3), ("fp16", None)])
def test_tensorrt_matches_onnxruntime(gpu, demo, precision, tol):
    from edgemed.backends import create_backend
    from edgemed.backends.tensorrt.backend import TensorRTBackend

    _build(demo, precision)
    x = np.random.default_rng(0).random((2, 3, 256, 256), dtype=np.float32)
    with create_backend("onnxruntime", demo, precision) as ort_be:
        ref = ort_be.infer({"image": x.astype(ort_be.inputs[0].dtype)})["logits"]
        ref = ref.astype(np.float32)
    with TensorRTBackend.from_bundle(demo, precision) as be:
        assert be._runtime.engine_host_code_allowed is False
        assert be.inputs[0].shape == ("batch", 3, 256, 256)
        feed = x.astype(be.inputs[0].dtype)
        out = be.infer({"image": feed})["logits"].astype(np.float32)
        assert out.shape == ref.shape
        if tol is not None:
            np.testing.assert_allclose(out, ref, atol=tol, rtol=tol)
        agree = (out.argmax(1) == ref.argmax(1)).mean()
        assert agree > 0.99
        with pytest.raises(BackendError) as e:
            be.infer({"image": np.zeros((5, 3, 256, 256), feed.dtype)})  # above max 4
        assert e.value.code == "BACKEND_IO_MISMATCH"


def test_auto_picks_tensorrt_when_an_engine_exists(gpu, demo):
    from edgemed.backends import create_backend

    _build(demo, "fp32")
    with create_backend("auto", demo, "fp32") as be:
        assert be.name == "tensorrt"


def test_tampered_engine_is_never_deserialized(gpu, demo):
    from edgemed.backends.tensorrt.backend import TensorRTBackend

    result, _ = _build(demo, "fp32")
    data = bytearray(result.plan_path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    result.plan_path.write_bytes(bytes(data))
    with pytest.raises(BackendError) as e:
        TensorRTBackend.from_bundle(demo, "fp32", build=True)  # never rebuilt over
    assert e.value.code == "ENGINE_INTEGRITY"


def test_device_input_and_cuda_graphs(gpu, demo):
    import pycuda.driver as drv

    from edgemed.backends.tensorrt.backend import TensorRTBackend

    _build(demo, "fp32")
    x = np.random.default_rng(1).random((1, 3, 256, 256), dtype=np.float32)
    with TensorRTBackend.from_bundle(demo, "fp32", cuda_graphs=True) as be:
        ref = be.infer({"image": x})["logits"].copy()
        again = be.infer({"image": x})["logits"].copy()  # captured here
        replay = be.infer({"image": x})["logits"].copy()  # replayed
        assert be._graph is not None
        np.testing.assert_array_equal(ref, again)
        np.testing.assert_array_equal(ref, replay)
        ptr, shape, dtype = be.device_input("image", (1, 3, 256, 256))
        assert shape == x.shape and dtype == np.float32
        with be._gpu.active():
            drv.memcpy_htod(ptr, x)
        np.testing.assert_allclose(be.infer_device()["logits"], ref, atol=1e-5)


def test_last_stage_ms_reports_device_times(gpu, demo):
    from edgemed.backends.tensorrt.backend import TensorRTBackend

    _build(demo, "fp32")
    with TensorRTBackend.from_bundle(demo, "fp32") as be:
        be.infer({"image": np.zeros((2, 3, 256, 256), np.float32)})
        ms = be.last_stage_ms()
    assert ms["device_infer"] > 0
    if not be._gpu.integrated:
        assert ms["h2d"] == ms["device_h2d"] > 0 and ms["device_d2h"] > 0

from __future__ import annotations

import numpy as np
import pytest

from edgemed.backends import create_backend, probe
from edgemed.bundle import Bundle
from edgemed.errors import BackendError, UsageError


@pytest.fixture
def seg_bundle(tiny_bundle):
    return Bundle.load(tiny_bundle("segmentation", channels=1, classes=3, size=8))


def test_ort_runs_and_matches_numpy(seg_bundle):
    import onnx
    from onnx import numpy_helper

    model = onnx.load(seg_bundle.root / "model.onnx")
    w, b = (numpy_helper.to_array(t) for t in model.graph.initializer)
    x = np.random.default_rng(1).normal(size=(2, 1, 8, 8)).astype(np.float32)
    with create_backend("onnxruntime", seg_bundle) as be:
        out = be.infer({"image": x})["logits"]
    ref = np.einsum("oc,nchw->nohw", w[:, :, 0, 0], x) + b[None, :, None, None]
    np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-5)
    assert be.info()["backend"] == "onnxruntime" and be.precision == "fp32"


def test_output_buffers_are_reused_per_shape(seg_bundle):
    be = create_backend("onnxruntime", seg_bundle)
    x = np.ones((1, 1, 8, 8), np.float32)
    a = be.infer({"image": x})["logits"]
    b = be.infer({"image": x * 2})["logits"]
    assert a is b  # same preallocated buffer, refilled
    c = be.infer({"image": np.ones((3, 1, 8, 8), np.float32)})["logits"]
    assert c.shape == (3, 3, 8, 8)


@pytest.mark.parametrize(
    "feeds",
    [
        {"image": np.ones((1, 1, 8, 8), np.float64)},  # dtype: never cast silently
        {"image": np.ones((1, 2, 8, 8), np.float32)},  # fixed channel dim
        {"image": np.ones((1, 8, 8), np.float32)},  # rank
        {"other": np.ones((1, 1, 8, 8), np.float32)},  # name
        {"image": np.ones((1, 1, 8, 16), np.float32)[:, :, :, ::2]},  # not contiguous
    ],
)
def test_infer_validates_inputs(seg_bundle, feeds):
    be = create_backend("onnxruntime", seg_bundle)
    with pytest.raises(BackendError) as e:
        be.infer(feeds)
    assert e.value.code == "BACKEND_IO_MISMATCH"


def test_closed_backend_refuses(seg_bundle):
    be = create_backend("onnxruntime", seg_bundle)
    be.close()
    with pytest.raises(BackendError) as e:
        be.infer({"image": np.ones((1, 1, 8, 8), np.float32)})
    assert e.value.code == "BACKEND_CLOSED"


def test_auto_falls_back_to_ort_and_says_why(seg_bundle, caplog, monkeypatch):
    from edgemed.backends import registry

    # As on a machine without the openvino extra (tests/test_backend_openvino.py has
    # auto picking OpenVINO where it is installed).
    monkeypatch.setattr(registry, "available", lambda module: module != "openvino")
    caplog.set_level("INFO", logger="edgemed.backends")
    be = create_backend("auto", seg_bundle)
    assert be.name == "onnxruntime"
    assert "tensorrt not used" in be.reason and "openvino not used" in be.reason
    assert any("onnxruntime chosen" in r.getMessage() for r in caplog.records)


def test_named_backend_that_cannot_run_is_an_error(seg_bundle):
    assert probe("tensorrt", seg_bundle, "fp32")  # no TensorRT on CPU machines
    with pytest.raises(BackendError) as e:
        create_backend("tensorrt", seg_bundle)
    assert e.value.code == "BACKEND_UNAVAILABLE"


def test_unknown_backend_and_missing_precision(seg_bundle):
    with pytest.raises(UsageError):
        create_backend("nonsense", seg_bundle)
    for name in ("onnxruntime", "auto", "tensorrt"):  # refused before any backend is chosen
        with pytest.raises(UsageError) as e:
            create_backend(name, seg_bundle, precision="int8")
        assert e.value.code == "USAGE_PRECISION_MISSING" and "(it has fp32)" in e.value.message


def test_corrupt_model_bytes_fail_typed():
    from edgemed.backends.ort import OnnxRuntimeBackend

    with pytest.raises(BackendError) as e:
        OnnxRuntimeBackend(b"not an onnx model")
    assert e.value.code == "BACKEND_LOAD_FAILED"

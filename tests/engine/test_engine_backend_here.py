"""The TensorRT backend's plain-Python parts, and how it fails where TensorRT is absent."""

from __future__ import annotations

import pytest

from edgemed.backends import create_backend
from edgemed.backends.tensorrt.backend import TensorRTBackend, _named_shape, probe
from edgemed.errors import BackendError, MissingDependencyError


def test_dynamic_dims_take_the_bundle_axis_names():
    names = ("batch", None, "height", None)
    assert _named_shape((-1, 3, -1, -1), names) == ("batch", 3, "height", "dim3")
    assert _named_shape((4, 5), None) == (4, 5)
    assert _named_shape((-1,), None) == ("dim0",)


def test_from_bundle_without_tensorrt_names_the_extra(demo):
    with pytest.raises(MissingDependencyError) as e:
        TensorRTBackend.from_bundle(demo, "fp16")
    assert e.value.module == "tensorrt" and e.value.extra == "gpu"
    assert not (demo.root / "engines").exists()


def test_named_tensorrt_backend_is_unavailable_here_with_the_reason(demo, tmp_path):
    reason = probe(demo, "fp32", tmp_path)
    assert "tensorrt" in reason
    with pytest.raises(BackendError) as e:
        create_backend("tensorrt", demo, "fp32")
    assert e.value.code == "BACKEND_UNAVAILABLE" and reason in e.value.message

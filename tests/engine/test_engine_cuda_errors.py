"""CUDA failures become GPU_OOM / GPU_FATAL / GPU_UNAVAILABLE (edgemed.cuda.device).

pycuda cannot be installed here; its exception classes are stood in for by plain
classes with pycuda's names, which is all :func:`cuda_errors` looks at.
"""

from __future__ import annotations

import sys
import types

import pytest

from edgemed.backends import probe
from edgemed.cuda.device import DeviceInfo, classify_cuda_error, cuda_errors
from edgemed.errors import BackendError, MissingDependencyError


@pytest.mark.parametrize(
    ("kind", "message", "code"),
    [
        ("MemoryError", "cuMemAlloc failed: out of memory", "GPU_OOM"),
        ("LogicError", "cuMemHostAlloc failed: out of memory", "GPU_OOM"),
        (
            "LaunchError",
            "cuCtxSynchronize failed: an illegal memory access was encountered",
            "GPU_FATAL",
        ),
        ("LaunchError", "cuLaunchKernel failed: unspecified launch failure", "GPU_FATAL"),
        ("RuntimeError", "cuMemcpyDtoH failed: uncorrectable ECC error encountered", "GPU_FATAL"),
        ("LogicError", "cuInit failed: no CUDA-capable device is detected", "GPU_UNAVAILABLE"),
        (
            "RuntimeError",
            "cuInit failed: CUDA driver version is insufficient for CUDA runtime version",
            "GPU_UNAVAILABLE",
        ),
        ("Error", "something new and unknown", "GPU_FATAL"),  # unknown: fail safe
    ],
)
def test_classify(kind, message, code):
    assert classify_cuda_error(kind, message) == code


@pytest.fixture
def fake_driver(monkeypatch):
    """A stand-in ``pycuda.driver`` exposing pycuda's exception hierarchy names."""
    drv = types.ModuleType("pycuda.driver")

    class Error(Exception):
        pass

    class MemoryError(Error):  # noqa: A001 (pycuda's own name)
        pass

    class LaunchError(Error):
        pass

    drv.Error, drv.MemoryError, drv.LaunchError = Error, MemoryError, LaunchError
    monkeypatch.setitem(sys.modules, "pycuda.driver", drv)
    return drv


def test_cuda_errors_maps_pycuda_exceptions(fake_driver):
    with pytest.raises(BackendError) as e, cuda_errors("allocating"):
        raise fake_driver.MemoryError("cuMemAlloc failed: out of memory")
    assert e.value.code == "GPU_OOM" and e.value.message.startswith("allocating failed")
    assert isinstance(e.value.__cause__, fake_driver.MemoryError)
    with pytest.raises(BackendError) as e, cuda_errors():
        raise fake_driver.LaunchError("an illegal memory access was encountered")
    assert e.value.code == "GPU_FATAL"


def test_cuda_errors_leaves_other_exceptions_alone(fake_driver):
    with pytest.raises(ValueError), cuda_errors():
        raise ValueError("not CUDA")
    original = BackendError("x", code="ENGINE_INTEGRITY")
    with pytest.raises(BackendError) as e, cuda_errors():
        raise original
    assert e.value is original


def test_cuda_errors_without_pycuda_loaded(monkeypatch):
    monkeypatch.delitem(sys.modules, "pycuda.driver", raising=False)
    with pytest.raises(KeyError), cuda_errors():
        raise KeyError("k")


def test_device_info_cc():
    info = DeviceInfo(0, "Orin", (8, 7), True, 32 << 30)
    assert info.cc == "8.7"


def test_device_needs_pycuda():
    from edgemed.cuda.device import CudaDevice, query_device

    with pytest.raises(MissingDependencyError) as e:
        query_device(0)
    assert e.value.module == "pycuda" and e.value.extra == "gpu"
    with pytest.raises(MissingDependencyError):
        CudaDevice.open(0)


def test_probe_reason_when_no_gpu_is_present(demo, fake_driver, monkeypatch):
    # tensorrt and pycuda import, but the driver finds no GPU: the reason says so.
    monkeypatch.setitem(sys.modules, "tensorrt", types.ModuleType("tensorrt"))
    pycuda = types.ModuleType("pycuda")
    pycuda.driver = fake_driver
    monkeypatch.setitem(sys.modules, "pycuda", pycuda)

    def init(flags=0):
        raise fake_driver.Error("cuInit failed: no CUDA-capable device is detected")

    fake_driver.init = init
    why = probe("tensorrt", demo, "fp32")
    assert why == "CUDA initialisation failed: cuInit failed: no CUDA-capable device is detected"

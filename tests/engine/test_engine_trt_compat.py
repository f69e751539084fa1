"""Version differences decided by attribute presence.

The stand-in ``tensorrt`` modules here are plain namespaces with or without the
attributes in question: what is tested is edgemed's decision logic, which is all the
compatibility layer is.
"""

from __future__ import annotations

import enum
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from edgemed.backends.tensorrt import builder
from edgemed.backends.tensorrt import compat as trt_compat
from edgemed.errors import BackendError, MissingDependencyError, UsageError


def fake_trt(version="10.3.0.30", *, strongly_typed=1, **extra):
    flags = {"EXPLICIT_BATCH": 0}
    if strongly_typed is not None:
        flags["STRONGLY_TYPED"] = strongly_typed
    ns = SimpleNamespace(
        __version__=version,
        NetworkDefinitionCreationFlag=enum.IntEnum("NetworkDefinitionCreationFlag", flags),
        BuilderFlag=SimpleNamespace(TF32="tf32-flag"),
        MemoryPoolType=SimpleNamespace(WORKSPACE="workspace-pool"),
        TensorIOMode=SimpleNamespace(INPUT="in", OUTPUT="out"),
    )
    for k, v in extra.items():
        setattr(ns, k, v)
    return ns


# -- strongly typed networks ---------------------------------------------------------------


def test_strongly_typed_flag_is_looked_up_by_name_on_10x():
    assert trt_compat.network_flags(fake_trt(strongly_typed=1)) == 1 << 1
    # Its integer value differs between versions: the name decides, not a constant.
    assert trt_compat.network_flags(fake_trt(strongly_typed=5)) == 1 << 5


def test_tensorrt_11_passes_no_flag_even_when_the_name_exists():
    assert trt_compat.network_flags(fake_trt("11.0.0.10", strongly_typed=1)) == 0
    assert trt_compat.network_flags(fake_trt("11.2.1", strongly_typed=None)) == 0


def test_10x_without_strongly_typed_is_refused():
    with pytest.raises(BackendError) as e:
        trt_compat.network_flags(fake_trt("10.0.1", strongly_typed=None))
    assert e.value.code == "ENGINE_BUILD_FAILED" and "10.3" in e.value.message


def test_unreadable_version_is_an_error():
    with pytest.raises(BackendError):
        trt_compat.major_version(SimpleNamespace(__version__="dev"))
    assert trt_compat.major_version(fake_trt("11.1.0")) == 11


# -- progress ------------------------------------------------------------------------------


class FakeMonitorBase:
    def __init__(self):
        self.base_initialised = True


def test_progress_monitor_subclasses_when_present():
    lines = []
    printer = trt_compat.ProgressPrinter(lines.append, interval=0.0)
    monitor = trt_compat.progress_monitor(fake_trt(IProgressMonitor=FakeMonitorBase), printer)
    assert isinstance(monitor, FakeMonitorBase) and monitor.base_initialised
    monitor.phase_start("Building engine", None, 3)
    assert monitor.step_complete("Building engine", 0) is True
    monitor.phase_finish("Building engine")
    assert lines[0] == "Building engine (3 steps)"
    assert lines[1] == "Building engine: 1/3"
    assert lines[2].startswith("Building engine done (")


def test_no_progress_monitor_without_the_interface():
    printer = trt_compat.ProgressPrinter(print)
    assert trt_compat.progress_monitor(fake_trt(), printer) is None


def test_progress_printer_indents_limits_depth_and_rate():
    now = [0.0]
    lines = []
    p = trt_compat.ProgressPrinter(lines.append, interval=5.0, max_depth=1, clock=lambda: now[0])
    p.phase_start("build", None, 2)
    p.phase_start("tactics", "build", 100)
    p.phase_start("layer", "tactics", 4)  # depth 2: not printed
    now[0] = 1.0
    p.step_complete("tactics", 0)  # within the interval: not printed
    now[0] = 6.0
    p.step_complete("tactics", 9)
    p.step_complete("layer", 1)
    p.phase_finish("layer")
    now[0] = 8.0
    p.phase_finish("tactics")
    p.phase_finish("build")
    assert lines == [
        "build (2 steps)",
        "  tactics (100 steps)",
        "  tactics: 10/100",
        "  tactics done (8.0 s)",
        "build done (8.0 s)",
    ]


# -- builder options -------------------------------------------------------------------------


def test_workspace_limit_in_bytes():
    calls = []
    config = SimpleNamespace(set_memory_pool_limit=lambda pool, n: calls.append((pool, n)))
    trt_compat.set_workspace(fake_trt(), config, 512)
    assert calls == [("workspace-pool", 512 << 20)]
    trt_compat.set_workspace(fake_trt(), config, None)
    assert len(calls) == 1
    with pytest.raises(UsageError):
        trt_compat.set_workspace(fake_trt(), config, 0)


def test_hardware_compat_levels_by_name():
    levels = SimpleNamespace(NONE=0, AMPERE_PLUS=1, SAME_COMPUTE_CAPABILITY=2)
    trt = fake_trt(HardwareCompatibilityLevel=levels)
    assert trt_compat.hardware_compat_level(trt, "none") is None
    assert trt_compat.hardware_compat_level(trt, "ampere_plus") == 1
    assert trt_compat.hardware_compat_level(trt, "same_compute_capability") == 2
    with pytest.raises(UsageError):
        trt_compat.hardware_compat_level(trt, "turing_plus")
    partial = fake_trt(HardwareCompatibilityLevel=SimpleNamespace(NONE=0, AMPERE_PLUS=1))
    with pytest.raises(BackendError) as e:
        trt_compat.hardware_compat_level(partial, "same_compute_capability")
    assert e.value.code == "ENGINE_BUILD_FAILED"
    with pytest.raises(BackendError):
        trt_compat.hardware_compat_level(fake_trt(), "ampere_plus")  # no enum at all


class FakeConfig:
    """IBuilderConfig's flag calls; TF32 starts on, as in TensorRT 10.3 and 11.x."""

    def __init__(self, *, sticky=False):
        self.flags = {"tf32-flag"}
        self.sticky = sticky  # a config that ignores clear_flag (must be noticed)

    def set_flag(self, flag):
        self.flags.add(flag)

    def clear_flag(self, flag):
        if not self.sticky:
            self.flags.discard(flag)

    def get_flag(self, flag):
        return flag in self.flags


def test_tf32_is_cleared_unless_asked_for():
    config = FakeConfig()
    trt_compat.set_tf32(fake_trt(), config, False)
    assert config.flags == set()
    trt_compat.set_tf32(fake_trt(), config, True)
    assert config.flags == {"tf32-flag"}
    with pytest.raises(BackendError) as e:
        trt_compat.set_tf32(fake_trt(), FakeConfig(sticky=True), False)
    assert e.value.code == "ENGINE_BUILD_FAILED"


def test_tf32_on_a_tensorrt_without_the_flag():
    trt = fake_trt()
    trt.BuilderFlag = SimpleNamespace()
    config = FakeConfig()
    config.flags.clear()
    trt_compat.set_tf32(trt, config, False)  # nothing to clear: float32 math anyway
    with pytest.raises(BackendError) as e:
        trt_compat.set_tf32(trt, config, True)
    assert e.value.code == "ENGINE_BUILD_FAILED" and "TF32" in e.value.message


def test_no_version_compatibility_helper_is_left():
    """Version-compatible plans are refused (BuildOptions): nothing sets those flags."""
    assert not hasattr(trt_compat, "version_compat_flags")
    source = Path(trt_compat.__file__).read_text() + Path(builder.__file__).read_text()
    assert "VERSION_COMPATIBLE" not in source and "EXCLUDE_LEAN_RUNTIME" not in source


def test_missing_tensorrt_says_how_to_install_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorrt", None)
    with pytest.raises(MissingDependencyError) as e:
        trt_compat.require_tensorrt("the TensorRT backend")
    assert e.value.code == "DEPENDENCY_MISSING" and e.value.module == "tensorrt"
    # not the gpu extra (it does not install TensorRT) but what does
    assert "tensorrt-cu12" in e.value.message and "JetPack" in e.value.message
    assert 'edgemed[gpu]"' not in e.value.message


# -- engines -----------------------------------------------------------------------------------


def test_device_memory_only_from_v2():
    assert trt_compat.device_memory_bytes(SimpleNamespace(device_memory_size_v2=1 << 20)) == 1 << 20
    assert trt_compat.device_memory_bytes(SimpleNamespace()) is None


def test_numpy_dtypes_by_member_name():
    dt = enum.Enum("DataType", "FLOAT HALF INT8 INT32 INT64 BOOL UINT8 BF16 FP8")
    assert trt_compat.numpy_dtype(dt.FLOAT) == np.float32
    assert trt_compat.numpy_dtype(dt.HALF) == np.float16
    assert trt_compat.numpy_dtype(dt.INT64) == np.int64
    for name in ("BF16", "FP8"):
        with pytest.raises(BackendError) as e:
            trt_compat.numpy_dtype(dt[name])
        assert e.value.code == "ENGINE_INCOMPATIBLE"


class FakeDims:
    """Like TensorRT's Dims: indexable with a length, not a real sequence."""

    def __init__(self, *d):
        self._d = d

    def __len__(self):
        return len(self._d)

    def __getitem__(self, i):
        return self._d[i]


def test_io_tensors_read_from_the_engine():
    dt = enum.Enum("DataType", "FLOAT HALF")
    tensors = {
        "image": ("in", FakeDims(-1, 3, 64, 64), dt.HALF),
        "logits": ("out", FakeDims(-1, 5, 64, 64), dt.FLOAT),
    }
    engine = SimpleNamespace(
        num_io_tensors=2,
        get_tensor_name=lambda i: list(tensors)[i],
        get_tensor_mode=lambda n: tensors[n][0],
        get_tensor_shape=lambda n: tensors[n][1],
        get_tensor_dtype=lambda n: tensors[n][2],
    )
    io = trt_compat.io_tensors(fake_trt(), engine)
    assert [(t.name, t.is_input, t.shape, t.dtype) for t in io] == [
        ("image", True, (-1, 3, 64, 64), np.dtype(np.float16)),
        ("logits", False, (-1, 5, 64, 64), np.dtype(np.float32)),
    ]

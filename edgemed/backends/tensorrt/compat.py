"""TensorRT 10.3 .. 11.x differences, decided in this one place by attribute presence.

JetPack 6 ships TensorRT 10.3 and never gets 11, so the runtime must work on both.
Nothing here compares version numbers to pick an API: each helper looks the attribute
up by name and says clearly when it is absent. Every helper takes the ``tensorrt``
module as an argument (edgemed imports it lazily), so the logic is testable with
stand-in namespaces that have, or lack, the attributes in question.

What differs, and how it is handled:

- Strongly typed networks: TensorRT 10 needs ``NetworkDefinitionCreationFlag.
  STRONGLY_TYPED`` (looked up by name: its integer value differs between versions);
  TensorRT 11 networks are always strongly typed and the flag is deprecated, so none
  is passed there. Precision therefore lives in the ONNX (AutoCast FP16, Q/DQ INT8):
  no precision builder flags are ever set.
- ``IProgressMonitor``: used when present; otherwise the builder prints elapsed time.
- Execution memory: only ``device_memory_size_v2`` is read (the older name is gone in
  11).
- Hardware compatibility: enum members looked up by name. Version-compatible plans are
  not built (see :class:`edgemed.backends.tensorrt.builder.BuildOptions`).
- TF32: ``BuilderFlag.TF32`` is on by default in 10.x and 11.x; :func:`set_tf32` sets or
  clears it explicitly.

TensorRT is not part of the ``gpu`` extra (pip cannot say "the TensorRT already
installed": the ``tensorrt`` metapackage would pull the newest ``tensorrt_cu13`` over a
working ``tensorrt-cu12`` or JetPack install); :func:`require_tensorrt` says how to
install the right one.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from types import ModuleType
from typing import Any

import numpy as np

from edgemed.errors import BackendError, MissingDependencyError, UsageError

__all__ = [
    "HARDWARE_COMPAT_LEVELS",
    "TENSORRT_INSTALL",
    "IOTensor",
    "ProgressPrinter",
    "TensorRTMissingError",
    "device_memory_bytes",
    "dims",
    "hardware_compat_level",
    "io_tensors",
    "major_version",
    "network_flags",
    "numpy_dtype",
    "progress_monitor",
    "require_tensorrt",
    "set_tf32",
    "set_workspace",
]

#: How to get TensorRT, which no edgemed extra installs (see the module docstring).
TENSORRT_INSTALL = (
    "TensorRT is not part of edgemed[gpu]: install the one matching this machine's CUDA "
    "(pip install tensorrt-cu12 or tensorrt-cu13, or NVIDIA's packages; on Jetson, "
    "JetPack's own, in a venv made with --system-site-packages)"
)


class TensorRTMissingError(MissingDependencyError):
    """``tensorrt`` does not import: ``DEPENDENCY_MISSING``, saying how to install it."""

    def __init__(self, purpose: str) -> None:
        # Not MissingDependencyError's message: `pip install "edgemed[gpu]"` brings
        # pycuda, not TensorRT.
        BackendError.__init__(
            self, f"the Python module 'tensorrt' is needed for {purpose}: {TENSORRT_INSTALL}"
        )
        self.module = "tensorrt"
        self.extra = "gpu"


def require_tensorrt(purpose: str) -> ModuleType:
    """Import ``tensorrt`` or raise :class:`TensorRTMissingError`."""
    from edgemed._lazy import import_module

    try:  # a Ctrl-C in its import must not read as "not installed"
        return import_module("tensorrt")
    except ImportError as exc:  # also when sys.modules["tensorrt"] is None (blocked)
        raise TensorRTMissingError(purpose) from exc


#: ``--hardware-compat`` values -> ``HardwareCompatibilityLevel`` member names.
HARDWARE_COMPAT_LEVELS = {
    "none": "NONE",
    "ampere_plus": "AMPERE_PLUS",
    "same_compute_capability": "SAME_COMPUTE_CAPABILITY",
}

# TensorRT DataType member names -> NumPy dtypes for engine IO. BF16 and FP8 IO have no
# NumPy dtype: such an engine is refused with a clear message rather than misread.
_DTYPES: dict[str, np.dtype] = {
    "FLOAT": np.dtype(np.float32),
    "HALF": np.dtype(np.float16),
    "INT8": np.dtype(np.int8),
    "UINT8": np.dtype(np.uint8),
    "INT32": np.dtype(np.int32),
    "INT64": np.dtype(np.int64),
    "BOOL": np.dtype(np.bool_),
}


def major_version(trt: Any) -> int:
    """The major version of the ``tensorrt`` module (``10`` for ``10.3.0.30``)."""
    text = str(getattr(trt, "__version__", ""))
    try:
        return int(text.split(".")[0])
    except ValueError:
        raise BackendError(
            f"cannot tell the TensorRT version from {text!r}", code="ENGINE_BUILD_FAILED"
        ) from None


def network_flags(trt: Any) -> int:
    """``create_network`` flags for a strongly typed network on this TensorRT.

    Raises:
        BackendError: ``ENGINE_BUILD_FAILED`` on a TensorRT 10 without the flag (older
            than 10.3, which edgemed does not support).
    """
    if major_version(trt) >= 11:
        return 0  # always strongly typed; the flag is deprecated there
    flag = getattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED", None)
    if flag is None:
        raise BackendError(
            f"TensorRT {trt.__version__} cannot build strongly typed networks "
            "(edgemed needs TensorRT 10.3 or newer)",
            code="ENGINE_BUILD_FAILED",
        )
    return 1 << int(flag)


def set_workspace(trt: Any, config: Any, mib: int | None) -> None:
    """Cap the builder's workspace memory pool at ``mib`` MiB (``None``: TensorRT's default)."""
    if mib is None:
        return
    if mib < 1:
        raise UsageError("--workspace must be at least 1 MiB")
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(mib) << 20)


def hardware_compat_level(trt: Any, level: str) -> Any:
    """The ``HardwareCompatibilityLevel`` member for ``level`` (a key of
    :data:`HARDWARE_COMPAT_LEVELS`), or ``None`` for ``none``.

    Raises:
        UsageError: unknown level name.
        BackendError: ``ENGINE_BUILD_FAILED`` when this TensorRT lacks the level.
    """
    if level not in HARDWARE_COMPAT_LEVELS:
        raise UsageError(
            f"hardware compatibility must be one of {', '.join(HARDWARE_COMPAT_LEVELS)}, "
            f"got {level!r}"
        )
    if level == "none":
        return None
    enum = getattr(trt, "HardwareCompatibilityLevel", None)
    member = getattr(enum, HARDWARE_COMPAT_LEVELS[level], None) if enum is not None else None
    if member is None:
        raise BackendError(
            f"TensorRT {trt.__version__} has no hardware compatibility level {level}",
            code="ENGINE_BUILD_FAILED",
        )
    return member


def set_tf32(trt: Any, config: Any, enabled: bool) -> None:
    """Allow (``enabled``) or forbid TF32 for float32 math in ``config``.

    TensorRT sets ``BuilderFlag.TF32`` by default; strongly typed networks still honour
    it (it is no precision flag but a math mode of FLOAT tensors). Forbidding it on a
    TensorRT without the flag needs nothing; asking for it there cannot be honoured.

    Raises:
        BackendError: ``ENGINE_BUILD_FAILED`` when TF32 is asked for and absent, or the
            flag does not take the state asked for.
    """
    flag = getattr(trt.BuilderFlag, "TF32", None)
    if flag is None:
        if enabled:
            raise BackendError(
                f"TensorRT {trt.__version__} has no BuilderFlag.TF32: --tf32 cannot be honoured",
                code="ENGINE_BUILD_FAILED",
            )
        return
    if enabled:
        config.set_flag(flag)
    else:
        config.clear_flag(flag)
    if bool(config.get_flag(flag)) != enabled:
        raise BackendError(
            f"TensorRT kept TF32 {'off' if enabled else 'on'} against the build options",
            code="ENGINE_BUILD_FAILED",
        )


def device_memory_bytes(engine: Any) -> int | None:
    """Execution memory an engine's context needs (``device_memory_size_v2``), if known."""
    value = getattr(engine, "device_memory_size_v2", None)
    return int(value) if value is not None else None


def numpy_dtype(trt_dtype: Any) -> np.dtype:
    """The NumPy dtype for a TensorRT ``DataType`` member (matched by name).

    Raises:
        BackendError: ``ENGINE_INCOMPATIBLE`` for IO types NumPy cannot hold (BF16, FP8,
            INT4...).
    """
    name = str(getattr(trt_dtype, "name", trt_dtype)).rsplit(".", 1)[-1]
    if name not in _DTYPES:
        raise BackendError(
            f"engine IO type {name} has no NumPy equivalent", code="ENGINE_INCOMPATIBLE"
        )
    return _DTYPES[name]


@dataclass(frozen=True)
class IOTensor:
    """One engine input or output: ``shape`` has -1 for dynamic dimensions."""

    name: str
    is_input: bool
    shape: tuple[int, ...]
    dtype: np.dtype


def io_tensors(trt: Any, engine: Any) -> list[IOTensor]:
    """The engine's IO tensors in engine order, read from the engine itself."""
    tensors = []
    for i in range(engine.num_io_tensors):
        name = engine.get_tensor_name(i)
        is_input = engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT
        shape = dims(engine.get_tensor_shape(name))
        tensors.append(IOTensor(name, is_input, shape, numpy_dtype(engine.get_tensor_dtype(name))))
    return tensors


def dims(shape: Any) -> tuple[int, ...]:
    """A TensorRT ``Dims`` (indexable, with a length) as a tuple of ints."""
    return tuple(int(shape[i]) for i in range(len(shape)))


class ProgressPrinter:
    """Turns TensorRT's build phases into a few readable lines.

    Phase starts and ends are printed indented by depth (phases deeper than
    ``max_depth`` are not); step progress of a phase at most every ``interval``
    seconds. Thread-safe: TensorRT may report from several threads.
    """

    def __init__(
        self,
        emit: Callable[[str], None],
        *,
        interval: float = 5.0,
        max_depth: int = 1,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._emit = emit
        self._interval = interval
        self._max_depth = max_depth
        self._clock = clock
        self._lock = threading.Lock()
        self._phases: dict[str, tuple[int, int, float]] = {}  # name -> depth, steps, start
        self._last = clock()

    def phase_start(self, phase_name: str, parent_phase: str | None, num_steps: int) -> None:
        with self._lock:
            depth = self._phases[parent_phase][0] + 1 if parent_phase in self._phases else 0
            self._phases[phase_name] = (depth, num_steps, self._clock())
            if depth <= self._max_depth:
                self._emit(f"{'  ' * depth}{phase_name} ({num_steps} steps)")

    def step_complete(self, phase_name: str, step: int) -> bool:
        with self._lock:
            depth, steps, _ = self._phases.get(phase_name, (0, 0, 0.0))
            now = self._clock()
            if depth <= self._max_depth and now - self._last >= self._interval:
                self._last = now
                self._emit(f"{'  ' * depth}{phase_name}: {step + 1}/{steps}")
        return True  # never cancel the build

    def phase_finish(self, phase_name: str) -> None:
        with self._lock:
            depth, _, start = self._phases.pop(phase_name, (0, 0, self._clock()))
            if depth <= self._max_depth:
                took = self._clock() - start
                self._emit(f"{'  ' * depth}{phase_name} done ({took:.1f} s)")


def progress_monitor(trt: Any, printer: ProgressPrinter) -> Any | None:
    """An ``IProgressMonitor`` forwarding to ``printer``, or ``None`` when this
    TensorRT has no ``IProgressMonitor`` (the builder then prints elapsed time)."""
    base = getattr(trt, "IProgressMonitor", None)
    if base is None:
        return None

    class _Monitor(base):  # type: ignore[misc,valid-type]
        def __init__(self) -> None:
            # The binding's trampoline must be initialised explicitly.
            super().__init__()

        def phase_start(self, phase_name: str, parent_phase: str | None, num_steps: int) -> None:
            printer.phase_start(phase_name, parent_phase, num_steps)

        def step_complete(self, phase_name: str, step: int) -> bool:
            return printer.step_complete(phase_name, step)

        def phase_finish(self, phase_name: str) -> None:
            printer.phase_finish(phase_name)

    return _Monitor()

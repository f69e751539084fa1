"""The CUDA device through pycuda: context, stream, device and pinned buffers.

This module (with the rest of :mod:`edgemed.cuda`) is the only place pycuda is
imported, lazily, at the point of use. It never imports ``pycuda.autoinit``: that
creates a fresh context per process and fights TensorRT, CUDA preprocessing and any
other library for the GPU. :meth:`CudaDevice.open` retains the device's *primary*
context instead, the one the CUDA runtime (and so TensorRT) uses too.

Every pycuda object needs a current context on the calling thread. Create buffers and
run copies inside ``with device.active():`` (which pushes the primary context and pops
it again), and wrap CUDA work in :func:`cuda_errors` so failures become
:class:`~edgemed.errors.BackendError` with ``GPU_OOM``, ``GPU_FATAL`` or
``GPU_UNAVAILABLE``. ``GPU_FATAL`` means the context is unusable (illegal address,
launch failure...): the pipeline then refuses all further work.

Lifetimes: pycuda frees an allocation, stream or event in the context it was made in,
and once :meth:`CudaDevice.close` has detached that context every later free is skipped
without a word (``CUDAPP_CATCH_CLEANUP_ON_DEAD_CONTEXT``), so memory freed late is
leaked while TensorRT keeps the primary context alive. Hence :meth:`CudaDevice.close`
frees every :class:`DeviceBuffer` and :class:`PinnedBuffer` made under it, and its
stream, inside the context before it detaches; owners drop their events and graphs
before that.
"""

from __future__ import annotations

import sys
import threading
import weakref
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from typing import Any

import numpy as np

from edgemed._lazy import require
from edgemed.errors import BackendError

__all__ = [
    "CudaDevice",
    "CudaGraph",
    "DeviceBuffer",
    "StageTimer",
    "DeviceInfo",
    "PinnedBuffer",
    "classify_cuda_error",
    "cuda_errors",
    "graph_driver",
    "query_device",
]

# Message fragments of CUDA errors that leave the context unusable ("sticky" errors):
# after one, every later call in the process fails or computes garbage.
_UNAVAILABLE = (
    "no cuda-capable device",
    "no device",
    "driver version is insufficient",
    "cuda driver version",
    "not initialized",
    "invalid device ordinal",
    "cuinit failed",
)


def classify_cuda_error(kind: str, message: str) -> str:
    """The edgemed code for a CUDA failure from its exception class name and message.

    Out of memory is ``GPU_OOM`` (recoverable: a smaller batch may fit); no usable GPU
    is ``GPU_UNAVAILABLE``; anything else is ``GPU_FATAL``. Unknown CUDA errors are
    treated as fatal on purpose: a medical result computed on a corrupted context is
    worse than no result.
    """
    text = message.lower()
    if kind == "MemoryError" or "out of memory" in text:
        return "GPU_OOM"
    if any(s in text for s in _UNAVAILABLE):
        return "GPU_UNAVAILABLE"
    return "GPU_FATAL"


@contextmanager
def cuda_errors(what: str = "CUDA call") -> Iterator[None]:
    """Map pycuda exceptions raised inside the block to :class:`BackendError`."""
    try:
        yield
    except BackendError:
        raise
    except Exception as exc:
        drv = sys.modules.get("pycuda.driver")
        error_type = getattr(drv, "Error", None) if drv is not None else None
        if error_type is None or not isinstance(exc, error_type):
            raise
        code = classify_cuda_error(type(exc).__name__, str(exc))
        raise BackendError(f"{what} failed: {exc}", code=code) from exc


# The CudaDevice whose context each thread has made current through active() (innermost
# last): buffers made there are owned by it and freed by its close().
_ACTIVE = threading.local()


def _owner() -> CudaDevice | None:
    stack: list[CudaDevice] = getattr(_ACTIVE, "stack", [])
    return stack[-1] if stack else None


def _driver() -> Any:
    require("pycuda", "gpu", "the CUDA device")
    import pycuda.driver as drv

    with cuda_errors("CUDA initialisation"):
        drv.init()
    return drv


@dataclass(frozen=True)
class DeviceInfo:
    """What edgemed needs to know about a GPU (no context is created to learn it)."""

    ordinal: int
    name: str
    compute_capability: tuple[int, int]
    integrated: bool
    total_memory: int
    #: Streaming multiprocessors: tells apart GPUs of one name and compute capability
    #: (AGX Orin, Orin NX and Orin Nano are all "Orin", 8.7).
    multiprocessor_count: int = 0

    @property
    def cc(self) -> str:
        """Compute capability as ``"major.minor"`` (cache keys use this form)."""
        return f"{self.compute_capability[0]}.{self.compute_capability[1]}"

    @property
    def arch(self) -> str:
        """The nvcc architecture, ``sm_<major><minor>`` (cubin file names use it)."""
        return f"sm_{self.compute_capability[0]}{self.compute_capability[1]}"


def query_device(ordinal: int = 0) -> DeviceInfo:
    """Describe GPU ``ordinal`` without creating a context.

    Raises:
        MissingDependencyError: pycuda is not installed.
        BackendError: ``GPU_UNAVAILABLE`` (no such GPU, no driver).
    """
    drv = _driver()
    with cuda_errors("CUDA device query"):
        count = drv.Device.count()
        if ordinal < 0 or ordinal >= count:
            raise BackendError(
                f"no CUDA GPU {ordinal} (this machine has {count})", code="GPU_UNAVAILABLE"
            )
        dev = drv.Device(ordinal)
        major, minor = dev.compute_capability()
        return DeviceInfo(
            ordinal=ordinal,
            name=str(dev.name()),
            compute_capability=(int(major), int(minor)),
            integrated=bool(dev.get_attribute(drv.device_attribute.INTEGRATED)),
            total_memory=int(dev.total_memory()),
            multiprocessor_count=int(dev.get_attribute(drv.device_attribute.MULTIPROCESSOR_COUNT)),
        )


class CudaDevice:
    """One GPU's primary context and a stream. Use :meth:`open`; close when done.

    Attributes:
        info: the :class:`DeviceInfo` of this GPU.
        stream: the ``pycuda.driver.Stream`` all of edgemed's work on it is queued on.
    """

    def __init__(self, info: DeviceInfo, context: Any, stream: Any) -> None:
        self.info = info
        self._context = context
        self.stream = stream
        self._closed = False
        # Buffers made while this device was active, freed by close() if still alive.
        self._owned: weakref.WeakSet[DeviceBuffer | PinnedBuffer] = weakref.WeakSet()

    @classmethod
    def open(cls, ordinal: int = 0) -> CudaDevice:
        """Retain GPU ``ordinal``'s primary context and create a stream on it.

        Raises:
            MissingDependencyError: pycuda is not installed.
            BackendError: ``GPU_UNAVAILABLE``, ``GPU_OOM`` or ``GPU_FATAL``.
        """
        info = query_device(ordinal)
        drv = _driver()
        with cuda_errors("CUDA context creation"):
            context = drv.Device(ordinal).retain_primary_context()
            context.push()
            try:
                stream = drv.Stream()
            finally:
                drv.Context.pop()
        return cls(info, context, stream)

    @property
    def name(self) -> str:
        return self.info.name

    @property
    def compute_capability(self) -> tuple[int, int]:
        return self.info.compute_capability

    @property
    def integrated(self) -> bool:
        """True for GPUs sharing memory with the CPU (Jetson, IGX iGPU)."""
        return self.info.integrated

    @property
    def closed(self) -> bool:
        """True once :meth:`close` ran (nothing may be queued on it any more)."""
        return self._closed

    @property
    def stream_handle(self) -> int:
        """The raw ``CUstream`` handle (for ``execute_async_v3``)."""
        return int(self.stream.handle)

    @contextmanager
    def active(self) -> Iterator[None]:
        """Make the primary context current on this thread for the block."""
        if self._closed:
            raise BackendError("the CUDA device is closed", code="BACKEND_CLOSED")
        import pycuda.driver as drv

        with cuda_errors("CUDA context switch"):
            self._context.push()
        stack = _ACTIVE.__dict__.setdefault("stack", [])
        stack.append(self)
        try:
            yield
        finally:
            stack.pop()
            drv.Context.pop()

    def synchronize(self) -> None:
        """Wait for everything queued on :attr:`stream`."""
        with self.active(), cuda_errors("CUDA stream synchronize"):
            self.stream.synchronize()

    def close(self) -> None:
        """Free what is left of this device's buffers and its stream, then release the
        primary context. Owners drop their events and CUDA graphs before (those are
        destroyed with their last reference, which must go while the context lives)."""
        if self._closed:
            return
        try:
            with self.active():
                for buffer in list(self._owned):
                    buffer.free()
                self._owned.clear()
                # pycuda destroys a stream with its last reference: here, in its context.
                self.stream = None
        finally:
            self._closed = True
            # detach() on a retained primary context releases our reference to it.
            self._context.detach()


class DeviceBuffer:
    """Linear device memory of ``nbytes``; create inside ``device.active()``.

    Attributes:
        ptr: the device address (an ``int``: TensorRT's ``set_tensor_address`` takes it).
        nbytes: the size in bytes.
    """

    def __init__(self, nbytes: int) -> None:
        import pycuda.driver as drv

        self.nbytes = int(nbytes)
        with cuda_errors(f"allocating {self.nbytes} bytes of GPU memory"):
            self._alloc = drv.mem_alloc(max(1, self.nbytes))
        self.ptr = int(self._alloc)
        self._freed = False
        owner = _owner()
        if owner is not None:
            owner._owned.add(self)

    def upload(self, host: np.ndarray, stream: Any) -> None:
        """Queue a copy of ``host`` (pinned memory for a real overlap) into the buffer."""
        import pycuda.driver as drv

        if host.nbytes > self.nbytes:
            raise BackendError("host array larger than the device buffer", code="GPU_FATAL")
        with cuda_errors("host-to-device copy"):
            drv.memcpy_htod_async(self.ptr, host, stream)

    def download(self, host: np.ndarray, stream: Any) -> None:
        """Queue a copy of the buffer's first ``host.nbytes`` bytes into ``host``."""
        import pycuda.driver as drv

        if host.nbytes > self.nbytes:
            raise BackendError("host array larger than the device buffer", code="GPU_FATAL")
        with cuda_errors("device-to-host copy"):
            drv.memcpy_dtoh_async(host, self.ptr, stream)

    def free(self) -> None:
        """Free the memory (in the current context; once: later calls do nothing)."""
        if not self._freed:
            self._freed = True
            self._alloc.free()


class PinnedBuffer:
    """Page-locked host memory as a NumPy array; create inside ``device.active()``.

    With ``mapped=True`` (integrated GPUs) the same memory is addressable by the GPU at
    :attr:`device_ptr`, so TensorRT reads inputs and writes outputs in place, with no
    copies. (Mapped allocations need ``CU_CTX_MAP_HOST``, which every context has had
    since CUDA 12.)

    Attributes:
        array: the host array (``shape``, ``dtype``), C-contiguous.
    """

    def __init__(self, shape: tuple[int, ...], dtype: Any, mapped: bool = False) -> None:
        import pycuda.driver as drv

        flags = drv.host_alloc_flags.DEVICEMAP if mapped else 0
        with cuda_errors("allocating pinned host memory"):
            self.array: np.ndarray = drv.pagelocked_empty(
                tuple(shape), np.dtype(dtype), mem_flags=flags
            )
        self._device_ptr = int(self.array.base.get_device_pointer()) if mapped else None
        self._freed = False
        owner = _owner()
        if owner is not None:
            owner._owned.add(self)

    @property
    def device_ptr(self) -> int:
        """The GPU's address of :attr:`array` (mapped buffers only)."""
        if self._device_ptr is None:
            raise BackendError("pinned buffer is not mapped into the GPU", code="GPU_FATAL")
        return self._device_ptr

    def free(self) -> None:
        """Free the memory (in the current context; once: later calls do nothing)."""
        if not self._freed:
            self._freed = True
            allocation: Any = self.array.base  # pycuda's HostAllocation owns the memory
            allocation.free()


def graph_driver() -> Any:
    """NVIDIA's driver API bindings (``cuda.bindings.driver``), which CUDA graphs need.

    Raises:
        MissingDependencyError: cuda-bindings is not installed (``edgemed[gpu]``).
    """
    return require("cuda.bindings.driver", "gpu", "CUDA graphs (--cuda-graphs)")


def _cu(what: str, call: Callable[..., Any], *args: Any) -> Any:
    """``call(*args)`` of cuda-bindings, whose results are ``(CUresult, value...)``:
    the value (or ``None``) on success, else a :class:`BackendError` coded as pycuda's
    errors are (:func:`classify_cuda_error`). A binding that raises (a driver too old
    to have the function, say) is a BackendError too."""
    try:
        result = call(*args)
    except Exception as exc:  # a typed error is the contract
        code = classify_cuda_error(type(exc).__name__, str(exc))
        raise BackendError(f"{what} failed: {exc}", code=code) from exc
    err, *values = result if isinstance(result, tuple) else (result,)
    if int(err) != 0:  # CUDA_SUCCESS
        cu = graph_driver()
        name = _error_text(cu.cuGetErrorName, err) or f"CUresult {int(err)}"
        text = _error_text(cu.cuGetErrorString, err)
        message = f"{name}: {text}" if text else name
        code = classify_cuda_error("CUresult", message)
        raise BackendError(f"{what} failed: {message}", code=code)
    return values[0] if len(values) == 1 else None


def _error_text(call: Callable[..., Any], err: Any) -> str:
    try:
        status, text = call(err)
    except Exception:  # only for a message
        return ""
    if int(status) != 0 or text is None:
        return ""
    return text.decode() if isinstance(text, bytes) else str(text)


class CudaGraph:
    """A CUDA graph captured from the work ``enqueue`` queues on the stream whose raw
    handle is ``stream_handle`` (:attr:`CudaDevice.stream_handle`).

    Replaying it with :meth:`launch` costs one driver call instead of one per kernel;
    valid only while the captured shapes and buffer addresses stay the same. pycuda has
    no stream capture or graph API (its ``Stream`` binds ``synchronize``, ``is_done``,
    ``wait_for_event`` and ``handle`` only), so this drives the driver API through
    NVIDIA's cuda-bindings on the pycuda stream's raw handle. Capture runs in global
    mode, as TensorRT documents for ``execute_async_v3``: a call unsafe during capture,
    from any thread, fails the capture instead of slipping out of it.

    Create, launch and :meth:`destroy` inside ``device.active()``; destroy before the
    device closes (a graph is not freed with its last reference).

    Raises:
        MissingDependencyError: cuda-bindings is missing (``edgemed[gpu]``).
        BackendError: ``GPU_*`` codes for CUDA failures; what ``enqueue`` raises, after
            the capture has been ended.
    """

    def __init__(self, stream_handle: int, enqueue: Callable[[], object]) -> None:
        # The handle, not pycuda's Stream: nothing here (nor a traceback through here)
        # keeps the stream alive past CudaDevice.close().
        cu = graph_driver()
        self._cu = cu
        self._stream = cu.CUstream(int(stream_handle))
        self._graph: Any = None
        self._exec: Any = None
        mode = cu.CUstreamCaptureMode.CU_STREAM_CAPTURE_MODE_GLOBAL
        _cu("beginning CUDA graph capture", cu.cuStreamBeginCapture, self._stream, mode)
        try:
            enqueue()
        except BaseException:
            # End the capture whatever happened: a stream left capturing fails all work.
            with suppress(BackendError):
                self._graph = _cu("ending CUDA graph capture", cu.cuStreamEndCapture, self._stream)
            self.destroy()
            raise
        try:
            self._graph = _cu("ending CUDA graph capture", cu.cuStreamEndCapture, self._stream)
            self._exec = _cu("instantiating a CUDA graph", cu.cuGraphInstantiate, self._graph, 0)
        except BaseException:
            self.destroy()
            raise

    def launch(self) -> None:
        """Queue the captured work on the stream again."""
        if self._exec is None:
            raise BackendError("the CUDA graph was destroyed", code="BACKEND_CLOSED")
        _cu("launching a CUDA graph", self._cu.cuGraphLaunch, self._exec, self._stream)

    def destroy(self) -> None:
        """Free the executable graph and the graph (idempotent, never raises: cleanup
        on a lost context has nothing left to save)."""
        cu = self._cu
        for attr, call in (("_exec", cu.cuGraphExecDestroy), ("_graph", cu.cuGraphDestroy)):
            handle = getattr(self, attr)
            setattr(self, attr, None)
            if handle is not None and int(handle) != 0:
                with suppress(Exception):  # best effort, as pycuda's own cleanup
                    call(handle)


class StageTimer:
    """GPU time of consecutive stages queued on one stream, from CUDA events.

    :meth:`start`, then :meth:`mark` after each stage's work is queued; once the stream
    has been synchronised, :meth:`elapsed_ms` gives each stage's device time (the events
    time the stream itself, not the host's queueing). Create inside ``device.active()``.
    """

    def __init__(self, stream: Any, stages: tuple[str, ...]) -> None:
        drv = _driver()
        self.stages = stages
        self._stream = stream
        with cuda_errors("creating CUDA events"):
            self._events = [drv.Event() for _ in range(len(stages) + 1)]
        self._marked: list[str] = []

    def start(self) -> None:
        self._marked = []
        with cuda_errors("recording a CUDA event"):
            self._events[0].record(self._stream)

    def mark(self, stage: str) -> None:
        """The work of ``stage`` (one of :attr:`stages`, in order) is queued."""
        i = len(self._marked)
        if i >= len(self.stages) or self.stages[i] != stage:
            raise BackendError(f"stage {stage!r} marked out of order", code="BACKEND_FAILED")
        with cuda_errors("recording a CUDA event"):
            self._events[i + 1].record(self._stream)
        self._marked.append(stage)

    def elapsed_ms(self) -> dict[str, float]:
        """Device milliseconds per marked stage (after the stream has been synchronised)."""
        with cuda_errors("reading CUDA event times"):
            return {
                name: float(self._events[i + 1].time_since(self._events[i]))
                for i, name in enumerate(self._marked)
            }

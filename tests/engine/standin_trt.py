"""Stand-in ``tensorrt`` and ``pycuda`` modules, so that the TensorRT backend and the
engine builder run for real here (no GPU, no TensorRT, no pycuda on this machine).

They follow the TensorRT 10.x Python API and pycuda's, as far as edgemed calls them.
"Device memory" is host memory with integer addresses; every TensorRT or copy access is
checked against a live allocation of the right kind (device, or mapped pinned memory),
and one outside is an illegal memory access: sticky, raised at the next synchronize, as
on a GPU. Work queued on a stream runs at ``synchronize()``, in order; during stream
capture it is recorded into the graph instead. Driver calls need a current context. A
plan is a magic header, JSON (TensorRT version, GPU, cc, profile, host code) and the
ONNX bytes; ``execute_async_v3`` reads the inputs at their tensor addresses, runs the
network in ONNX Runtime and writes the outputs at theirs.

NOT checked: real kernels, TensorRT numerics (FP16/INT8 tactics, fusion), real
host/device asynchrony, pycuda's argument checks, TensorRT calls edgemed does not make.
"""

from __future__ import annotations

import ctypes
import enum
import hashlib
import json
import sys
import threading
import time
import types
import warnings
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort

PLAN_MAGIC = b"STANDIN-TRT-PLAN\x00"
CACHE_MAGIC = b"STANDIN-TRT-TIMING\x00"
_SESSIONS: dict[str, ort.InferenceSession] = {}  # ONNX sha256 -> session, shared by tests
_ONNX_TYPES = {1: "FLOAT", 10: "HALF", 3: "INT8", 2: "UINT8", 6: "INT32", 7: "INT64", 9: "BOOL"}
_NUMPY = {"FLOAT": "f4", "HALF": "f2", "INT8": "i1", "UINT8": "u1", "INT32": "i4", "INT64": "i8"}


@dataclass
class Sim:
    """The simulated GPU and TensorRT install, with the counters tests read."""

    gpu_name: str = "NVIDIA H100 80GB HBM3"
    cc: tuple[int, int] = (9, 0)
    integrated: bool = False
    total_memory: int = 80 << 30
    multiprocessors: int = 132
    trt_version: str = "10.13.0.35"
    calls: dict[str, int] = field(default_factory=dict)
    mem: dict[int, tuple[int, str, Any]] = field(default_factory=dict)  # addr: n, kind, buf
    used: int = 0  # device bytes allocated
    contexts: list[Any] = field(default_factory=list)  # the current-context stack
    streams: dict[int, _Queue] = field(default_factory=dict)  # live streams by handle
    events: set[int] = field(default_factory=set)  # live events
    graphs: dict[int, list] = field(default_factory=dict)  # live CUgraph: captured work
    execs: dict[int, list] = field(default_factory=dict)  # live CUgraphExec
    sticky: str | None = None  # a fatal error: every later driver call fails with it
    fault_next_execute: str | None = None  # the next execution faults with this message

    def count(self, what: str) -> None:
        self.calls[what] = self.calls.get(what, 0) + 1

    def n(self, what: str) -> int:
        return self.calls.get(what, 0)

    def live(self) -> dict[str, int]:
        """What is allocated now: device and pinned bytes, streams, events, graphs (a
        leak shows as growth between two moments with the same work open)."""
        pinned = sum(n for n, kind, _ in self.mem.values() if kind != "device")
        return {
            "device_bytes": self.used,
            "pinned_bytes": pinned,
            "streams": len(self.streams),
            "events": len(self.events),
            "graphs": len(self.graphs) + len(self.execs),
        }

    # -- what the stand-in tensorrt needs of "the GPU" (RealGpu: a real one) ----------

    def has_context(self) -> bool:
        return bool(self.contexts)

    def check(self, addr: int, nbytes: int) -> None:
        """Raise unless [addr, addr+nbytes) lies in one live GPU-visible allocation."""
        for base, (size, kind, _) in self.mem.items():
            if base <= addr and addr + nbytes <= base + size and kind in ("device", "mapped"):
                return
        raise _Fault(f"{nbytes} bytes at {addr:#x} are outside any live GPU allocation")

    def enqueue(self, handle: int | None, op) -> None:
        """Queue ``op`` on stream ``handle`` (captured while it captures); the default
        stream (None, 0) runs it now."""
        queue = self.streams.get(handle) if handle else None
        if queue is None:
            op()
        elif queue.capture is not None:
            queue.capture.append(op)
        else:
            queue.pending.append(op)

    def read(self, addr: int, nbytes: int) -> bytes:
        self.check(addr, nbytes)
        return ctypes.string_at(addr, nbytes)

    def write(self, addr: int, data: np.ndarray) -> None:
        self.check(addr, data.nbytes)
        ctypes.memmove(addr, data.ctypes.data, data.nbytes)


class RealGpu(Sim):
    """The stand-in tensorrt's view of a *real* GPU through the real pycuda (for
    benchmarks/gpu_check.sh): the engine reads its inputs from and writes its outputs to
    real device memory with pycuda's copies, after the work queued before it has run
    (the context is synchronised; no CUDA graph can capture that host step). Everything
    but TensorRT itself then runs for real: pycuda, the kernels, the copies, the frees."""

    def __init__(self, drv: types.ModuleType, **kw: Any) -> None:
        super().__init__(**kw)
        self._standin_drv = drv

    def has_context(self) -> bool:
        return self._standin_drv.Context.get_current() is not None

    def check(self, addr: int, nbytes: int) -> None:
        pass  # the GPU itself faults on a bad address

    def enqueue(self, handle: int | None, op) -> None:
        self._standin_drv.Context.synchronize()
        op()

    def read(self, addr: int, nbytes: int) -> bytes:
        host = np.empty(nbytes, np.uint8)
        self._standin_drv.memcpy_dtoh(host, addr)
        return host.tobytes()

    def write(self, addr: int, data: np.ndarray) -> None:
        self._standin_drv.memcpy_htod(addr, np.ascontiguousarray(data))


@dataclass
class _Queue:
    """A stream's work not yet run, and the work a capture records instead."""

    pending: list = field(default_factory=list)
    capture: list | None = None
    invalidated: bool = False


class _Fault(Exception):
    """A simulated kernel's illegal memory access (becomes a sticky CUDA error)."""


def make_pycuda(sim: Sim) -> dict[str, types.ModuleType]:
    """``pycuda`` and ``pycuda.driver`` bound to ``sim``: only names the real modules
    have (tests/engine/test_engine_conformance.py compares them with a real build); the
    stand-in's own state is in ``sim`` or in attributes named ``_standin_*``."""
    drv = types.ModuleType("pycuda.driver")
    drv.Error = type("Error", (Exception,), {})
    for name in ("LogicError", "LaunchError", "MemoryError", "RuntimeError", "CompileError"):
        setattr(drv, name, type(name, (drv.Error,), {}))

    def current() -> Any:
        return sim.contexts[-1] if sim.contexts else None

    def need_context(call: str) -> Any:
        if sim.sticky:
            raise drv.LaunchError(f"{call} failed: {sim.sticky}")
        if not sim.contexts:
            raise drv.LogicError(f"{call} failed: invalid device context")
        return sim.contexts[-1]

    def capture_unsafe(call: str) -> None:
        """A synchronous call while a stream captures (global mode) fails and breaks
        the capture, as the driver does."""
        for queue in sim.streams.values():
            if queue.capture is not None:
                queue.invalidated = True
                raise drv.LogicError(
                    f"{call} failed: operation not permitted when stream is capturing"
                )

    def cleanup_allowed(ctx: Any, what: str) -> bool:
        """pycuda's cleanup in the owner's context: skipped without a word once that
        context is detached (the memory leaks), with a warning from another thread."""
        if not ctx._standin_valid:
            return False
        if current() is not ctx and threading.get_ident() != ctx._standin_thread:
            warnings.warn(f"{what} in out-of-thread context could not be cleaned up", stacklevel=3)
            return False
        return True

    class _Allocation:
        """A pycuda allocation's free: in its owner's context, once; what the garbage
        collector takes unfreed is freed too (pycuda's destructor)."""

        _standin_kind = "allocation"  # pycuda's name in messages

        def _standin_free(self, what: str) -> None:
            if not self._standin_valid:
                raise drv.LogicError(f"{self._standin_kind}::free failed: invalid handle")
            self._standin_valid = False
            if not cleanup_allowed(self._standin_ctx, self._standin_kind):
                sim.count("free_skipped")  # stays in sim.mem: leaked
                return
            nbytes, kind, _ = sim.mem.pop(self._standin_addr)
            if kind == "device":
                sim.used -= nbytes
            sim.count(what)

        def __del__(self) -> None:
            if getattr(self, "_standin_valid", False):
                self._standin_free("gc_free")

    class DeviceAllocation(_Allocation):
        _standin_kind = "device_allocation"

        def __init__(self, nbytes: int) -> None:
            self._standin_ctx = need_context("cuMemAlloc")
            if sim.used + nbytes > sim.total_memory:
                raise drv.MemoryError("cuMemAlloc failed: out of memory")
            buf = np.full(nbytes + 256, 0xAB, np.uint8)  # poisoned: unwritten reads show
            self._standin_addr = (buf.ctypes.data + 255) // 256 * 256  # 256-aligned
            self._standin_valid = True
            sim.mem[self._standin_addr] = (nbytes, "device", buf)
            sim.used += nbytes
            sim.count("mem_alloc")

        def __int__(self) -> int:
            return self._standin_addr

        __index__ = __int__

        def free(self) -> None:
            self._standin_free("mem_free")

    def mem_alloc(nbytes: int, /) -> DeviceAllocation:
        return DeviceAllocation(nbytes)

    class PagelockedHostAllocation(_Allocation):
        """The ``.base`` of a pagelocked array, as pycuda's."""

        _standin_kind = "pagelocked_host_allocation"

        def __init__(self, nbytes: int, flags: int) -> None:
            self._standin_ctx = need_context("cuMemHostAlloc")
            self._standin_buf = np.empty(max(1, nbytes), np.uint8)
            self._standin_addr = self._standin_buf.ctypes.data
            self._standin_flags, self._standin_valid = flags, True
            mapped = bool(flags & drv.host_alloc_flags.DEVICEMAP)
            sim.mem[self._standin_addr] = (
                nbytes,
                "mapped" if mapped else "pinned",
                self._standin_buf,
            )
            sim.count("host_alloc")

        def get_device_pointer(self) -> int:
            if not self._standin_flags & drv.host_alloc_flags.DEVICEMAP:
                raise drv.LogicError("cuMemHostGetDevicePointer failed: invalid value")
            return self._standin_addr  # UVA: the mapped device pointer is the host address

        def get_flags(self) -> int:
            return int(self._standin_flags)

        def free(self) -> None:
            self._standin_free("host_free")

    def pagelocked_empty(shape, dtype, order="C", mem_flags=0) -> np.ndarray:
        dtype = np.dtype(dtype)
        shape = tuple(shape) if isinstance(shape, tuple | list) else (int(shape),)
        alloc = PagelockedHostAllocation(int(np.prod(shape)) * dtype.itemsize, mem_flags)
        # The array's base is the allocation itself, as in pycuda (through a one-off
        # __array_interface__, removed again: the real class has none).
        alloc.__array_interface__ = {
            "shape": shape,
            "typestr": dtype.str,
            "data": (alloc._standin_addr, False),
            "version": 3,
        }
        arr = np.asarray(alloc)
        del alloc.__array_interface__
        return arr if order == "C" else np.asfortranarray(arr)

    class Context:
        def __init__(self) -> None:  # pycuda makes these; Device.retain_primary_context
            self._standin_valid = True
            self._standin_thread = threading.get_ident()

        def push(self) -> None:
            if not self._standin_valid:
                raise drv.LogicError("cuCtxPushCurrent failed: invalid device context")
            sim.contexts.append(self)

        @staticmethod
        def pop() -> None:
            if not sim.contexts:
                raise drv.LogicError("context::pop failed: cannot pop non-current context")
            sim.contexts.pop()

        @staticmethod
        def get_current() -> Any:
            return current()

        @staticmethod
        def get_device() -> Device:
            need_context("cuCtxGetDevice")
            return Device(0)

        @staticmethod
        def synchronize() -> None:
            need_context("cuCtxSynchronize")
            capture_unsafe("cuCtxSynchronize")
            for queue in list(sim.streams.values()):
                run(queue, "cuCtxSynchronize")

        def detach(self) -> None:
            if not self._standin_valid:
                raise drv.LogicError("context::detach failed: cannot detach from invalid context")
            if current() is self:
                sim.contexts.pop()
                sim.count("ctx_detach")
            elif threading.get_ident() == self._standin_thread:
                sim.count("ctx_detach")
            # else: out of its thread, pycuda releases nothing (the reference leaks)
            self._standin_valid = False  # from now on, frees in it are skipped

    class Device:
        def __init__(self, ordinal: int) -> None:
            if ordinal != 0:
                raise drv.LogicError("cuDeviceGet failed: invalid device ordinal")

        @staticmethod
        def count() -> int:
            return 1

        def name(self) -> str:
            return sim.gpu_name

        def compute_capability(self) -> tuple[int, int]:
            return sim.cc

        def total_memory(self) -> int:
            return sim.total_memory

        def get_attribute(self, attr) -> int:
            known = {
                drv.device_attribute.INTEGRATED: int(sim.integrated),
                drv.device_attribute.MULTIPROCESSOR_COUNT: sim.multiprocessors,
                drv.device_attribute.COMPUTE_CAPABILITY_MAJOR: sim.cc[0],
                drv.device_attribute.COMPUTE_CAPABILITY_MINOR: sim.cc[1],
                drv.device_attribute.CAN_MAP_HOST_MEMORY: 1,
            }
            return known[attr]

        def retain_primary_context(self) -> Context:
            sim.count("ctx_retain")
            return Context()

    def run(queue: _Queue, call: str) -> None:
        ops, queue.pending = queue.pending, []
        for op in ops:
            try:
                op()
            except _Fault as exc:  # a kernel faulted: the context is lost for good
                sim.sticky = f"an illegal memory access was encountered ({exc})"
                # The rest of the queue is lost with the context; and nothing of it may
                # stay alive in this frame, which the error's traceback keeps (pycuda's
                # frames are C++, holding nothing).
                ops.clear()
                raise drv.LaunchError(f"{call} failed: {sim.sticky}") from None

    class Stream:
        def __init__(self, flags: int = 0) -> None:
            self._standin_ctx = need_context("cuStreamCreate")
            handle = 0x5000 + 16 * sim.n("stream_create")  # never 0 (the default stream)
            self._standin_handle = handle
            sim.streams[handle] = _Queue()
            sim.count("stream_create")

        @property
        def handle(self) -> int:
            return self._standin_handle

        def synchronize(self) -> None:
            queue = sim.streams[self._standin_handle]
            del self  # a traceback through here must not keep the stream (C++ in pycuda)
            need_context("cuStreamSynchronize")  # (a sticky error raises here too)
            if queue.capture is not None:
                queue.invalidated = True
                raise drv.LogicError(
                    "cuStreamSynchronize failed: operation not permitted when stream is capturing"
                )
            run(queue, "cuStreamSynchronize")

        def is_done(self) -> bool:
            return not sim.streams[self._standin_handle].pending

        def wait_for_event(self, event: Event) -> None:
            pass  # one timeline: work runs in queueing order anyway

        def __del__(self) -> None:
            handle = getattr(self, "_standin_handle", None)
            if handle in sim.streams and cleanup_allowed(self._standin_ctx, "stream"):
                del sim.streams[handle]
                sim.count("stream_destroy")

    class Event:
        def __init__(self, flags: int = 0) -> None:
            self._standin_ctx = need_context("cuEventCreate")
            self._standin_id = sim.n("event_create")
            self._standin_t: float | None = None
            self._standin_stream: int | None = None  # a handle: events hold no stream
            sim.events.add(self._standin_id)
            sim.count("event_create")

        def record(self, stream=None) -> Event:
            self._standin_t = None
            self._standin_stream = None if stream is None else stream.handle
            sim.enqueue(
                self._standin_stream, lambda: setattr(self, "_standin_t", time.perf_counter())
            )
            return self

        def synchronize(self) -> Event:  # waits for the stream (at least up to the record)
            queue = sim.streams.get(self._standin_stream or 0)
            if self._standin_t is None and queue is not None:
                capture_unsafe("cuEventSynchronize")
                event, self = self, None  # a traceback must not keep the event  # noqa: PLW0642
                run(queue, "cuEventSynchronize")
                return event
            return self

        def query(self) -> bool:
            return self._standin_t is not None

        def time_since(self, event: Event) -> float:
            if self._standin_t is None or event._standin_t is None:
                raise drv.LogicError("cuEventElapsedTime failed: device not ready")
            return (self._standin_t - event._standin_t) * 1e3

        def __del__(self) -> None:
            key = getattr(self, "_standin_id", None)
            if key in sim.events and cleanup_allowed(self._standin_ctx, "event"):
                sim.events.discard(key)
                sim.count("event_destroy")

    def memcpy(what: str, dst, src, nbytes: int, device: int, stream) -> None:
        need_context(what)
        sim.count(what)

        def op() -> None:
            sim.check(device, nbytes)
            ctypes.memmove(dst, src, nbytes)

        if stream is None:  # synchronous: the default stream, which a capture forbids
            capture_unsafe(what)
        sim.enqueue(None if stream is None else stream.handle, op)

    def memcpy_htod_async(dest, src, stream=None) -> None:
        src = np.ascontiguousarray(src)
        memcpy("htod", int(dest), src.ctypes.data, src.nbytes, int(dest), stream)

    def memcpy_dtoh_async(dest, src, stream=None) -> None:
        if not dest.flags.c_contiguous:
            raise drv.LogicError("memcpy_dtoh_async: destination is not contiguous")
        memcpy("dtoh", dest.ctypes.data, int(src), dest.nbytes, int(src), stream)

    def memcpy_htod(dest, src) -> None:
        memcpy_htod_async(dest, src)

    def memcpy_dtoh(dest, src) -> None:
        memcpy_dtoh_async(dest, src)

    def memset_d8_async(dest, data, size, stream=None) -> None:
        need_context("cuMemsetD8Async")

        def op() -> None:
            sim.check(int(dest), size)
            ctypes.memset(int(dest), data, size)

        sim.enqueue(None if stream is None else stream.handle, op)

    def init(flags=0) -> None:
        pass

    drv.host_alloc_flags = enum.IntFlag("host_alloc_flags", "PORTABLE DEVICEMAP WRITECOMBINED")
    drv.device_attribute = enum.IntEnum(
        "device_attribute",
        {
            "MULTIPROCESSOR_COUNT": 16,
            "INTEGRATED": 18,
            "CAN_MAP_HOST_MEMORY": 19,
            "COMPUTE_CAPABILITY_MAJOR": 75,
            "COMPUTE_CAPABILITY_MINOR": 76,
        },
    )
    drv.init, drv.mem_alloc, drv.pagelocked_empty = init, mem_alloc, pagelocked_empty
    drv.DeviceAllocation, drv.PagelockedHostAllocation = DeviceAllocation, PagelockedHostAllocation
    drv.Context, drv.Device, drv.Stream, drv.Event = Context, Device, Stream, Event
    drv.memcpy_htod_async, drv.memcpy_dtoh_async = memcpy_htod_async, memcpy_dtoh_async
    drv.memcpy_htod, drv.memcpy_dtoh = memcpy_htod, memcpy_dtoh
    drv.memset_d8_async = memset_d8_async
    pkg = types.ModuleType("pycuda")
    pkg.driver, pkg.VERSION, pkg.VERSION_TEXT = drv, (2026, 1), "2026.1"
    return {"pycuda": pkg, "pycuda.driver": drv}


def make_cuda_bindings(sim: Sim) -> dict[str, types.ModuleType]:
    """``cuda.bindings.driver`` (NVIDIA's cuda-bindings), as far as edgemed's CUDA graphs
    call it, bound to ``sim``: stream capture records the work queued on the stream, a
    launch queues it again. Results are ``(CUresult, value...)`` tuples, as the real
    module returns them; only real names (and parameter names) are offered."""
    cu = types.ModuleType("cuda.bindings.driver")
    CUresult = enum.IntEnum(  # noqa: N806 (the real names)
        "CUresult",
        {
            "CUDA_SUCCESS": 0,
            "CUDA_ERROR_INVALID_VALUE": 1,
            "CUDA_ERROR_OUT_OF_MEMORY": 2,
            "CUDA_ERROR_NO_DEVICE": 100,
            "CUDA_ERROR_INVALID_CONTEXT": 201,
            "CUDA_ERROR_INVALID_HANDLE": 400,
            "CUDA_ERROR_ILLEGAL_STATE": 401,
            "CUDA_ERROR_ILLEGAL_ADDRESS": 700,
            "CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED": 900,
            "CUDA_ERROR_STREAM_CAPTURE_INVALIDATED": 901,
        },
    )
    cu.CUresult = CUresult
    cu.CUstreamCaptureMode = enum.IntEnum(
        "CUstreamCaptureMode",
        "CU_STREAM_CAPTURE_MODE_GLOBAL CU_STREAM_CAPTURE_MODE_THREAD_LOCAL "
        "CU_STREAM_CAPTURE_MODE_RELAXED",
        start=0,
    )
    ok = CUresult.CUDA_SUCCESS

    class _Handle:
        def __init__(self, init_value=0) -> None:
            self._standin_value = int(init_value)

        def __int__(self) -> int:
            return self._standin_value

        def __repr__(self) -> str:
            return f"<{type(self).__name__} {self._standin_value:#x}>"

    handles = {n: type(n, (_Handle,), {}) for n in ("CUstream", "CUgraph", "CUgraphExec")}
    cu.CUstream, cu.CUgraph, cu.CUgraphExec = (handles[n] for n in handles)

    def fail() -> CUresult | None:
        if sim.sticky:
            return CUresult.CUDA_ERROR_ILLEGAL_ADDRESS
        return None

    def cuStreamBeginCapture(hStream, mode):  # noqa: N802,N803 (the real names)
        queue = sim.streams.get(int(hStream))
        if fail() or queue is None:
            return (fail() or CUresult.CUDA_ERROR_INVALID_HANDLE,)
        if queue.capture is not None:
            return (CUresult.CUDA_ERROR_ILLEGAL_STATE,)
        queue.capture, queue.invalidated = [], False
        sim.count("begin_capture")
        return (ok,)

    def cuStreamEndCapture(hStream):  # noqa: N802,N803
        queue = sim.streams.get(int(hStream))
        if queue is None:
            return (CUresult.CUDA_ERROR_INVALID_HANDLE, cu.CUgraph())
        if queue.capture is None:
            return (CUresult.CUDA_ERROR_ILLEGAL_STATE, cu.CUgraph())
        ops, queue.capture = queue.capture, None
        if queue.invalidated:
            return (CUresult.CUDA_ERROR_STREAM_CAPTURE_INVALIDATED, cu.CUgraph())
        handle = 0x9000 + 16 * sim.n("graph_create")
        sim.graphs[handle] = ops
        sim.count("graph_create")
        return (ok, cu.CUgraph(handle))

    def cuGraphInstantiate(hGraph, flags):  # noqa: N802,N803
        if fail():
            return (fail(), cu.CUgraphExec())
        if not sim.contexts:
            return (CUresult.CUDA_ERROR_INVALID_CONTEXT, cu.CUgraphExec())
        if int(hGraph) not in sim.graphs:
            return (CUresult.CUDA_ERROR_INVALID_VALUE, cu.CUgraphExec())
        handle = 0xA000 + 16 * sim.n("graph_instantiate")
        sim.execs[handle] = list(sim.graphs[int(hGraph)])
        sim.count("graph_instantiate")
        return (ok, cu.CUgraphExec(handle))

    def cuGraphLaunch(hGraphExec, hStream):  # noqa: N802,N803
        ops = sim.execs.get(int(hGraphExec))
        if fail() or ops is None or int(hStream) not in sim.streams:
            return (fail() or CUresult.CUDA_ERROR_INVALID_HANDLE,)
        sim.count("graph_launch")
        for op in ops:
            sim.enqueue(int(hStream), op)
        return (ok,)

    def cuGraphExecDestroy(hGraphExec):  # noqa: N802,N803
        if sim.execs.pop(int(hGraphExec), None) is None:
            return (CUresult.CUDA_ERROR_INVALID_VALUE,)
        sim.count("graph_exec_destroy")
        return (ok,)

    def cuGraphDestroy(hGraph):  # noqa: N802,N803
        if sim.graphs.pop(int(hGraph), None) is None:
            return (CUresult.CUDA_ERROR_INVALID_VALUE,)
        sim.count("graph_destroy")
        return (ok,)

    def cuGetErrorName(error):  # noqa: N802
        return (ok, CUresult(int(error)).name.encode())

    def cuGetErrorString(error):  # noqa: N802
        return (ok, CUresult(int(error)).name.lower().replace("_", " ").encode())

    for f in (
        cuStreamBeginCapture, cuStreamEndCapture, cuGraphInstantiate, cuGraphLaunch,
        cuGraphExecDestroy, cuGraphDestroy, cuGetErrorName, cuGetErrorString,
    ):  # fmt: skip
        setattr(cu, f.__name__, f)
    bindings = types.ModuleType("cuda.bindings")
    bindings.driver, bindings.__version__ = cu, "12.9.0"
    pkg = types.ModuleType("cuda")
    pkg.bindings = bindings
    return {"cuda": pkg, "cuda.bindings": bindings, "cuda.bindings.driver": cu}


def make_tensorrt(sim: Sim, drv: types.ModuleType) -> types.ModuleType:
    """A ``tensorrt`` module bound to ``sim``: the part of the API that TensorRT 10.x and
    11.x share and edgemed uses, under the real names only (checked against
    ``tensorrt-stubs`` and the list of what 11.x removed); the stand-in's own state is in
    attributes named ``_standin_*``. Device memory is reached through ``sim`` (its
    ``check``/``read``/``write``/``enqueue``), so the same module runs on a real GPU's
    memory with :class:`RealGpu`."""
    trt = types.ModuleType("tensorrt")
    trt.__version__ = sim.trt_version
    enums = {
        "NetworkDefinitionCreationFlag": "EXPLICIT_BATCH STRONGLY_TYPED",
        "TensorIOMode": "NONE INPUT OUTPUT",
        "MemoryPoolType": "WORKSPACE DLA_MANAGED_SRAM DLA_LOCAL_DRAM",
        "HardwareCompatibilityLevel": "NONE AMPERE_PLUS SAME_COMPUTE_CAPABILITY",
        # No FP16/INT8/BF16/FP8 or precision constraints: TensorRT 11 removed them.
        "BuilderFlag": "DEBUG TF32 VERSION_COMPATIBLE EXCLUDE_LEAN_RUNTIME",
        "DataType": "FLOAT HALF INT8 INT32 BOOL UINT8 FP8 BF16 INT64",
    }
    for enum_name, members in enums.items():
        setattr(trt, enum_name, enum.IntEnum(enum_name, members, start=0))
    DataType, IOMode, Flag = trt.DataType, trt.TensorIOMode, trt.BuilderFlag  # noqa: N806

    def need_context(call: str) -> None:
        if not sim.has_context():
            raise drv.LogicError(f"{call} failed: invalid device context")

    class ILogger:
        Severity = enum.IntEnum("Severity", "INTERNAL_ERROR ERROR WARNING INFO VERBOSE", start=0)

        def __init__(self) -> None:
            pass

    class IProgressMonitor:
        def __init__(self) -> None:
            pass

    class Dims:
        """Indexable with a length, like TensorRT's (no tuple methods)."""

        def __init__(self, shape=()) -> None:
            self._standin_dims = tuple(int(d) for d in shape)

        def __len__(self) -> int:
            return len(self._standin_dims)

        def __getitem__(self, i):
            return self._standin_dims[i]

        def __eq__(self, other) -> bool:
            return self._standin_dims == tuple(other)

        __hash__ = None  # as the real Dims

        def __repr__(self) -> str:
            return repr(self._standin_dims)

    def as_list(dims) -> list[int]:
        return [int(dims[i]) for i in range(len(dims))]

    class ITensor:
        def __init__(self, name: str, shape: Dims, dtype: Any, symbols: tuple) -> None:
            self.name, self.shape, self.dtype = name, shape, dtype  # shape: -1 where dynamic
            self._standin_symbols = symbols  # the ONNX dim names (None where fixed)

    def tensors(values) -> list[ITensor]:
        out = []
        for v in values:
            dims = v.type.tensor_type.shape.dim
            shape = Dims(d.dim_value if d.HasField("dim_value") else -1 for d in dims)
            symbols = tuple(d.dim_param if d.HasField("dim_param") else None for d in dims)
            dtype = DataType[_ONNX_TYPES[v.type.tensor_type.elem_type]]
            out.append(ITensor(v.name, shape, dtype, symbols))
        return out

    def parse(model: bytes) -> tuple[list[ITensor], list[ITensor]]:
        graph = onnx.load_from_string(model).graph
        weights = {t.name for t in graph.initializer}
        return tensors(i for i in graph.input if i.name not in weights), tensors(graph.output)

    class INetworkDefinition:
        def __init__(self, flags: int) -> None:
            self._standin_flags, self._standin_onnx = flags, b""
            self._standin_inputs: list[ITensor] = []
            self._standin_outputs: list[ITensor] = []

        num_inputs = property(lambda self: len(self._standin_inputs))
        num_outputs = property(lambda self: len(self._standin_outputs))

        def get_input(self, index: int) -> ITensor:
            return self._standin_inputs[index]

        def get_output(self, index: int) -> ITensor:
            return self._standin_outputs[index]

    class ParserError:
        def __init__(self, text: str) -> None:
            self._standin_text = text

        def desc(self) -> str:
            return self._standin_text

    class OnnxParser:
        def __init__(self, network: INetworkDefinition, logger: ILogger) -> None:
            self._standin_network, self._standin_errors = network, []

        num_errors = property(lambda self: len(self._standin_errors))

        def get_error(self, index: int) -> ParserError:
            return ParserError(self._standin_errors[index])

        def parse(self, model, path: str | None = None) -> bool:
            network = self._standin_network
            try:
                network._standin_inputs, network._standin_outputs = parse(bytes(model))
            except Exception as exc:  # noqa: BLE001 (the parser reports, never raises)
                self._standin_errors.append(f"ModelImporter: cannot parse the model: {exc}")
                return False
            network._standin_onnx = bytes(model)
            return True

    class IOptimizationProfile:
        def __init__(self) -> None:
            self._standin_shapes: dict[str, list[list[int]]] = {}

        def set_shape(self, input: str, min, opt, max) -> None:  # noqa: A002 (TRT's names)
            self._standin_shapes[input] = [as_list(Dims(d)) for d in (min, opt, max)]

    class ITimingCache:
        def __init__(self, device: list, entries: list) -> None:
            self._standin_device, self._standin_entries = device, entries

        def serialize(self) -> bytes:  # IHostMemory: a buffer
            return CACHE_MAGIC + json.dumps([self._standin_device, self._standin_entries]).encode()

    def this_device() -> list:
        return [sim.gpu_name, list(sim.cc), trt.__version__]

    class IBuilderConfig:
        def __init__(self, logger: ILogger) -> None:
            self._standin_logger, self._standin_profiles = logger, []
            self._standin_flags = {Flag.TF32}  # on by default, as in TensorRT 10 and 11
            self._standin_pools: dict = {}
            self._standin_timing_cache: ITimingCache | None = None
            self.hardware_compatibility_level = trt.HardwareCompatibilityLevel.NONE
            self.progress_monitor: IProgressMonitor | None = None

        def add_optimization_profile(self, profile: IOptimizationProfile) -> int:
            self._standin_profiles.append(profile)
            return len(self._standin_profiles) - 1

        def set_memory_pool_limit(self, pool, pool_size: int) -> None:
            self._standin_pools[pool] = pool_size

        def set_flag(self, flag) -> None:
            self._standin_flags.add(flag)

        def clear_flag(self, flag) -> None:
            self._standin_flags.discard(flag)

        def get_flag(self, flag) -> bool:
            return flag in self._standin_flags

        def create_timing_cache(self, serialized_timing_cache) -> ITimingCache:
            data = bytes(serialized_timing_cache)
            if data.startswith(CACHE_MAGIC):
                return ITimingCache(*json.loads(data[len(CACHE_MAGIC) :]))
            if data:
                self._standin_logger.log(
                    ILogger.Severity.ERROR, "Timing cache: bad header; using none"
                )
            return ITimingCache(this_device(), [])

        def set_timing_cache(self, cache: ITimingCache, ignore_mismatch: bool) -> bool:
            if cache._standin_device != this_device() and not ignore_mismatch:
                return False
            self._standin_timing_cache = cache
            return True

        def get_timing_cache(self) -> ITimingCache | None:
            return self._standin_timing_cache

    class Builder:
        def __init__(self, logger: ILogger) -> None:
            self._standin_logger = logger

        def create_network(self, flags: int = 0) -> INetworkDefinition:
            return INetworkDefinition(flags)

        def create_builder_config(self) -> IBuilderConfig:
            return IBuilderConfig(self._standin_logger)

        def create_optimization_profile(self) -> IOptimizationProfile:
            return IOptimizationProfile()

        def build_serialized_network(self, network, config) -> bytes | None:
            need_context("cudaGetDevice")
            sim.count("build")
            profiles = config._standin_profiles
            profile = profiles[0]._standin_shapes if profiles else {}
            logger = self._standin_logger
            fail = self._standin_check(network, profile)
            if fail:
                logger.log(ILogger.Severity.ERROR, fail)
                return None
            monitor, phases = config.progress_monitor, ("Building engine", "Tactic selection")
            if monitor is not None:
                monitor.phase_start(phases[0], None, 2)
                for step, phase in enumerate((phases[1], "Serializing")):
                    monitor.phase_start(phase, phases[0], 1)
                    if not monitor.step_complete(phase, 0):
                        logger.log(ILogger.Severity.ERROR, "Build cancelled")
                        return None
                    monitor.phase_finish(phase)
                    monitor.step_complete(phases[0], step)
                monitor.phase_finish(phases[0])
            model = network._standin_onnx
            entry = hashlib.sha256(model + repr(profile).encode()).hexdigest()
            timing = config._standin_timing_cache
            if timing is not None:
                if entry in timing._standin_entries:
                    sim.count("timing_hit")
                else:
                    timing._standin_entries.append(entry)
            flags = config._standin_flags
            header = {
                "trt": trt.__version__,
                "gpu": sim.gpu_name,
                "cc": list(sim.cc),
                "hw": int(config.hardware_compatibility_level),
                "host_code": Flag.VERSION_COMPATIBLE in flags
                and Flag.EXCLUDE_LEAN_RUNTIME not in flags,
                "tf32": Flag.TF32 in flags,
                "profile": profile,
            }
            text = json.dumps(header).encode()
            return PLAN_MAGIC + len(text).to_bytes(4, "little") + text + model

        def _standin_check(self, network, profile) -> str:
            """What TensorRT would refuse to build ("" if nothing)."""
            if not network._standin_onnx:
                return "Network has no inputs (nothing was parsed)"
            for t in network._standin_inputs:
                if t.name not in profile:
                    if -1 in t.shape:
                        return f"{t.name}: dynamic input without an optimization profile"
                    continue
                lo, opt, hi = profile[t.name]
                for shape in (lo, opt, hi):
                    fits = [d < 0 or d == s for d, s in zip(t.shape, shape, strict=False)]
                    if len(shape) != len(t.shape) or not all(fits):
                        return f"{t.name}: profile shape {shape} does not fit {t.shape}"
                if not all(a <= b <= c for a, b, c in zip(lo, opt, hi, strict=True)):
                    return f"{t.name}: profile needs MIN <= OPT <= MAX"
            return ""

    class Runtime:
        def __init__(self, logger: ILogger) -> None:
            self._standin_logger, self.engine_host_code_allowed = logger, False

        def deserialize_cuda_engine(self, serialized_engine) -> ICudaEngine | None:
            need_context("cudaGetDevice")
            sim.count("deserialize")
            data, start = bytes(serialized_engine), len(PLAN_MAGIC) + 4
            if not data.startswith(PLAN_MAGIC):
                why = "Serialization assertion: magic tag does not match"
            else:
                size = int.from_bytes(data[len(PLAN_MAGIC) : start], "little")
                head = json.loads(data[start : start + size])
                if head["trt"] != trt.__version__:
                    why = f"plan built by TensorRT {head['trt']}, this is {trt.__version__}"
                elif head["hw"] == 0 and tuple(head["cc"]) != tuple(sim.cc):
                    why = f"plan built for cc {head['cc']}, this GPU has cc {sim.cc}"
                elif head["host_code"] and not self.engine_host_code_allowed:
                    why = "the plan has host code and engine_host_code_allowed is False"
                else:
                    return ICudaEngine(head["profile"], data[start + size :])
            self._standin_logger.log(ILogger.Severity.ERROR, why)
            return None

    class ICudaEngine:
        def __init__(self, profile: dict, model: bytes) -> None:
            sha = hashlib.sha256(model).hexdigest()
            if sha not in _SESSIONS:
                opts = ort.SessionOptions()
                opts.intra_op_num_threads = 2
                _SESSIONS[sha] = ort.InferenceSession(model, opts, ["CPUExecutionProvider"])
            self._standin_session = _SESSIONS[sha]
            inputs, outputs = parse(model)
            self._standin_io, self._standin_n_inputs = inputs + outputs, len(inputs)
            self._standin_profile = {k: [Dims(d) for d in v] for k, v in profile.items()}
            self.device_memory_size_v2 = 1 << 20  # activations

        num_io_tensors = property(lambda self: len(self._standin_io))

        def _standin_tensor(self, name: str) -> ITensor:
            return next(t for t in self._standin_io if t.name == name)

        def get_tensor_name(self, index: int) -> str:
            return self._standin_io[index].name

        def get_tensor_mode(self, name: str) -> Any:
            is_input = self._standin_io.index(self._standin_tensor(name)) < self._standin_n_inputs
            return IOMode.INPUT if is_input else IOMode.OUTPUT

        def get_tensor_dtype(self, name: str) -> Any:
            return self._standin_tensor(name).dtype

        def get_tensor_shape(self, name: str) -> Dims:
            return self._standin_tensor(name).shape

        def get_tensor_profile_shape(self, name: str, profile_index: int) -> list[Dims]:
            if profile_index != 0 or name not in self._standin_profile:
                raise ValueError(f"no shapes of profile {profile_index} for {name!r}")
            return list(self._standin_profile[name])

        def create_execution_context(self, strategy=None) -> IExecutionContext | None:
            need_context("cudaGetDevice")
            if sim.used + self.device_memory_size_v2 > sim.total_memory:
                return None  # TensorRT logs and returns None when it cannot allocate
            return IExecutionContext(self)

    class IExecutionContext:
        def __init__(self, engine: ICudaEngine) -> None:
            self.engine = engine
            self._standin_shapes: dict[str, Dims] = {}
            self._standin_addresses: dict[str, int] = {}

        def set_input_shape(self, name: str, shape) -> bool:
            lo, _, hi = self.engine._standin_profile.get(name, (None, None, None))
            shape = Dims(shape)
            if lo is None or len(shape) != len(lo):
                return False
            if not all(a <= s <= b for a, s, b in zip(lo, shape, hi, strict=True)):
                return False
            self._standin_shapes[name] = shape
            return True

        def get_tensor_shape(self, name: str) -> Dims:
            """Inputs: as set (else -1 where dynamic); outputs: -1 where unknown yet."""
            if name in self._standin_shapes:
                return self._standin_shapes[name]
            engine, known = self.engine, {}
            for i in engine._standin_io[: engine._standin_n_inputs]:
                if i.name in self._standin_shapes:
                    known.update(zip(i._standin_symbols, self._standin_shapes[i.name], strict=True))
            t = engine._standin_tensor(name)
            return Dims(
                known.get(s, -1) if d < 0 else d
                for d, s in zip(t.shape, t._standin_symbols, strict=True)
            )

        def set_tensor_address(self, name: str, memory: int) -> bool:
            dtype = self.engine._standin_tensor(name).dtype
            if int(memory) % np.dtype(_NUMPY[dtype.name]).itemsize:
                return False
            self._standin_addresses[name] = int(memory)
            return True

        def execute_async_v3(self, stream_handle: int) -> bool:
            engine = self.engine
            io, sess = engine._standin_io, engine._standin_session
            n_in = engine._standin_n_inputs
            shapes = {t.name: tuple(self.get_tensor_shape(t.name)) for t in io}
            if any(-1 in s for s in shapes.values()) or len(self._standin_addresses) != len(io):
                return False  # TensorRT logs "not all shapes/addresses are specified"
            addresses, fault, sim.fault_next_execute = (
                dict(self._standin_addresses),
                sim.fault_next_execute,
                None,
            )
            sim.count("execute")

            def run() -> None:  # on the stream, with the shapes and addresses of now
                if fault:
                    raise _Fault(fault)
                feeds = {}
                for t in io[:n_in]:
                    dt, shape = np.dtype(_NUMPY[t.dtype.name]), shapes[t.name]
                    nbytes = int(np.prod(shape)) * dt.itemsize
                    raw = sim.read(addresses[t.name], nbytes)
                    feeds[t.name] = np.frombuffer(raw, dt).reshape(shape).copy()
                for t, value in zip(io[n_in:], sess.run(None, feeds), strict=True):
                    value = np.ascontiguousarray(value, _NUMPY[t.dtype.name])
                    assert value.shape == shapes[t.name], (value.shape, shapes[t.name])
                    sim.write(addresses[t.name], value)

            sim.enqueue(int(stream_handle), run)
            return True

    for cls in (
        ILogger, IProgressMonitor, Dims, ITensor, INetworkDefinition, ParserError, OnnxParser,
        IOptimizationProfile, ITimingCache, IBuilderConfig, Builder, Runtime, ICudaEngine,
        IExecutionContext,
    ):  # fmt: skip
        setattr(trt, cls.__name__, cls)
    return trt


def add_kernels(modules: dict[str, types.ModuleType], sim: Sim, host: Any) -> None:
    """Let the stand-in pycuda load and launch edgemed's kernels: ``host`` is
    :class:`edgemed.cuda.host.HostKernels` (the same ``.cu`` sources built by g++), whose
    bodies then run on the stand-in's "device memory" in stream order, as on a GPU.
    Every pointer a launch passes must lie in a live GPU-visible allocation."""
    drv = modules["pycuda.driver"]

    class Function:
        def __init__(self, name: str) -> None:
            self._standin_name = name

        def __call__(self, *args, grid, block, stream=None) -> None:
            # Arguments as pycuda takes them: np.uintp pointers, np.int32 scalars, and
            # (volume.cu) one np.void record passed by value; the host build's launch()
            # unpacks each kind as the GPU receives it. Copied now, as pycuda packs the
            # arguments at the call (a reused host record may change before the run).
            args = tuple(a.copy() if isinstance(a, np.void) else a for a in args)
            name = self._standin_name
            sim.count("kernel")

            def run() -> None:
                for a in args:
                    # A pointer must lie in live GPU memory; 0 is a volume kernel's
                    # "unused" argument (np.int32: a stage number; np.void: a struct).
                    if isinstance(a, np.uintp) and int(a) != 0:
                        sim.check(int(a), 1)
                try:
                    host.launch(name, grid, block, *args)
                except Exception as exc:  # e.g. no such entry point: a launch failure
                    raise _Fault(f"kernel {name} failed: {exc}") from None

            sim.enqueue(None if stream is None else stream.handle, run)

    class Module:
        def get_function(self, name: str) -> Function:
            return Function(name)

    def module_from_file(filename: str) -> Module:
        sim.count("module_from_file")
        return Module()

    class SourceModule(Module):
        def __init__(
            self, source, nvcc="nvcc", options=None, keep=False, no_extern_c=False,
            arch=None, code=None, cache_dir=None, include_dirs=None,
        ) -> None:  # fmt: skip
            sim.count("compile")

    drv.Function, drv.Module, drv.module_from_file = Function, Module, module_from_file
    compiler = types.ModuleType("pycuda.compiler")
    compiler.SourceModule = SourceModule
    modules["pycuda"].compiler = compiler
    modules["pycuda.compiler"] = compiler


def install_tensorrt_only(monkeypatch, drv: types.ModuleType) -> RealGpu:
    """The stand-in tensorrt on the GPU that ``drv`` (the real ``pycuda.driver``, or a
    stand-in one) drives; pycuda, cuda-bindings and the kernels stay whatever is
    installed. Returns the :class:`RealGpu` (``.trt`` is the module)."""
    from edgemed.cuda.device import query_device

    info = query_device(0)
    gpu = RealGpu(
        drv,
        gpu_name=info.name,
        cc=info.compute_capability,
        integrated=info.integrated,
        total_memory=info.total_memory,
        multiprocessors=info.multiprocessor_count,
    )
    gpu.trt = make_tensorrt(gpu, drv)
    monkeypatch.setitem(sys.modules, "tensorrt", gpu.trt)
    return gpu


def install(monkeypatch, sim: Sim, host: Any = None) -> types.ModuleType:
    """Put the stand-ins (pycuda, cuda.bindings, tensorrt) into ``sys.modules``
    (``monkeypatch`` undoes it); returns tensorrt. With ``host`` (see
    :func:`add_kernels`), the CUDA kernels run too."""
    modules = {**make_pycuda(sim), **make_cuda_bindings(sim)}
    if host is not None:
        add_kernels(modules, sim, host)
    trt = make_tensorrt(sim, modules["pycuda.driver"])
    for name, module in {**modules, "tensorrt": trt}.items():
        monkeypatch.setitem(sys.modules, name, module)
    return trt

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
import time
import types
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
    trt_version: str = "10.13.0.35"
    calls: dict[str, int] = field(default_factory=dict)
    mem: dict[int, tuple[int, str, Any]] = field(default_factory=dict)  # addr: n, kind, buf
    used: int = 0  # device bytes allocated
    contexts: list[Any] = field(default_factory=list)  # the current-context stack
    sticky: str | None = None  # a fatal error: every later driver call fails with it
    fault_next_execute: str | None = None  # the next execution faults with this message

    def count(self, what: str) -> None:
        self.calls[what] = self.calls.get(what, 0) + 1

    def n(self, what: str) -> int:
        return self.calls.get(what, 0)


class _Fault(Exception):
    """A simulated kernel's illegal memory access (becomes a sticky CUDA error)."""


def make_pycuda(sim: Sim) -> dict[str, types.ModuleType]:
    """``pycuda`` and ``pycuda.driver`` bound to ``sim``."""
    drv = types.ModuleType("pycuda.driver")
    drv.Error = type("Error", (Exception,), {})
    for name in ("LogicError", "LaunchError", "MemoryError", "RuntimeError"):
        setattr(drv, name, type(name, (drv.Error,), {}))

    def need_context(call: str) -> None:
        if sim.sticky:
            raise drv.LaunchError(f"{call} failed: {sim.sticky}")
        if not sim.contexts:
            raise drv.LogicError(f"{call} failed: invalid device context")

    def check(addr: int, nbytes: int) -> None:
        """Raise unless [addr, addr+nbytes) lies in one live GPU-visible allocation."""
        for base, (size, kind, _) in sim.mem.items():
            if base <= addr and addr + nbytes <= base + size and kind in ("device", "mapped"):
                return
        raise _Fault(f"{nbytes} bytes at {addr:#x} are outside any live GPU allocation")

    class DeviceAllocation:
        def __init__(self, nbytes: int) -> None:
            need_context("cuMemAlloc")
            if sim.used + nbytes > sim.total_memory:
                raise drv.MemoryError("cuMemAlloc failed: out of memory")
            self.buf = np.full(nbytes + 256, 0xAB, np.uint8)  # poisoned: unwritten reads show
            self.addr = (self.buf.ctypes.data + 255) // 256 * 256  # 256-aligned like cuMemAlloc
            self.nbytes, sim.mem[self.addr] = nbytes, (nbytes, "device", self.buf)
            sim.used += nbytes
            sim.count("mem_alloc")

        def __int__(self) -> int:
            return self.addr

        def free(self, what: str = "mem_free") -> None:  # pycuda activates its own context
            if self.addr not in sim.mem:
                raise drv.LogicError("device_allocation::free failed: invalid resource handle")
            del sim.mem[self.addr]
            sim.used -= self.nbytes
            sim.count(what)

        def __del__(self) -> None:  # pycuda frees what is garbage-collected unfreed
            if getattr(self, "addr", None) in sim.mem:
                self.free("gc_free")

    class HostAllocation(bytearray):
        """pycuda's HostAllocation: the ``.base`` of a pagelocked array."""

        def get_device_pointer(self) -> int:
            if not self.mapped:
                raise drv.LogicError("cuMemHostGetDevicePointer failed: invalid value")
            return self.addr  # UVA: the mapped device pointer is the host address

        def free(self) -> None:
            if self.addr not in sim.mem:
                raise drv.LogicError("host_allocation::free failed: invalid resource handle")
            del sim.mem[self.addr]
            sim.count("host_free")

    def pagelocked_empty(shape, dtype, order="C", mem_flags=0) -> np.ndarray:
        need_context("cuMemHostAlloc")
        dtype = np.dtype(dtype)
        alloc = HostAllocation(max(1, int(np.prod(shape)) * dtype.itemsize))
        alloc.mapped = bool(mem_flags & drv.host_alloc_flags.DEVICEMAP)
        arr = np.ndarray(shape, dtype, buffer=alloc)
        alloc.addr = arr.ctypes.data
        sim.mem[alloc.addr] = (len(alloc), "mapped" if alloc.mapped else "pinned", alloc)
        sim.count("host_alloc")
        return arr

    class Context:
        def push(self) -> None:
            sim.contexts.append(self)

        @staticmethod
        def pop() -> None:
            if not sim.contexts:
                raise drv.LogicError("cuCtxPopCurrent failed: invalid device context")
            sim.contexts.pop()

        def detach(self) -> None:
            sim.count("ctx_detach")

    class Device:
        def __init__(self, ordinal: int) -> None:
            if ordinal != 0:
                raise drv.LogicError("cuDeviceGet failed: invalid device ordinal")

        count = staticmethod(lambda: 1)
        name = compute_capability = total_memory = get_attribute = None  # set below

        def retain_primary_context(self) -> Context:
            sim.count("ctx_retain")
            return Context()

    Device.name = lambda self: sim.gpu_name
    Device.compute_capability = lambda self: sim.cc
    Device.total_memory = lambda self: sim.total_memory
    Device.get_attribute = lambda self, a: int(sim.integrated) if a == 18 else 1  # INTEGRATED

    class Stream:
        handles: dict[int, Stream] = {}

        def __init__(self, flags: int = 0) -> None:
            need_context("cuStreamCreate")
            self.handle = 0x5000 + 16 * len(Stream.handles)  # never 0 (the default stream)
            Stream.handles[self.handle] = self
            self.pending: list[Any] = []
            self.capture: list[Any] | None = None

        def enqueue(self, op) -> None:
            (self.pending if self.capture is None else self.capture).append(op)

        def synchronize(self) -> None:
            need_context("cuStreamSynchronize")
            ops, self.pending = self.pending, []
            for op in ops:
                try:
                    op()
                except _Fault as exc:  # a kernel faulted: the context is lost for good
                    sim.sticky = f"an illegal memory access was encountered ({exc})"
                    raise drv.LaunchError(f"cuStreamSynchronize failed: {sim.sticky}") from None

        def begin_capture(self, capture_mode: int = 0) -> None:
            need_context("cuStreamBeginCapture")
            self.capture = []
            sim.count("begin_capture")

        def end_capture(self) -> Graph:
            ops, self.capture = self.capture or [], None
            return Graph(ops)

    class Graph:  # also its own GraphExec
        def __init__(self, ops: list) -> None:
            self.ops = ops

        def instantiate(self) -> Graph:
            return self

        def launch(self, stream_py=None) -> None:
            need_context("cuGraphLaunch")
            sim.count("graph_launch")
            for op in self.ops:
                on(stream_py, op)

    class Event:
        def __init__(self, flags: int = 0) -> None:
            need_context("cuEventCreate")
            self.t: float | None = None

        def record(self, stream=None) -> Event:
            self.t, self.stream = None, stream
            on(stream, lambda: setattr(self, "t", time.perf_counter()))
            return self

        def synchronize(self) -> None:  # waits for its stream (at least up to the record)
            if self.t is None and getattr(self, "stream", None) is not None:
                self.stream.synchronize()

        def time_since(self, start: Event) -> float:
            if self.t is None or start.t is None:
                raise drv.LogicError("cuEventElapsedTime failed: device not ready")
            return (self.t - start.t) * 1e3

    def on(stream, op) -> None:
        """Queue ``op`` on ``stream``; the default stream (None) runs it now."""
        op() if stream is None else stream.enqueue(op)

    def memcpy(what: str, dst, src, nbytes: int, device: int, stream) -> None:
        need_context(what)
        sim.count(what)
        on(stream, lambda: (check(device, nbytes), ctypes.memmove(dst, src, nbytes)))

    def htod(dest, src, stream=None) -> None:
        src = np.ascontiguousarray(src)
        memcpy("htod", int(dest), src.ctypes.data, src.nbytes, int(dest), stream)

    def dtoh(dest, src, stream=None) -> None:
        assert dest.flags.c_contiguous
        memcpy("dtoh", dest.ctypes.data, int(src), dest.nbytes, int(src), stream)

    drv.host_alloc_flags = enum.IntFlag("host_alloc_flags", "PORTABLE DEVICEMAP WRITECOMBINED")
    drv.device_attribute = types.SimpleNamespace(INTEGRATED=18)
    drv.init = lambda flags=0: None
    drv.mem_alloc, drv.pagelocked_empty = DeviceAllocation, pagelocked_empty
    drv.Context, drv.Device, drv.Stream, drv.Event = Context, Device, Stream, Event
    drv.memcpy_htod_async, drv.memcpy_dtoh_async = htod, dtoh
    drv.memcpy_htod, drv.memcpy_dtoh = htod, dtoh
    drv.check = check
    pkg = types.ModuleType("pycuda")
    pkg.driver, pkg.VERSION = drv, (2025, 1)
    return {"pycuda": pkg, "pycuda.driver": drv}


def make_tensorrt(sim: Sim, drv: types.ModuleType) -> types.ModuleType:
    """A ``tensorrt`` module (the TensorRT 10.x Python API edgemed uses) bound to ``sim``."""
    trt = types.ModuleType("tensorrt")
    trt.__version__ = sim.trt_version
    enums = {
        "NetworkDefinitionCreationFlag": "EXPLICIT_BATCH STRONGLY_TYPED",
        "TensorIOMode": "NONE INPUT OUTPUT",
        "MemoryPoolType": "WORKSPACE DLA_MANAGED_SRAM DLA_LOCAL_DRAM",
        "HardwareCompatibilityLevel": "NONE AMPERE_PLUS SAME_COMPUTE_CAPABILITY",
        "BuilderFlag": "FP16 INT8 DEBUG VERSION_COMPATIBLE EXCLUDE_LEAN_RUNTIME",
        "DataType": "FLOAT HALF INT8 INT32 BOOL UINT8 FP8 BF16 INT64",
    }
    for enum_name, members in enums.items():
        setattr(trt, enum_name, enum.IntEnum(enum_name, members, start=0))
    DataType, IOMode, Flag = trt.DataType, trt.TensorIOMode, trt.BuilderFlag  # noqa: N806

    class ILogger:
        Severity = enum.IntEnum("Severity", "INTERNAL_ERROR ERROR WARNING INFO VERBOSE", start=0)

        def __init__(self) -> None:
            pass

    class IProgressMonitor:
        def __init__(self) -> None:
            pass

    class Dims(tuple):
        def __new__(cls, shape=()):
            return super().__new__(cls, (int(d) for d in shape))

    @dataclass
    class ITensor:
        name: str
        shape: Dims  # -1 for dynamic dimensions
        dtype: Any
        symbols: tuple  # the ONNX dim names (None where fixed)

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
            self.flags, self.onnx, self.inputs, self.outputs = flags, b"", [], []

        num_inputs = property(lambda self: len(self.inputs))
        num_outputs = property(lambda self: len(self.outputs))

        def get_input(self, i: int) -> ITensor:
            return self.inputs[i]

        def get_output(self, i: int) -> ITensor:
            return self.outputs[i]

    class OnnxParser:
        def __init__(self, network: INetworkDefinition, logger: ILogger) -> None:
            self.network, self.errors = network, []

        num_errors = property(lambda self: len(self.errors))

        def get_error(self, i: int) -> Any:
            return types.SimpleNamespace(desc=lambda: self.errors[i])

        def parse(self, model, path: str | None = None) -> bool:
            try:
                self.network.inputs, self.network.outputs = parse(bytes(model))
            except Exception as exc:  # noqa: BLE001 (the parser reports, never raises)
                self.errors.append(f"ModelImporter: cannot parse the model: {exc}")
                return False
            self.network.onnx = bytes(model)
            return True

    class IOptimizationProfile:
        def __init__(self) -> None:
            self.shapes: dict[str, list[Dims]] = {}

        def set_shape(self, input: str, min, opt, max) -> None:  # noqa: A002 (TRT's names)
            self.shapes[input] = [Dims(min), Dims(opt), Dims(max)]

    class ITimingCache:
        def __init__(self, device: list, entries: list) -> None:
            self.device, self.entries = device, entries

        def serialize(self) -> bytes:  # IHostMemory: a buffer
            return CACHE_MAGIC + json.dumps([self.device, self.entries]).encode()

    def this_device() -> list:
        return [sim.gpu_name, list(sim.cc), trt.__version__]

    class IBuilderConfig:
        def __init__(self, logger: ILogger) -> None:
            self.logger, self.profiles, self.flags, self.pools = logger, [], set(), {}
            self.hardware_compatibility_level = trt.HardwareCompatibilityLevel.NONE
            self.progress_monitor: IProgressMonitor | None = None
            self.timing_cache: ITimingCache | None = None

        def add_optimization_profile(self, profile: IOptimizationProfile) -> int:
            self.profiles.append(profile)
            return len(self.profiles) - 1

        def set_memory_pool_limit(self, pool, size: int) -> None:
            self.pools[pool] = size

        def set_flag(self, flag) -> None:
            self.flags.add(flag)

        def create_timing_cache(self, serialized) -> ITimingCache:
            data = bytes(serialized)
            if data.startswith(CACHE_MAGIC):
                return ITimingCache(*json.loads(data[len(CACHE_MAGIC) :]))
            if data:
                self.logger.log(ILogger.Severity.ERROR, "Timing cache: bad header; using none")
            return ITimingCache(this_device(), [])

        def set_timing_cache(self, cache: ITimingCache, ignore_mismatch: bool) -> bool:
            if cache.device != this_device() and not ignore_mismatch:
                return False
            self.timing_cache = cache
            return True

        def get_timing_cache(self) -> ITimingCache | None:
            return self.timing_cache

    class Builder:
        def __init__(self, logger: ILogger) -> None:
            self.logger = logger

        def create_network(self, flags: int = 0) -> INetworkDefinition:
            return INetworkDefinition(flags)

        def create_builder_config(self) -> IBuilderConfig:
            return IBuilderConfig(self.logger)

        def create_optimization_profile(self) -> IOptimizationProfile:
            return IOptimizationProfile()

        def build_serialized_network(self, network, config) -> bytes | None:
            if not sim.contexts:
                raise drv.LogicError("cudaGetDevice failed: invalid device context")
            sim.count("build")
            profile = config.profiles[0].shapes if config.profiles else {}
            fail = self._check(network, profile)
            if fail:
                self.logger.log(ILogger.Severity.ERROR, fail)
                return None
            monitor, phases = config.progress_monitor, ("Building engine", "Tactic selection")
            if monitor is not None:
                monitor.phase_start(phases[0], None, 2)
                for step, phase in enumerate((phases[1], "Serializing")):
                    monitor.phase_start(phase, phases[0], 1)
                    if not monitor.step_complete(phase, 0):
                        self.logger.log(ILogger.Severity.ERROR, "Build cancelled")
                        return None
                    monitor.phase_finish(phase)
                    monitor.step_complete(phases[0], step)
                monitor.phase_finish(phases[0])
            entry = hashlib.sha256(network.onnx + repr(profile).encode()).hexdigest()
            if config.timing_cache is not None:
                if entry in config.timing_cache.entries:
                    sim.count("timing_hit")
                else:
                    config.timing_cache.entries.append(entry)
            header = {
                "trt": trt.__version__,
                "gpu": sim.gpu_name,
                "cc": list(sim.cc),
                "hw": int(config.hardware_compatibility_level),
                "host_code": Flag.VERSION_COMPATIBLE in config.flags
                and Flag.EXCLUDE_LEAN_RUNTIME not in config.flags,
                "profile": profile,
            }
            text = json.dumps(header).encode()
            return PLAN_MAGIC + len(text).to_bytes(4, "little") + text + network.onnx

        def _check(self, network, profile) -> str:
            """What TensorRT would refuse to build ("" if nothing)."""
            if not network.onnx:
                return "Network has no inputs (nothing was parsed)"
            for t in network.inputs:
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
            self.logger, self.engine_host_code_allowed = logger, False

        def deserialize_cuda_engine(self, serialized) -> ICudaEngine | None:
            if not sim.contexts:
                raise drv.LogicError("cudaGetDevice failed: invalid device context")
            sim.count("deserialize")
            data, start = bytes(serialized), len(PLAN_MAGIC) + 4
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
            self.logger.log(ILogger.Severity.ERROR, why)
            return None

    class ICudaEngine:
        def __init__(self, profile: dict, model: bytes) -> None:
            sha = hashlib.sha256(model).hexdigest()
            if sha not in _SESSIONS:
                opts = ort.SessionOptions()
                opts.intra_op_num_threads = 2
                _SESSIONS[sha] = ort.InferenceSession(model, opts, ["CPUExecutionProvider"])
            self.session = _SESSIONS[sha]
            inputs, outputs = parse(model)
            self.io, self.n_inputs = inputs + outputs, len(inputs)
            self.profile = {k: [Dims(d) for d in v] for k, v in profile.items()}
            self.device_memory_size_v2 = 1 << 20  # activations

        num_io_tensors = property(lambda self: len(self.io))

        def tensor(self, name: str) -> ITensor:
            return next(t for t in self.io if t.name == name)

        def get_tensor_name(self, index: int) -> str:
            return self.io[index].name

        def get_tensor_mode(self, name: str) -> Any:
            is_input = self.io.index(self.tensor(name)) < self.n_inputs
            return IOMode.INPUT if is_input else IOMode.OUTPUT

        def get_tensor_dtype(self, name: str) -> Any:
            return self.tensor(name).dtype

        def get_tensor_shape(self, name: str) -> Dims:
            return self.tensor(name).shape

        def get_tensor_profile_shape(self, name: str, profile_index: int) -> list[Dims]:
            if profile_index != 0 or name not in self.profile:
                raise ValueError(f"no shapes of profile {profile_index} for {name!r}")
            return list(self.profile[name])

        def create_execution_context(self) -> IExecutionContext | None:
            if not sim.contexts:
                raise drv.LogicError("cudaGetDevice failed: invalid device context")
            if sim.used + self.device_memory_size_v2 > sim.total_memory:
                return None  # TensorRT logs and returns None when it cannot allocate
            return IExecutionContext(self)

    class IExecutionContext:
        def __init__(self, engine: ICudaEngine) -> None:
            self.engine, self.shapes, self.addresses = engine, {}, {}

        def set_input_shape(self, name: str, shape) -> bool:
            lo, _, hi = self.engine.profile.get(name, (None, None, None))
            shape = Dims(shape)
            if lo is None or len(shape) != len(lo):
                return False
            if not all(a <= s <= b for a, s, b in zip(lo, shape, hi, strict=True)):
                return False
            self.shapes[name] = shape
            return True

        def get_tensor_shape(self, name: str) -> Dims:
            """Inputs: as set (else -1 where dynamic); outputs: -1 where unknown yet."""
            if name in self.shapes:
                return self.shapes[name]
            known: dict[str, int] = {}
            for i in self.engine.io[: self.engine.n_inputs]:
                if i.name in self.shapes:
                    known.update(zip(i.symbols, self.shapes[i.name], strict=True))
            t = self.engine.tensor(name)
            return Dims(
                known.get(s, -1) if d < 0 else d for d, s in zip(t.shape, t.symbols, strict=True)
            )

        def set_tensor_address(self, name: str, memory: int) -> bool:
            if int(memory) % np.dtype(_NUMPY[self.engine.tensor(name).dtype.name]).itemsize:
                return False
            self.addresses[name] = int(memory)
            return True

        def execute_async_v3(self, stream_handle: int) -> bool:
            io, sess, n_in = self.engine.io, self.engine.session, self.engine.n_inputs
            shapes = {t.name: tuple(self.get_tensor_shape(t.name)) for t in io}
            if any(-1 in s for s in shapes.values()) or len(self.addresses) != len(io):
                return False  # TensorRT logs "not all shapes/addresses are specified"
            addresses, fault, sim.fault_next_execute = (
                dict(self.addresses),
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
                    drv.check(addresses[t.name], nbytes)
                    raw = (ctypes.c_char * nbytes).from_address(addresses[t.name])
                    feeds[t.name] = np.frombuffer(raw, dt).reshape(shape).copy()
                for t, value in zip(io[n_in:], sess.run(None, feeds), strict=True):
                    value = np.ascontiguousarray(value, _NUMPY[t.dtype.name])
                    assert value.shape == shapes[t.name], (value.shape, shapes[t.name])
                    drv.check(addresses[t.name], value.nbytes)
                    ctypes.memmove(addresses[t.name], value.ctypes.data, value.nbytes)

            stream = drv.Stream.handles.get(stream_handle)
            run() if stream is None else stream.enqueue(run)
            return True

    trt.ILogger, trt.IProgressMonitor, trt.Dims = ILogger, IProgressMonitor, Dims
    trt.Builder, trt.OnnxParser, trt.Runtime = Builder, OnnxParser, Runtime
    return trt


def add_kernels(modules: dict[str, types.ModuleType], sim: Sim, host: Any) -> None:
    """Let the stand-in pycuda load and launch edgemed's kernels: ``host`` is
    :class:`edgemed.cuda.host.HostKernels` (the same ``.cu`` sources built by g++), whose
    bodies then run on the stand-in's "device memory" in stream order, as on a GPU.
    Every pointer a launch passes must lie in a live GPU-visible allocation."""
    drv = modules["pycuda.driver"]
    drv.CompileError = type("CompileError", (drv.Error,), {})
    drv.Context.get_device = staticmethod(lambda: drv.Device(0))

    class Function:
        def __init__(self, name: str) -> None:
            self.name = name

        def __call__(self, *args, grid, block, stream=None) -> None:
            ptrs = [int(a) for a in args]
            sim.count("kernel")

            def run() -> None:
                for a, p in zip(args, ptrs, strict=True):
                    if isinstance(a, np.uintp):  # a pointer (np.int32: a stage number)
                        drv.check(p, 1)
                launch = host._seg if self.name.startswith("em_segment") else host._pre
                if launch(self.name.encode(), *grid, *block, *ptrs) != 0:
                    raise _Fault(f"kernel {self.name} failed")

            stream.enqueue(run) if stream is not None else run()

    class Module:
        def get_function(self, name: str) -> Function:
            return Function(name)

    def memset(dst, value: int, n: int, stream=None) -> None:
        def run() -> None:
            drv.check(int(dst), n)
            ctypes.memset(int(dst), value, n)

        stream.enqueue(run) if stream is not None else run()

    drv.memset_d8_async = memset
    drv.module_from_file = lambda path: (sim.count("module_from_file"), Module())[1]
    compiler = types.ModuleType("pycuda.compiler")
    compiler.SourceModule = lambda source, **kw: (sim.count("compile"), Module())[1]
    modules["pycuda"].compiler = compiler
    modules["pycuda.compiler"] = compiler


def install(monkeypatch, sim: Sim, host: Any = None) -> types.ModuleType:
    """Put the stand-ins into ``sys.modules`` (``monkeypatch`` undoes it); returns tensorrt.
    With ``host`` (see :func:`add_kernels`), the CUDA kernels run too."""
    modules = make_pycuda(sim)
    if host is not None:
        add_kernels(modules, sim, host)
    trt = make_tensorrt(sim, modules["pycuda.driver"])
    for name, module in {**modules, "tensorrt": trt}.items():
        monkeypatch.setitem(sys.modules, name, module)
    return trt

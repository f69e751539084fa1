"""TensorRT on an NVIDIA GPU: a cached, verified engine for this GPU and TensorRT version.

Kept thin, on the execution API that TensorRT 10 and 11 share: IO names, shapes and
dtypes come from the engine (FP16 IO is possible); ``set_input_shape``,
``set_tensor_address`` and ``execute_async_v3`` on one stream. Buffers are allocated
once, for the profile's largest shapes, and reused:

- discrete GPUs: device buffers plus pinned host staging buffers, copied async;
- integrated GPUs (Jetson, IGX iGPU): no copies. What the host writes or reads
  (:meth:`TensorRTBackend.infer`'s inputs, every output a call fetches) is mapped pinned
  memory that TensorRT reads and writes in place; what stays on the GPU (an input a
  CUDA preprocessor writes, logits the mask kernel reads) is plain device memory, which
  the GPU caches: mapped memory is not, and the mask kernel reads each logit about eight
  times. Each tensor gets the kind it is used as, at first use, and is bound to
  TensorRT per call.

The plan is read through :meth:`EngineCache.open`, which verifies it (sha256 against
the sidecar, sidecar against the bundle's ONNX sha256) before any byte reaches
``deserialize_cuda_engine``; ``engine_host_code_allowed`` stays False. CUDA failures
become ``GPU_OOM`` or ``GPU_FATAL`` (after which the pipeline refuses further work).

A CUDA preprocessor can write straight into the input's device memory:
:meth:`TensorRTBackend.device_input` gives the pointer, queued work on
:attr:`TensorRTBackend.stream` fills it, and :meth:`TensorRTBackend.infer_device` runs.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Collection, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from edgemed._lazy import available
from edgemed.backends.base import Backend, TensorSpec
from edgemed.backends.tensorrt import compat as trt_compat
from edgemed.backends.tensorrt.builder import engine_key
from edgemed.backends.tensorrt.cache import EngineCache, EngineKey
from edgemed.backends.tensorrt.profiles import derive_profile
from edgemed.errors import BackendError, EdgemedError

if TYPE_CHECKING:
    import tensorrt as trt

    from edgemed.bundle import Bundle
    from edgemed.cuda.device import (
        CudaDevice,
        CudaGraph,
        DeviceBuffer,
        DeviceInfo,
        PinnedBuffer,
        StageTimer,
    )

__all__ = ["TensorRTBackend", "probe"]

log = logging.getLogger("edgemed.backends")


def probe(bundle: Bundle, precision: str, cache_dir: str | os.PathLike[str] | None = None) -> str:
    """Why the TensorRT backend cannot run ``bundle`` at ``precision`` here ("" if it can).

    Checked in order of cost: tensorrt and pycuda import, a GPU is present, and a
    verified-looking engine for this model, GPU and TensorRT version is in the cache.
    """
    if not available("tensorrt"):
        return f"the tensorrt module is not installed ({trt_compat.TENSORRT_INSTALL})"
    if not available("pycuda"):
        return 'pycuda is not installed (pip install "edgemed[gpu]")'
    import tensorrt as trt

    from edgemed.cuda.device import query_device

    try:
        gpu = query_device(0)
        want = _wanted_key(bundle, precision, gpu, trt.__version__)
        EngineCache.for_bundle(bundle, cache_dir).select(want)
    except EdgemedError as exc:
        return exc.message
    return ""


def _wanted_key(bundle: Bundle, precision: str, gpu: DeviceInfo, version: str) -> EngineKey:
    """The key of the default-profile engine without TF32 on ``gpu`` here (profile, math
    mode and hardware compatibility are preferences: see :meth:`EngineCache.select`)."""
    try:
        profile = derive_profile(bundle.input).canonical()
    except EdgemedError:  # non-batch dynamic axes have no default: any profile then
        profile = ""
    return engine_key(bundle, precision, profile, gpu, version)


class TensorRTBackend(Backend):
    """A TensorRT engine from the cache, bound to one GPU. Use :meth:`from_bundle`."""

    name = "tensorrt"
    device_io = True

    def __init__(
        self,
        engine: trt.ICudaEngine,
        device: CudaDevice,
        *,
        precision: str,
        version: str,
        axis_names: Mapping[str, tuple[str | None, ...]] | None = None,
        cuda_graphs: bool = False,
        errors: list[str] | None = None,
        runtime: trt.Runtime | None = None,
    ) -> None:
        """Bind a deserialized ``engine`` on ``device`` (see :meth:`from_bundle`)."""
        import tensorrt as trt

        from edgemed.cuda.device import StageTimer, cuda_errors

        kind = "integrated" if device.integrated else "discrete"
        super().__init__(
            precision=precision,
            device=f"{device.name} (cc {device.info.cc}, {kind})",
            version=version,
        )
        self._runtime = runtime  # the engine must not outlive its runtime
        self._engine = engine
        self._gpu = device
        self._errors = errors if errors is not None else []
        self._cuda_graphs = cuda_graphs
        if cuda_graphs:  # missing cuda-bindings: refused at load, not at the second call
            from edgemed.cuda.device import graph_driver

            graph_driver()
        # (input shapes, graph): one graph, for the shapes of consecutive calls.
        self._graph: tuple[tuple[tuple[int, ...], ...], CudaGraph] | None = None
        self._last_shapes: tuple[tuple[int, ...], ...] | None = None
        self._shapes: dict[str, tuple[int, ...]] = {}
        # Inputs a caller has claimed with device_input(): the buffers of the others
        # hold nothing anyone wrote, so infer_device() refuses to run without them all.
        self._device_inputs: set[str] = set()
        io = trt_compat.io_tensors(trt, engine)
        names = dict(axis_names or {})
        specs = [TensorSpec(t.name, _named_shape(t.shape, names.get(t.name)), t.dtype) for t in io]
        self._inputs = [s for s, t in zip(specs, io, strict=True) if t.is_input]
        self._outputs = [s for s, t in zip(specs, io, strict=True) if not t.is_input]
        self._io = {t.name: t for t in io}
        # Profile 0's min and max per input: shapes outside are refused up front.
        self._limits: dict[str, tuple[tuple[int, ...], tuple[int, ...]]] = {}
        for spec in self._inputs:
            lo, _, hi = engine.get_tensor_profile_shape(spec.name, 0)
            self._limits[spec.name] = (trt_compat.dims(lo), trt_compat.dims(hi))
        self._device_buffers: dict[str, DeviceBuffer] = {}
        self._host_buffers: dict[str, PinnedBuffer] = {}
        # Per tensor: the profile's largest shape (it sizes the buffers) and the address
        # TensorRT has for it now.
        self._max_shapes: dict[str, tuple[int, ...]] = {}
        self._bound: dict[str, int] = {}
        self._timer: StageTimer | None = None
        self._last_ms: dict[str, float] = {}
        with device.active(), cuda_errors("TensorRT execution context"):
            context = engine.create_execution_context()
            if context is None:
                raise BackendError(
                    "TensorRT could not create an execution context (GPU memory?)",
                    code="GPU_OOM",
                )
            self._context: trt.IExecutionContext = context
            # Largest shapes first: the output sizes that follow bound every buffer.
            for spec in self._inputs:
                self._set_shape(spec.name, self._limits[spec.name][1])
            for name in self._io:
                shape = trt_compat.dims(self._context.get_tensor_shape(name))
                if any(d < 0 for d in shape):
                    raise BackendError(
                        f"output '{name}' has a data-dependent shape, which edgemed does not "
                        "support",
                        code="ENGINE_INCOMPATIBLE",
                    )
                self._max_shapes[name] = shape
                if not device.integrated:  # both kinds, now (integrated: at first use)
                    self._bind(name, self._device_buffer(name).ptr)
                    self._host_buffer(name)
            self._timer = StageTimer(device.stream, ("h2d", "infer", "d2h"))

    def _device_buffer(self, name: str) -> DeviceBuffer:
        """Tensor ``name``'s device memory, allocated at first use (context active)."""
        from edgemed.cuda.device import DeviceBuffer

        if name not in self._device_buffers:
            tensor = self._io[name]
            nbytes = int(np.prod(self._max_shapes[name])) * tensor.dtype.itemsize
            self._device_buffers[name] = DeviceBuffer(nbytes)
        return self._device_buffers[name]

    def _host_buffer(self, name: str) -> PinnedBuffer:
        """Tensor ``name``'s pinned host memory (mapped into the GPU on an integrated
        one), allocated at first use (context active)."""
        from edgemed.cuda.device import PinnedBuffer

        if name not in self._host_buffers:
            mapped = self._gpu.integrated
            buffer = PinnedBuffer(self._max_shapes[name], self._io[name].dtype, mapped=mapped)
            self._host_buffers[name] = buffer
        return self._host_buffers[name]

    def _bind(self, name: str, address: int) -> None:
        """Give TensorRT ``address`` for tensor ``name`` (unless it has it already)."""
        if self._bound.get(name) == address:
            return
        if not self._context.set_tensor_address(name, address):
            raise BackendError(
                f"TensorRT refused the address of '{name}'", code="ENGINE_INCOMPATIBLE"
            )
        self._bound[name] = address

    @classmethod
    def from_bundle(
        cls,
        bundle: Bundle,
        precision: str = "fp32",
        *,
        cache_dir: str | os.PathLike[str] | None = None,
        build: bool = False,
        device: int = 0,
        cuda_graphs: bool = False,
    ) -> TensorRTBackend:
        """Load the cached engine for ``bundle`` at ``precision`` on GPU ``device``.

        Args:
            bundle: a loaded (verified) bundle.
            precision: which ONNX artifact's engine to run.
            cache_dir: the engine cache (default ``<bundle>/engines``).
            build: when no engine for this GPU and TensorRT version exists, build one
                (minutes on a Jetson) instead of failing. A tampered engine is never
                rebuilt over silently (``ENGINE_INTEGRITY`` is raised either way).
            device: CUDA device ordinal.
            cuda_graphs: for fixed shapes, capture a CUDA graph on the second call with
                the same input shapes and replay it while they stay the same.

        Raises:
            MissingDependencyError: tensorrt or pycuda missing.
            BackendError: ``GPU_UNAVAILABLE``, ``GPU_OOM``, ``ENGINE_MISSING``,
                ``ENGINE_INCOMPATIBLE``, ``ENGINE_INTEGRITY``, ``ENGINE_BUILD_FAILED``.
        """
        trt_compat.require_tensorrt("the TensorRT backend")
        import tensorrt as trt

        from edgemed.backends.tensorrt.builder import BuildOptions, build_engine, make_logger
        from edgemed.cuda.device import CudaDevice

        cache = EngineCache.for_bundle(bundle, cache_dir)
        gpu = CudaDevice.open(device)
        # Every TensorRT call with this GPU's primary context current: TensorRT's CUDA
        # runtime then works on this device, not on device 0.
        try:
            with gpu.active():
                want = _wanted_key(bundle, precision, gpu.info, trt.__version__)
                try:
                    key = cache.select(want)
                except BackendError as exc:
                    if not build or exc.code not in ("ENGINE_MISSING", "ENGINE_INCOMPATIBLE"):
                        raise
                    log.warning("%s; building one now", exc.message)
                    key = build_engine(
                        bundle,
                        BuildOptions(precision=precision, device=device),
                        cache,
                        progress=log.warning,
                    ).key
                errors: list[str] = []
                runtime = trt.Runtime(make_logger(errors))
                # An engine with host code is executable code from a file: never allowed.
                runtime.engine_host_code_allowed = False
                engine = cache.open(key, runtime.deserialize_cuda_engine)
                if engine is None:
                    detail = f": {errors[-1]}" if errors else ""
                    raise BackendError(
                        f"TensorRT {trt.__version__} could not deserialize the verified engine"
                        + detail,
                        code="ENGINE_INCOMPATIBLE",
                        path=cache.plan_path(key),
                    )
                names = {bundle.input.name: _axis_names(bundle.input.shape)}
                for out in bundle.outputs:
                    names[out.name] = _axis_names(out.shape)
                backend = cls(
                    engine,
                    gpu,
                    precision=precision,
                    version=trt.__version__,
                    axis_names=names,
                    cuda_graphs=cuda_graphs,
                    errors=errors,
                    runtime=runtime,
                )
        except BaseException:
            gpu.close()
            raise
        backend.engine_path = cache.plan_path(key)
        backend.engine_key = key
        return backend

    engine_path: Path | None = None
    #: The cache key of the loaded engine (its math mode goes into the provenance).
    engine_key: EngineKey | None = None

    @property
    def max_batch(self) -> int | None:
        """The profile's largest batch (axis 0 of the first input; ``None`` when fixed)."""
        spec = self._inputs[0]
        if isinstance(spec.shape[0], int):
            return None
        return self._limits[spec.name][1][0]

    # -- Backend protocol ----------------------------------------------------------------

    @property
    def stream(self) -> Any:
        """The CUDA stream all work is queued on (a preprocessor writing device inputs
        must queue on it too)."""
        return self._gpu.stream

    @property
    def gpu(self) -> CudaDevice:
        """The GPU this engine runs on (``gpu.active()`` makes its context current)."""
        return self._gpu

    def info(self) -> dict[str, Any]:
        d = super().info()
        if self.engine_path is not None:
            d["engine"] = self.engine_path.name
        if self.engine_key is not None:
            # float32 math as built: TF32 only where `edgemed build --tf32` allowed it
            d["tf32"] = self.engine_key.tf32
        d["cuda_graphs"] = self._cuda_graphs
        return d

    def _set_shape(self, name: str, shape: tuple[int, ...]) -> None:
        if self._shapes.get(name) == shape:
            return
        lo, hi = self._limits[name]
        if len(shape) != len(lo) or not all(
            a <= s <= b for a, s, b in zip(lo, shape, hi, strict=True)
        ):
            raise BackendError(
                f"input '{name}' shape {shape} is outside the engine's profile {lo}..{hi} "
                "(rebuild with `edgemed build --batch MIN:OPT:MAX`)",
                code="BACKEND_IO_MISMATCH",
            )
        if not self._context.set_input_shape(name, shape):
            raise BackendError(
                f"TensorRT refused shape {shape} for '{name}'", code="BACKEND_IO_MISMATCH"
            )
        self._shapes[name] = shape

    def _infer(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        from edgemed.cuda.device import cuda_errors

        with self._gpu.active(), cuda_errors("TensorRT inference"):
            assert self._timer is not None
            self._timer.start()
            for spec in self._inputs:
                arr = feeds[spec.name]
                self._set_shape(spec.name, tuple(arr.shape))
                pinned = self._host_buffer(spec.name)
                host = pinned.array.reshape(-1)[: arr.size]
                host.reshape(arr.shape)[...] = arr
                if self._gpu.integrated:  # TensorRT reads it where the host wrote it
                    self._bind(spec.name, pinned.device_ptr)
                else:
                    self._device_buffers[spec.name].upload(host, self._gpu.stream)
            self._timer.mark("h2d")
            return self._run()

    def device_input(self, name: str, shape: tuple[int, ...]) -> tuple[int, tuple[int, ...], Any]:
        """Set input ``name`` to ``shape`` and return ``(device pointer, shape, dtype)``.

        Whatever is queued on :attr:`stream` that writes ``shape`` elements of ``dtype``
        at the pointer (C order) is the input of the next :meth:`infer_device`.
        """
        self._check_open()
        if name not in self._limits:
            raise BackendError(f"the engine has no input '{name}'", code="BACKEND_IO_MISMATCH")
        with self._gpu.active():
            self._set_shape(name, tuple(int(d) for d in shape))
            address = self._device_buffer(name).ptr
            self._bind(name, address)
        self._device_inputs.add(name)
        return address, tuple(shape), self._io[name].dtype

    def device_output(self, name: str) -> tuple[int, tuple[int, ...], Any]:
        """``(device pointer, shape, dtype)`` of output ``name`` for the current input
        shapes: a CUDA postprocessor reads it on :attr:`stream` after
        :meth:`infer_device` (with ``fetch`` leaving it on the GPU)."""
        self._check_open()
        if name not in self._io or self._io[name].is_input:
            raise BackendError(f"the engine has no output '{name}'", code="BACKEND_IO_MISMATCH")
        shape = trt_compat.dims(self._context.get_tensor_shape(name))
        with self._gpu.active():
            # Where the last run wrote it (device memory unless that run fetched it).
            address = self._bound.get(name) or self._device_buffer(name).ptr
        return address, shape, self._io[name].dtype

    def infer_device(self, fetch: Collection[str] | None = None) -> dict[str, np.ndarray]:
        """Run on device inputs already filled (see :meth:`device_input`).

        Args:
            fetch: the outputs to copy back to the host (default: all). Outputs left
                out stay on the GPU for :meth:`device_output`; the call then returns
                without waiting for the stream.
        """
        self._check_open()
        if self._device_inputs != set(self._limits):
            raise BackendError(
                "call device_input() for every input first", code="BACKEND_IO_MISMATCH"
            )
        from edgemed.cuda.device import cuda_errors

        with self._gpu.active(), cuda_errors("TensorRT inference"):
            assert self._timer is not None
            for name in self._limits:  # the memory device_input() handed out
                self._bind(name, self._device_buffer(name).ptr)
            self._timer.start()
            self._timer.mark("h2d")  # the input is on the device already: no copy
            return self._run(fetch)

    def _run(self, fetch: Collection[str] | None = None) -> dict[str, np.ndarray]:
        """Execute with the current shapes, copy outputs back (those in ``fetch``, all by
        default) and wait for them; the context is active."""
        from edgemed.cuda.device import CudaGraph

        # No local reference to the pycuda stream: a traceback a caller keeps would keep
        # it alive past close(), when pycuda can no longer destroy it (a leak).
        gpu = self._gpu
        if self._gpu.integrated:  # fetched outputs where the host reads them, others on the GPU
            for spec in self._outputs:
                if fetch is None or spec.name in fetch:
                    self._bind(spec.name, self._host_buffer(spec.name).device_ptr)
                else:
                    self._bind(spec.name, self._device_buffer(spec.name).ptr)
        # A graph replays the addresses it was captured with: they are part of its key.
        shapes = (
            *(self._shapes[s.name] for s in self._inputs),
            tuple(self._bound[name] for name in self._io),
        )
        if self._graph is not None and self._graph[0] == shapes:
            self._graph[1].launch()
        else:
            self._drop_graph()  # captured for other shapes: never replayed for these
            self._execute()
            if self._cuda_graphs and shapes == self._last_shapes:
                # Captured only after a plain run at these shapes: TensorRT does its
                # shape-dependent setup on the first execution, which must not be captured.
                gpu.stream.synchronize()
                self._graph = (shapes, CudaGraph(gpu.stream_handle, self._execute))
        self._last_shapes = shapes
        timer = self._timer
        assert timer is not None
        timer.mark("infer")
        results: dict[str, np.ndarray] = {}
        for spec in self._outputs:
            if fetch is not None and spec.name not in fetch:
                continue
            shape = trt_compat.dims(self._context.get_tensor_shape(spec.name))
            host = self._host_buffer(spec.name).array.reshape(-1)[: int(np.prod(shape))]
            if not self._gpu.integrated:
                self._device_buffers[spec.name].download(host, gpu.stream)
            results[spec.name] = host.reshape(shape)
        timer.mark("d2h")
        if results:  # nothing fetched: later work on the stream reads the outputs
            gpu.stream.synchronize()
            self._last_ms = timer.elapsed_ms()
        return results

    def last_stage_ms(self) -> dict[str, float]:
        """GPU milliseconds of the last :meth:`infer` by CUDA events, as ``edgemed
        bench`` reads them: ``device_h2d``, ``device_infer``, ``device_d2h``, and the
        copies again as ``h2d``/``d2h`` (absent on integrated GPUs, which copy nothing)."""
        ms = {f"device_{k}": v for k, v in self._last_ms.items()}
        if not self._gpu.integrated:
            ms.update({k: v for k, v in self._last_ms.items() if k in ("h2d", "d2h")})
        return ms

    def _execute(self) -> None:
        if not self._context.execute_async_v3(self._gpu.stream_handle):
            detail = f": {self._errors[-1]}" if self._errors else ""
            raise BackendError(
                "TensorRT inference failed" + detail, code="BACKEND_INFERENCE_FAILED"
            )

    def _drop_graph(self) -> None:
        """Destroy the captured CUDA graph, if any (the context is active)."""
        graph, self._graph = self._graph, None
        if graph is not None:
            graph[1].destroy()

    def close(self) -> None:
        if self._closed:
            return
        try:
            with self._gpu.active():
                # Graphs and events (destroyed with their last reference) in the live
                # context: pycuda skips every free after the context is detached, which
                # leaked them on each reload.
                self._drop_graph()
                self._timer = None
                # Context before engine before runtime, while the CUDA context is current.
                del self._context
                del self._engine
                self._runtime = None
        finally:
            # Frees every buffer made under the device, ours included, in its context.
            self._gpu.close()
            self._device_buffers.clear()
            self._host_buffers.clear()
            super().close()


def _axis_names(shape: tuple[int | str, ...]) -> tuple[str | None, ...]:
    """The bundle's names of dynamic axes (None for fixed ones)."""
    return tuple(d if isinstance(d, str) else None for d in shape)


def _named_shape(
    shape: tuple[int, ...], names: tuple[str | None, ...] | None
) -> tuple[int | str | None, ...]:
    """Engine shape (-1 dynamic) as a TensorSpec shape: dynamic dims take the bundle's
    axis names where they match, so shape checks read like the ONNX Runtime backend's."""
    out: list[int | str | None] = []
    for i, d in enumerate(shape):
        if d >= 0:
            out.append(int(d))
        elif names is not None and i < len(names) and names[i] is not None:
            out.append(names[i])
        else:
            out.append(f"dim{i}")
    return tuple(out)

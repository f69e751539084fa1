"""ONNX Runtime on the CPU: the embedded default and the reference backend."""

from __future__ import annotations

import os
import platform
from collections.abc import Mapping

import numpy as np
import onnxruntime as ort

from edgemed.backends.base import Backend, TensorSpec
from edgemed.backends.ort_rewrites import rewrite
from edgemed.errors import BackendError

__all__ = ["OnnxRuntimeBackend", "default_threads"]

# ONNX type strings -> NumPy dtypes for the IO types our bundles use.
_DTYPES: dict[str, np.dtype] = {
    "tensor(float)": np.dtype(np.float32),
    "tensor(float16)": np.dtype(np.float16),
    "tensor(double)": np.dtype(np.float64),
    "tensor(int8)": np.dtype(np.int8),
    "tensor(uint8)": np.dtype(np.uint8),
    "tensor(int32)": np.dtype(np.int32),
    "tensor(int64)": np.dtype(np.int64),
    "tensor(bool)": np.dtype(np.bool_),
}


def default_threads() -> int:
    """Intra-op threads: the cores this process may use, at most 8.

    More threads than cores makes ORT's spinning workers fight each other; past ~8,
    small medical models stop scaling.
    """
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    return max(1, min(8, cores))


def _spec(arg: ort.NodeArg) -> TensorSpec:
    if arg.type not in _DTYPES:
        raise BackendError(f"unsupported tensor type {arg.type} for '{arg.name}'")
    shape = tuple(d if isinstance(d, int) else (d or None) for d in arg.shape)
    return TensorSpec(arg.name, shape, _DTYPES[arg.type])


class OnnxRuntimeBackend(Backend):
    """ONNX Runtime ``CPUExecutionProvider`` session over verified model bytes.

    Outputs whose shape follows from the input shape (fixed dimensions, or dynamic ones
    named like an input's) are written into buffers allocated once per input shape and
    reused (ORT IO binding), so steady-state inference allocates nothing for them.
    """

    name = "onnxruntime"

    def __init__(self, model: bytes, *, precision: str = "fp32", threads: int | None = None):
        n = threads or default_threads()
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = n
        opts.inter_op_num_threads = 1
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.log_severity_level = 3  # ORT's warnings go to stderr unasked otherwise
        # ORT's workers otherwise keep spinning for milliseconds after each run, taking
        # the cores from the postprocessing that follows (measured: the 512x512 resize
        # back ran ~4x slower right after an inference). Spinning *during* a run stays
        # on: turning it off altogether made inference ~1.5 ms slower.
        opts.add_session_config_entry("session.force_spinning_stop", "1")
        try:
            self._session = ort.InferenceSession(
                rewrite(model), sess_options=opts, providers=["CPUExecutionProvider"]
            )
        except Exception as exc:  # ORT raises its own Fail/InvalidGraph/... types
            raise BackendError(
                f"ONNX Runtime cannot load the model ({exc.__class__.__name__})",
                code="BACKEND_LOAD_FAILED",
            ) from exc
        super().__init__(
            precision=precision,
            device=f"cpu ({platform.machine()}, {n} threads)",
            version=ort.__version__,
        )
        self._inputs = [_spec(a) for a in self._session.get_inputs()]
        self._outputs = [_spec(a) for a in self._session.get_outputs()]
        self._binding = self._session.io_binding()
        self._buffers: dict[tuple[tuple[int, ...], ...], dict[str, np.ndarray]] = {}

    def _output_shape(self, out: TensorSpec, feeds: Mapping[str, np.ndarray]) -> tuple | None:
        """Resolve an output's shape from the inputs' dynamic dims, or None if unknown."""
        dims: dict[str, int] = {}
        for spec in self._inputs:
            for d, s in zip(spec.shape, feeds[spec.name].shape, strict=True):
                if isinstance(d, str):
                    dims[d] = s
        shape = []
        for d in out.shape:
            if isinstance(d, int):
                shape.append(d)
            elif isinstance(d, str) and d in dims:
                shape.append(dims[d])
            else:
                return None
        return tuple(shape)

    def _infer(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        key = tuple(feeds[s.name].shape for s in self._inputs)
        buffers = self._buffers.get(key)
        if buffers is None:
            buffers = {}
            for out in self._outputs:
                shape = self._output_shape(out, feeds)
                if shape is not None:
                    buffers[out.name] = np.empty(shape, dtype=out.dtype)
            if len(self._buffers) >= 8:  # bound memory when shapes keep changing
                self._buffers.clear()
            self._buffers[key] = buffers
        b = self._binding
        b.clear_binding_inputs()
        b.clear_binding_outputs()
        for name, arr in feeds.items():
            b.bind_cpu_input(name, arr)
        for out in self._outputs:
            if out.name in buffers:
                value = ort.OrtValue.ortvalue_from_numpy(buffers[out.name])
                b.bind_ortvalue_output(out.name, value)
            else:
                b.bind_output(out.name, "cpu")
        try:
            self._session.run_with_iobinding(b)
        except Exception as exc:
            raise BackendError(
                f"ONNX Runtime inference failed ({exc.__class__.__name__}: {exc})",
                code="BACKEND_INFERENCE_FAILED",
            ) from exc
        results = {}
        allocated = b.get_outputs()
        for i, out in enumerate(self._outputs):
            results[out.name] = buffers[out.name] if out.name in buffers else allocated[i].numpy()
        return results

    def close(self) -> None:
        self._buffers.clear()
        super().close()

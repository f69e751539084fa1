"""Reduced-precision variants of the FP32 ONNX, made by NVIDIA ModelOpt.

TensorRT 11 builds every network strongly typed, so the precision of each layer is
decided here, in the ONNX, where it can be checked on a CPU:

* FP16: ``modelopt.onnx.autocast.convert_to_mixed_precision``. Its node classifier
  keeps a node in FP32 when the values it sees exceed FP16's safe range, so it gets
  the real calibration inputs (not its default random ``[-1, 1]`` data). Inputs and
  outputs stay float32 (``keep_io_types=True``): callers and the runtime's buffers do
  not change with the precision, and the casts cost little next to the convolutions.
* INT8: ``modelopt.onnx.quantization.quantize(quantize_mode="int8")``: Q/DQ nodes
  around the quantisable ops, activation ranges calibrated on the CPU provider
  (``entropy`` or ``max``), everything between them kept in FP32
  (``high_precision_dtype="fp32"``, so INT8 is compared with FP32 alone, not with a
  mix of INT8 and FP16 errors). Weights are stored as INT8 with a DequantizeLinear
  (``dq_only=True``): a quarter of the FP32 size on the device, and what TensorRT's
  explicit quantization consumes either way.

Both take node-name regexes and op types to keep in FP32.
"""

from __future__ import annotations

import contextlib
import io
import logging
import re
import tempfile
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from edgemed._lazy import require
from edgemed.errors import ExportError

__all__ = ["end_layers", "make_fp16", "make_int8", "op_counts", "weight_dtypes"]

log = logging.getLogger("edgemed.export")

#: Most calibration samples AutoCast runs: its reference runner keeps every
#: intermediate tensor of every sample in memory.
FP16_MAX_SAMPLES = 16


def op_counts(model: onnx.ModelProto) -> dict[str, int]:
    """How many nodes of each op type the graph has."""
    return dict(sorted(Counter(n.op_type for n in model.graph.node).items()))


#: Layers that carry a model's arithmetic (what "first" and "last" layer mean below).
_COMPUTE_OPS = frozenset({"Conv", "ConvTranspose", "Gemm", "MatMul"})


def end_layers(model: onnx.ModelProto) -> list[str]:
    """Names of the first compute layers (reached from a graph input through other ops)
    and the last ones (reaching a graph output): the layers commonly kept in higher
    precision under INT8. The first sees the input's full range, which one INT8 scale
    represents worst (a narrow CT window saturates at its top); the last feeds the
    decision directly (a max over cells, a sigmoid)."""
    g = model.graph
    weights = {t.name for t in g.initializer}
    producer = {o: n for n in g.node for o in n.output}
    consumers: dict[str, list[Any]] = {}
    for n in g.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    found: dict[str, None] = {}  # ordered, unique

    def walk(start: list[str], step: Any) -> None:
        seen: set[int] = set()
        todo = list(start)
        while todo:
            for node in step(todo.pop()):
                if id(node) in seen:
                    continue
                seen.add(id(node))
                if node.op_type in _COMPUTE_OPS:
                    found[node.name] = None
                else:
                    todo.extend(node.output if step is forward else node.input)

    def forward(name: str) -> list[Any]:
        return consumers.get(name, [])

    def backward(name: str) -> list[Any]:
        return [producer[name]] if name in producer and name not in weights else []

    walk([i.name for i in g.input if i.name not in weights], forward)
    walk([o.name for o in g.output], backward)
    return [n.name for n in g.node if n.name and n.name in found]  # in graph order


def weight_dtypes(model: onnx.ModelProto) -> dict[str, int]:
    """How many initializers of each element type (``FLOAT16``, ``FLOAT``, ``INT8``...)."""
    names = Counter(onnx.TensorProto.DataType.Name(t.data_type) for t in model.graph.initializer)
    return dict(sorted(names.items()))


class _Capture(logging.Filter):
    """Keeps ModelOpt's records away from a handler, collecting their text instead."""

    def __init__(self, buffer: io.StringIO) -> None:
        super().__init__()
        self.buffer = buffer

    def filter(self, record: logging.LogRecord) -> bool:
        if record.name.startswith("modelopt"):
            self.buffer.write(f"{record.levelname} {record.name}: {record.getMessage()}\n")
            return False
        return True


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Send ModelOpt's and ONNX Runtime's prints, progress bars and log records to the
    debug log. ModelOpt re-attaches its own handlers and propagates to the root logger
    on every call, and on a CPU-only machine logs an ERROR ("Failed to get GPU count:
    NVML ...") that says nothing about the export; so its records are filtered at the
    root's handlers while it runs. Its real failures raise and become ExportError."""
    buffer = io.StringIO()
    capture = _Capture(buffer)
    handlers = list(logging.getLogger().handlers)
    for handler in handlers:
        handler.addFilter(capture)
    try:
        with contextlib.redirect_stdout(buffer), contextlib.redirect_stderr(buffer):
            yield
    finally:
        for handler in handlers:
            handler.removeFilter(capture)
        if buffer.getvalue().strip():
            log.debug("ModelOpt output:\n%s", buffer.getvalue())


def _fail(code: str, what: str, exc: BaseException) -> ExportError:
    lines = str(exc).strip().splitlines()
    detail = f"{exc.__class__.__name__}: {lines[0] if lines else ''}"[:300]
    return ExportError(f"{what} failed ({detail})", code=code)


def _fixed_batch(path: Path, input_name: str) -> int | None:
    """The model input's batch size when it is fixed, else None."""
    model = onnx.load(str(path), load_external_data=False)
    inp = next(i for i in model.graph.input if i.name == input_name)
    dim = inp.type.tensor_type.shape.dim[0]
    return None if dim.dim_param or not dim.dim_value else int(dim.dim_value)


def _evenly(x: np.ndarray, n: int) -> np.ndarray:
    if len(x) <= n:
        return x
    return x[np.unique(np.round(np.linspace(0, len(x) - 1, n)).astype(np.int64))]


def make_fp16(
    fp32: Path,
    out: Path,
    calibration: np.ndarray,
    input_name: str,
    *,
    exclude_nodes: tuple[str, ...] = (),
    exclude_op_types: tuple[str, ...] = (),
) -> dict[str, Any]:
    """Write the FP16 variant of ``fp32`` to ``out`` (ModelOpt AutoCast).

    Raises:
        ExportError: ``EXPORT_FP16``.
    """
    autocast = require("modelopt.onnx.autocast", "export", "FP16 conversion (ModelOpt AutoCast)")
    samples = _evenly(calibration, FP16_MAX_SAMPLES)
    # AutoCast splits the samples into runs of the model's batch: keep whole runs.
    batch = _fixed_batch(fp32, input_name)
    if batch:
        samples = calibration[: max(batch, len(samples) // batch * batch)]
    with tempfile.TemporaryDirectory(prefix="edgemed-fp16-") as tmp:
        # AutoCast reads calibration data from a .npz file: one array per model input,
        # split along the batch axis into runs of the model's batch size.
        npz = Path(tmp) / "calibration.npz"
        arrays: dict[str, Any] = {input_name: samples.astype(np.float32)}
        np.savez(npz, **arrays)
        try:
            with _quiet():
                autocast.configure_logging("ERROR")
                model = autocast.convert_to_mixed_precision(
                    onnx_path=str(fp32),
                    low_precision_type="fp16",
                    nodes_to_exclude=list(exclude_nodes),
                    op_types_to_exclude=list(exclude_op_types),
                    keep_io_types=True,
                    calibration_data=str(npz),
                    providers=["cpu"],
                )
        except Exception as exc:  # ModelOpt raises many types; one error code for all
            raise _fail("EXPORT_FP16", "FP16 conversion (ModelOpt AutoCast)", exc) from exc
    onnx.save(model, str(out))
    weights = weight_dtypes(model)
    if not weights.get("FLOAT16"):
        raise ExportError(
            "AutoCast kept every weight in FP32: the FP16 variant would be FP32 under "
            "another name (check --exclude-nodes / --exclude-op-types)",
            code="EXPORT_FP16",
        )
    return {
        "tool": "modelopt.onnx.autocast.convert_to_mixed_precision",
        "low_precision_type": "fp16",
        "keep_io_types": True,
        "calibration_samples": int(len(samples)),
        "nodes_excluded": list(exclude_nodes),
        "op_types_excluded": list(exclude_op_types),
        "weights_by_dtype": weights,
        "casts": op_counts(model).get("Cast", 0),
    }


def make_int8(
    fp32: Path,
    out: Path,
    calibration: np.ndarray,
    input_name: str,
    *,
    method: str = "entropy",
    exclude_nodes: tuple[str, ...] = (),
    exclude_op_types: tuple[str, ...] = (),
    fp32_ends: bool = False,
) -> dict[str, Any]:
    """Write the INT8 Q/DQ variant of ``fp32`` to ``out`` (ModelOpt ONNX PTQ, CPU).

    ``fp32_ends``: the first and last compute layers (:func:`end_layers`) stay FP32 too,
    named exactly.

    Raises:
        ExportError: ``EXPORT_INT8`` (also when no Q/DQ node was inserted).
    """
    quantization = require("modelopt.onnx.quantization", "export", "INT8 quantization (ModelOpt)")
    ends = end_layers(onnx.load(str(fp32), load_external_data=False)) if fp32_ends else []
    exclude_nodes = (*exclude_nodes, *(f"^{re.escape(name)}$" for name in ends))
    with tempfile.TemporaryDirectory(prefix="edgemed-int8-") as tmp:
        # ModelOpt writes intermediate models next to its input: work on a copy.
        src = Path(tmp) / "model.onnx"
        src.write_bytes(fp32.read_bytes())
        dst = Path(tmp) / "model.int8.onnx"
        try:
            with _quiet():
                quantization.quantize(
                    onnx_path=str(src),
                    quantize_mode="int8",
                    calibration_data={input_name: calibration.astype(np.float32)},
                    calibration_method=method,
                    calibration_eps=["cpu"],
                    nodes_to_exclude=list(exclude_nodes),
                    op_types_to_exclude=list(exclude_op_types) or None,
                    output_path=str(dst),
                    high_precision_dtype="fp32",
                    dq_only=True,
                    log_level="ERROR",
                )
        except Exception as exc:  # ModelOpt raises many types; one error code for all
            raise _fail("EXPORT_INT8", "INT8 quantization (ModelOpt)", exc) from exc
        if not dst.is_file():
            raise ExportError("ModelOpt wrote no quantized model", code="EXPORT_INT8")
        model = onnx.load(str(dst))
    ops = op_counts(model)
    if not (ops.get("QuantizeLinear") and ops.get("DequantizeLinear")):
        raise ExportError(
            "the INT8 model has no QuantizeLinear/DequantizeLinear nodes (everything was "
            "excluded or nothing is quantisable)",
            code="EXPORT_INT8",
        )
    onnx.save(model, str(out))
    return {
        "tool": "modelopt.onnx.quantization.quantize",
        "quantize_mode": "int8",
        "calibration_method": method,
        "calibration_eps": ["cpu"],
        "calibration_samples": int(len(calibration)),
        "high_precision_dtype": "fp32",
        "weights": "INT8 initializers + DequantizeLinear (dq_only)",
        "weights_by_dtype": weight_dtypes(model),
        "nodes_excluded": list(exclude_nodes),
        "op_types_excluded": list(exclude_op_types),
        "fp32_ends": ends,
        "quantize_linear": ops["QuantizeLinear"],
        "dequantize_linear": ops["DequantizeLinear"],
        "opset": next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx")),
    }

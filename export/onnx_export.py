"""PyTorch -> ONNX: export, check, simplify when it provably changes nothing, parity.

The dynamo exporter (``torch.export`` + onnxscript) is tried first; when it fails the
TorchScript exporter runs instead and the dynamo failure is recorded as the reason. The
result is one self-contained ``.onnx`` file (no external data) that passes
``onnx.checker`` (full check) and strict shape inference.

Parity (:func:`parity`) compares ONNX Runtime with PyTorch on each named input batch.
Its measure is ``max |ONNX - PyTorch| / max |PyTorch|`` over the whole output (the
largest error relative to the output's scale, which stays meaningful where single
elements are near zero); the export fails when any case exceeds the tolerance.
"""

from __future__ import annotations

import contextlib
import io
import logging
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort

from edgemed._lazy import require
from edgemed.errors import ExportError
from edgemed.export.load import LoadedModel

__all__ = [
    "OnnxModel",
    "check_onnx",
    "export_onnx",
    "max_errors",
    "parity",
    "run_onnx",
    "run_onnx_outputs",
    "session",
    "simplify",
    "strip_value_info",
]

log = logging.getLogger("edgemed.export")

#: How close the simplified graph must stay to the unsimplified one (same measure as
#: parity): both run the same arithmetic in ONNX Runtime, so only reordering may differ.
SIMPLIFY_TOLERANCE = 1e-5


@dataclass
class OnnxModel:
    """The FP32 ONNX model and how it was made."""

    path: Path
    input_name: str
    output_name: str
    opset: int
    exporter: str
    fallback_reason: str | None = None
    simplify: dict[str, Any] = field(default_factory=dict)


@contextlib.contextmanager
def _quiet() -> Iterator[io.StringIO]:
    """Capture the exporters' prints and lower their loggers to errors (they warn about
    optional torchvision ops and opset conversion, which says nothing about this model)."""
    buffer = io.StringIO()
    loggers = [logging.getLogger(n) for n in ("torch.onnx", "torch.export", "onnxscript")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stdout(buffer), contextlib.redirect_stderr(buffer):
            yield buffer
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)
        if buffer.getvalue().strip():
            log.debug("exporter output:\n%s", buffer.getvalue())


def _first_line(exc: BaseException, limit: int = 300) -> str:
    """``Type: first line of the message``, without terminal colour codes."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(exc)).strip().splitlines()
    return f"{exc.__class__.__name__}: {text[0] if text else ''}"[:limit]


def _output_axes(input_shape: tuple[int, ...], axes: dict[int, str], task: str) -> dict[int, str]:
    """Dynamic axes of the output: the batch, plus the spatial axes for segmentation
    (an output the size of the input)."""
    if task == "segmentation":
        return dict(axes)
    return {0: axes[0]} if 0 in axes else {}


def _export_dynamo(
    loaded: LoadedModel,
    example: Any,
    path: Path,
    names: tuple[str, str],
    axes: dict[int, str],
    opset: int,
) -> None:
    torch = require("torch", "export", "edgemed export")
    target = loaded.program if loaded.program is not None else loaded.module
    kwargs: dict[str, Any] = {}
    if loaded.program is None:
        # Named string dims: the ONNX input gets exactly these dim_param names.
        kwargs["dynamic_shapes"] = (dict(axes),) if axes else None
    torch.onnx.export(
        target,
        (example,),
        str(path),
        dynamo=True,
        opset_version=opset,
        input_names=[names[0]],
        output_names=[names[1]],
        external_data=False,  # one self-contained file per bundle artifact
        optimize=True,
        verbose=False,
        **kwargs,
    )


def _export_torchscript(
    loaded: LoadedModel,
    example: Any,
    path: Path,
    names: tuple[str, str],
    axes: dict[int, str],
    out_axes: dict[int, str],
    opset: int,
) -> None:
    torch = require("torch", "export", "edgemed export")
    torch.onnx.export(
        loaded.module,
        (example,),
        str(path),
        dynamo=False,
        opset_version=opset,
        input_names=[names[0]],
        output_names=[names[1]],
        dynamic_axes={names[0]: dict(axes), names[1]: dict(out_axes)},
        do_constant_folding=True,
    )


def export_onnx(
    loaded: LoadedModel,
    input_shape: tuple[int, ...],
    axes: dict[int, str],
    path: Path,
    *,
    task: str,
    opset: int = 18,
    input_name: str = "image",
    output_name: str = "logits",
) -> OnnxModel:
    """Export ``loaded`` to ``path`` (dynamo first, TorchScript as the fallback).

    Raises:
        ExportError: ``EXPORT_ONNX`` when both exporters fail (both reasons named).
    """
    torch = require("torch", "export", "edgemed export")
    example = torch.zeros(input_shape, dtype=torch.float32)
    names = (input_name, output_name)
    fallback_reason = None
    try:
        with _quiet():
            _export_dynamo(loaded, example, path, names, axes, opset)
        exporter = "dynamo (torch.onnx.export, dynamo=True)"
    except Exception as exc:  # any dynamo failure: fall back, and say why
        fallback_reason = _first_line(exc)
        log.info("dynamo exporter failed (%s); using the TorchScript exporter", fallback_reason)
        if loaded.program is not None:
            raise ExportError(
                f"the dynamo exporter failed on a torch.export program ({fallback_reason})",
                code="EXPORT_ONNX",
            ) from exc
        try:
            with _quiet():
                _export_torchscript(
                    loaded,
                    example,
                    path,
                    names,
                    axes,
                    _output_axes(input_shape, axes, task),
                    opset,
                )
        except Exception as exc2:
            raise ExportError(
                f"ONNX export failed: dynamo ({fallback_reason}); TorchScript "
                f"({_first_line(exc2)})",
                code="EXPORT_ONNX",
            ) from exc2
        exporter = "torchscript (torch.onnx.export, dynamo=False)"
    model = onnx.load(str(path))
    _name_dynamic_dims(model, input_name, axes)
    onnx.save(model, str(path))
    check_onnx(path)
    if len(model.graph.input) != 1 or not model.graph.output:
        raise ExportError(
            f"edgemed runs single-input models; the ONNX has {len(model.graph.input)} inputs",
            code="EXPORT_ONNX",
        )
    opset_found = next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))
    return OnnxModel(
        path, input_name, model.graph.output[0].name, opset_found, exporter, fallback_reason
    )


def _name_dynamic_dims(model: onnx.ModelProto, input_name: str, axes: dict[int, str]) -> None:
    """Give the input's dynamic dims the ``--dynamic`` names (a saved torch.export
    program carries its own symbols, such as ``s0``), renaming the same symbols in
    every output and value_info so the graph stays consistent; a dim that should be
    dynamic but is fixed is an error."""
    inp = next(i for i in model.graph.input if i.name == input_name)
    dims = inp.type.tensor_type.shape.dim
    rename = {}
    for axis, name in axes.items():
        d = dims[axis]
        if not d.dim_param:
            raise ExportError(
                f"axis {axis} ({name}) of the exported input is fixed at {d.dim_value}; the "
                "model (or saved program) does not allow it to vary",
                code="EXPORT_ONNX",
            )
        rename[d.dim_param] = name
    for vi in [*model.graph.input, *model.graph.output, *model.graph.value_info]:
        for d in vi.type.tensor_type.shape.dim:
            if d.dim_param in rename:
                d.dim_param = rename[d.dim_param]


def strip_value_info(path: Path) -> None:
    """Drop the intermediate tensors' shape annotations (``graph.value_info``).

    They are optional (ONNX Runtime, ModelOpt and TensorRT infer shapes themselves),
    and the symbols the exporter and onnxslim give dynamic dims inside the graph vary
    from run to run: without them the same weights give the same bytes, so a rebuilt
    bundle's sha256 says whether anything really changed.
    """
    model = onnx.load(str(path))
    del model.graph.value_info[:]
    onnx.save(model, str(path))
    check_onnx(path)


def check_onnx(path: Path) -> None:
    """``onnx.checker`` (full check) and strict shape inference, or ``EXPORT_ONNX``."""
    try:
        model = onnx.load(str(path))
        onnx.checker.check_model(model, full_check=True)
        onnx.shape_inference.infer_shapes(model, check_type=True, strict_mode=True)
    except Exception as exc:  # checker and inference raise several types
        raise ExportError(
            f"the ONNX model fails the checker ({_first_line(exc)})", code="EXPORT_ONNX", path=path
        ) from exc


def session(path: Path, threads: int | None = None) -> ort.InferenceSession:
    """A CPU ONNX Runtime session (optionally limited to ``threads``)."""
    opts = ort.SessionOptions()
    if threads:
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
    opts.log_severity_level = 3  # errors only: warnings about unused initializers are noise
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def run_onnx(sess: ort.InferenceSession, x: np.ndarray, batch: int = 8) -> np.ndarray:
    """The session's first output for ``x``, run in chunks of ``batch`` (float32 out)."""
    first = sess.get_outputs()[0].name
    return run_onnx_outputs(sess, x, batch)[first]


def run_onnx_outputs(
    sess: ort.InferenceSession, x: np.ndarray, batch: int = 8
) -> dict[str, np.ndarray]:
    """Every output of the session for ``x`` by name, run in chunks of ``batch``
    (float32 out)."""
    inp = sess.get_inputs()[0]
    names = [o.name for o in sess.get_outputs()]
    dtype = np.float16 if inp.type == "tensor(float16)" else np.float32
    fixed = inp.shape[0] if isinstance(inp.shape[0], int) else None
    step = fixed or batch
    outs: dict[str, list[np.ndarray]] = {n: [] for n in names}
    for i in range(0, len(x), step):
        chunk = np.ascontiguousarray(x[i : i + step], dtype=dtype)
        n = len(chunk)
        if fixed and n < fixed:  # a fixed batch takes exactly `fixed`: pad, then drop
            chunk = np.concatenate([chunk, np.repeat(chunk[-1:], fixed - n, axis=0)])
        for name, y in zip(names, sess.run(names, {inp.name: chunk}), strict=True):
            outs[name].append(np.asarray(y, dtype=np.float32)[:n])
    return {name: np.concatenate(parts) for name, parts in outs.items()}


def max_errors(ref: np.ndarray, got: np.ndarray) -> dict[str, float]:
    """``max_abs`` and ``max_rel`` (= max_abs / max |ref|) of ``got`` against ``ref``."""
    if ref.shape != got.shape:
        return {"max_abs": float("inf"), "max_rel": float("inf")}
    err = float(np.max(np.abs(ref.astype(np.float64) - got.astype(np.float64)), initial=0.0))
    scale = float(np.max(np.abs(ref), initial=0.0))
    return {"max_abs": err, "max_rel": err / scale if scale > 0 else (0.0 if err == 0 else err)}


def parity(
    loaded: LoadedModel,
    model: OnnxModel,
    cases: dict[str, np.ndarray],
    tolerance: float,
    threads: int | None = None,
) -> dict[str, Any]:
    """Compare ONNX Runtime with PyTorch on each case; fail above ``tolerance``.

    Returns:
        ``{"tolerance", "measure", "cases": {name: {"shape", "max_abs", "max_rel"}}}``.

    Raises:
        ExportError: ``EXPORT_PARITY`` naming the worst case.
    """
    sess = session(model.path, threads)
    report: dict[str, Any] = {
        "measure": "max |ONNX - PyTorch| / max |PyTorch| over the output",
        "tolerance": tolerance,
        "cases": {},
    }
    for name, x in cases.items():
        ref = loaded.run(x)
        got = run_onnx(sess, x, batch=len(x))
        report["cases"][name] = {"shape": list(x.shape), **_rounded(max_errors(ref, got))}
    worst_name, worst = max(report["cases"].items(), key=lambda kv: kv[1]["max_rel"])
    if not worst["max_rel"] <= tolerance:
        raise ExportError(
            f"ONNX Runtime differs from PyTorch on '{worst_name}': max relative error "
            f"{worst['max_rel']:.3g} > tolerance {tolerance:g} (max abs {worst['max_abs']:.3g})",
            code="EXPORT_PARITY",
        )
    return report


def _rounded(errors: dict[str, float]) -> dict[str, float]:
    return {k: float(f"{v:.4g}") for k, v in errors.items()}


def simplify(
    model: OnnxModel, cases: dict[str, np.ndarray], threads: int | None = None
) -> dict[str, Any]:
    """Try onnxslim; keep its graph only when it matches the unsimplified one.

    "Matches": same input/output names, shapes and types, and ONNX Runtime outputs
    within :data:`SIMPLIFY_TOLERANCE` (parity's measure) on every case. Otherwise the
    unsimplified graph stays and the reason is recorded.
    """
    onnxslim = require("onnxslim", "export", "ONNX simplification")
    original = onnx.load(str(model.path))
    before = len(original.graph.node)
    quiet = io.StringIO()
    try:
        with contextlib.redirect_stdout(quiet), contextlib.redirect_stderr(quiet):
            slim = onnxslim.slim(onnx.load(str(model.path)))
    except Exception as exc:  # a simplifier bug must not stop the export: keep the original
        return {"applied": False, "reason": f"onnxslim failed ({_first_line(exc)})"}
    version = getattr(onnxslim, "__version__", "?")
    io_before = [(v.name, str(v.type)) for v in [*original.graph.input, *original.graph.output]]
    io_after = [(v.name, str(v.type)) for v in [*slim.graph.input, *slim.graph.output]]
    if io_before != io_after:
        return {"applied": False, "reason": "onnxslim changed the model's inputs or outputs"}
    candidate = model.path.with_suffix(".slim.onnx")
    onnx.save(slim, str(candidate))
    try:
        check_onnx(candidate)
        ref_sess, new_sess = session(model.path, threads), session(candidate, threads)
        worst = 0.0
        for x in cases.values():
            errors = max_errors(run_onnx(ref_sess, x, len(x)), run_onnx(new_sess, x, len(x)))
            worst = max(worst, errors["max_rel"])
    except ExportError as exc:
        candidate.unlink()
        return {"applied": False, "reason": f"simplified graph fails the checker ({exc.message})"}
    info = {
        "tool": f"onnxslim {version}",
        "nodes_before": before,
        "nodes_after": len(slim.graph.node),
        "max_rel_vs_unsimplified": float(f"{worst:.4g}"),
        "tolerance": SIMPLIFY_TOLERANCE,
    }
    if not worst <= SIMPLIFY_TOLERANCE:
        candidate.unlink()
        return {"applied": False, "reason": "outputs differ from the unsimplified graph", **info}
    candidate.replace(model.path)
    return {"applied": True, **info}

"""PyTorch -> ONNX: export, check, simplify when it provably changes nothing, parity.

The dynamo exporter (``torch.export`` + onnxscript) is tried first; when it fails the
TorchScript exporter runs instead and the dynamo failure is recorded as the reason. The
result is one self-contained ``.onnx`` file (no external data) that passes
``onnx.checker`` (full check) and strict shape inference.

Parity (:func:`parity`) compares ONNX Runtime with PyTorch on each named input batch,
in two ways:

* numerically: ``max |ONNX - PyTorch| / (max - min of PyTorch's output)`` over the whole
  output, the largest error relative to the output's dynamic range. The range, not
  ``max |PyTorch|``: argmax, softmax and thresholds ignore a constant offset, so the
  spread of the values is the scale on which an error can change a result; and one
  element near zero cannot blow the measure up. The export fails above the tolerance.
* by task (:class:`edgemed.export.gates.TaskCheck`): on the real images, both outputs
  are decoded by the bundle's task head and must meet the accuracy gates against each
  other, so a raised ``--parity-tolerance`` still cannot let through an export whose
  results differ.

Why the default tolerance is 1e-3 (:data:`edgemed.export.config.DEFAULT_PARITY_TOLERANCE`):
float32 arithmetic done in another order differs by amounts that depend on the network
and the input, not on the exporter. Measured with this measure on the stock models the
tests export (torch 2.13 CPU, ONNX Runtime 1.32, 2 CPUs; worst case over the random and
real inputs): demo U-Net 4.4e-7, MONAI BasicUNet (small) 1.3e-6, SegResNet 1.9e-6,
DenseNet121 6.5e-7, torchvision ResNet-18 1.2e-6. MONAI's BasicUNet with its default
features on real CT (CT_small letterboxed) measures 6.0e-5 at 3x256x256 and 3.6e-4 at
1x512x512: its instance norms over near-constant image regions amplify rounding (the
old measure, ``/ max |PyTorch|`` at 1e-4, failed it at 3x256x256 with 1.09e-4). Real
faults measure above 1e-3: a Resize converted with ``asymmetric`` instead of
``half_pixel`` coordinates 0.33 (SegResNet); normalisation epsilon 1e-3 instead of 1e-5
2.4e-3 to 0.22; one first-layer weight 1% off 1.8e-3 to 7.0e-3 in the U-Nets (6.5e-4 in
the default BasicUNet with 3 input channels), doubled 3.9e-3 and 4.9e-3 in the
classifiers. So 1e-3 sits 2.7x above the worst healthy figure and below the plausible
faults. What it cannot see is as small as float32's own noise on deep networks (every
weight rounded to float16 measured 4.9e-4 to 1.4e-3): the task check and the FP16
variant's accuracy gate are the checks at that scale.
"""

from __future__ import annotations

import contextlib
import io
import logging
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import onnx
import onnxruntime as ort

from edgemed._lazy import require
from edgemed.errors import ExportError
from edgemed.export.load import LoadedModel

if TYPE_CHECKING:  # gates imports this module
    from edgemed.export.gates import TaskCheck

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

#: How close the simplified graph must stay to the unsimplified one (parity's numeric
#: measure): both run the same arithmetic in ONNX Runtime, so only reordering may differ.
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
    """How far ``got`` is from ``ref``: ``max_abs``, the reference's ``range``
    (max - min) and ``max_abs_over_range`` (parity's measure).

    A constant reference (range 0) is measured against ``max |ref|`` instead, and an
    all-zero one absolutely: there is no spread to compare with.
    """
    if ref.shape != got.shape:
        return {"max_abs": float("inf"), "range": 0.0, "max_abs_over_range": float("inf")}
    ref64 = ref.astype(np.float64)
    diff = np.abs(ref64 - got.astype(np.float64))
    # NaN anywhere is a failure, never a pass: np.max would propagate it, but `<=` on NaN
    # is False only where callers remember to write the test that way.
    err = float(np.max(diff, initial=0.0)) if not np.isnan(diff).any() else float("inf")
    spread = float(ref64.max() - ref64.min()) if ref.size else 0.0
    scale = spread if spread > 0 else float(np.max(np.abs(ref64), initial=0.0))
    return {
        "max_abs": err,
        "range": spread,
        "max_abs_over_range": err / scale if scale > 0 else err,
    }


def parity(
    loaded: LoadedModel,
    model: OnnxModel,
    cases: dict[str, np.ndarray],
    tolerance: float,
    threads: int | None = None,
    task: TaskCheck | None = None,
) -> dict[str, Any]:
    """Compare ONNX Runtime with PyTorch on each case; fail above ``tolerance``, or when
    ``task`` is given and the decoded results fail its gates.

    Returns:
        ``{"measure", "tolerance", "cases": {name: {"shape", "max_abs", "range",
        "max_abs_over_range"[, "task"]}}}``; ``task`` holds the head's metric and
        ``failures``.

    Raises:
        ExportError: ``EXPORT_PARITY`` naming the worst case, its measured value and
        ``--parity-tolerance``; or the task gate's failures.
    """
    sess = session(model.path, threads)
    report: dict[str, Any] = {
        "measure": "max |ONNX - PyTorch| / (max - min of PyTorch's output), per case",
        "tolerance": tolerance,
        "cases": {},
    }
    measured: dict[str, float] = {}  # unrounded: the report's 4 digits must not decide
    for name, x in cases.items():
        ref = loaded.run(x)
        got = run_onnx(sess, x, batch=len(x))
        if ref.shape != got.shape:
            raise ExportError(
                f"ONNX Runtime's output has shape {list(got.shape)} on '{name}', "
                f"PyTorch's {list(ref.shape)}",
                code="EXPORT_PARITY",
            )
        errors = max_errors(ref, got)
        measured[name] = errors["max_abs_over_range"]
        case = {"shape": list(x.shape), **_rounded(errors)}
        if task is not None and name == task.case:
            case["task"] = task.run(ref, got)
        report["cases"][name] = case
    worst_name = max(measured, key=measured.__getitem__)
    worst = report["cases"][worst_name]
    real = task.case if task is not None else ""
    task_case = report["cases"].get(real, {}).get("task")
    if not measured[worst_name] <= tolerance:
        if task_case is None:
            verdict = ""
        elif task_case["failures"]:
            verdict = "; the decoded results differ too"
        else:
            # Said so that a user can tell float32 noise on an ill-conditioned model from
            # a broken export before deciding to raise the tolerance.
            verdict = "; the decoded results on the real images still pass the accuracy gates"
        raise ExportError(
            f"ONNX Runtime differs from PyTorch on '{worst_name}': max error "
            f"{measured[worst_name]:.3g} of the output's range > --parity-tolerance "
            f"{tolerance:g} (max abs {worst['max_abs']:.3g}, range {worst['range']:.3g})"
            f"{verdict}",
            code="EXPORT_PARITY",
        )
    if task_case is not None and task_case["failures"]:
        raise ExportError(
            f"ONNX Runtime's results differ from PyTorch's on '{real}' beyond the "
            f"accuracy gates ({'; '.join(task_case['failures'])}), although the max error "
            f"{measured[worst_name]:.3g} of the range is within --parity-tolerance "
            f"{tolerance:g}",
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
            worst = max(worst, errors["max_abs_over_range"])
    except ExportError as exc:
        candidate.unlink()
        return {"applied": False, "reason": f"simplified graph fails the checker ({exc.message})"}
    info = {
        "tool": f"onnxslim {version}",
        "nodes_before": before,
        "nodes_after": len(slim.graph.node),
        "max_abs_over_range_vs_unsimplified": float(f"{worst:.4g}"),
        "tolerance": SIMPLIFY_TOLERANCE,
    }
    if not worst <= SIMPLIFY_TOLERANCE:
        candidate.unlink()
        return {"applied": False, "reason": "outputs differ from the unsimplified graph", **info}
    candidate.replace(model.path)
    return {"applied": True, **info}

"""``export_bundle``: a trained PyTorch model in, a gated multi-precision bundle out.

A 5-value input shape (``NxCxDxHxW``) exports a 3D model run by sliding window: its
bundle has ``input.layout`` NCDHW, ``preprocess.size`` the ROI and a ``volume`` block
(target spacing, sliding window); calibration windows and the gates' volumes go through
the runtime's own 3D path (:mod:`.volumes`, :func:`.gates.compare_volumes`).

Stages, in order (each timed; any failure leaves no bundle behind):

1. specs: the preprocessing/postprocessing the bundle will carry;
2. data: calibration and validation images, read and preprocessed by the runtime;
3. model: loaded and run once in PyTorch on a real input (labels checked); randomly
   initialised weights (no ``weights``) are a :class:`RandomWeightsWarning` and are
   recorded in the bundle's provenance;
4. ONNX: exported, checked, simplified if that provably changes nothing, and
   compared with PyTorch on random and real inputs, numerically and (real inputs) by
   the task head's decoded results (:mod:`.onnx_export`);
5. FP16 and INT8 variants by ModelOpt (:mod:`.precision`);
6. accuracy gates against FP32 (:mod:`.gates`): a failure raises
   :class:`~edgemed.errors.AccuracyGateError`; no precision is ever dropped quietly;
7. the bundle: written into a hidden staging folder beside ``out``, verified by
   loading it, and only then moved into place with its ``report.md``.
"""

from __future__ import annotations

import importlib.metadata
import logging
import os
import platform
import shutil
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgemed._lazy import require
from edgemed._version import __version__
from edgemed.bundle import write_manifest
from edgemed.errors import AccuracyGateError, ExportError, UsageError
from edgemed.export import calibration, gates, onnx_export, precision, validation_set, volumes
from edgemed.export.config import ExportConfig, dynamic_axes, load_specs, volume_block
from edgemed.export.load import LoadedModel, RandomWeightsWarning, load_model
from edgemed.export.report import render_report
from edgemed.heads import create_head
from edgemed.settings import load_settings

__all__ = ["ExportResult", "export_bundle"]

log = logging.getLogger("edgemed.export")

ARTIFACTS = {"fp32": "model.onnx", "fp16": "model.fp16.onnx", "int8": "model.int8.onnx"}
_VERSIONS = (
    "torch", "onnx", "onnxruntime", "nvidia-modelopt", "onnxslim", "onnxscript", "numpy",
)  # fmt: skip
_REAL_PARITY_SAMPLES = 8
#: 3D: ROI windows are ~30-100x a 2D slice's voxels; four keep parity's PyTorch run short.
_REAL_PARITY_WINDOWS = 4


@dataclass
class ExportResult:
    """What :func:`export_bundle` wrote."""

    bundle_dir: Path
    manifest: dict[str, Any]
    report_md: str
    accuracy_table: str
    seconds: dict[str, float]


def _versions() -> dict[str, str]:
    out = {"edgemed": __version__, "python": platform.python_version()}
    for dist in _VERSIONS:
        try:
            out[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            out[dist] = "not installed"
    return out


def _check_labels(config: ExportConfig, y: np.ndarray, decision: str) -> None:
    """Label count against the model's output channels (segmentation, classification)."""
    if config.task == "embedding" or not config.labels:
        if config.task != "embedding":
            raise UsageError(f"--labels is required for {config.task}")
        return
    channels = int(
        y.reshape(len(y), -1).shape[1] if config.task == "classification" else y.shape[1]
    )
    # With decision=threshold, label 0 means "no channel passed": one more label.
    want = channels + (1 if config.task == "segmentation" and decision == "threshold" else 0)
    if len(config.labels) != want:
        raise UsageError(
            f"--labels has {len(config.labels)} names; the model's output needs {want}"
        )


#: The parity case of real images (the one the task head decodes).
REAL_CASE = "real (calibration images)"


def _parity_cases(
    config: ExportConfig, axes: dict[int, str], real: np.ndarray
) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Random inputs (seeded, uniform over the real inputs' value range) at the export
    shape and, where axes are dynamic, at a second shape; plus real inputs (the
    :data:`REAL_CASE`), and which of ``real`` those are."""
    rng = np.random.default_rng(config.seed)
    lo, hi = float(real.min()), float(real.max())
    n, c, *spatial = config.input_shape
    shapes = {"random": tuple(config.input_shape)}
    alt = (
        2 if 0 in axes else n,
        c,
        *(size // 2 if axis in axes else size for axis, size in enumerate(spatial, 2)),
    )
    if alt != shapes["random"] and min(alt[2:]) >= 8:
        shapes["random-" + "x".join(map(str, alt))] = alt
    cases = {
        name: rng.uniform(lo, hi if hi > lo else lo + 1.0, size=s).astype(np.float32)
        for name, s in shapes.items()
    }
    if 0 in axes:
        samples = _REAL_PARITY_WINDOWS if config.is_volume else _REAL_PARITY_SAMPLES
        idx = np.unique(np.round(np.linspace(0, len(real) - 1, samples)).astype(int))
    else:  # a fixed batch takes exactly n: the first n, repeated when fewer (fit_batch)
        idx = np.arange(n) % len(real)
    cases[REAL_CASE] = np.ascontiguousarray(real[idx])
    return cases, idx


def fit_batch(x: np.ndarray, batch: int | None) -> np.ndarray:
    """``x`` cut to a whole number of ``batch``-sized runs (a model with a fixed batch
    takes exactly that many), repeated to one run when shorter; unchanged for None."""
    if batch is None:
        return x
    if len(x) < batch:
        return np.resize(x, (batch, *x.shape[1:]))
    return x[: len(x) // batch * batch]


def _shape_of(value_info: Any) -> list[int | str]:
    return [d.dim_param or int(d.dim_value) for d in value_info.type.tensor_type.shape.dim]


def _stage_dir(out: Path) -> Path:
    out.parent.mkdir(parents=True, exist_ok=True)
    stage = out.parent / f".{out.name}.partial-{os.getpid()}"
    if stage.exists():
        shutil.rmtree(stage)
    stage.mkdir()
    return stage


def _move_into_place(stage: Path, out: Path) -> None:
    """Replace ``out`` with ``stage``; the old bundle is removed only after the rename."""
    old = None
    if out.exists():
        old = out.parent / f".{out.name}.old-{os.getpid()}"
        out.rename(old)
    stage.rename(out)
    if old is not None:
        shutil.rmtree(old)


def export_bundle(
    config: ExportConfig, progress: Callable[[str], None] | None = None
) -> ExportResult:
    """Run the whole export (see the module docstring) and write the bundle.

    Args:
        config: what to export and how.
        progress: called with one line per finished stage (the CLI prints them).

    Raises:
        UsageError: inconsistent options (shape vs spec, labels vs outputs, ...).
        InputError: a calibration/validation image cannot be read.
        ExportError: ``EXPORT_*`` (model load, ONNX export, parity, FP16, INT8).
        AccuracyGateError: ``ACCURACY_GATE``; ``.table`` holds the per-class table.
        MissingDependencyError: torch or ModelOpt missing (``edgemed[export]``).
    """
    say = progress or (lambda line: log.info("%s", line))
    t0 = time.perf_counter()
    seconds: dict[str, float] = {}

    # Every part up front: a missing one is DEPENDENCY_MISSING now, not after the work.
    require("torch", "export", "edgemed export")
    require("onnxscript", "export", "the dynamo ONNX exporter")
    if config.simplify:
        require("onnxslim", "export", "ONNX simplification")
    if "fp16" in config.precisions:
        require("modelopt.onnx.autocast", "export", "FP16 conversion (ModelOpt AutoCast)")
        require("polygraphy", "export", "FP16 conversion (ModelOpt AutoCast)")
    if "int8" in config.precisions:
        require("modelopt.onnx.quantization", "export", "INT8 quantization (ModelOpt)")
    threads = load_settings().ort_threads

    pre, post = load_specs(config.preprocess, config.task, config.postprocess)
    _check_shape(config, pre)
    vol = _volume_spec(config, pre) if config.is_volume else None
    axes = dynamic_axes(config.input_shape, config.dynamic)
    t = time.perf_counter()
    calib: calibration.ImageSet | volumes.VolumeSet
    val: calibration.ImageSet | volumes.VolumeSet
    if vol is None:
        calib, val, split = calibration.collect(
            config.calibration,
            config.validation,
            pre,
            config.max_calibration_slices,
            config.modalities,
        )
        t = _lap(seconds, "data", t)
        say(
            f"data        {len(calib.inputs)} calibration / {len(val.inputs)} validation "
            f"slices ({seconds['data']:.1f} s)"
        )
    else:
        calib, val, split = volumes.collect(
            config.calibration,
            config.validation,
            pre,
            vol,
            config.max_calibration_windows,
            config.modalities,
            config.seed,
        )
        t = _lap(seconds, "data", t)
        say(
            f"data        {len(calib.inputs)} calibration windows from {len(calib.records)} "
            f"volume(s) / {len(val.images)} validation volume(s) ({seconds['data']:.1f} s)"
        )

    loaded = load_model(config.model, config.weights, config.model_kwargs, seed=config.seed)
    if loaded.random_init:
        # A bundle of random weights looks like any other on a device: say so now (the
        # export takes minutes) and in the bundle's provenance.
        warnings.warn(
            f"no --weights: {config.model} is exported with its random initialisation "
            f"(torch seed {config.seed}); provenance.export.source.weights records it",
            RandomWeightsWarning,
            stacklevel=2,
        )
    try:
        y = loaded.run(calib.inputs[: config.input_shape[0]])
    except Exception as exc:  # the user's model on a real input of the declared shape
        raise ExportError(
            f"the model fails on a {config.input_shape} input ({exc.__class__.__name__}: "
            f"{str(exc).splitlines()[0] if str(exc) else ''})",
            code="EXPORT_MODEL_RUN",
        ) from exc
    _check_labels(config, y, getattr(post, "decision", ""))
    t = _lap(seconds, "load", t)

    stage = _stage_dir(config.out)
    try:
        manifest, table = _build(
            config, loaded, pre, post, vol, axes, calib, val, split, stage, threads, seconds,
            say, t,
        )  # fmt: skip
        if config.validation is not None:  # ship a few for the device's gate (edgemed check)
            shipped = validation_set.ship(
                config.validation, stage, manifest["provenance"]["accuracy"]["thresholds"]
            )
            if shipped is not None:
                manifest["validation"] = shipped
        seconds["total"] = round(time.perf_counter() - t0, 2)
        manifest["provenance"]["export"]["seconds"] = seconds
        bundle = write_manifest(stage, manifest)  # hashes every artifact, then reloads
        artifacts = {a.path: {"sha256": a.sha256, "bytes": a.bytes} for a in bundle.artifacts}
        report = render_report(manifest, artifacts)
        (stage / "report.md").write_text(report, encoding="utf-8")
        _move_into_place(stage, config.out)
    finally:
        if stage.exists():
            shutil.rmtree(stage)
    say(f"bundle      {config.out} ({seconds['total']:.1f} s in all)")
    return ExportResult(config.out, manifest, report, table, seconds)


def _check_shape(config: ExportConfig, pre: Any) -> None:
    """The input shape against the preprocessing spec (channels; H, W or the ROI)."""
    n, c, *spatial = config.input_shape
    text = "x".join(map(str, config.input_shape))
    if len(spatial) != len(pre.size):
        raise UsageError(
            f"--input-shape {text} has {len(spatial)} spatial sizes; the preprocessing spec's "
            f"size {list(pre.size)} has {len(pre.size)} (3D models: NxCxDxHxW with a "
            "[D, H, W] size)"
        )
    if c != pre.num_channels or tuple(spatial) != tuple(int(s) for s in pre.size):
        raise UsageError(
            f"--input-shape {text} does not fit the preprocessing spec "
            f"({pre.num_channels} channels, {'x'.join(str(int(s)) for s in pre.size)})"
        )


def _volume_spec(config: ExportConfig, pre: Any) -> Any:
    """The bundle's ``volume`` block as the runtime reads it (its own checks)."""
    from edgemed.errors import BundleError
    from edgemed.volume import VolumeSpec

    if config.task != "segmentation":
        raise UsageError(f"3D (NCDHW) exports are segmentation models, not {config.task}")
    try:
        return VolumeSpec.from_dict(volume_block(config), pre.size)
    except BundleError as exc:  # the user's options or spec file
        raise UsageError(f"volume: {exc.message}") from exc


def _build(
    config: ExportConfig,
    loaded: LoadedModel,
    pre: Any,
    post: Any,
    vol: Any,
    axes: dict[int, str],
    calib: Any,
    val: Any,
    split: dict[str, Any],
    stage: Path,
    threads: int | None,
    seconds: dict[str, float],
    say: Callable[[str], None],
    t: float,
) -> tuple[dict[str, Any], str]:
    """Stages 4-6 into ``stage``; returns the manifest (without hashes) and the table."""
    out_name = "features" if config.task == "embedding" else "logits"
    fp32 = onnx_export.export_onnx(
        loaded,
        config.input_shape,
        axes,
        stage / ARTIFACTS["fp32"],
        task=config.task,
        opset=config.opset,
        output_name=out_name,
    )
    cases, real_idx = _parity_cases(config, axes, calib.inputs)
    fp32.simplify = (
        onnx_export.simplify(fp32, cases, threads)
        if config.simplify
        else {"applied": False, "reason": "disabled (--no-simplify)"}
    )
    onnx_export.strip_value_info(fp32.path)
    input_shape, outputs = _io_shapes(fp32.path)  # final from here on
    parity = onnx_export.parity(
        loaded,
        fp32,
        cases,
        config.parity_tolerance,
        threads,
        task=(
            _window_check(config, post, outputs)
            if vol is not None
            else _task_check(config, post, outputs, [calib.placements[i] for i in real_idx])
        ),
    )
    t = _lap(seconds, "onnx", t)
    worst = max(c["max_abs_over_range"] for c in parity["cases"].values())
    say(
        f"onnx        {fp32.exporter.split(' ')[0]}, opset {fp32.opset}, parity: max error "
        f"{worst:.2g} of the output range ({seconds['onnx']:.1f} s)"
    )

    made: dict[str, dict[str, Any]] = {}
    variants: dict[str, Path] = {}
    for p in config.precisions:
        if p == "fp32":
            continue
        path = stage / ARTIFACTS[p]
        make = precision.make_fp16 if p == "fp16" else precision.make_int8
        kw = (
            {}
            if p == "fp16"
            else {"method": config.calibration_method, "fp32_ends": config.int8_fp32_ends}
        )
        made[p] = make(
            fp32.path,
            path,
            fit_batch(calib.inputs, None if 0 in axes else config.input_shape[0]),
            fp32.input_name,
            exclude_nodes=config.exclude_nodes,
            exclude_op_types=config.exclude_op_types,
            **kw,
        )
        variants[p] = path
        t = _lap(seconds, p, t)
        say(f"{p}        {made[p]['tool'].split('.')[-1]} ({seconds[p]:.1f} s)")

    manifest: dict[str, Any] = {
        "name": config.name or _default_name(loaded.source),
        "version": config.version,
        "description": config.description,
        "task": config.task,
        "labels": list(config.labels),
        **({"modalities": list(config.modalities)} if config.modalities else {}),
        "input": {
            "name": fp32.input_name,
            "layout": "NCHW" if vol is None else "NCDHW",
            "shape": input_shape,
            "dtype": "float32",
        },
        "outputs": [{"name": fp32.output_name, "shape": outputs[0][1], "dtype": "float32"}],
        "preprocess": pre.to_dict(),
        "postprocess": post.to_dict(),
        **({} if vol is None else {"volume": vol.to_dict()}),
        "artifacts": [
            {"path": ARTIFACTS[p], "kind": "onnx", "precision": p} for p in config.precisions
        ],
        "provenance": {
            **config.extra_provenance,
            "export": {
                "command": "edgemed export",
                "source": {
                    "model": loaded.source,
                    "kind": loaded.kind,
                    "sha256": loaded.sha256,
                    "sha256_of": loaded.sha256_of,
                    "weights": loaded.weights,
                    "seed": config.seed if loaded.kind == "factory" else None,
                },
                "onnx": {
                    "exporter": fp32.exporter,
                    "fallback_reason": fp32.fallback_reason,
                    "opset": fp32.opset,
                    "dynamic_axes": list(axes.values()),
                    "simplify": fp32.simplify,
                },
                **made,
                "versions": _versions(),
                "machine": f"{platform.machine()}, {os.cpu_count()} CPUs",
            },
            "parity": parity,
            "calibration": {
                **split,
                "calibration": calib.summary(),
                "validation": val.summary(),
                "note": "images identified by sha256 of their bytes; file names not recorded",
            },
        },
    }
    if vol is None:
        accuracy = gates.compare(
            fp32.path,
            variants,
            val,
            config.task,
            post,
            list(config.labels),
            config.thresholds,
            threads,
        )
        accuracy["validation"] = {"images": len(val.images), "slices": int(len(val.inputs))}
    else:
        # The runtime runs the bundle as written so far (bundle.json checked by the
        # runtime's own loader); the final bundle.json adds the accuracy record.
        staged = write_manifest(stage, manifest)
        accuracy = gates.compare_volumes(
            staged, list(variants), val.images, config.thresholds, threads
        )
        accuracy["validation"] = {
            "volumes": len(val.images),
            "windows": accuracy.pop("windows_per_run"),
        }
    manifest["provenance"]["accuracy"] = accuracy
    table = gates.format_table(config.task, accuracy)
    t = _lap(seconds, "gates", t)
    if not accuracy["passed"]:
        failed = [p for p, v in accuracy["variants"].items() if not v["passed"]]
        raise AccuracyGateError(
            f"{', '.join(failed)} differ(s) from FP32 beyond the accuracy thresholds "
            "(no bundle written)",
            report=accuracy,
            table=table,
        )
    say(f"gates       passed ({seconds['gates']:.1f} s)")
    return manifest, table


def _io_shapes(path: Path) -> tuple[list[int | str], list[tuple[str, list[int | str]]]]:
    """The ONNX model's input shape, and its outputs' names and shapes."""
    import onnx

    graph = onnx.load(str(path)).graph
    return _shape_of(graph.input[0]), [(o.name, _shape_of(o)) for o in graph.output]


def _task_check(
    config: ExportConfig,
    post: Any,
    outputs: list[tuple[str, list[int | str]]],
    placements: list[Any],
) -> gates.TaskCheck | None:
    """Parity's task half on the real images, or None where the head would decode an
    output PyTorch's run does not return (only the first output comes back)."""
    head = create_head(config.task, post, list(config.labels), outputs)
    if head.output != outputs[0][0]:
        return None
    return gates.TaskCheck(head, REAL_CASE, placements, config.thresholds)


def _window_check(
    config: ExportConfig, post: Any, outputs: list[tuple[str, list[int | str]]]
) -> gates.WindowCheck | None:
    """Parity's task half for a 3D model's calibration windows (see :func:`_task_check`)."""
    head = create_head(config.task, post, list(config.labels), outputs)
    if head.output != outputs[0][0]:
        return None
    return gates.WindowCheck(head, REAL_CASE, config.thresholds)


def _lap(seconds: dict[str, float], stage: str, start: float) -> float:
    seconds[stage] = round(time.perf_counter() - start, 2)
    return time.perf_counter()


def _default_name(source: str) -> str:
    base = source.rsplit(":", 1)[-1].rsplit(".", 1)[-1] if ":" in source else Path(source).stem
    return base.lower().replace("_", "-") or "model"

"""``export``: PyTorch -> ONNX -> FP16/INT8 -> gated bundle (edgemed.export; ``export`` extra)."""

from __future__ import annotations

import argparse
import json
import sys
import warnings

from edgemed.errors import UsageError

__all__ = ["register"]


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    ex = sub.add_parser(
        "export",
        help="export a PyTorch model to a bundle with FP32/FP16/INT8 variants, accuracy-gated",
    )
    a = ex.add_argument
    a("--model", required=True, help="PKG.MODULE:FACTORY, a TorchScript file or a .pt2 program")
    a("--weights", default=None, help="state-dict file for the factory's model")
    a("--model-kwargs", default=None, help="JSON object of keyword arguments for the factory")
    a(
        "--input-shape",
        required=True,
        help="example input NxCxHxW (2D, e.g. 1x3x256x256) or NxCxDxHxW (3D, run by sliding "
        "window over volumes, e.g. 1x1x96x96x96)",
    )
    a("--dynamic", default="batch", help="dynamic axes: batch,height,width (default batch)")
    a(
        "--task",
        required=True,
        help="the task head: segmentation, classification, embedding "
        "or a registered one (checked against edgemed.heads.tasks())",
    )
    a("--labels", default=None, help="class names, comma-separated (label 0 first)")
    a("--modalities", default=None, help="DICOM modalities the model is for, e.g. CT (default any)")
    a("--preprocess", default="demo", help="demo, or a JSON spec (or a bundle.json)")
    a("--calibration", required=True, help="folder of calibration images (DICOM, NIfTI, PNG)")
    a("--validation", default=None, help="folder of validation images (default: split)")
    a("--precision", default="fp32,fp16,int8", help="variants (default fp32,fp16,int8)")
    a("--max-dice-drop", type=float, default=0.01, help="segmentation: mean (default 0.01)")
    a("--max-class-dice-drop", type=float, default=0.02, help="segmentation: per class (0.02)")
    a("--min-top1-agreement", type=float, default=0.99, help="classification (default 0.99)")
    a("--max-prob-diff", type=float, default=0.05, help="classification (default 0.05)")
    a("--min-cosine", type=float, default=0.99, help="embedding (default 0.99)")
    a("--calibration-method", default="entropy", choices=["entropy", "max"], help="INT8")
    a("--exclude-nodes", default=None, help="node-name regexes kept in FP32, comma-separated")
    a("--exclude-op-types", default=None, help="op types kept in FP32, comma-separated")
    a("--int8-fp32-ends", action="store_true", help="INT8: first and last layers stay FP32")
    a("--max-calibration-slices", type=int, default=64, help="cap per set (default 64)")
    a("--max-calibration-windows", type=int, default=32, help="3D: cap (default 32)")
    a("--spacing", default=None, help="3D: target voxel spacing X,Y,Z mm, or none (default)")
    a("--roi-overlap", type=float, default=None, help="3D: sliding-window overlap (0.25)")
    a("--sw-mode", default=None, choices=["gaussian", "constant"], help="3D: (gaussian)")
    a("--sw-batch", type=int, default=None, help="3D: windows per model call (default 4)")
    a("--opset", type=int, default=18, help="ONNX opset of the FP32 model (>= 17, default 18)")
    a(
        "--parity-tolerance",
        type=float,
        default=None,  # ExportConfig's default: one number, kept in edgemed.export.config
        help="largest max |ONNX - PyTorch| relative to the output's range (default 1e-3)",
    )
    a("--no-simplify", action="store_true", help="skip onnxslim")
    a("--seed", type=int, default=0, help="seed for random init and random parity inputs")
    a("--name", default=None, help="bundle name (default: from the model)")
    a("--bundle-version", default="0.1.0", help="bundle version (default 0.1.0)")
    a("--description", default="", help="bundle description")
    a("--out", required=True, help="bundle directory to write")
    a("--overwrite", action="store_true", help="replace --out if it exists (after success)")
    ex.set_defaults(handler=_cmd_export)


def _cmd_export(args: argparse.Namespace) -> int:
    # Lazily: the export stage is never imported by the runtime. A missing torch or
    # ModelOpt is a MissingDependencyError naming edgemed[export] (exit 5, as for
    # every missing extra), raised when the export starts.
    from edgemed.errors import AccuracyGateError
    from edgemed.export import ExportConfig, RandomWeightsWarning, Thresholds, export_bundle

    try:
        kwargs = json.loads(args.model_kwargs) if args.model_kwargs else {}
    except json.JSONDecodeError as exc:
        raise UsageError(f"--model-kwargs is not JSON ({exc.msg})") from exc
    if not isinstance(kwargs, dict):
        raise UsageError("--model-kwargs must be a JSON object")
    config = ExportConfig(
        model=args.model,
        weights=args.weights,
        model_kwargs=kwargs,
        input_shape=args.input_shape,
        dynamic=args.dynamic,
        task=args.task,
        labels=args.labels,
        modalities=args.modalities,
        preprocess=args.preprocess,
        calibration=args.calibration,
        validation=args.validation,
        precisions=args.precision,
        thresholds=Thresholds(
            max_dice_drop=args.max_dice_drop,
            max_class_dice_drop=args.max_class_dice_drop,
            min_top1_agreement=args.min_top1_agreement,
            max_prob_diff=args.max_prob_diff,
            min_cosine=args.min_cosine,
        ),
        calibration_method=args.calibration_method,
        exclude_nodes=args.exclude_nodes,
        exclude_op_types=args.exclude_op_types,
        int8_fp32_ends=args.int8_fp32_ends,
        max_calibration_slices=args.max_calibration_slices,
        max_calibration_windows=args.max_calibration_windows,
        spacing=args.spacing,
        roi_overlap=args.roi_overlap,
        sw_mode=args.sw_mode,
        sw_batch=args.sw_batch,
        opset=args.opset,
        **({} if args.parity_tolerance is None else {"parity_tolerance": args.parity_tolerance}),
        simplify=not args.no_simplify,
        seed=args.seed,
        name=args.name,
        version=args.bundle_version,
        description=args.description,
        out=args.out,
        overwrite=args.overwrite,
    )
    try:
        with warnings.catch_warnings():
            # The export's own warnings (random weights) as one line each, when they
            # happen, in the CLI's "edgemed: ..." form rather than Python's file:line one.
            warnings.simplefilter("always", RandomWeightsWarning)
            warnings.showwarning = _one_line
            result = export_bundle(config, progress=print)
    except AccuracyGateError as exc:
        print(exc.table)  # the per-class table says what failed; the error line follows
        raise
    print(result.accuracy_table)
    files = ", ".join(a["path"] for a in result.manifest["artifacts"])
    print(f"wrote {result.bundle_dir}/ (bundle.json, report.md, {files})")
    return 0


def _one_line(message: Warning | str, category: type[Warning], *_: object, **__: object) -> None:
    print(f"edgemed: warning {message}", file=sys.stderr, flush=True)

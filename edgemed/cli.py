"""The ``edgemed`` command line.

Exit codes: 0 ok, 2 usage, 3 input error, 4 bundle error, 5 backend error (also a
missing extra), 6 accuracy gate failed, 7 output could not be written, 8 export failed,
1 internal error.
Errors print one line naming the code and the file; ``--debug`` adds the traceback.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import traceback
import warnings
from collections.abc import Sequence
from pathlib import Path

from edgemed._version import __version__
from edgemed.errors import EdgemedError, InputError, UsageError
from edgemed.settings import Settings, load_settings

__all__ = ["main"]

log = logging.getLogger("edgemed")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="edgemed", description="Edge inference for medical imaging.")
    p.add_argument("--version", action="version", version=f"edgemed {__version__}")
    p.add_argument("--debug", action="store_true", help="show tracebacks and debug logs")
    p.add_argument("-v", "--verbose", action="store_true", help="log what happens (INFO)")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    def runtime_options(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("--backend", default=None, help="auto (default), onnxruntime or tensorrt")
        sp.add_argument(
            "--precision",
            default="fp32",
            choices=["fp32", "fp16", "int8"],
            help="which model variant of the bundle runs (default fp32)",
        )
        sp.add_argument(
            "--threads",
            type=int,
            default=None,
            help="CPU threads for ONNX Runtime (default: cores, at most 8)",
        )
        sp.add_argument(
            "--batch-size", type=int, default=8, help="most 2D slices per backend call (default 8)"
        )
        sp.add_argument(
            "--preprocess",
            default="auto",
            choices=["auto", "cpu", "cuda"],
            help="where preprocessing runs (auto: CUDA beside TensorRT, else CPU)",
        )
        sp.add_argument(
            "--engine-cache",
            default=None,
            metavar="DIR",
            help="TensorRT engine cache (default BUNDLE/engines or EDGEMED_ENGINE_CACHE)",
        )
        sp.add_argument(
            "--cuda-graphs",
            action="store_true",
            help="TensorRT: replay a CUDA graph while calls keep one shape",
        )
        sp.add_argument(
            "--any-modality",
            action="store_true",
            help="run DICOM inputs whose Modality the bundle does not list (refused, "
            "INPUT_MODALITY, by default)",
        )

    demo = sub.add_parser("demo", help="run the demo model on a real CT slice")
    demo.add_argument("--out", default="edgemed-demo", help="output directory")
    runtime_options(demo)

    run = sub.add_parser("run", help="run a bundle on images, DICOM series or volumes")
    run.add_argument(
        "inputs",
        nargs="+",
        metavar="INPUT",
        help="DICOM/NIfTI/PNG/JPEG/TIFF/NPY file or DICOM series directory",
    )
    run.add_argument("--bundle", default=None, help="bundle directory (default: the demo)")
    run.add_argument("--out", required=True, help="output directory")
    runtime_options(run)

    info = sub.add_parser("info", help="describe a bundle")
    info.add_argument("bundle", nargs="?", default=None, help="bundle directory (default: demo)")
    info.add_argument("--json", action="store_true", help="print the manifest as JSON")
    _signing_parsers(sub)
    _export_parser(sub)
    _bench_parser(sub)
    _engine_parsers(sub)
    return p


def _check_runtime_options(args: argparse.Namespace) -> None:
    """Usage errors first, before any input is read or model loaded."""
    if args.batch_size < 1:
        raise UsageError("--batch-size must be >= 1")
    if args.threads is not None and args.threads < 1:
        raise UsageError("--threads must be >= 1")


def _pipeline(args: argparse.Namespace, bundle: str | Path):
    from edgemed.pipeline import Pipeline

    settings = args.settings
    return Pipeline.from_bundle(
        bundle,
        args.backend or settings.backend,
        precision=args.precision,
        threads=args.threads or settings.ort_threads,
        batch_size=args.batch_size,
        preprocess=args.preprocess,
        engine_cache=args.engine_cache or settings.engine_cache,
        check_modality=not args.any_modality,
        cuda_graphs=args.cuda_graphs,
    )


def _write_outputs(result, out: Path) -> list[Path]:
    from edgemed.fsutil import write_json
    from edgemed.io.writers import write_mask_nifti, write_overlay_png

    written = []
    if result.mask is not None:
        written.append(write_mask_nifti(out / "mask.nii.gz", result.mask, result.image))
        written.append(
            write_overlay_png(
                out / "overlay.png", result.image, result.mask, result.labels, result.stats
            )
        )
    # result.json last: its presence means the other files are complete.
    written.insert(0, write_json(out / "result.json", result.to_dict()))
    return written


def _summary(result, written: list[Path], title: str) -> str:
    t = result.timings
    prov = result.provenance
    lines = [
        title,
        f"  model    {prov['bundle']['name']} {prov['bundle']['version']} ({result.task})",
        f"  backend  {prov['backend']} {prov['backend_version']}, {prov['precision']}, "
        f"{prov['device']}",
        f"  input    {'x'.join(str(s) for s in result.image.array.shape)} "
        f"{result.image.modality}, spacing "
        f"{' x '.join(f'{s:.3g}' for s in result.image.spacing)} mm",
    ]
    if result.stats:
        lines.append(
            "  labels   "
            + ", ".join(
                f"{name} {v.get('area_mm2', v.get('volume_mm3', 0)):,.0f} "
                f"{'mm2' if 'area_mm2' in v else 'mm3'}"
                for name, v in result.stats.items()
                if name != result.labels[0] and v["pixels"]
            )
        )
    if result.classes:
        top = result.classes[0]["top_k"][0]
        lines.append(f"  top-1    {top['label']} ({top['probability']:.3f})")
    lines.append("  timings  " + "  ".join(f"{k} {v:.1f} ms" for k, v in t.items()))
    names = ", ".join(p.name for p in written)
    lines.append(f"  wrote    {written[0].parent}/ ({names})")
    return "\n".join(lines)


def _cmd_demo(args: argparse.Namespace) -> int:
    from pydicom.data import get_testdata_file

    from edgemed.pipeline import demo_bundle

    ct = get_testdata_file("CT_small.dcm")  # ships inside pydicom; nothing is downloaded
    if ct is None:
        raise InputError(
            "pydicom's CT_small.dcm test file is not installed", code="INPUT_NOT_FOUND"
        )
    out = Path(args.out)
    with _pipeline(args, demo_bundle()) as pipe:
        pipe(ct)  # warm-up: the first call pays one-time allocation costs
        result = pipe(ct)
    written = _write_outputs(result, out)
    print(_summary(result, written, "edgemed demo: CT_small.dcm (pydicom's real CT test slice)"))
    print("  note     demonstration model trained on synthetic phantoms; not for clinical use")
    return 0


def _cmd_run(args: argparse.Namespace) -> int:
    from edgemed.fsutil import write_json
    from edgemed.pipeline import demo_bundle

    out = Path(args.out)
    several = len(args.inputs) > 1
    failures, index = 0, []
    with _pipeline(args, args.bundle or demo_bundle()) as pipe:
        # Input by input, so each result's timings are its own (the API's run_batch
        # shares backend calls between inputs instead).
        for i, path in enumerate(args.inputs):
            try:
                result = pipe(path)
            except InputError as exc:  # one bad file must not stop the others
                failures += 1
                if args.debug:
                    traceback.print_exc()
                print(f"edgemed: error {exc}", file=sys.stderr)
                continue
            # Output names are positional, never derived from file names (which may
            # carry patient names or UIDs).
            target = out / f"input-{i + 1:04d}" if several else out
            written = _write_outputs(result, target)
            print(_summary(result, written, f"input {i + 1}/{len(args.inputs)}"))
            index.append({"input": i + 1, "dir": target.name if several else "."})
    if several:
        write_json(out / "index.json", {"results": index, "failed": failures})
    return InputError.exit_code if failures else 0


def _cmd_info(args: argparse.Namespace) -> int:
    from edgemed.bundle import Bundle
    from edgemed.pipeline import demo_bundle

    bundle = Bundle.load(args.bundle or demo_bundle())
    if args.json:
        print(json.dumps(bundle.to_dict(), indent=2))
        return 0
    pre = bundle.preprocess
    intensity = ", ".join(f"window {w.center:g}/{w.width:g}" for w in pre.windows) or (
        f"clip {pre.clip[0]:g}..{pre.clip[1]:g}" if pre.clip else "values as stored"
    )
    lines = [
        f"{bundle.name} {bundle.version}  ({bundle.task})",
        f"  {bundle.description}" if bundle.description else None,
        f"  path         {bundle.root}",
        f"  labels       {', '.join(f'{i}:{n}' for i, n in enumerate(bundle.labels))}",
        f"  modalities   {', '.join(bundle.modalities) or 'any'} (DICOM inputs)",
        f"  input        {bundle.input.name} {bundle.input.layout or ''} "
        f"[{', '.join(str(s) for s in bundle.input.shape)}] {bundle.input.dtype}",
        *(
            f"  output       {o.name} [{', '.join(str(s) for s in o.shape)}] {o.dtype}"
            for o in bundle.outputs
        ),
        f"  preprocess   {intensity}; scale {pre.scale}; {pre.resize} to "
        f"{pre.height}x{pre.width}; {pre.num_channels} channels{' + edges' if pre.edges else ''}"
        f"; {pre.dtype}",
        f"  postprocess  {bundle.postprocess.activation}, {bundle.postprocess.decision}",
        f"  signature    {bundle.describe_signature()}",
        "  artifacts    (sha256 verified)",
        *(
            f"    {a.precision:5s} {a.kind:6s} {a.path}  {a.sha256[:16]}…  "
            f"{(a.bytes or 0) / 1e6:.2f} MB"
            for a in bundle.artifacts
        ),
    ]
    if bundle.provenance:
        lines.append("  provenance")
        lines += [
            f"    {k}: {v}" for k, v in bundle.provenance.items() if not isinstance(v, (dict, list))
        ]
    print("\n".join(line for line in lines if line is not None))
    return 0


# -- signing: keygen, sign (edgemed.signing; needs the `signing` extra) -----------------


def _signing_parsers(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    keygen = sub.add_parser("keygen", help="create an ed25519 key pair for signing bundles")
    keygen.add_argument(
        "--out", required=True, help="directory for private_key.pem (0600) and public_key.pem"
    )
    sign = sub.add_parser("sign", help="sign a bundle's bundle.json (writes bundle.sig)")
    sign.add_argument("bundle", help="bundle directory")
    sign.add_argument("--key", required=True, help="private key PEM (from edgemed keygen)")


def _cmd_keygen(args: argparse.Namespace) -> int:
    from edgemed.signing import generate_keypair, key_fingerprint, load_public_key

    private, public = generate_keypair(args.out)
    print(f"wrote {private} (private, mode 0600: keep it secret and off devices)")
    print(f"wrote {public} (public: set EDGEMED_TRUSTED_KEY to it where bundles load)")
    print(f"  ed25519 key {key_fingerprint(load_public_key(public))[:16]}")
    return 0


def _cmd_sign(args: argparse.Namespace) -> int:
    from edgemed.signing import key_fingerprint, load_private_key, sign_bundle

    key = load_private_key(args.key)
    sig = sign_bundle(args.bundle, key)
    print(f"signed {args.bundle}: wrote {sig} (ed25519 key {key_fingerprint(key)[:16]})")
    return 0


# -- export: PyTorch -> ONNX -> FP16/INT8 -> gated bundle (edgemed.export; `export` extra) --


def _export_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    ex = sub.add_parser(
        "export",
        help="export a PyTorch model to a bundle with FP32/FP16/INT8 variants, accuracy-gated",
    )
    a = ex.add_argument
    a("--model", required=True, help="PKG.MODULE:FACTORY, a TorchScript file or a .pt2 program")
    a("--weights", default=None, help="state-dict file for the factory's model")
    a("--model-kwargs", default=None, help="JSON object of keyword arguments for the factory")
    a("--input-shape", required=True, help="example input NxCxHxW, e.g. 1x3x256x256")
    a("--dynamic", default="batch", help="dynamic axes: batch,height,width (default batch)")
    a("--task", required=True, choices=["segmentation", "classification", "embedding"])
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
    a("--max-calibration-slices", type=int, default=64, help="cap per set (default 64)")
    a("--opset", type=int, default=18, help="ONNX opset of the FP32 model (>= 17, default 18)")
    a("--parity-tolerance", type=float, default=1e-4, help="max relative error vs PyTorch")
    a("--no-simplify", action="store_true", help="skip onnxslim")
    a("--seed", type=int, default=0, help="seed for random init and random parity inputs")
    a("--name", default=None, help="bundle name (default: from the model)")
    a("--bundle-version", default="0.1.0", help="bundle version (default 0.1.0)")
    a("--description", default="", help="bundle description")
    a("--out", required=True, help="bundle directory to write")
    a("--overwrite", action="store_true", help="replace --out if it exists (after success)")


def _cmd_export(args: argparse.Namespace) -> int:
    # Lazily: the export stage is never imported by the runtime. A missing torch or
    # ModelOpt is a MissingDependencyError naming edgemed[export] (exit 5, as for
    # every missing extra), raised when the export starts.
    from edgemed.errors import AccuracyGateError
    from edgemed.export import ExportConfig, Thresholds, export_bundle

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
        max_calibration_slices=args.max_calibration_slices,
        opset=args.opset,
        parity_tolerance=args.parity_tolerance,
        simplify=not args.no_simplify,
        seed=args.seed,
        name=args.name,
        version=args.bundle_version,
        description=args.description,
        out=args.out,
        overwrite=args.overwrite,
    )
    try:
        result = export_bundle(config, progress=print)
    except AccuracyGateError as exc:
        print(exc.table)  # the per-class table says what failed; the error line follows
        raise
    print(result.accuracy_table)
    files = ", ".join(a["path"] for a in result.manifest["artifacts"])
    print(f"wrote {result.bundle_dir}/ (bundle.json, report.md, {files})")
    return 0


# -- bench: per-stage latency, stability, memory, accuracy (edgemed.bench; `bench` extra) --


def _bench_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    # Values are taken as strings and checked in _cmd_bench, so that every bad option
    # is one UsageError line (exit 2) rather than argparse's usage dump.
    b = sub.add_parser(
        "bench",
        help="benchmark a bundle: per-stage latency percentiles, throughput, memory, accuracy",
        description="Measure read/preprocess/infer/postprocess/end-to-end latency until the "
        "last windows agree, and write bench.json, bench.csv, bench.md and PNG plots.",
    )
    a = b.add_argument
    a("bundle", nargs="?", default=None, help="bundle directory (default: the demo bundle)")
    a("--backend", default=None, help="auto (default), onnxruntime or tensorrt")
    a(
        "--precision",
        nargs="+",
        default=None,
        metavar="P",
        help="precisions to run, e.g. fp32 fp16 int8 or fp32,int8 (default: all in the bundle)",
    )
    a(
        "--batch",
        nargs="+",
        default=["1"],
        metavar="B",
        help="batch sizes (2D slices per backend call), e.g. 1 4 8 (default 1)",
    )
    a(
        "--iterations",
        default="30",
        metavar="N",
        help="minimum measured calls per configuration, split into --windows windows, "
        "unless --time-cap comes first (30)",
    )
    a("--warmup", default="5", help="unmeasured calls first (5)")
    a(
        "--input",
        action="append",
        default=[],
        metavar="PATH",
        help="image file or DICOM series directory (repeatable)",
    )
    a(
        "--synthetic",
        action="append",
        default=[],
        metavar="HxW",
        help="synthetic CT-like slice of this size, e.g. 512x512 (repeatable); with neither "
        "--input nor --synthetic: pydicom's real CT_small.dcm and a synthetic 512x512",
    )
    a("--out", default="edgemed-bench", help="output directory (default edgemed-bench)")
    a(
        "--stability",
        default="10",
        metavar="PCT",
        help="the last windows' mean end-to-end latencies must agree within PCT%% (10)",
    )
    a("--windows", default="3", metavar="N", help="how many last windows must agree (3)")
    a(
        "--time-cap",
        default="6",
        metavar="S",
        help="stop measuring a configuration after S seconds, stable or not (6)",
    )
    a("--threads", default=None, help="CPU threads for ONNX Runtime (default: cores, <= 8)")
    a(
        "--engine-cache",
        default=None,
        metavar="DIR",
        help="TensorRT engine cache (default BUNDLE/engines or EDGEMED_ENGINE_CACHE)",
    )
    a("--cuda-graphs", action="store_true", help="TensorRT: replay CUDA graphs (one shape)")
    a("--no-plots", action="store_true", help="skip the PNG plots")
    a("--quiet", action="store_true", help="no progress bar")


def _bench_number(name: str, text: str, kind: type = int) -> float:
    try:
        value = kind(text)
    except (TypeError, ValueError):
        raise UsageError(
            f"{name} wants {'an integer' if kind is int else 'a number'}, got '{text}'"
        ) from None
    return value


def _cmd_bench(args: argparse.Namespace) -> int:
    import shlex

    from edgemed.bench.inputs import ct_small, from_path, parse_size, synthetic
    from edgemed.bench.report import table, write_reports
    from edgemed.bench.runner import BenchOptions, run_bench
    from edgemed.pipeline import demo_bundle

    def listed(values: list[str] | None) -> list[str]:
        return [v for item in values or [] for v in item.split(",") if v.strip()]

    precisions = tuple(p.strip().lower() for p in listed(args.precision)) or None
    opts = BenchOptions(
        backend=args.backend or args.settings.backend,
        precisions=precisions,
        batches=tuple(int(_bench_number("--batch", v)) for v in listed(args.batch)),
        iterations=int(_bench_number("--iterations", args.iterations)),
        warmup=int(_bench_number("--warmup", args.warmup)),
        windows=int(_bench_number("--windows", args.windows)),
        stability_percent=_bench_number("--stability", args.stability.rstrip("%"), float),
        time_cap_s=_bench_number("--time-cap", args.time_cap.rstrip("s"), float),
        threads=int(_bench_number("--threads", args.threads))
        if args.threads
        else args.settings.ort_threads,
        engine_cache=args.engine_cache or args.settings.engine_cache,
        cuda_graphs=args.cuda_graphs,
    )
    sizes = [parse_size(s) for s in args.synthetic]  # usage errors before any reading
    inputs = [from_path(p, i + 1) for i, p in enumerate(args.input)]
    inputs += [synthetic(s) for s in sizes]
    if not inputs:  # a real (small) CT slice, and the usual 512x512 CT matrix
        inputs = [ct_small(), synthetic((512, 512))]
    # The command as run, with input paths replaced (file names may identify patients).
    words = ["edgemed", "bench"] + ([str(args.bundle)] if args.bundle else [])
    words += ["--backend", opts.backend]
    words += ["--precision", *(opts.precisions or ("(all)",))]
    words += ["--batch", *(str(v) for v in opts.batches)]
    words += ["--iterations", str(opts.iterations), "--warmup", str(opts.warmup)]
    words += ["--stability", f"{opts.stability_percent:g}", "--windows", str(opts.windows)]
    words += ["--time-cap", f"{opts.time_cap_s:g}"]
    for i in range(len(args.input)):
        words += ["--input", f"<input {i + 1}>"]
    for h, w in sizes:
        words += ["--synthetic", f"{h}x{w}"]
    doc = run_bench(
        args.bundle or demo_bundle(),
        inputs,
        opts,
        command=shlex.join(words),
        progress=not args.quiet and sys.stderr.isatty(),
    )
    written = write_reports(doc, args.out, plots=not args.no_plots)
    b, d = doc["bundle"], doc["device"]
    c0 = doc["configs"][0]
    print(
        f"edgemed bench: {b['name']} {b['version']} on {c0['backend']} "
        f"{c0['backend_version']}, {c0['backend_device']}; {d['cpu']}"
    )
    print(table(doc))
    unstable = [c["name"] for c in doc["configs"] if not c["stability"]["stable"]]
    if unstable:
        print(f"  unstable: {', '.join(unstable)} (see stability.reason in bench.json)")
    print(
        "  latency per call in ms (p50 per stage); img/s = images per second; ovh = "
        "share of end-to-end time outside infer"
    )
    print(f"  wrote    {Path(args.out)}/ ({', '.join(p.name for p in written)})")
    return 0


# -- TensorRT engines: build, doctor (edgemed.backends.tensorrt, edgemed.doctor; `gpu` extra) ------


def _engine_parsers(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    b = sub.add_parser(
        "build", help="build the TensorRT engine of a bundle's ONNX for this GPU (cached)"
    )
    a = b.add_argument
    a("bundle", help="bundle directory")
    a("--precision", default="fp32", choices=["fp32", "fp16", "int8"], help="ONNX variant")
    a("--batch", default=None, help="batch range MIN:OPT:MAX (default 1:8:8)")
    a(
        "--dim",
        action="append",
        default=[],
        metavar="AXIS=MIN:OPT:MAX",
        help="range of another dynamic axis (repeatable)",
    )
    a("--workspace", type=int, default=None, metavar="MIB", help="builder workspace cap (MiB)")
    a(
        "--hardware-compat",
        nargs="?",
        const="ampere_plus",
        default="none",
        choices=["none", "ampere_plus", "same_compute_capability"],
        help="let the engine run on other GPUs too (no value: ampere_plus)",
    )
    a(
        "--version-compat",
        action="store_true",
        help="version-compatible plan (lean runtime excluded: no host code in the plan)",
    )
    a(
        "--cache",
        default=None,
        metavar="DIR",
        help="engine cache (default BUNDLE/engines or EDGEMED_ENGINE_CACHE)",
    )
    a("--no-timing-cache", action="store_true", help="neither read nor update the timing cache")
    a("--force", action="store_true", help="rebuild even if a verified engine exists")
    a("--device", type=int, default=0, help="CUDA device ordinal (default 0)")
    d = sub.add_parser("doctor", help="show GPU, CUDA, TensorRT and which backend auto picks")
    d.add_argument("--bundle", default=None, help="bundle to probe backends for (default demo)")
    d.add_argument("--json", action="store_true", help="print the facts as JSON")


def _cmd_build(args: argparse.Namespace) -> int:
    from edgemed.backends.tensorrt.builder import BuildOptions, build_engine
    from edgemed.backends.tensorrt.cache import EngineCache
    from edgemed.bundle import Bundle

    ranges: dict[str, str] = {}
    for item in args.dim:
        name, sep, value = item.partition("=")
        if not sep or not name.strip():
            raise UsageError(f"--dim takes AXIS=MIN:OPT:MAX, got {item!r}")
        ranges[name.strip()] = value
    if args.batch is not None:
        ranges["batch"] = args.batch
    if args.workspace is not None and args.workspace < 1:
        raise UsageError("--workspace must be at least 1 MiB")
    bundle = Bundle.load(args.bundle)
    options = BuildOptions(
        precision=args.precision,
        ranges=ranges,
        workspace_mib=args.workspace,
        hardware_compat=args.hardware_compat,
        version_compat=args.version_compat,
        timing_cache=not args.no_timing_cache,
        force=args.force,
        device=args.device,
    )
    cache = EngineCache.for_bundle(bundle, args.cache or args.settings.engine_cache)
    result = build_engine(bundle, options, cache)
    if not result.built:
        print(f"up to date: {result.plan_path} (use --force to rebuild)")
    print(f"  key      {result.key.describe()}, profile {result.key.profile}")
    print(f"  sidecar  {result.plan_path.with_suffix('.json')}")
    print(f"  kernels  {_build_kernels(cache.kernel_dir, args.device)}")
    return 0


def _build_kernels(out: Path, device: int) -> str:
    """The CUDA kernels as cubins for this GPU beside the engines, so the runtime needs
    no compiler; without nvcc, pycuda compiles them at first use instead (and caches)."""
    import shutil

    from edgemed.cuda.build import build_cubin
    from edgemed.cuda.device import query_device

    if shutil.which("nvcc") is None:
        return "nvcc not found: compiled by pycuda at first use (needs nvcc then)"
    paths = build_cubin(out, query_device(device).arch)
    return ", ".join(str(p) for p in paths)


def _cmd_doctor(args: argparse.Namespace) -> int:
    from edgemed.doctor import format_report, gather

    bundle = None
    if args.bundle:
        from edgemed.bundle import Bundle

        bundle = Bundle.load(args.bundle)
    facts = gather(bundle)
    print(json.dumps(facts, indent=2) if args.json else format_report(facts))
    return 0


_COMMANDS = {
    "demo": _cmd_demo,
    "run": _cmd_run,
    "info": _cmd_info,
    "keygen": _cmd_keygen,
    "sign": _cmd_sign,
    "export": _cmd_export,
    "bench": _cmd_bench,
    "build": _cmd_build,
    "doctor": _cmd_doctor,
}


def _apply_reader_caps(settings: Settings) -> None:
    """EDGEMED_MAX_* settings become the readers' caps for this process."""
    import edgemed.io.read as reader

    for name, value in vars(settings.limits).items():
        setattr(reader, name.upper(), value)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit code."""
    args = _parser().parse_args(argv)
    try:  # read once; a bad variable is a usage error before anything runs
        args.settings = load_settings()
    except EdgemedError as exc:
        print(f"edgemed: error {exc}", file=sys.stderr)
        return exc.exit_code
    level = logging.DEBUG if args.debug else logging.INFO if args.verbose else None
    if level is None:
        level = getattr(logging, args.settings.log_level)
    logging.basicConfig(level=level, format="edgemed %(levelname)s %(name)s: %(message)s")
    if not args.debug:
        # pydicom warns and logs about odd files in its own words, which can quote element
        # values; edgemed's own one-line errors say what matters.
        warnings.filterwarnings("ignore", module=r"pydicom(\.|$)")
        logging.getLogger("pydicom").setLevel(logging.CRITICAL)
    try:
        _apply_reader_caps(args.settings)
        if args.command in ("demo", "run"):
            _check_runtime_options(args)
        return _COMMANDS[args.command](args)
    except EdgemedError as exc:
        if args.debug:
            traceback.print_exc()
        print(f"edgemed: error {exc}", file=sys.stderr)
        return exc.exit_code
    except BrokenPipeError:  # output piped into `head` and closed: not an error
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115 (suppresses the flush-at-exit error)
        return 0
    except KeyboardInterrupt:
        print("edgemed: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # a bug: say so in one line, details with --debug
        if args.debug:
            traceback.print_exc()
        print(
            f"edgemed: internal error {exc.__class__.__name__} (rerun with --debug)",
            file=sys.stderr,
        )
        return 1


if __name__ == "__main__":
    sys.exit(main())

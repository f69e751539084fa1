"""``bench``: per-stage latency, stability, memory, accuracy (edgemed.bench; ``bench`` extra)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from edgemed.errors import UsageError

__all__ = ["register"]


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
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
    a(
        "--warmup",
        default="5",
        help="unmeasured calls first (5; fewer once they have used half the --time-cap)",
    )
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
        help="seconds per configuration, warm-up included: stop after S, stable or not (6)",
    )
    a("--threads", default=None, help="CPU threads for ONNX Runtime (default: cores, <= 8)")
    a(
        "--engine-cache",
        default=None,
        metavar="DIR",
        help="TensorRT engine cache (default BUNDLE/engines or EDGEMED_ENGINE_CACHE)",
    )
    a("--cuda-graphs", action="store_true", help="TensorRT: replay CUDA graphs (one shape)")
    a(
        "--any-modality",
        action="store_true",
        help="run DICOM inputs whose Modality the bundle does not list (refused, "
        "INPUT_MODALITY, by default), as `edgemed run --any-modality` does",
    )
    a("--no-plots", action="store_true", help="skip the PNG plots")
    a("--quiet", action="store_true", help="no progress bar")
    b.set_defaults(handler=_cmd_bench)


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
        check_modality=False if args.any_modality else None,
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
    if args.any_modality:
        words.append("--any-modality")
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
        "  latency per call in ms (p50 per stage); calls = measured calls; img/s = images "
        "per second; ovh = p50 over calls of each call's share outside infer"
    )
    if any("percentiles" in c["absent"] for c in doc["configs"]):
        from edgemed.bench.stats import too_few_text

        print(f"  — for a percentile: {too_few_text()}: raise --time-cap for more")
    print(f"  wrote    {Path(args.out)}/ ({', '.join(p.name for p in written)})")
    return 0

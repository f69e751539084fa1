"""How much the CPU pipeline costs beyond the model (issue #5, target: <= 10 %).

Usage (runtime dependencies only; pyinstrument optional, for the profiles)::

    python benchmarks/pipeline_overhead.py --out benchmarks/results

The demo bundle on ONNX Runtime (CPU, edgemed's default threads), batch 1, on an
in-memory :class:`edgemed.MedicalImage`: synthetic 256x256 and 512x512 CT slices from
``export/reference/phantoms.py`` and pydicom's real ``CT_small.dcm`` (128x128). Per call,
``end_to_end`` is the wall time of ``pipeline(image)`` and ``infer`` the time of the
``backend.infer`` call inside it (``result.timings["infer"]``); the overhead of that call
is ``(end_to_end - infer) / end_to_end``. The judged figure is the median of the
per-call overheads (paired, so machine noise that slows a whole call cancels out); the
ratio of the medians is reported too. With ``--profile``, a pyinstrument profile per
input is saved as text next to the results.

Besides ONNX Runtime FP32 (the ``inputs`` table), every engine of ``--engines`` runs the
same inputs in the same process (``runs``): by default OpenVINO fp32, int8 and, on a CPU
with BF16, bf16, where the ``openvino`` extra is installed. The smaller the model call,
the larger the same overhead's share: OpenVINO INT8 is the hard case.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

if not __package__:  # run as a script: `python benchmarks/<name>.py` imports `benchmarks.*`
    sys.path.append(str(Path(__file__).resolve().parents[1]))

import numpy as np

import edgemed
from benchmarks._common import arguments, ct_small, environment, phantom, stats, write_results
from edgemed import MedicalImage, Pipeline

__all__ = ["main", "measure"]

TARGET_PERCENT = 10.0


def _inputs() -> dict[str, MedicalImage]:
    out = {}
    for size in (256, 512):
        hu, spacing, _ = phantom(size)
        out[f"phantom {size}x{size}"] = MedicalImage(hu, spacing=spacing, modality="CT")
    hu, spacing = ct_small()
    out["CT_small.dcm 128x128"] = MedicalImage(hu, spacing=spacing, modality="CT")
    return out


def measure(
    pipe: Pipeline, image: MedicalImage, *, warmup: int, iterations: int, budget_s: float
) -> dict[str, Any]:
    """Time ``pipe(image)`` and the stages inside it; overhead per call and summaries."""
    for _ in range(warmup):
        pipe(image)
    e2e, infer, pre, post = [], [], [], []
    start = time.perf_counter()
    for i in range(iterations):
        t0 = time.perf_counter()
        result = pipe(image)
        e2e.append((time.perf_counter() - t0) * 1e3)
        infer.append(result.timings["infer"])
        pre.append(result.timings["preprocess"])
        post.append(result.timings["postprocess"])
        if i >= 49 and time.perf_counter() - start > budget_s:
            break
    e, f = np.asarray(e2e), np.asarray(infer)
    per_call = 100.0 * (e - f) / e
    return {
        "iterations": len(e2e),
        "end_to_end": stats(e2e),
        "infer": stats(infer),
        "preprocess": stats(pre),
        "postprocess": stats(post),
        "overhead_ms_p50": round(float(np.median(e - f)), 4),
        "overhead_percent_p50": round(float(np.median(per_call)), 2),
        "overhead_percent_p90": round(float(np.percentile(per_call, 90)), 2),
        "overhead_percent_of_medians": round(
            100.0 * (float(np.median(e)) - float(np.median(f))) / float(np.median(e)), 2
        ),
    }


def _profile(pipe: Pipeline, image: MedicalImage, path: Path, calls: int = 200) -> bool:
    try:
        from pyinstrument import Profiler
    except ImportError:
        return False
    for _ in range(10):
        pipe(image)
    profiler = Profiler(interval=0.0002)
    profiler.start()
    for _ in range(calls):
        pipe(image)
    profiler.stop()
    head = f"# {calls} calls of Pipeline(image); seconds are totals over all calls\n"
    path.write_text(head + profiler.output_text(unicode=False, color=False))
    return True


def _markdown(data: dict[str, Any]) -> str:
    """The table README shows (one renderer: ``benchmarks/readme_tables.py``'s)."""
    from benchmarks.readme_tables import _overhead

    return "\n".join(_overhead(data)) + "\n"


def default_engines() -> list[str]:
    """``backend:precision`` pairs measured beside ONNX Runtime FP32 (those that can run
    here): OpenVINO fp32, int8, and bf16 where the CPU has BF16."""
    from edgemed._lazy import available

    if not available("openvino"):
        return []
    from edgemed.backends.openvino import ov_core

    out = ["openvino:fp32", "openvino:int8"]
    if "BF16" in ov_core().get_property("CPU", "OPTIMIZATION_CAPABILITIES"):
        out.append("openvino:bf16")
    return out


def _engine_runs(args: Any, images: dict[str, MedicalImage], data: dict[str, Any]) -> None:
    """Measure each ``--engines`` pair on every input into ``data["runs"]``."""
    engines = (
        default_engines() if args.engines is None else [e for e in args.engines.split(",") if e]
    )
    data["runs"] = {}
    for engine in engines:
        backend, _, precision = engine.partition(":")
        pipe = Pipeline.from_bundle(
            edgemed.demo_bundle(), backend, precision=precision or "fp32", threads=args.threads
        )
        run: dict[str, Any] = {"backend": pipe.backend.info(), "inputs": {}}
        for name, image in images.items():
            r = measure(
                pipe,
                image,
                warmup=args.warmup,
                iterations=args.iterations,
                budget_s=args.budget_s,
            )
            run["inputs"][name] = r
            print(
                f"{engine} {name}: infer {r['infer']['p50_ms']:.2f} ms, overhead "
                f"{r['overhead_ms_p50']:.2f} ms = {r['overhead_percent_p50']:.1f} %",
                file=sys.stderr,
            )
        pipe.close()
        data["runs"][engine] = run


def main(argv: list[str] | None = None) -> int:
    ap = arguments(__doc__, iterations=400, warmup=30, budget_s=30.0)
    ap.add_argument("--threads", type=int, default=None, help="ORT threads (edgemed default)")
    ap.add_argument("--profile", action="store_true", help="also save pyinstrument profiles")
    ap.add_argument(
        "--engines",
        default=None,
        help="backend:precision pairs besides onnxruntime:fp32, comma-separated (default: "
        "OpenVINO fp32, int8 and bf16 where they run; '' for none)",
    )
    args = ap.parse_args(argv)
    pipe = Pipeline.from_bundle(edgemed.demo_bundle(), "onnxruntime", threads=args.threads)
    data: dict[str, Any] = {
        "benchmark": "pipeline_overhead",
        "environment": environment("pipeline_overhead.py"),
        "backend": pipe.backend.info(),
        "threads": args.threads or edgemed.backends.ort.default_threads(),
        "target_percent": TARGET_PERCENT,
        "inputs": {},
        "profiles": {},
    }
    for name, image in _inputs().items():
        r = measure(
            pipe, image, warmup=args.warmup, iterations=args.iterations, budget_s=args.budget_s
        )
        data["inputs"][name] = r
        print(
            f"{name}: end to end {r['end_to_end']['p50_ms']:.2f} ms, infer "
            f"{r['infer']['p50_ms']:.2f} ms, overhead {r['overhead_percent_p50']:.1f} %",
            file=sys.stderr,
        )
        if args.profile:
            slug = name.split()[0].lower() + "_" + name.split()[-1]
            path = Path(args.out) / f"pipeline_overhead_profile_{slug}.txt"
            path.parent.mkdir(parents=True, exist_ok=True)
            if _profile(pipe, image, path):
                data["profiles"][name] = path.name
    pipe.close()
    _engine_runs(args, _inputs(), data)
    write_results(args.out, "pipeline_overhead", data, _markdown(data))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

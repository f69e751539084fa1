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

All engines of one input alternate in blocks of calls (``_common.timed_rounds``, with
settle calls), so the load of other processes falls on every engine alike. Run one after
another instead, a shared 2-core machine's load swings between them made OpenVINO's
overhead at 512x512 look 2x ONNX Runtime's (11.5 vs 6.7 ms) where, alternated call by
call, both cost the same (~3 ms floor, equal CPU time outside the model call).
"""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

if not __package__:  # run as a script: `python benchmarks/<name>.py` imports `benchmarks.*`
    sys.path.append(str(Path(__file__).resolve().parents[1]))

import numpy as np

import edgemed
from benchmarks._common import (
    arguments,
    ct_small,
    environment,
    phantom,
    stats,
    timed_rounds,
    write_results,
)
from edgemed import MedicalImage, Pipeline

__all__ = ["main", "measure", "measure_engines"]

TARGET_PERCENT = 10.0


def _inputs() -> dict[str, MedicalImage]:
    out = {}
    for size in (256, 512):
        hu, spacing, _ = phantom(size)
        out[f"phantom {size}x{size}"] = MedicalImage(hu, spacing=spacing, modality="CT")
    hu, spacing = ct_small()
    out["CT_small.dcm 128x128"] = MedicalImage(hu, spacing=spacing, modality="CT")
    return out


def _summary(e2e: list[float], timings: list[dict[str, float]]) -> dict[str, Any]:
    """Per-call overheads and stage summaries from paired ``(end_to_end, timings)``."""
    e = np.asarray(e2e)
    f = np.asarray([t["infer"] for t in timings])
    per_call = 100.0 * (e - f) / e
    return {
        "iterations": len(e2e),
        "end_to_end": stats(e2e),
        "infer": stats(f.tolist()),
        "preprocess": stats([t["preprocess"] for t in timings]),
        "postprocess": stats([t["postprocess"] for t in timings]),
        "overhead_ms_p50": round(float(np.median(e - f)), 4),
        # The least-disturbed calls: on a loaded machine, what the overhead costs quietly.
        "overhead_ms_p10": round(float(np.percentile(e - f, 10)), 4),
        "overhead_percent_p50": round(float(np.median(per_call)), 2),
        "overhead_percent_p90": round(float(np.percentile(per_call, 90)), 2),
        "overhead_percent_of_medians": round(
            100.0 * (float(np.median(e)) - float(np.median(f))) / float(np.median(e)), 2
        ),
    }


def measure_engines(
    pipes: dict[str, Pipeline],
    image: MedicalImage,
    *,
    warmup: int,
    iterations: int,
    budget_s: float,
) -> dict[str, dict[str, Any]]:
    """Time ``pipe(image)`` for every pipeline in alternating blocks (see
    ``_common.timed_rounds``); per pipeline, the overhead per call and summaries."""

    def case(pipe: Pipeline) -> Callable[[], dict[str, float]]:
        return lambda: pipe(image).timings

    cases = {name: case(p) for name, p in pipes.items()}
    returned: dict[str, list[Any]] = {}
    samples = timed_rounds(
        cases, warmup=warmup, iterations=iterations, budget_s=budget_s, returned=returned
    )
    return {name: _summary(samples[name], returned[name]) for name in pipes}


def measure(
    pipe: Pipeline, image: MedicalImage, *, warmup: int, iterations: int, budget_s: float
) -> dict[str, Any]:
    """Time ``pipe(image)`` and the stages inside it; overhead per call and summaries."""
    out = measure_engines(
        {"pipe": pipe}, image, warmup=warmup, iterations=iterations, budget_s=budget_s
    )
    return out["pipe"]


def _profile(pipe: Pipeline, image: MedicalImage, path: Path, calls: int = 200) -> None:
    from pyinstrument import Profiler  # main() checked that it is installed

    for _ in range(10):
        pipe(image)
    profiler = Profiler(interval=0.0002)
    profiler.start()
    for _ in range(calls):
        pipe(image)
    profiler.stop()
    head = f"# {calls} calls of Pipeline(image); seconds are totals over all calls\n"
    path.write_text(head + profiler.output_text(unicode=False, color=False))


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


def _engines(args: Any) -> dict[str, Pipeline]:
    """The ``--engines`` pipelines (``backend:precision`` -> Pipeline)."""
    engines = (
        default_engines() if args.engines is None else [e for e in args.engines.split(",") if e]
    )
    pipes = {}
    for engine in engines:
        backend, _, precision = engine.partition(":")
        pipes[engine] = Pipeline.from_bundle(
            edgemed.demo_bundle(), backend, precision=precision or "fp32", threads=args.threads
        )
    return pipes


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
    if args.profile and importlib.util.find_spec("pyinstrument") is None:
        # Refused rather than skipped: a skipped profile leaves the last run's files in
        # the results folder, describing code that may have changed since.
        raise SystemExit("--profile needs pyinstrument (pip install pyinstrument)")
    pipe = Pipeline.from_bundle(edgemed.demo_bundle(), "onnxruntime", threads=args.threads)
    engines = _engines(args)
    data: dict[str, Any] = {
        "benchmark": "pipeline_overhead",
        "environment": environment("pipeline_overhead.py"),
        "backend": pipe.backend.info(),
        "threads": args.threads or edgemed.backends.ort.default_threads(),
        "target_percent": TARGET_PERCENT,
        "inputs": {},
        "profiles": {},
        "runs": {e: {"backend": p.backend.info(), "inputs": {}} for e, p in engines.items()},
    }
    reference = "onnxruntime:fp32"
    for name, image in _inputs().items():
        got = measure_engines(
            {reference: pipe, **engines},
            image,
            warmup=args.warmup,
            iterations=args.iterations,
            budget_s=args.budget_s,
        )
        for engine, r in got.items():
            if engine == reference:
                data["inputs"][name] = r
            else:
                data["runs"][engine]["inputs"][name] = r
            print(
                f"{engine} {name}: end to end {r['end_to_end']['p50_ms']:.2f} ms, infer "
                f"{r['infer']['p50_ms']:.2f} ms, overhead {r['overhead_ms_p50']:.2f} ms "
                f"(p10 {r['overhead_ms_p10']:.2f}) = {r['overhead_percent_p50']:.1f} %",
                file=sys.stderr,
            )
        if args.profile:
            slug = name.split()[0].lower() + "_" + name.split()[-1]
            path = Path(args.out) / f"pipeline_overhead_profile_{slug}.txt"
            path.parent.mkdir(parents=True, exist_ok=True)
            _profile(pipe, image, path)
            data["profiles"][name] = path.name
    for p in (pipe, *engines.values()):
        p.close()
    write_results(args.out, "pipeline_overhead", data, _markdown(data))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

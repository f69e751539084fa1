"""Regenerate README.md's performance section from the benchmark results.

Usage::

    python benchmarks/readme_tables.py [--results benchmarks/results] [--readme README.md]
    python benchmarks/readme_tables.py --check   # exit 1 if the README is out of date

Reads the JSON written by ``pipeline_overhead.py``, ``cpu_compare.py``,
``preprocess_compare.py`` and ``precision_compare.py`` (any that exist) and replaces the
text between ``<!-- perf:start -->`` and ``<!-- perf:end -->`` in the README. Every
table says when, on which machine and by which command its numbers were measured.
Needs only the standard library.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

__all__ = ["END", "START", "render", "load_results", "replace_section", "main"]

START = "<!-- perf:start -->"
END = "<!-- perf:end -->"

#: Result files in the order their tables appear.
ORDER = ("pipeline_overhead", "cpu_compare", "preprocess_compare", "precision_compare")


def _source(data: Mapping[str, Any]) -> str:
    env = data["environment"]
    m = env["machine"]
    return f"_Measured {env['date']} on {m['cpu']} ({m['cores']} cores) by `{env['command']}`._"


def _overhead(data: Mapping[str, Any]) -> list[str]:
    target = data.get("target_percent", 10.0)
    lines = [
        "### Pipeline overhead (CPU, demo model, batch 1)",
        "",
        f"Time spent outside the model, per call: `(end_to_end - infer) / end_to_end` "
        f"(target <= {target:g} %).",
        "",
        "| input | end to end p50 | infer p50 | overhead p50 | overhead p90 |",
        "|---|---|---|---|---|",
    ]
    for name, r in data["inputs"].items():
        lines.append(
            f"| {name} | {r['end_to_end']['p50_ms']:.2f} ms | {r['infer']['p50_ms']:.2f} ms | "
            f"{r['overhead_percent_p50']:.1f} % | {r['overhead_percent_p90']:.1f} % |"
        )
    return [*lines, "", _source(data)]


def _cpu_compare(data: Mapping[str, Any]) -> list[str]:
    lines = [
        "### edgemed vs MONAI transforms + PyTorch / ONNX Runtime (CPU, batch 1)",
        "",
        f"Same model, same input, {data['threads']} threads for every engine; masks "
        "compared with edgemed's (target: edgemed >= 3x faster end to end). 'Outside the "
        "model' is each call's time minus its model call.",
        "",
        "| input | pipeline | end to end p50 | edgemed faster by | outside the model p50 "
        "| mask Dice vs edgemed |",
        "|---|---|---|---|---|---|",
    ]
    for name, r in data["inputs"].items():
        for tool, t in r["tools"].items():
            d = r["dice_vs_edgemed"].get(tool)
            faster = "-" if tool == "edgemed" else f"{r['speedup_p50'][tool]:.2f}x"
            agree = "-" if d is None else f"{d['mean_dice']:.4f}"
            lines.append(
                f"| {name} | {tool} | {t['p50_ms']:.2f} ms | {faster} | "
                f"{r['outside_model_p50_ms'][tool]:.2f} ms | {agree} |"
            )
    return [*lines, "", _source(data)]


def _preprocess(data: Mapping[str, Any]) -> list[str]:
    lines = [
        "### CPU preprocessing (3 CT windows + resize to 256x256)",
        "",
        "Same arithmetic in all three (outputs compared); target: edgemed >= 3x faster.",
        "",
        "| slice | batch | edgemed p50 | OpenCV (plain) p50 | MONAI p50 | "
        "edgemed faster than OpenCV / MONAI |",
        "|---|---|---|---|---|---|",
    ]
    for c in data["cases"]:
        impl, speed = c["implementations"], c["speedup_p50"]

        def ms(key: str, impl: Mapping[str, Any] = impl) -> str:
            return f"{impl[key]['p50_ms']:.3f} ms" if key in impl else "-"

        def x(key: str, speed: Mapping[str, Any] = speed) -> str:
            return f"{speed[key]:.2f}x" if key in speed else "-"

        lines.append(
            f"| {c['slice']} | {c['batch']} | {ms('edgemed')} | {ms('OpenCV (plain)')} | "
            f"{ms('MONAI')} | {x('OpenCV (plain)')} / {x('MONAI')} |"
        )
    return [*lines, "", _source(data)]


def _precision(data: Mapping[str, Any]) -> list[str]:
    lines = [
        "### Precision variants (CPU, ONNX Runtime)",
        "",
        "| precision | end to end p50 (512 px) | infer p50 (512 px) | Dice vs FP32 (mean / "
        "worst) | Dice vs phantom truth |",
        "|---|---|---|---|---|",
    ]
    for p, r in data["precisions"].items():
        s = r["speed"]["phantom 512x512"]
        lines.append(
            f"| {p} | {s['end_to_end']['p50_ms']:.2f} ms | {s['infer']['p50_ms']:.2f} ms | "
            f"{r['dice_vs_fp32_mean']:.4f} / {r['dice_vs_fp32_worst']:.4f} | "
            f"{r['dice_vs_truth_mean']:.4f} |"
        )
    return [
        *lines,
        "",
        f"Accuracy over {data['accuracy_inputs']} slices ({data['phantoms']} synthetic CT "
        "phantoms + CT_small.dcm). ONNX Runtime's CPU provider runs most FP16 operators in "
        "FP32, so CPU speed says nothing about FP16 on a GPU.",
        "",
        _source(data),
    ]


_RENDERERS = {
    "pipeline_overhead": _overhead,
    "cpu_compare": _cpu_compare,
    "preprocess_compare": _preprocess,
    "precision_compare": _precision,
}


def render(results: Mapping[str, Mapping[str, Any]]) -> str:
    """The Markdown of the performance section from ``{benchmark name: result JSON}``.

    Unknown names are ignored; tables follow :data:`ORDER`. Returns the text that goes
    between the markers (without them).
    """
    parts = [
        "## Performance",
        "",
        "Generated by `python benchmarks/readme_tables.py` from `benchmarks/results/*.json`; "
        "each table names its machine and command. Shared CI machines are noisy: compare "
        "ratios measured in one run, not absolute times across runs.",
    ]
    for name in ORDER:
        if name in results:
            parts += ["", *_RENDERERS[name](results[name])]
    return "\n".join(parts) + "\n"


def load_results(folder: str | Path) -> dict[str, dict[str, Any]]:
    """``{benchmark: data}`` for each known ``<benchmark>.json`` in ``folder``."""
    out = {}
    for name in ORDER:
        path = Path(folder) / f"{name}.json"
        if path.is_file():
            out[name] = json.loads(path.read_text())
    return out


def replace_section(readme: str, section: str) -> str:
    """``readme`` with the text between the markers replaced by ``section``."""
    start, end = readme.find(START), readme.find(END)
    if start < 0 or end < start:
        raise ValueError(f"README lacks the markers {START} ... {END}")
    return readme[: start + len(START)] + "\n" + section + readme[end:]


def main(argv: list[str] | None = None) -> int:
    repo = Path(__file__).resolve().parents[1]
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--results", default=str(repo / "benchmarks" / "results"))
    ap.add_argument("--readme", default=str(repo / "README.md"))
    ap.add_argument("--check", action="store_true", help="exit 1 if the README is stale")
    args = ap.parse_args(argv)
    readme = Path(args.readme)
    old = readme.read_text()
    new = replace_section(old, render(load_results(args.results)))
    if args.check:
        if new != old:
            print("README performance section is out of date", file=sys.stderr)
            return 1
        return 0
    if new != old:
        readme.write_text(new)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

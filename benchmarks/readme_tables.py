"""Regenerate README.md's performance section from the benchmark results.

Usage::

    python benchmarks/readme_tables.py [--results benchmarks/results] [--readme README.md]
    python benchmarks/readme_tables.py --check   # exit 1 if the README is out of date

Reads the JSON written by ``pipeline_overhead.py``, ``cpu_compare.py``,
``preprocess_compare.py``, ``precision_compare.py`` and the others in :data:`ORDER` (any
that exist) and replaces the
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
ORDER = (
    "pipeline_overhead",
    "cpu_compare",
    "preprocess_compare",
    "precision_compare",
    "triton_compare",
    "listen_load",
    "serve_load",
    "gallery_search",
    "volume_compare",
)


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
    if data.get("runs"):
        lines += [
            "",
            "The same inputs on other engines, same process (the smaller the model call, the "
            "larger the same work's share):",
            "",
            "| engine | input | infer p50 | outside the model p50 | overhead p50 |",
            "|---|---|---|---|---|",
        ]
        for engine, run in data["runs"].items():
            for name, r in run["inputs"].items():
                lines.append(
                    f"| {engine} | {name} | {r['infer']['p50_ms']:.2f} ms | "
                    f"{r['overhead_ms_p50']:.2f} ms | {r['overhead_percent_p50']:.1f} % |"
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
            # edgemed's other engines are variants of the reference row, not rivals.
            faster = "-" if tool.startswith("edgemed") else f"{r['speedup_p50'][tool]:.2f}x"
            agree = "-" if d is None else f"{d['mean_dice']:.4f}"
            lines.append(
                f"| {name} | {tool} | {t['p50_ms']:.2f} ms | {faster} | "
                f"{r['outside_model_p50_ms'][tool]:.2f} ms | {agree} |"
            )
    gates = data.get("gates") or {}
    if gates:
        lines += [
            "",
            "Each OpenVINO precision through the bundle's validation gate (`edgemed check`):",
            "",
        ]
        for name, g in gates.items():
            verdict = "passed" if g["passed"] else "**refused** (outside the gate)"
            lines.append(f"- {name}: mean Dice drop {g['mean_dice_drop']:.4f}, {verdict}")
        for name, r in data["inputs"].items():
            best = r.get("best_gated")
            if best:
                lines.append(
                    f"- {name}: the fastest gated edgemed ({best['tool']}) is "
                    f"{best['speedup_vs_torch']:.2f}x faster than MONAI + PyTorch eager"
                )
    calls = data.get("model_calls") or {}
    if calls:
        lines += [
            "",
            "The model call alone (256x256, batch 1), per engine and precision:",
            "",
            "| engine and precision | p50 | vs ONNX Runtime fp32 |",
            "|---|---|---|",
        ]
        lines += [
            f"| {name} | {m['p50_ms']:.2f} ms | {m['vs_ort_fp32']:.2f}x |"
            for name, m in calls.items()
        ]
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


def triton_table(data: Mapping[str, Any]) -> list[str]:
    """``benchmarks/triton_compare.py``: in-process vs Triton vs `edgemed serve`."""
    lines = [
        "### edgemed on Triton Inference Server vs in-process vs `edgemed serve` (CPU)",
        "",
        f"Demo model, ONNX Runtime with {data['threads']} threads in total per row (two "
        "Triton instances: half each); Triton 2.51 (the nvidia-pytriton wheel's "
        "tritonserver, Python backend) driven by perf_analyzer over HTTP, `edgemed serve` "
        "by hey; throughput in images/s at concurrency c.",
        "",
        "| input | pipeline | c=1 p50 | c=1 p99 | c=4 img/s | c=16 img/s | c=16 p50 | c=16 p99 |",
        "|---|---|---|---|---|---|---|---|",
    ]

    def ms(value: Any) -> str:
        return "—" if value is None else f"{value:.2f} ms"

    rows = (
        ("Triton, 1 instance", "triton_1"),
        ("Triton, 2 instances", "triton_2"),
        ("edgemed serve", "serve"),
    )
    for name, r in data["inputs"].items():
        ip = r["in_process"]
        best = max(ip["run_batch_images_per_s"].values())
        lat = ip["latency"]
        lines.append(
            f"| {name} | in-process | {ms(lat['p50_ms'])} | {ms(lat['p99_ms'])} | - | "
            f"{best:.1f} (run_batch, best batch) | - | - |"
        )
        for label, key in rows:
            row = r.get(key)
            if not row or "skipped" in row:
                why = (row or {}).get("skipped", "not measured")
                lines.append(f"| {name} | {label} | _optional row: {why}_ | | | | | |")
                continue
            c1, c4, c16 = row["1"], row["4"], row["16"]
            lines.append(
                f"| {name} | {label} | {ms(c1['p50_ms'])} | {ms(c1['p99_ms'])} | "
                f"{c4['images_per_s']:.1f} | {c16['images_per_s']:.1f} | "
                f"{ms(c16['p50_ms'])} | {ms(c16['p99_ms'])} |"
            )
    lines += [
        "",
        "Goals: Triton adds at most 2 ms p50 over in-process at c=1; at c=16 it reaches at "
        "least 90 % of the best in-process `run_batch` throughput.",
        "",
    ]
    for name, r in data["inputs"].items():
        g = r.get("goals")
        if g:
            pair = r.get("paired_c1")
            how = (
                ""
                if pair is None
                else f" (median over {pair['requests']} pairs of an in-process call and a "
                f"`TritonClient` request: {pair['in_process_p50_ms']:.1f} / "
                f"{pair['remote_p50_ms']:.1f} ms p50; {g['blocks_added_p50_ms_c1']:+.2f} ms "
                "between the blocks above)"
            )
            fl = r.get("floor_c1")
            own = (
                ""
                if fl is None
                else f"; Triton's own floor, an empty Python-backend model that waits "
                f"{fl['wait_ms']:.1f} ms and answers with the same outputs, adds "
                f"{fl['added_p50_ms']:+.2f} ms measured the same way"
            )
            lines.append(
                f"- {name}: Triton adds {g['triton_added_p50_ms_c1']:+.2f} ms p50 at c=1"
                f"{how}{own}; "
                f"{g['best_triton']} reach {g['triton_c16_share_of_batched_percent']:.0f} % "
                "of the batched in-process throughput at c=16."
            )
    return [*lines, "", _source(data)]


def listen_table(data: Mapping[str, Any]) -> list[str]:
    """``benchmarks/listen_load.py``: `edgemed listen` ingest, latency, SEG/SR cost."""
    ing, lat, seg = data["ingest"], data["latency"], data["seg_sr"]
    rate, ratio = ing["images_per_s"], ing["vs_storescp"]
    lines = [
        "### DICOM node (`edgemed listen`, CPU)",
        "",
        f"Ingest: {ing['images']} CT slices of {ing['slice']} sent by DCMTK's storescu, "
        f"median of {ing['repeats']} runs (goal: at least half of storescp's rate).",
        "",
        "| receiver | images/s | vs storescp |",
        "|---|---|---|",
    ]
    for name, value in rate.items():
        vs = "1.00x" if name == "storescp" else f"{ratio[name]:.2f}x"
        lines.append(f"| {name} | {value:.1f} | {vs} |")
    share = seg["share_of_infer_percent"]
    lines += [
        "",
        f"Latency: last instance of a {lat['slices']}-slice series acknowledged -> its SEG "
        f"and SR stored in Orthanc: p50 {lat['p50_s']:.2f} s over {lat['repeats']} runs: "
        f"the `--stable-seconds` wait ({lat['stable_seconds']:g} s), processing in the node "
        f"(p50 {lat['processing_p50_ms'] / 1e3:.2f} s, of which inference "
        f"{lat['infer_p50_ms'] / 1e3:.2f} s = {lat['inference_share_percent']:.0f} % of the "
        "latency) and delivery.",
        "",
        f"SEG + SR for a {' x '.join(map(str, seg['shape']))} mask ({seg['labels']} labels, "
        f"{seg['frames']} frames): SEG {seg['seg_encode_ms']:.0f} ms / "
        f"{seg['seg_bytes'] / 1e6:.1f} MB, SR {seg['sr_encode_ms']:.0f} ms / "
        f"{seg['sr_bytes'] / 1e3:.0f} kB: {share:.1f} % of the series' inference "
        f"({seg['series_infer_ms'] / 1e3:.1f} s; goal under 10 %).",
    ]
    return [*lines, "", _source(data)]


def serve_table(data: Mapping[str, Any]) -> list[str]:
    """``benchmarks/serve_load.py``: `edgemed serve` (hey) against the in-process pipeline."""

    def ms(value: Any) -> str:
        return "—" if value is None else f"{value:.1f}"

    goals = data["goals"]
    lines = [
        "### Service under load (`edgemed serve`, CPU)",
        "",
        f"Demo model on {data['backend']}, {data['threads']} threads, {data['workers']} worker; "
        f"HTTP load by {data['load_generator']}, in-process by as many threads calling one "
        "pipeline, in alternating blocks; latency p50 / p99 in ms, throughput in images/s.",
        "",
        "| input | concurrency | in-process p50 / p99 | HTTP p50 / p99 | in-process / HTTP "
        "throughput | HTTP errors |",
        "|---|---|---|---|---|---|",
    ]
    for name, row in data["inputs"].items():
        for c, http in row["http"].items():
            local = row["in_process"][c]
            lines.append(
                f"| {name} | {c} | {ms(local['p50_ms'])} / {ms(local['p99_ms'])} "
                f"| {ms(http['p50_ms'])} / {ms(http['p99_ms'])} "
                f"| {local['throughput_per_s']:.1f} / {http['throughput_per_s']:.1f} "
                f"| {http['errors']} |"
            )
    lines.append("")

    def added(value: Any) -> str:
        return "—" if value is None else f"{value:+.2f}"

    for name, row in data["inputs"].items():
        blocks = f"{added(row['http_added_p50_ms'])} ms between hey's and the threads' blocks"
        paired = row.get("paired_c1")
        if paired is None:  # results from before the paired measurement
            said = f"HTTP adds {added(row['http_added_p50_ms'])} ms p50 at concurrency 1, " + (
                "between hey's and the threads' blocks"
            )
        else:
            said = (
                f"HTTP adds {added(paired['added_p50_ms'])} ms p50 at concurrency 1, the "
                f"median over {paired['requests']} pairs of one in-process call and one "
                f"keep-alive request ({paired['in_process_p50_ms']:.1f} / "
                f"{paired['remote_p50_ms']:.1f} ms p50; {blocks})"
            )
        peer = row.get("peer_paired_c1")
        if peer is not None:
            said += (
                f"; a hand-written FastAPI endpoint around the same pipeline "
                f"(`benchmarks/serve_peer.py`) adds {added(peer['added_p50_ms'])} ms, "
                "measured the same way"
            )
        per_round = row.get("throughput_ratio_c4_rounds")
        how_c4 = (
            ""
            if per_round is None
            else f", the median of {len(per_round)} alternating rounds' ratios "
            f"({row['throughput_ratio_c4_all']:.2f}x over all requests)"
        )
        lines.append(
            f"- {name}: {said} (goal <= {goals['http_added_p50_ms_at_c1']:g} ms); throughput "
            f"at concurrency 4 is {row['throughput_ratio_c4']:.2f}x in-process{how_c4} "
            f"(goal >= {goals['throughput_ratio_at_c4']:g}x)."
        )
    r = data["rss"]
    lines.append(
        f"- Server RSS {r['after_warmup_mb']:.1f} MB after warm-up, {r['after_mb']:.1f} MB "
        f"after {r['requests']} more requests: {r['growth_percent']:+.2f} % (goal under "
        f"{r['goal_percent']:g} %), {r['errors']} errors."
    )
    return [*lines, "", _source(data)]


def gallery_table(data: Mapping[str, Any]) -> list[str]:
    """``benchmarks/gallery_search.py``: exact NumPy vs faiss gallery search."""
    lines = [
        "### Gallery search (similar cases, CPU)",
        "",
        f"Random unit vectors of {data['sizes'][0]['dims']} values, k = {data['k']}; build = "
        "normalise and store (+ the faiss index); one query p50 in alternating blocks; a batch "
        "of 100 queries; recall@10 against the exact answer.",
        "",
        "| entries | search | build | 1 query p50 | 100 queries | recall@10 |",
        "|---|---|---|---|---|---|",
    ]
    for r in data["sizes"]:
        for kind, b in r["backends"].items():
            lines.append(
                f"| {r['entries']:,} | {kind} | {b['build_s']:.2f} s | "
                f"{b['query']['p50_ms']:.2f} ms | {b['batch100_ms']:.1f} ms | "
                f"{b['recall_at_10_vs_exact']:.3f} |"
            )
    return [*lines, "", _source(data)]


def volume_table(data: Mapping[str, Any]) -> list[str]:
    """``benchmarks/volume_compare.py``: a 3D model's sliding window, edgemed vs MONAI."""
    vol, m, sw = data["volume"], data["model"], data["sliding_window"]
    shape = " x ".join(map(str, vol["shape_zyx"]))
    lines = [
        "### 3D sliding window: edgemed vs MONAI `sliding_window_inference` (CPU)",
        "",
        f"MONAI `UNet(spatial_dims=3, channels={tuple(m['channels'])}, num_res_units="
        f"{m['num_res_units']})`, {m['labels']} labels, random weights, exported once to "
        f"ONNX; a {shape} (Z, Y, X) CT phantom NIfTI; ROI {'x'.join(map(str, sw['roi_size']))}"
        f", overlap {sw['overlap']:g}, {sw['mode']}, sw_batch_size {sw['sw_batch_size']} "
        "(MONAI's windows per call; edgemed on the CPU calls one window at a time); "
        f"{data['threads']} threads. Each pipeline in its own processes, from the NIfTI file "
        f"to the mask file written, {data.get('rounds', 1)} process(es) per pipeline in "
        f"alternating rounds, each {data['warmup_runs']} warm-up run(s) then "
        f"{data['repeats']} timed; medians over the timed runs; peak RSS of the whole "
        "process (the largest).",
        "",
        "| pipeline | end to end | model calls | outside the model (phases' medians) "
        "| first run | peak RSS | edgemed faster by | edgemed's memory share | mask vs edgemed |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    masks = data["masks_vs_edgemed"]
    for name, r in data["pipelines"].items():
        ph = r["phases_median_s"]
        ours = name == "edgemed"
        first = "—" if r["first_run_s"] is None else f"{r['first_run_s']:.2f} s"
        if ours:
            agree = "-"
        elif masks[name]["differing_voxels"] is None:
            agree = "other shape"
        else:
            agree = (
                f"{masks[name]['differing_voxels']:,} voxels differ "
                f"(Dice {masks[name]['dice']['mean_dice']:.4f})"
            )
        faster = "-" if ours else f"{r['edgemed_speedup']:.2f}x"
        # The other phases' medians: the end to end's median less the model calls'
        # would mix runs (with several, the two medians may come from different ones).
        outside = sum(v for k, v in ph.items() if k != "model_s")
        share = "-" if ours else f"{r['edgemed_memory_ratio']:.2f}"
        lines.append(
            f"| {name} | {r['end_to_end_s']:.2f} s | {ph['model_s']:.2f} s | "
            f"{outside:.2f} s | {first} | {r['peak_rss_mb']:.0f} MiB | "
            f"{faster} | {share} | {agree} |"
        )
    g = data["goals"]
    speed, mem = g["speedup_vs_torch"], g["memory_ratio_vs_torch"]
    same = g["identical_to_monai_ort"]

    def verdict(met: bool) -> str:
        return "met" if met else "**not met**"

    lines += [
        "",
        f"- Speed: edgemed is {speed['measured']:.2f}x faster than MONAI + PyTorch eager end "
        f"to end (goal >= {speed['goal']:g}x: {verdict(speed['met'])}).",
        f"- Memory: edgemed's peak RSS is {mem['measured']:.2f} of MONAI + PyTorch eager's "
        f"(goal <= {mem['goal']:g}: {verdict(mem['met'])}).",
        f"- Masks: edgemed and MONAI + ONNX Runtime differ in {same['differing_voxels']} "
        f"voxels (goal: identical: {verdict(same['met'])}).",
    ]
    return [*lines, "", _source(data)]


_RENDERERS = {
    "pipeline_overhead": _overhead,
    "cpu_compare": _cpu_compare,
    "preprocess_compare": _preprocess,
    "precision_compare": _precision,
    "triton_compare": triton_table,
    "listen_load": listen_table,
    "serve_load": serve_table,
    "gallery_search": gallery_table,
    "volume_compare": volume_table,
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

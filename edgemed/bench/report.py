"""``bench.json``, ``bench.csv``, ``bench.md`` and the terminal table.

Every file is written atomically (:func:`edgemed.fsutil.atomic_write`); ``bench.json``
is written last, so its presence means the other files are complete.
"""

from __future__ import annotations

import csv
import io
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from edgemed.bench.runner import STAGES
from edgemed.bench.stats import PERCENTILES, too_few_text
from edgemed.fsutil import atomic_write, write_json

__all__ = [
    "CSV_COLUMNS",
    "SCHEMA_PATH",
    "accuracy_text",
    "csv_text",
    "load_schema",
    "markdown",
    "table",
    "write_reports",
]

#: The published JSON Schema of bench.json.
SCHEMA_PATH = Path(__file__).resolve().parent.parent / "data" / "bench.schema.json"

_STAT_KEYS = ("count", "min_ms", "mean_ms", *(f"p{p}_ms" for p in PERCENTILES), "max_ms")
#: One bench.csv row per configuration and stage.
CSV_COLUMNS = (
    "config",
    "backend",
    "precision",
    "batch",
    "images_per_call",
    "input",
    "stage",
    *_STAT_KEYS,
    "throughput_ips",
    "overhead_p50",
    "overhead_p90",
    "absent_reason",
)


def load_schema() -> dict[str, Any]:
    """The bench.json schema (JSON Schema draft 2020-12)."""
    return json.loads(SCHEMA_PATH.read_text(encoding="utf-8"))


def accuracy_text(acc: dict[str, Any]) -> str:
    """One short figure for tables: Dice / top-1 / cosine vs FP32."""
    if acc.get("is_reference"):
        return "reference"
    if acc.get("metric") == "dice" and acc.get("mean_dice") is not None:
        return f"Dice {acc['mean_dice']:.4f}"
    if acc.get("metric") == "top1_agreement":
        return f"top-1 {acc['top1_agreement']:.3f}"
    if acc.get("metric") == "cosine":
        return f"cos {acc['min_cosine']:.4f}"
    value = acc.get(str(acc.get("metric")))  # another head: its metric names its figure
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return f"{acc['metric']} {value:.4f}"
    return "n/a"


def _overhead(c: dict[str, Any], key: str) -> float | None:
    """A figure of the per-call overhead share (``None``: absent or too few calls)."""
    ovh = c.get("overhead")
    return None if ovh is None else ovh.get(key)


def _blank(v: Any) -> Any:
    return "" if v is None else v


def csv_text(doc: dict[str, Any]) -> str:
    """bench.csv: one row per configuration x stage; absent stages have empty figures
    and the reason, as do percentiles from too few calls. The per-call overhead share
    is on the end_to_end row."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(CSV_COLUMNS)
    for c in doc["configs"]:
        for stage in STAGES:
            s = c["stages"].get(stage)
            figures = ["" if s is None else _blank(s[k]) for k in (*_STAT_KEYS, "throughput_ips")]
            if stage == "end_to_end":
                figures += [_blank(_overhead(c, "p50")), _blank(_overhead(c, "p90"))]
            else:
                figures += ["", ""]
            reason = c["absent"].get(stage, "") if s is None else c["absent"].get("percentiles", "")
            w.writerow(
                [
                    c["name"],
                    c["backend"],
                    c["precision"],
                    c["batch"],
                    c["images_per_call"],
                    c["input"]["label"],
                    stage,
                    *figures,
                    reason,
                ]
            )
    return buf.getvalue()


def _f(v: float | None, digits: int = 2) -> str:
    return "—" if v is None else f"{v:.{digits}f}"


def _pct(v: float | None, digits: int = 1) -> str:
    return "—" if v is None else f"{100 * v:.{digits}f}%"


def markdown(doc: dict[str, Any], plots: Sequence[str] = ()) -> str:
    """bench.md: summary table, per-stage table, stability and absent figures."""
    d, b = doc["device"], doc["bundle"]
    lines = [
        "# edgemed bench",
        "",
        f"- bundle: {b['name']} {b['version']} ({b['task']})",
        f"- date: {doc['date']}, edgemed {doc['edgemed_version']}",
        f"- command: `{doc['command']}`",
        f"- device: {d['cpu']}, {d['cores_usable']} usable cores, {d['os']}, Python "
        f"{d['python']}, onnxruntime {d['onnxruntime']}, OpenCV {d['opencv']}, "
        f"NumPy {d['numpy']}",
        "- latencies are per call (one call = `batch` slices of a 2D input, or a whole "
        "volume); throughput is images per second",
        "- overhead: per call, (end_to_end - infer) / end_to_end of that same call; its "
        "p50 and p90 over the calls",
        f"- — for a percentile: {too_few_text()}",
        "",
        "## Summary",
        "",
        "| config | calls | e2e p50 ms | e2e p90 ms | e2e p99 ms | e2e mean ms | infer mean ms "
        "| overhead p50 | overhead p90 | images/s | stable | peak RSS MiB | accuracy vs fp32 |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|---|",
    ]
    for c in doc["configs"]:
        e, i = c["stages"]["end_to_end"], c["stages"]["infer"]
        lines.append(
            f"| {c['name']} | {e['count']} | {_f(e['p50_ms'])} | {_f(e['p90_ms'])} "
            f"| {_f(e['p99_ms'])} | {_f(e['mean_ms'])} | {_f(i['mean_ms'])} "
            f"| {_pct(_overhead(c, 'p50'))} | {_pct(_overhead(c, 'p90'))} "
            f"| {_f(c['throughput_ips'], 1)} | {'yes' if c['stability']['stable'] else 'no'} "
            f"| {_f(c['memory']['peak_rss_mib'], 0)} | {accuracy_text(c['accuracy'])} |"
        )
    lines += [
        "",
        "## Stages (ms per call)",
        "",
        "| config | stage | count | min | mean | p50 | p90 | p95 | p99 | max |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for c in doc["configs"]:
        for stage in STAGES:
            s = c["stages"].get(stage)
            if s is None:
                lines.append(f"| {c['name']} | {stage} | absent: {c['absent'][stage]} |||||||| ")
                continue
            figs = " | ".join(_f(s[k], 3) for k in _STAT_KEYS[1:])
            lines.append(f"| {c['name']} | {stage} | {s['count']} | {figs} |")
    lines += ["", "## Stability", ""]
    for c in doc["configs"]:
        st = c["stability"]
        few = c["absent"].get("percentiles")
        lines.append(
            f"- {c['name']}: {st['reason']} ({st['warmup']} warm-up calls in "
            f"{st['warmup_s']:.2f} s, {st['iterations']} measured in "
            f"{st['elapsed_s']:.2f} s; cap {doc['settings']['time_cap_s']:g} s)"
            + (f"; {few}" if few else "")
        )
    ref = doc.get("reference")
    if ref:
        lines += ["", f"Accuracy reference: {ref['source']}."]
    if plots:
        lines += ["", "## Plots", ""]
        lines += [f"![{Path(p).stem}]({Path(p).name})" for p in plots]
    lines += ["", "## Stage definitions", ""]
    lines += [f"- `{k}`: {v}" for k, v in doc["stage_definitions"].items()]
    return "\n".join(lines) + "\n"


def table(doc: dict[str, Any]) -> str:
    """The compact terminal table (p50 per stage, end-to-end percentiles)."""
    head = (
        f"{'config':<30} {'read':>6} {'prep':>6} {'infer':>7} {'post':>6} "
        f"{'e2e p50':>8} {'p90':>7} {'p99':>7} {'calls':>5} {'img/s':>7} {'ovh':>5}  "
        f"{'stable':<6} accuracy"
    )
    rows = [head, "-" * len(head)]
    for c in doc["configs"]:
        st = c["stages"]

        def p50(stage: str, width: int, st: dict = st) -> str:
            s = st.get(stage)
            return f"{_f(None if s is None else s['p50_ms'], 1):>{width}}"

        e = st["end_to_end"]
        name = c["name"] if len(c["name"]) <= 30 else c["name"][:29] + "…"
        rows.append(
            f"{name:<30} {p50('read', 6)} {p50('preprocess', 6)} {p50('infer', 7)} "
            f"{p50('postprocess', 6)} {_f(e['p50_ms'], 1):>8} {_f(e['p90_ms'], 1):>7} "
            f"{_f(e['p99_ms'], 1):>7} {e['count']:>5} {c['throughput_ips']:>7.1f} "
            f"{_pct(_overhead(c, 'p50'), 0):>5}  "
            f"{'yes' if c['stability']['stable'] else 'NO':<6} {accuracy_text(c['accuracy'])}"
        )
    return "\n".join(rows)


def write_reports(
    doc: dict[str, Any], out: str | os.PathLike[str], *, plots: bool = True
) -> list[Path]:
    """Write bench.csv, bench.md, the plots (when ``plots``) and, last, bench.json.

    Returns:
        The written paths, bench.json first.
    """
    out = Path(out)
    written: list[Path] = []
    if plots:
        from edgemed.bench.plots import write_plots

        written += write_plots(doc, out)
    text = csv_text(doc)
    written.insert(0, atomic_write(out / "bench.csv", lambda t: Path(t).write_text(text)))
    md = markdown(doc, [p.name for p in written if p.suffix == ".png"])
    written.insert(1, atomic_write(out / "bench.md", lambda t: Path(t).write_text(md)))
    written.insert(0, write_json(out / "bench.json", doc))
    return written

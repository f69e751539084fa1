"""PNG plots of a bench document: end-to-end latency CDF and per-stage stacked bars.

Drawn with matplotlib's object API on an Agg canvas (no pyplot, no global backend
switch, no display needed); matplotlib comes from the ``bench`` extra.
"""

from __future__ import annotations

import io
import logging
import os
from pathlib import Path
from typing import Any

import numpy as np

from edgemed._lazy import require
from edgemed.fsutil import atomic_write

__all__ = ["STAGE_COLOURS", "write_plots"]

#: One colour per stage, shared by every plot (colour-blind-safe Okabe-Ito set).
STAGE_COLOURS = {
    "read": "#999999",
    "preprocess": "#E69F00",
    "h2d": "#56B4E9",
    "infer": "#0072B2",
    "d2h": "#009E73",
    "postprocess": "#D55E00",
}
_LINE_COLOURS = ["#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#000000"]
_STYLES = ["-", "--", "-.", ":"]


def _figure(width: float, height: float):
    mpl = require("matplotlib", "bench", "edgemed bench plots")
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    mpl.rcParams["font.size"] = 10
    # Its font manager logs every font it scores at DEBUG: noise in `edgemed --debug`.
    logging.getLogger("matplotlib").setLevel(logging.INFO)
    fig = Figure(figsize=(width, height), dpi=110, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _save(fig, path: Path) -> Path:
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    data = buf.getvalue()
    return atomic_write(path, lambda tmp: Path(tmp).write_bytes(data))


def _where(doc: dict[str, Any]) -> str:
    """The backend(s) and machine, for plot titles."""
    backends = dict.fromkeys(f"{c['backend']} {c['backend_version']}" for c in doc["configs"])
    d = doc["device"]
    return f"{', '.join(backends)} on {d['cpu']} ({d['cores_usable']} cores)"


def _cdf(doc: dict[str, Any], path: Path) -> Path:
    configs = doc["configs"]
    fig = _figure(8.0, 4.6 + 0.18 * len(configs))
    ax = fig.add_subplot()
    lo, hi = np.inf, 0.0
    for i, c in enumerate(configs):
        x = np.sort(np.asarray(c["samples_ms"]["end_to_end"], dtype=float))
        y = np.arange(1, x.size + 1) / x.size
        lo, hi = min(lo, float(x[0])), max(hi, float(x[-1]))
        e = c["stages"]["end_to_end"]
        # A percentile from too few calls is null in the document: say so, not "p99 0".
        p50, p99 = ("—" if e[k] is None else f"{e[k]:.1f}" for k in ("p50_ms", "p99_ms"))
        ax.step(
            x,
            y,
            where="post",
            color=_LINE_COLOURS[i % len(_LINE_COLOURS)],
            linestyle=_STYLES[(i // len(_LINE_COLOURS)) % len(_STYLES)],
            linewidth=1.8,
            label=f"{c['name']}  (p50 {p50}, p99 {p99} ms, n={e['count']})",
        )
    for q in (0.5, 0.9, 0.99):
        ax.axhline(q, color="#bbbbbb", linewidth=0.8, linestyle=":", zorder=0)
        ax.annotate(
            f"p{round(q * 100)}",
            (1.0, q),
            xycoords=("axes fraction", "data"),
            xytext=(3, 0),
            textcoords="offset points",
            va="center",
            fontsize=8,
            color="#777777",
        )
    if hi > 20 * max(lo, 1e-9):  # configurations far apart: a log axis keeps both legible
        ax.set_xscale("log")
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("end-to-end latency per call (ms)")
    ax.set_ylabel("fraction of calls at or below")
    b = doc["bundle"]
    ax.set_title(f"End-to-end latency CDF: {b['name']} {b['version']}\n{_where(doc)}", fontsize=10)
    ax.grid(True, which="major", alpha=0.3)
    # Below the axes: inside, it would hide the steep parts of the curves.
    fig.legend(
        loc="outside lower center", ncol=1 if len(configs) < 4 else 2, fontsize=8, frameon=False
    )
    return _save(fig, path)


def _stages(doc: dict[str, Any], path: Path) -> Path:
    configs = doc["configs"]
    n = len(configs)
    fig = _figure(9.0, 1.6 + 0.55 * n)
    ax = fig.add_subplot()
    y = np.arange(n)[::-1]  # first configuration on top
    left = np.zeros(n)
    has_copies = any(c["stages"].get("h2d") for c in configs)
    # The stages end_to_end covers first, so the diamond can be read against their sum;
    # read (file -> image) is not part of end_to_end and comes last, hatched.
    for stage in ("preprocess", "h2d", "infer", "d2h", "postprocess", "read"):
        widths = np.zeros(n)
        for j, c in enumerate(configs):
            s = c["stages"].get(stage)
            if s is None:
                continue
            value = s["mean_ms"]
            if stage == "infer":  # copies are inside the infer call: don't count them twice
                for copy in ("h2d", "d2h"):
                    if c["stages"].get(copy):
                        value -= c["stages"][copy]["mean_ms"]
            widths[j] = max(0.0, value)
        if not widths.any():
            continue
        label = stage
        if stage == "infer" and has_copies:
            label = "infer (excl. copies)"
        elif stage == "read":
            label = "read (file to image, not in end_to_end)"
        ax.barh(
            y,
            widths,
            left=left,
            color=STAGE_COLOURS[stage],
            edgecolor="white",
            hatch="//" if stage == "read" else None,
            height=0.6,
            label=label,
        )
        left += widths
    e2e = np.array([c["stages"]["end_to_end"]["mean_ms"] for c in configs])
    ax.scatter(e2e, y, marker="D", color="black", zorder=3, s=28, label="end_to_end (measured)")
    for j, c in enumerate(configs):
        ax.annotate(
            f"end_to_end {e2e[j]:.1f} ms, {c['throughput_ips']:.1f} img/s",
            (max(e2e[j], left[j]), y[j]),
            xytext=(6, 0),
            textcoords="offset points",
            va="center",
            fontsize=8,
        )
    ax.set_yticks(y, [c["name"] for c in configs])
    ax.set_xlim(0, 1.45 * max(float(e2e.max()), float(left.max()), 1e-3))
    ax.set_xlabel("mean time per call (ms): stages timed one by one; diamond = whole pipeline")
    ax.set_title(f"Mean time per call, by stage\n{_where(doc)}", fontsize=10)
    ax.grid(True, axis="x", alpha=0.3)
    # Below the axes, outside them: the bars keep the whole width.
    handles, labels = ax.get_legend_handles_labels()
    order = sorted(range(len(labels)), key=lambda k: labels[k].startswith("end_to_end"))
    fig.legend(
        [handles[k] for k in order],
        [labels[k] for k in order],
        loc="outside lower center",
        ncol=min(len(order), 5),
        fontsize=8,
        frameon=False,
    )
    return _save(fig, path)


def write_plots(doc: dict[str, Any], out: str | os.PathLike[str]) -> list[Path]:
    """Write ``latency_cdf.png`` and ``stages.png`` into ``out``; returns their paths."""
    out = Path(out)
    if not doc["configs"]:
        return []
    return [_cdf(doc, out / "latency_cdf.png"), _stages(doc, out / "stages.png")]

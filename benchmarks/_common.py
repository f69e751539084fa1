"""Shared pieces of the comparison benchmarks: inputs, machine facts, timing, output.

Every script records the date, the machine (CPU model, cores), library versions and the
exact command next to its numbers, and writes ``<name>.json`` + ``<name>.md`` into the
``--out`` folder; ``benchmarks/readme_tables.py`` turns the JSON into the README tables.
Latency statistics come from :mod:`edgemed.bench.stats` (nearest-rank percentiles).
"""

from __future__ import annotations

import argparse
import datetime as _dt
import importlib
import os
import platform
import shlex
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from edgemed.bench.monitor import cpu_model
from edgemed.bench.stats import summarize
from edgemed.fsutil import atomic_write, write_json

__all__ = [
    "REPO",
    "arguments",
    "ct_small",
    "dice",
    "environment",
    "figure",
    "machine",
    "phantom",
    "stats",
    "timed_rounds",
    "versions",
    "write_results",
]

REPO = Path(__file__).resolve().parents[1]


def phantom(size: int, seed: int = 7, region: str = "thorax", spacing_mm: float | None = None):
    """A seeded synthetic axial CT slice (HU, float32), its spacing and true labels."""
    from edgemed.export.reference import phantoms  # the export package: imported when used

    spacing = spacing_mm if spacing_mm is not None else 400.0 / size  # whole body in view
    p = phantoms.make_phantom(np.random.default_rng(seed), size, spacing, region)
    return p.hu.astype(np.float32), (float(p.spacing_mm[0]), float(p.spacing_mm[1])), p.labels


def ct_small() -> tuple[np.ndarray, tuple[float, float]]:
    """pydicom's real ``CT_small.dcm`` in HU (128 x 128) and its pixel spacing, read by
    edgemed's own reader (as the pipeline would; :func:`edgemed.bench.inputs.ct_small`)."""
    from edgemed.bench.inputs import ct_small as bench_ct_small

    image = bench_ct_small().image
    return image.array, (float(image.spacing[0]), float(image.spacing[1]))


def dice(a: np.ndarray, b: np.ndarray, labels: int | Sequence[str]) -> dict[str, Any]:
    """The segmentation head's metric of mask ``a`` against the reference ``b`` (the one
    the export gates and ``edgemed bench`` report): per-label Dice under ``classes``
    (``None`` where neither has the label), ``mean_dice`` over labels present,
    ``pixel_agreement``."""
    from edgemed.heads import create_head

    names = [f"label_{i}" for i in range(labels)] if isinstance(labels, int) else list(labels)
    head = create_head("segmentation", {}, names, [("logits", ("batch", len(names), "h", "w"))])
    return head.metric([b], [a])


def machine() -> dict[str, Any]:
    """CPU model, logical cores available to this process, OS and Python."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:
        cores = os.cpu_count() or 1
    return {
        "cpu": cpu_model(),
        "cores": cores,
        "arch": platform.machine(),
        "os": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
    }


def versions(*extra: str) -> dict[str, str]:
    """Versions of edgemed, numpy, OpenCV, ONNX Runtime and the ``extra`` modules."""
    out = {}
    for name in ("edgemed", "numpy", "cv2", "onnxruntime", *extra):
        try:
            mod = importlib.import_module(name)
            out["opencv" if name == "cv2" else name] = str(getattr(mod, "__version__", "?"))
        except ImportError:
            out[name] = "absent"
    return out


def _python() -> str:
    """The interpreter as a reader can retype it: relative to the checkout when it is a
    venv inside it (``.venv-test/bin/python``), else plain ``python`` (the path of a
    private venv elsewhere says nothing to anyone else; the versions are recorded)."""
    exe = Path(sys.executable)
    try:
        return exe.relative_to(REPO).as_posix()
    except ValueError:
        return "python"


def environment(script: str, extra_modules: Sequence[str] = ()) -> dict[str, Any]:
    """The header every result carries: date, machine, versions and the exact command."""
    argv = [_python(), f"benchmarks/{script}", *sys.argv[1:]]
    return {
        "date": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": machine(),
        "versions": versions(*extra_modules),
        "command": shlex.join(argv),
    }


def timed_rounds(
    cases: dict[str, Callable[[], Any]],
    *,
    warmup: int,
    iterations: int,
    budget_s: float,
    block: int = 10,
    settle: int = 2,
    returned: dict[str, list[Any]] | None = None,
) -> dict[str, list[float]]:
    """Time every case (ms) in alternating blocks until each has ``iterations`` samples.

    Each round runs, per case in a rotating order, ``settle`` untimed calls and then
    ``block`` timed ones. Alternating blocks spreads the load of other processes on a
    shared machine over all cases alike, so ratios taken within one run are fair even
    when absolute times drift; the settle calls keep one engine's idle worker threads
    (ONNX Runtime and OpenMP spin for a while after a call) from being billed to the
    next case. Stops early after ``budget_s`` seconds (once every case has at least 20
    samples). With ``returned``, what each timed call returned is appended there, in
    the order of the samples.
    """
    names = list(cases)
    for _ in range(warmup):
        for name in names:
            cases[name]()
    samples: dict[str, list[float]] = {name: [] for name in names}
    start = time.perf_counter()
    r = 0
    while min(len(v) for v in samples.values()) < iterations:
        order = names[r % len(names) :] + names[: r % len(names)]
        for name in order:
            for _ in range(settle):
                cases[name]()
            for _ in range(block):
                t0 = time.perf_counter()
                value = cases[name]()
                samples[name].append((time.perf_counter() - t0) * 1e3)
                if returned is not None:
                    returned.setdefault(name, []).append(value)
        r += 1
        enough = min(len(v) for v in samples.values()) >= 20
        if enough and time.perf_counter() - start > budget_s:
            break
    return samples


def paired_added(local: Callable[[], object], remote: Callable[[], bool], n: int) -> dict[str, Any]:
    """What a remote path adds to a local call at concurrency 1, measured in pairs.

    ``n`` times: one ``local()`` call, then one ``remote()`` call (True when it was
    answered well). Each pair shares the machine's moment, so its drift (on a shared
    2-core machine the model call's p50 moves by a few ms between blocks) cancels in the
    pair's difference; the median of the differences is the figure. The remote call
    always follows a local one, so it never runs with caches warmed by itself.
    """
    local_ms: list[float] = []
    diffs: list[float] = []
    remote_ms: list[float] = []
    errors = 0
    for _ in range(n):
        t0 = time.perf_counter()
        local()
        t1 = time.perf_counter()
        ok = remote()
        t2 = time.perf_counter()
        local_ms.append((t1 - t0) * 1e3)
        if ok:
            remote_ms.append((t2 - t1) * 1e3)
            diffs.append(remote_ms[-1] - local_ms[-1])
        else:
            errors += 1
    return {
        "requests": n,
        "errors": errors,
        "in_process_p50_ms": round(float(np.median(local_ms)), 3),
        "remote_p50_ms": round(float(np.median(remote_ms)), 3) if remote_ms else None,
        "added_p50_ms": round(float(np.median(diffs)), 3) if diffs else None,
    }


def stats(samples_ms: Sequence[float], items: int = 1) -> dict[str, float | None]:
    """:func:`edgemed.bench.stats.summarize`, rounded for the JSON (a percentile from too
    few samples stays ``None``: p99 needs 100, and a run cut short by ``--budget-s``
    may have as few as 20)."""
    return {k: None if v is None else round(v, 4) for k, v in summarize(samples_ms, items).items()}


def figure(value: float | None, digits: int = 2) -> str:
    """A figure for the markdown tables: ``—`` for a percentile from too few samples."""
    return "—" if value is None else f"{value:.{digits}f}"


def arguments(
    doc: str, *, iterations: int, warmup: int, budget_s: float, per: str = "input"
) -> argparse.ArgumentParser:
    """The parser every comparison script starts from (the first paragraph of ``doc``
    as its description): ``--out``, ``--iterations``, ``--warmup`` and ``--budget-s``
    (seconds per ``per``); a script adds its own options to it."""
    ap = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    ap.add_argument("--out", default="benchmarks/results")
    ap.add_argument("--iterations", type=int, default=iterations)
    ap.add_argument("--warmup", type=int, default=warmup)
    ap.add_argument("--budget-s", type=float, default=budget_s, help=f"per {per}")
    return ap


def write_results(out_dir: str | os.PathLike[str], name: str, data: dict, markdown: str) -> Path:
    """Write ``name.json`` and ``name.md`` into ``out_dir`` (atomically, with
    :mod:`edgemed.fsutil`); returns the JSON path."""
    out = Path(out_dir)
    path = write_json(out / f"{name}.json", data)
    text = markdown.rstrip() + "\n"
    atomic_write(out / f"{name}.md", lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))
    return path

"""Rendering a result for people and files, shared by every front-end (the CLI's
``run``/``demo``, a service answering requests).

What is task-specific comes from the result's head (its summary lines and its files);
this module adds what every result has: ``result.json``, model, backend, input and
timings.
"""

from __future__ import annotations

from pathlib import Path

from edgemed.fsutil import write_json
from edgemed.result import Result

__all__ = ["summary", "write_result"]


def write_result(result: Result, out: Path) -> list[Path]:
    """Write ``result`` into the directory ``out``: the head's files (a segmentation's
    ``mask.nii.gz`` and ``overlay.png``), then ``result.json``; returns the paths,
    ``result.json`` first."""
    written = result.head.write(result, out) if result.head is not None else []
    # result.json last: its presence means the other files are complete.
    written.insert(0, write_json(out / "result.json", result.to_dict()))
    return written


def summary(result: Result, written: list[Path], title: str) -> str:
    """The human-readable lines for one result and the files :func:`write_result` wrote."""
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
    if result.head is not None:
        lines += result.head.summary(result)
    lines.append("  timings  " + "  ".join(f"{k} {v:.1f} ms" for k, v in result.timings.items()))
    if written:
        names = ", ".join(p.name for p in written)
        lines.append(f"  wrote    {written[0].parent}/ ({names})")
    return "\n".join(lines)

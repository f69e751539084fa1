"""Report images for classification and similar-case results (the ``demo`` writes them).

Like :func:`edgemed.io.writers.render_overlay` for masks: RGB uint8 arrays in the
canonical orientation (patient's right on the left, anterior up), written as PNG
atomically; no file name or patient field ever appears in them.

* :func:`render_findings`: the slice in each of two display windows, and a panel with
  one bar per label: its probability, the decision threshold (a tick) and, in green,
  the labels decided present.
* :func:`render_matches`: the query and its k nearest gallery images, each captioned
  with its rank, cosine similarity and label, in two display windows (two rows).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from edgemed.errors import OutputError
from edgemed.fsutil import atomic_write
from edgemed.io.image import MedicalImage

__all__ = [
    "LUNG",
    "SOFT_TISSUE",
    "canonical_slice",
    "render_findings",
    "render_matches",
    "write_png",
]

#: Display windows (centre, width) in HU.
LUNG = (-600.0, 1500.0)
SOFT_TISSUE = (60.0, 300.0)
_FONT = cv2.FONT_HERSHEY_SIMPLEX


def canonical_slice(image: MedicalImage, k: int = 0) -> np.ndarray:
    """Slice ``k`` of ``image`` in the canonical orientation (the middle one of a volume
    when ``k`` is None), as float32."""
    from edgemed.io.orientation import orientation  # nibabel: imported when drawing

    pixels = orientation(image).to_canonical(image.array)
    if image.is_volume:
        return np.asarray(pixels[pixels.shape[0] // 2 if k is None else k], np.float32)
    return np.asarray(pixels, np.float32)


def _window(slice_: np.ndarray, window: tuple[float, float], side: int) -> np.ndarray:
    c, w = window
    g0 = (np.clip((slice_ - (c - w / 2)) / w, 0, 1) * 255).astype(np.uint8)
    h0, w0 = g0.shape
    s = side / max(h0, w0)
    g = cv2.resize(
        g0,
        (max(1, round(w0 * s)), max(1, round(h0 * s))),
        interpolation=cv2.INTER_AREA if s < 1 else cv2.INTER_LINEAR,
    )
    tile = np.zeros((side, side), np.uint8)  # letterboxed on black
    y, x = (side - g.shape[0]) // 2, (side - g.shape[1]) // 2
    tile[y : y + g.shape[0], x : x + g.shape[1]] = g
    return cv2.cvtColor(tile, cv2.COLOR_GRAY2RGB)


def _text(
    img: np.ndarray, text: str, xy: tuple[int, int], scale: float = 0.5, colour=(235, 235, 235)
) -> None:
    cv2.putText(img, text, xy, _FONT, scale, colour, 1, cv2.LINE_AA)


def render_findings(
    slice_hu: np.ndarray,
    classes: dict[str, Any],
    labels: Sequence[str],
    thresholds: Sequence[float] = (),
    *,
    title: str = "",
    side: int = 384,
) -> np.ndarray:
    """The slice (lung and soft-tissue windows) and the findings panel.

    Args:
        slice_hu: the 2D slice (canonical orientation), in HU.
        classes: the head's per-slice value (``probabilities``, optional ``present``).
        labels: the label names.
        thresholds: decision threshold per label (none: no ticks, nothing marked present).
        title: a caption (never a file name).
    """
    tiles = [_window(slice_hu, LUNG, side), _window(slice_hu, SOFT_TISSUE, side)]
    _text(tiles[0], "lung window", (8, side - 10), 0.45)
    _text(tiles[1], "soft-tissue window", (8, side - 10), 0.45)
    probs = list(classes["probabilities"])
    present = {c["index"] for c in classes.get("present", [])}
    panel_w = 360
    panel = np.full((side, panel_w, 3), 24, np.uint8)
    _text(panel, title or "edgemed findings", (10, 24), 0.55, (255, 255, 255))
    _text(panel, "probability (tick: threshold)", (10, 46), 0.42, (170, 170, 170))
    bar_x, bar_w = 10, panel_w - 80
    for i, p in enumerate(probs):
        y = 70 + i * 46
        if y + 36 > side:
            break
        name = labels[i] if i < len(labels) else str(i)
        hit = i in present
        colour = (80, 220, 100) if hit else (235, 235, 235)
        _text(
            panel,
            name.replace("_", " ") + ("  PRESENT" if hit else ""),
            (bar_x, y + 12),
            0.45,
            colour,
        )
        cv2.rectangle(panel, (bar_x, y + 18), (bar_x + bar_w, y + 32), (70, 70, 70), -1)
        fill = int(round(bar_w * min(max(p, 0.0), 1.0)))
        cv2.rectangle(
            panel,
            (bar_x, y + 18),
            (bar_x + fill, y + 32),
            (80, 220, 100) if hit else (90, 140, 230),
            -1,
        )
        if i < len(thresholds):
            tx = bar_x + int(round(bar_w * thresholds[i]))
            cv2.line(panel, (tx, y + 15), (tx, y + 35), (255, 255, 255), 2)
        _text(panel, f"{p:.3f}", (bar_x + bar_w + 8, y + 31), 0.45, colour)
    _text(panel, "demonstration model; not for clinical use", (10, side - 10), 0.4, (170, 170, 170))
    return np.hstack([*tiles, panel])


def render_matches(
    query_hu: np.ndarray,
    matches: Sequence[tuple[np.ndarray, str, float]],
    *,
    title: str = "",
    side: int = 192,
) -> np.ndarray:
    """The query and its nearest gallery images: top row lung window, bottom row
    soft-tissue window; each match captioned ``rank  cosine`` and its label."""
    cols = []
    items = [(query_hu, title or "query", None), *matches]
    for n, (hu, label, sim) in enumerate(items):
        col = np.vstack([_window(hu, LUNG, side), _window(hu, SOFT_TISSUE, side)])
        cap = np.full((62, side, 3), 24, np.uint8)
        if sim is None:
            _text(cap, "QUERY", (6, 17), 0.5, (255, 210, 90))
        else:
            _text(cap, f"#{n}  cosine {sim:.3f}", (6, 17), 0.45, (255, 255, 255))
        # "finding type @ level" on two lines; "+" joins several findings.
        for row, part in enumerate(str(label).replace("_", " ").split(" @ ")[:2]):
            _text(cap, part[:34], (6, 36 + 18 * row), 0.36, (200, 200, 200))
        col = np.vstack([cap, col])
        if sim is None:  # a gap after the query
            col = np.hstack([col, np.full((col.shape[0], 12, 3), 60, np.uint8)])
        cols.append(col)
    return np.hstack(cols)


def write_png(path: str | os.PathLike[str], rgb: np.ndarray) -> Path:
    """Write an RGB image as PNG, atomically."""
    ok, data = cv2.imencode(".png", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    if not ok:
        raise OutputError("PNG encoding failed", path=path)
    return atomic_write(path, lambda tmp: Path(tmp).write_bytes(data.tobytes()))

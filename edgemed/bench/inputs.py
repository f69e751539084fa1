"""Benchmark inputs: a real file or DICOM series, pydicom's real CT slice, or a synthetic
CT-like slice of any size.

Labels never come from file names (they may carry patient names or UIDs): a user's
files are ``input 1``, ``input 2``, ...; only the known public test file is named.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgemed.errors import InputError, UsageError
from edgemed.io import MedicalImage, read_image

__all__ = ["BenchInput", "ct_small", "from_path", "parse_size", "synthetic", "synthetic_ct"]


@dataclass
class BenchInput:
    """One image the benchmark runs on.

    Attributes:
        label: how reports name it.
        kind: ``file``, ``series`` (a DICOM directory) or ``synthetic``.
        image: the decoded image (what ``end_to_end`` starts from).
        path: the file or directory the ``read`` stage reads each iteration; ``None``
            for a synthetic image (nothing to read).
        source: a short description for the report.
    """

    label: str
    kind: str
    image: MedicalImage
    path: Path | None
    source: str

    def describe(self) -> dict[str, Any]:
        """The report's ``input`` object."""
        img = self.image
        return {
            "label": self.label,
            "kind": self.kind,
            "source": self.source,
            "shape": list(img.array.shape),
            "slices": img.num_slices,
            "spacing_mm": [round(float(s), 6) for s in img.spacing],
            "modality": img.modality,
            "format": img.metadata.get("format", "array"),
        }


def parse_size(text: str) -> tuple[int, int]:
    """``512x512`` or ``512`` -> ``(height, width)``; sizes 16..8192."""
    m = re.fullmatch(r"\s*(\d+)\s*(?:[xX*]\s*(\d+))?\s*", text)
    if not m:
        raise UsageError(f"--synthetic wants HEIGHTxWIDTH such as 512x512, got '{text}'")
    h = int(m.group(1))
    w = int(m.group(2) or h)
    if not (16 <= h <= 8192 and 16 <= w <= 8192):
        raise UsageError(f"--synthetic size must be 16..8192 per side, got {h}x{w}")
    return h, w


def synthetic_ct(height: int, width: int, *, seed: int = 0, spacing_mm: float = 0.7) -> np.ndarray:
    """An axial CT-like slice in HU: air around an elliptic body with a fat layer, soft
    tissue, two lungs, a spine and ribs-like bone spots, plus quantum-like noise.

    Deterministic for a given seed; not anatomy, just the HU mix a CT model meets.
    """
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    cy, cx = (height - 1) / 2.0, (width - 1) / 2.0
    ny, nx = (y - cy) / (0.42 * height), (x - cx) / (0.46 * width)

    def ellipse(oy: float, ox: float, ry: float, rx: float) -> np.ndarray:
        return ((ny - oy) / ry) ** 2 + ((nx - ox) / rx) ** 2 <= 1.0

    hu = np.full((height, width), -1000.0, dtype=np.float32)
    hu[ellipse(0, 0, 1.0, 1.0)] = -100.0  # subcutaneous fat
    hu[ellipse(0, 0, 0.9, 0.9)] = 40.0  # soft tissue
    for side in (-1, 1):
        hu[ellipse(-0.1, side * 0.42, 0.55, 0.3)] = -850.0  # lungs
    hu[ellipse(0.7, 0, 0.12, 0.1)] = 700.0  # vertebra
    hu[ellipse(0.2, 0, 0.18, 0.12)] = 60.0  # heart / mediastinum
    for angle in np.linspace(0.3, 2.8, 6):  # rib cross-sections on the body wall
        for side in (-1, 1):
            hu[ellipse(0.86 * np.cos(angle) * -1, side * 0.86 * np.sin(angle), 0.04, 0.04)] = 900.0
    hu += rng.normal(0.0, 12.0, hu.shape).astype(np.float32)
    return hu


def synthetic(size: str | tuple[int, int], *, seed: int = 0) -> BenchInput:
    """A :class:`BenchInput` holding :func:`synthetic_ct` of ``size`` (``"512x512"``)."""
    h, w = parse_size(size) if isinstance(size, str) else size
    spacing = 0.7 * 512.0 / max(h, w)  # a ~36 cm field of view whatever the matrix
    img = MedicalImage(
        synthetic_ct(h, w, seed=seed),
        spacing=(spacing, spacing),
        modality="CT",
        metadata={"format": "synthetic"},
    )
    return BenchInput(f"synthetic {h}x{w}", "synthetic", img, None, "synthetic CT-like slice")


def from_path(path: str | os.PathLike[str], index: int) -> BenchInput:
    """Read a user's file or DICOM series directory (its name is not reported)."""
    p = Path(path)
    image = read_image(p)
    kind = "series" if p.is_dir() else "file"
    return BenchInput(f"input {index}", kind, image, p, f"user {kind}")


def ct_small() -> BenchInput:
    """pydicom's real CT test slice (128 x 128), the default input."""
    from pydicom.data import get_testdata_file

    path = get_testdata_file("CT_small.dcm")  # ships inside pydicom; nothing is downloaded
    if path is None:
        raise InputError(
            "pydicom's CT_small.dcm test file is not installed", code="INPUT_NOT_FOUND"
        )
    p = Path(str(path))
    return BenchInput("CT_small.dcm", "file", read_image(p), p, "pydicom test data (real CT)")

"""The in-memory image every reader returns and every later stage consumes."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = ["DICOM_FORMATS", "SPACING_SOURCES", "MedicalImage"]

#: ``metadata["format"]`` of images read from DICOM: one file (path or bytes), or a
#: series (a directory or in-memory instances). Only these declare a modality.
DICOM_FORMATS = ("dicom", "dicom-series")
#: Where ``spacing`` came from (``metadata["spacing_source"]``): the file (``dicom``,
#: ``nifti``), the caller (``user``), or nowhere (``unknown``: the values are 1.0
#: placeholders, and nothing in millimetres may be derived from them).
SPACING_SOURCES = ("dicom", "nifti", "user", "unknown")


@dataclass
class MedicalImage:
    """A 2D image or 3D volume in physical units, with its geometry.

    Conventions (every reader follows them, every stage relies on them):

    * ``array`` is C-ordered ``float32`` in physical units (HU for CT after rescale
      slope/intercept; MONOCHROME1 already inverted so that higher means brighter).
      Axes are ``(Y, X)`` for one 2D image, ``(Z, Y, X)`` for a volume or a multi-frame
      image, with a trailing channel axis ``C`` for colour (``(Y, X, 3)``,
      ``(Z, Y, X, 3)``, RGB order).
    * ``spacing`` has one entry per *spatial* array axis, in the same order, in mm
      (``(dy, dx)`` or ``(dz, dy, dx)``); 1.0 where the file does not say, and then
      ``metadata["spacing_source"]`` is ``"unknown"`` (see :attr:`spacing_source`).
    * ``origin`` is the patient-space (DICOM LPS, mm) position of the centre of the
      first voxel, or ``None``; ``direction`` is a 3x3 matrix whose *columns* are the
      LPS unit vectors of the x, y and z index axes, or ``None``.
    * ``metadata`` holds technical fields only (window centre/width, rescale,
      transfer syntax, format, spacing source, lossy compression, ...). It never holds
      patient-identifying values.
    * ``dicom_headers`` (DICOM only): the source instances' headers in slice order,
      pixel data dropped, for writers of DICOM objects that reference them (a SEG).
      They hold patient data: never logged, printed or serialised (not in ``repr``).
    * Arrays keep the file's own voxel order; :mod:`edgemed.io.orientation` gives the
      canonical (LPS) order a model sees, and the way back.
    """

    array: np.ndarray
    spacing: tuple[float, ...]
    modality: str = "OT"
    photometric: str = "MONOCHROME2"
    origin: tuple[float, float, float] | None = None
    direction: np.ndarray | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
    dicom_headers: list[Any] | None = field(default=None, repr=False, compare=False)

    def __post_init__(self) -> None:
        n_spatial = self.array.ndim - (1 if self.is_color else 0)
        if len(self.spacing) != n_spatial:
            raise ValueError(
                f"spacing has {len(self.spacing)} entries for {n_spatial} spatial axes"
            )

    @property
    def is_color(self) -> bool:
        """True when the last axis holds RGB samples."""
        return self.photometric not in ("MONOCHROME1", "MONOCHROME2")

    @property
    def is_volume(self) -> bool:
        """True for ``(Z, Y, X)`` data (a series, a NIfTI volume, a multi-frame file)."""
        return self.array.ndim - (1 if self.is_color else 0) == 3

    @property
    def num_slices(self) -> int:
        return self.array.shape[0] if self.is_volume else 1

    def slices(self) -> np.ndarray:
        """The data as a stack of 2D slices: ``(N, Y, X)`` or ``(N, Y, X, C)``."""
        return self.array if self.is_volume else self.array[np.newaxis]

    @property
    def spacing_source(self) -> str:
        """One of :data:`SPACING_SOURCES`. Every reader records it; an image built by the
        caller without saying counts as ``user`` (the caller gave its spacing)."""
        return str(self.metadata.get("spacing_source", "user"))

    @property
    def is_dicom(self) -> bool:
        """True for images read from DICOM (a file, bytes, a directory or instances)."""
        return self.metadata.get("format") in DICOM_FORMATS

    @property
    def pixel_spacing(self) -> tuple[float, float]:
        """In-plane spacing ``(dy, dx)`` in mm."""
        return (float(self.spacing[-2]), float(self.spacing[-1]))

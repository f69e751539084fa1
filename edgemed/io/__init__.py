"""Readers and writers for medical images."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from edgemed.io.image import MedicalImage
from edgemed.io.read import read_image

if TYPE_CHECKING:
    from edgemed.io.series import read_series

__all__ = ["MedicalImage", "read_image", "read_series"]


def __getattr__(name: str) -> Any:
    # read_series is imported on first use: it pulls in pydicom, which `import edgemed`
    # leaves to the first DICOM read (as read_image does with its readers).
    if name == "read_series":
        from edgemed.io.series import read_series

        return read_series
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

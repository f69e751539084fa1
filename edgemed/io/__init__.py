"""Readers and writers for medical images."""

from __future__ import annotations

from edgemed.io.image import MedicalImage
from edgemed.io.read import read_image

__all__ = ["MedicalImage", "read_image"]

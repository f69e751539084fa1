"""edgemed: edge-deployment inference for medical imaging."""

from __future__ import annotations

from edgemed._version import __version__
from edgemed.errors import EdgemedError
from edgemed.io import MedicalImage, read_image

__all__ = ["__version__", "EdgemedError", "MedicalImage", "read_image"]

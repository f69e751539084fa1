"""edgemed: edge-deployment inference for medical imaging.

``import edgemed`` needs only numpy, OpenCV, onnx/onnxruntime, pydicom and nibabel;
GPU pieces (tensorrt, pycuda) load lazily when asked for.
"""

from __future__ import annotations

from edgemed._version import __version__
from edgemed.bundle import Bundle
from edgemed.errors import EdgemedError
from edgemed.io import MedicalImage, read_image
from edgemed.pipeline import Pipeline, Result, demo_bundle
from edgemed.postprocess import match

__all__ = [
    "__version__",
    "Bundle",
    "EdgemedError",
    "MedicalImage",
    "Pipeline",
    "Result",
    "demo_bundle",
    "match",
    "read_image",
]

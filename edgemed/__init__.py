"""edgemed: edge-deployment inference for medical imaging.

``import edgemed`` needs only numpy, OpenCV, onnx/onnxruntime, pydicom and nibabel;
GPU pieces (tensorrt, pycuda) load lazily when asked for.
"""

from __future__ import annotations

from edgemed._setup import quiet_libraries
from edgemed._version import __version__
from edgemed.bundle import Bundle
from edgemed.errors import EdgemedError
from edgemed.io import MedicalImage, read_image
from edgemed.pipeline import Pipeline, demo_bundle
from edgemed.postprocess import match
from edgemed.result import Result
from edgemed.settings import Options

quiet_libraries()

__all__ = [
    "__version__",
    "Bundle",
    "EdgemedError",
    "MedicalImage",
    "Options",
    "Pipeline",
    "Result",
    "demo_bundle",
    "match",
    "read_image",
]

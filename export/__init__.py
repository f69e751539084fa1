"""The export stage: trained model -> ONNX -> precision variants -> a gated bundle.

Runs on a workstation with the ``export`` extra (``pip install "edgemed[export]"``:
PyTorch, NVIDIA ModelOpt and its ONNX parts). Installed as ``edgemed.export``; the
runtime (:mod:`edgemed`) never imports it. Importing this package needs neither torch
nor ModelOpt: they load when an export runs, and their absence is a
:class:`~edgemed.errors.MissingDependencyError` naming the extra.

Example::

    from edgemed.export import ExportConfig, export_bundle

    result = export_bundle(ExportConfig(
        model="edgemed.export.reference.unet:UNet2D", weights="demo_unet.pt",
        input_shape="1x3x256x256", dynamic="batch,height,width", task="segmentation",
        labels="background,lung,fat,soft_tissue,bone", preprocess="demo",
        calibration="calib/", out="bundle/"))
    print(result.accuracy_table)

The same is ``edgemed export`` on the command line.
"""

from __future__ import annotations

from edgemed.export.api import ExportResult, export_bundle
from edgemed.export.config import ExportConfig, Thresholds
from edgemed.export.load import RandomWeightsWarning

__all__ = ["ExportConfig", "ExportResult", "RandomWeightsWarning", "Thresholds", "export_bundle"]

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

A 3D model (sliding window over volumes) takes a 5-value shape and, optionally, the
volume options (or a ``volume`` block in the ``preprocess`` JSON)::

    export_bundle(ExportConfig(
        model="monai.networks.nets:UNet", weights="unet3d.pt",
        model_kwargs={"spatial_dims": 3, "in_channels": 1, "out_channels": 3,
                      "channels": [16, 32, 64], "strides": [2, 2]},
        input_shape="1x1x96x96x96", task="segmentation", labels="background,liver,tumour",
        preprocess="spec3d.json", spacing="1.5,1.5,2", roi_overlap=0.25, sw_mode="gaussian",
        sw_batch=4, calibration="volumes/", validation="val_volumes/", out="bundle3d/"))

The same is ``edgemed export`` on the command line.
"""

from __future__ import annotations

from edgemed.export.api import ExportResult, export_bundle
from edgemed.export.config import ExportConfig, Thresholds
from edgemed.export.load import RandomWeightsWarning

__all__ = ["ExportConfig", "ExportResult", "RandomWeightsWarning", "Thresholds", "export_bundle"]

"""Model factories for the weight-provenance tests: one that loads trained weights itself
(the same under any seed), and a module instance. Imports torch: only the export tests
that ``importorskip`` it load this module (through ``--model tests.export.factories:...``).
"""

from __future__ import annotations

import torch

from edgemed.export.reference.build_demo import WEIGHTS
from edgemed.export.reference.unet import UNet2D

__all__ = ["INSTANCE", "trained_unet"]


def trained_unet() -> torch.nn.Module:
    """The demo U-Net with its trained weights, loaded by the factory itself."""
    model = UNet2D()
    model.load_state_dict(torch.load(WEIGHTS, map_location="cpu", weights_only=True))
    return model


#: Built once, when this module is imported.
INSTANCE = torch.nn.Conv2d(3, 5, 1)

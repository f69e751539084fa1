"""``FindingsNet``: the small CNN behind the findings classifier and the similar-case
embedding (needs torch).

A strided convolution trunk (256 -> 8 px, 16 to 96 channels, BatchNorm + ReLU) ends in an
8 x 8 map of 32 px cells. ``task="classification"``: a 1x1 convolution gives one logit per
finding and cell, and a finding's logit for the slice is its largest cell's (sigmoid:
several findings can be present at once). Training supervises the cells too, with where
the findings lie (:meth:`~.findings.FindingsPhantom.cells`): told only "this slice has a
nodule", the net learnt the anatomy that goes with nodules (a 25 mm nodule was found no
better than a 3 mm one); told which cell, it learns the nodule. ``task="embedding"``:
global max and average pooling of the map side by side (the max keeps a small, bright
finding that an average alone would dilute) under a small projection, whose output the
runtime L2-normalises (the embedding head's ``normalize: l2``).
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["FindingsNet", "classifier", "embedder"]


def _block(cin: int, cout: int, stride: int, k: int = 3) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, k, stride, k // 2, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    )


class FindingsNet(nn.Module):
    """Args:
    in_channels: input channels (one per preprocessing window).
    outputs: logits (classification) or embedding dimensions.
    task: ``classification`` or ``embedding``.
    """

    def __init__(self, in_channels: int = 2, outputs: int = 5, task: str = "classification"):
        super().__init__()
        if task not in ("classification", "embedding"):
            raise ValueError("task must be 'classification' or 'embedding'")
        self.task = task
        self.trunk = nn.Sequential(
            _block(in_channels, 16, 2, 5),  # 128
            _block(16, 32, 2),  # 64
            _block(32, 48, 2),  # 32
            _block(48, 48, 1),
            _block(48, 64, 2),  # 16
            _block(64, 96, 2),  # 8
        )
        features = 2 * 96
        if task == "classification":
            self.head: nn.Module = nn.Sequential(nn.Dropout2d(0.1), nn.Conv2d(96, outputs, 1))
        else:
            self.head = nn.Sequential(
                nn.Linear(features, 128), nn.ReLU(inplace=True), nn.Linear(128, outputs)
            )

    def pooled(self, x: torch.Tensor) -> torch.Tensor:
        f = self.trunk(x)
        return torch.cat([f.amax(dim=(2, 3)), f.mean(dim=(2, 3))], 1)

    def cells(self, x: torch.Tensor) -> torch.Tensor:
        """Classification: per-cell logits ``(N, outputs, H / 32, W / 32)``."""
        return self.head(self.trunk(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.task == "classification":
            return self.cells(x).amax(dim=(2, 3))
        return self.head(self.pooled(x))


def classifier(in_channels: int = 2, outputs: int = 5) -> FindingsNet:
    """The findings classifier (the export stage's ``module:factory``)."""
    return FindingsNet(in_channels, outputs, "classification")


def embedder(in_channels: int = 2, outputs: int = 64) -> FindingsNet:
    """The similar-case embedding model (the export stage's ``module:factory``)."""
    return FindingsNet(in_channels, outputs, "embedding")

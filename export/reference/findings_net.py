"""``FindingsNet``: the small CNN behind the findings classifier and the similar-case
embedding (needs torch).

A strided convolution trunk (256 -> 8 px, 16 to 96 channels, BatchNorm + ReLU), then
global max and average pooling side by side: the max keeps a small, bright finding (a
5 mm nodule covers a few pixels of the 8x8 map) that an average alone would dilute.
``task="classification"`` ends in one logit per finding (sigmoid: several findings can
be present at once); ``task="embedding"`` ends in a small projection whose output the
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
            self.head: nn.Module = nn.Sequential(nn.Dropout(0.1), nn.Linear(features, outputs))
        else:
            self.head = nn.Sequential(
                nn.Linear(features, 128), nn.ReLU(inplace=True), nn.Linear(128, outputs)
            )

    def pooled(self, x: torch.Tensor) -> torch.Tensor:
        f = self.trunk(x)
        return torch.cat([f.amax(dim=(2, 3)), f.mean(dim=(2, 3))], 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.pooled(x))


def classifier(in_channels: int = 2, outputs: int = 5) -> FindingsNet:
    """The findings classifier (the export stage's ``module:factory``)."""
    return FindingsNet(in_channels, outputs, "classification")


def embedder(in_channels: int = 2, outputs: int = 64) -> FindingsNet:
    """The similar-case embedding model (the export stage's ``module:factory``)."""
    return FindingsNet(in_channels, outputs, "embedding")

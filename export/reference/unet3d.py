"""A small 3D U-Net: the 3D demo model's architecture.

The 2D demo's :class:`~edgemed.export.reference.unet.UNet2D` in three dimensions: three
resolution levels below full size (so ``D``, ``H`` and ``W`` must be divisible by 8),
two 3x3x3 conv + BatchNorm + ReLU blocks per level, 2x2x2 transposed-conv upsampling and
skip concatenation. With ``base=8`` it has about 0.35 M parameters (about 1.4 MB in FP32
ONNX) and a forward pass over a 32x64x64 window costs about 1.8 GMAC: small enough that
sliding-window inference over a whole CT volume takes seconds on a CPU. BatchNorm folds
into the convolutions at inference (ONNX Runtime and TensorRT both do this).
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["UNet3D"]


class _Block(nn.Sequential):
    """Two 3x3x3 conv -> BN -> ReLU layers (bias-free: BN supplies the shift)."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__(
            nn.Conv3d(cin, cout, 3, padding=1, bias=False),
            nn.BatchNorm3d(cout),
            nn.ReLU(inplace=True),
            nn.Conv3d(cout, cout, 3, padding=1, bias=False),
            nn.BatchNorm3d(cout),
            nn.ReLU(inplace=True),
        )


class UNet3D(nn.Module):
    """A fully convolutional 3D U-Net on ``(N, C, D, H, W)`` inputs.

    Args:
        in_channels: input channels (3: one per intensity window).
        num_classes: output logit channels.
        base: channels at full resolution; doubled at each of the ``levels`` downsamplings.
        levels: number of 2x downsamplings (input sides must be divisible by ``2**levels``).
    """

    def __init__(
        self, in_channels: int = 3, num_classes: int = 5, base: int = 8, levels: int = 3
    ) -> None:
        super().__init__()
        widths = [base * 2**i for i in range(levels + 1)]
        self.levels = levels
        self.down = nn.ModuleList()
        cin = in_channels
        for w in widths[:-1]:
            self.down.append(_Block(cin, w))
            cin = w
        self.pool = nn.MaxPool3d(2)
        self.bottom = _Block(widths[-2], widths[-1])
        self.up = nn.ModuleList()
        self.merge = nn.ModuleList()
        for w_lo, w_hi in zip(reversed(widths[:-1]), reversed(widths[1:]), strict=True):
            self.up.append(nn.ConvTranspose3d(w_hi, w_lo, 2, stride=2))
            self.merge.append(_Block(2 * w_lo, w_lo))
        self.head = nn.Conv3d(widths[0], num_classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = []
        for block in self.down:
            x = block(x)
            skips.append(x)
            x = self.pool(x)
        x = self.bottom(x)
        for up, merge, skip in zip(self.up, self.merge, reversed(skips), strict=True):
            x = merge(torch.cat([up(x), skip], dim=1))
        return self.head(x)

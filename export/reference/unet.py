"""A small 2D U-Net: the demo model's architecture.

Three resolution levels below full size (so ``H`` and ``W`` must be divisible by 8),
two 3x3 conv + BatchNorm + ReLU blocks per level, 2x2 transposed-conv upsampling and
skip concatenation. With ``base=16`` it has about 0.48 M parameters (under 2 MB in
FP32 ONNX). BatchNorm rather than GroupNorm because at inference it folds into the
convolutions (ONNX Runtime and TensorRT both do this), so it costs nothing on device.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["UNet2D"]


class _Block(nn.Sequential):
    """Two 3x3 conv -> BN -> ReLU layers (bias-free: BN supplies the shift)."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__(
            nn.Conv2d(cin, cout, 3, padding=1, bias=False),
            nn.BatchNorm2d(cout),
            nn.ReLU(inplace=True),
            nn.Conv2d(cout, cout, 3, padding=1, bias=False),
            nn.BatchNorm2d(cout),
            nn.ReLU(inplace=True),
        )


class UNet2D(nn.Module):
    """A fully convolutional 2D U-Net.

    Args:
        in_channels: input channels (3: one per intensity window).
        num_classes: output logit channels.
        base: channels at full resolution; doubled at each of the ``levels`` downsamplings.
        levels: number of 2x downsamplings (input sides must be divisible by ``2**levels``).
    """

    def __init__(
        self, in_channels: int = 3, num_classes: int = 5, base: int = 16, levels: int = 3
    ) -> None:
        super().__init__()
        widths = [base * 2**i for i in range(levels + 1)]
        self.levels = levels
        self.down = nn.ModuleList()
        cin = in_channels
        for w in widths[:-1]:
            self.down.append(_Block(cin, w))
            cin = w
        self.pool = nn.MaxPool2d(2)
        self.bottom = _Block(widths[-2], widths[-1])
        self.up = nn.ModuleList()
        self.merge = nn.ModuleList()
        for w_lo, w_hi in zip(reversed(widths[:-1]), reversed(widths[1:]), strict=True):
            self.up.append(nn.ConvTranspose2d(w_hi, w_lo, 2, stride=2))
            self.merge.append(_Block(2 * w_lo, w_lo))
        self.head = nn.Conv2d(widths[0], num_classes, 1)

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

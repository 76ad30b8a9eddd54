"""A small U-Net that finds chromosomes in a spread, CenterNet-style.

Per pixel it predicts three things: is this chromosome stain (``fg``), how close
is it to a chromosome's box centre (``heat``, a Gaussian peak per chromosome), and
the height and width of that box (``size``, log pixels / 16).  Peaks of ``heat``
give one detection per chromosome even where chromosomes touch or cross, which a
threshold-and-split segmenter cannot tell apart; ``fg`` then gives each one its
mask.  Small enough (about 0.5 M weights) to train from scratch on a CPU.
"""
from __future__ import annotations

import torch
from torch import nn

from .registry import register

HEADS = ("fg", "heat", "log_h", "log_w")


def _block(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True),
        nn.Conv2d(cout, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True),
    )


class ChromDetUNet(nn.Module):
    """U-Net with ``len(widths)`` levels; input (B, 1, H, W) with H, W multiples of 2**(levels-1)."""

    def __init__(self, in_channels: int = 1, widths: tuple[int, ...] = (16, 32, 48, 64, 96)):
        super().__init__()
        self.widths = tuple(int(w) for w in widths)
        self.down = nn.ModuleList()
        c = in_channels
        for w in self.widths:
            self.down.append(_block(c, w))
            c = w
        self.up = nn.ModuleList()
        for w_skip in reversed(self.widths[:-1]):
            self.up.append(_block(c + w_skip, w_skip))
            c = w_skip
        self.head = nn.Conv2d(c, len(HEADS), 1)
        with torch.no_grad():  # CenterNet's prior: peaks are rare
            self.head.bias.copy_(torch.tensor([0.0, -2.2, 0.0, 0.0]))

    @property
    def multiple(self) -> int:
        return 2 ** (len(self.widths) - 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = []
        for i, block in enumerate(self.down):
            if i:
                x = nn.functional.max_pool2d(x, 2)
            x = block(x)
            skips.append(x)
        for block, skip in zip(self.up, reversed(skips[:-1])):
            x = nn.functional.interpolate(x, size=skip.shape[-2:], mode="bilinear", align_corners=False)
            x = block(torch.cat([x, skip], 1))
        return self.head(x)


@register("chromdet_unet")
def build_chromdet_unet(in_channels: int = 1, widths=(16, 32, 48, 64, 96)) -> ChromDetUNet:
    return ChromDetUNet(in_channels=in_channels, widths=tuple(widths))

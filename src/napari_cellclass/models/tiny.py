"""A small CNN classifier for smoke tests, benchmarks of the engine and quick demos."""
from __future__ import annotations

import torch
from torch import nn

from .registry import register


@register("tiny_cnn")
def build_tiny_cnn(in_channels: int = 3, num_classes: int = 4, width: int = 16) -> nn.Module:
    """Four conv blocks and a linear head; trains in seconds on a CPU."""
    layers: list[nn.Module] = []
    c = in_channels
    for i in range(4):
        out = width * (2 ** min(i, 2))
        layers += [nn.Conv2d(c, out, 3, padding=1, bias=False), nn.BatchNorm2d(out), nn.ReLU(inplace=True)]
        layers.append(nn.MaxPool2d(2))
        c = out
    return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(c, num_classes))

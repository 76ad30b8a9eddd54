"""GRiCoL: grid reconstruction learning for chromosome classification (seed 003).

The image (1 x 448 x 456 by default) is cut into an N x N grid of overlapping
tiles so that each tile sees an almost straight piece of a bent chromosome; a
learnable strided convolution brings the whole image to tile size (the global
branch R_I).  One shared backbone (ResNet-50 with every stage's width halved)
turns each of the N*N + 1 inputs into a 1024-d vector y_k.  The reconstruction
module re-links the tiles:

    v_k = sigmoid(w_k y_k + b_k) * y_k
    Y_k = W'_k (y_k + v_{k-1}) + b'_k      (k = 1..N*N, v_0 = 0)
    Y_0 = max over tiles of v_k (per channel)

and N*N + 2 linear heads classify Y_0..Y_{N*N} and y_I.  At inference the
global branch alone is used by default (``full_inference=True`` averages all
heads).  Also here: GRiL (no reconstruction) and a plain ResNet-50 baseline,
all with width/size options so that a tiny version trains on a CPU.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import nn

from ..classes import CHROMOSOME_CLASSES
from .registry import register

NUM_CLASSES = len(CHROMOSOME_CLASSES)
SEED_INPUT = (448, 456)
SEED_TILE = (224, 224)
SEED_ROW_ORIGINS = (0, 112, 224)
SEED_COL_ORIGINS = (0, 120, 232)


# ----------------------------------------------------------------------------- grid geometry
def spiral_order(n: int) -> list[tuple[int, int]]:
    """Grid cells (row, col) numbered from the top-left clockwise round each ring, centre last.

    For n = 3 this is R1..R8 round the ring and R9 in the centre.
    """
    order: list[tuple[int, int]] = []
    top, left, bottom, right = 0, 0, n - 1, n - 1
    while top <= bottom and left <= right:
        order += [(top, c) for c in range(left, right + 1)]
        order += [(r, right) for r in range(top + 1, bottom + 1)]
        if top < bottom:
            order += [(bottom, c) for c in range(right - 1, left - 1, -1)]
        if left < right:
            order += [(r, left) for r in range(bottom - 1, top, -1)]
        top, left, bottom, right = top + 1, left + 1, bottom - 1, right - 1
    return order


def grid_geometry(input_size: Sequence[int], grid: int = 3, overlap: bool = True,
                  tile: Sequence[int] | None = None) -> tuple[tuple[int, int], list[int], list[int]]:
    """Tile size and row/column origins.

    Overlapping tiles are half the input (the seed's 224 x 224 for 448 x 456) and
    spread evenly from edge to edge; for the seed's input and N = 3 the origins
    are exactly the seed's (rows 0, 112, 224; columns 0, 120, 232).  Without
    overlap the image is cut into N x N disjoint tiles.
    """
    H, W = int(input_size[0]), int(input_size[1])
    if grid < 1:
        raise ValueError("grid must be >= 1")
    if not overlap:
        th, tw = H // grid, W // grid
        return (th, tw), [r * th for r in range(grid)], [c * tw for c in range(grid)]
    th, tw = (int(tile[0]), int(tile[1])) if tile else (H // 2, min(H // 2, W))
    if th > H or tw > W:
        raise ValueError(f"tile {th}x{tw} is larger than the input {H}x{W}")
    if (H, W) == SEED_INPUT and (th, tw) == SEED_TILE and grid == 3:
        return (th, tw), list(SEED_ROW_ORIGINS), list(SEED_COL_ORIGINS)
    rows = [round(i * (H - th) / max(grid - 1, 1)) for i in range(grid)]
    cols = [round(i * (W - tw) / max(grid - 1, 1)) for i in range(grid)]
    return (th, tw), rows, cols


def tile_boxes(input_size: Sequence[int], grid: int = 3, overlap: bool = True,
               tile: Sequence[int] | None = None) -> list[tuple[int, int, int, int]]:
    """(y0, x0, y1, x1) of tiles R1..R_{N*N} in numbering order."""
    (th, tw), rows, cols = grid_geometry(input_size, grid, overlap, tile)
    return [(rows[r], cols[c], rows[r] + th, cols[c] + tw) for r, c in spiral_order(grid)]


# ----------------------------------------------------------------------------- backbone
class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, cin: int, planes: int, stride: int = 1):
        super().__init__()
        out = planes * self.expansion
        self.conv1 = nn.Conv2d(cin, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, out, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out)
        self.relu = nn.ReLU(inplace=True)
        self.down = None
        if stride != 1 or cin != out:
            self.down = nn.Sequential(nn.Conv2d(cin, out, 1, stride=stride, bias=False), nn.BatchNorm2d(out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        idt = x if self.down is None else self.down(x)
        y = self.relu(self.bn1(self.conv1(x)))
        y = self.relu(self.bn2(self.conv2(y)))
        y = self.bn3(self.conv3(y))
        return self.relu(y + idt)


class ResNetBackbone(nn.Module):
    """ResNet-50 layout with a width multiplier; returns globally pooled features.

    ``width=1`` is the standard ResNet-50 (2048-d output), ``width=0.5`` the
    seed's half-width variant (1024-d), ``width=1/8`` a CPU toy (256-d).
    """

    def __init__(self, in_channels: int = 1, width: float = 0.5, layers: Sequence[int] = (3, 4, 6, 3)):
        super().__init__()
        base = max(4, int(round(64 * width)))
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, base, 7, stride=2, padding=3, bias=False),
            nn.BatchNorm2d(base),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(3, stride=2, padding=1),
        )
        stages = []
        cin = base
        for i, n in enumerate(layers):
            planes = base * 2**i
            blocks = []
            for j in range(int(n)):
                blocks.append(Bottleneck(cin, planes, stride=2 if (j == 0 and i > 0) else 1))
                cin = planes * Bottleneck.expansion
            stages.append(nn.Sequential(*blocks))
        self.stages = nn.Sequential(*stages)
        self.out_features = cin
        self.pool = nn.AdaptiveAvgPool2d(1)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        for m in self.modules():  # zero-init the last BN of each block: trains faster from scratch
            if isinstance(m, Bottleneck):
                nn.init.zeros_(m.bn3.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.flatten(self.pool(self.stages(self.stem(x))), 1)


# ----------------------------------------------------------------------------- GRiCoL
class GRiCoL(nn.Module):
    """Grid reconstruction learning classifier; see the module docstring.

    ``forward(x)`` returns class logits (B, num_classes) from the global branch
    (or the mean of all heads' log-probabilities when ``full_inference``);
    ``forward_all(x)`` returns every head's logits (B, N*N + 2, num_classes)
    ordered [Y_0, Y_1 .. Y_{N*N}, Y_I] for the training loss.
    """

    def __init__(self, num_classes: int = NUM_CLASSES, in_channels: int = 1,
                 input_size: Sequence[int] = SEED_INPUT, grid: int = 3, overlap: bool = True,
                 tile: Sequence[int] | None = None, width: float = 0.5,
                 layers: Sequence[int] = (3, 4, 6, 3), reconstruction: bool = True,
                 full_inference: bool = False):
        super().__init__()
        self.num_classes = num_classes
        self.input_size = (int(input_size[0]), int(input_size[1]))
        self.grid = int(grid)
        self.reconstruction = bool(reconstruction)
        self.full_inference = bool(full_inference)
        (th, tw), rows, cols = grid_geometry(self.input_size, self.grid, overlap, tile)
        self.tile_size = (th, tw)
        self.boxes = [(rows[r], cols[c], rows[r] + th, cols[c] + tw) for r, c in spiral_order(self.grid)]
        n_tiles = len(self.boxes)
        # global branch: a learnable strided conv brings the image to about tile size
        stride = max(1, int(round(self.input_size[0] / th)))
        self.global_conv = nn.Conv2d(in_channels, in_channels, kernel_size=2 * stride - 1 if stride > 1 else 1,
                                     stride=stride, padding=(stride - 1), bias=True)
        self.backbone = ResNetBackbone(in_channels, width, layers)
        c = self.backbone.out_features
        self.feature_dim = c
        if self.reconstruction:
            self.gate = nn.ModuleList(nn.Linear(c, c) for _ in range(n_tiles))  # w_k, b_k
            self.fuse = nn.ModuleList(nn.Linear(c, c) for _ in range(n_tiles))  # W'_k, b'_k
        self.heads = nn.ModuleList(nn.Linear(c, num_classes) for _ in range(n_tiles + 2))

    @property
    def n_tiles(self) -> int:
        return len(self.boxes)

    def tiles(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> (B * N*N, C, th, tw), tiles R1..R_{N*N} of each image in order."""
        if tuple(x.shape[-2:]) != self.input_size:
            raise ValueError(f"GRiCoL expects input {self.input_size[0]}x{self.input_size[1]}, got "
                             f"{x.shape[-2]}x{x.shape[-1]}")
        t = torch.stack([x[:, :, y0:y1, x0:x1] for y0, x0, y1, x1 in self.boxes], dim=1)
        return t.flatten(0, 1)

    def global_input(self, x: torch.Tensor) -> torch.Tensor:
        """R_I: the strided conv's output, centre-cropped/padded to the tile size.

        Tiles and R_I then go through the backbone as one batch, so BatchNorm
        sees one mixture of inputs in training and in evaluation alike (two
        separate passes would leave running statistics that fit neither).
        """
        g = self.global_conv(x)
        th, tw = self.tile_size
        dh, dw = g.shape[-2] - th, g.shape[-1] - tw
        if dh > 0 or dw > 0:
            top, left = max(dh, 0) // 2, max(dw, 0) // 2
            g = g[..., top:top + min(th, g.shape[-2]), left:left + min(tw, g.shape[-1])]
        if g.shape[-2] < th or g.shape[-1] < tw:
            ph, pw = th - g.shape[-2], tw - g.shape[-1]
            g = nn.functional.pad(g, (pw // 2, pw - pw // 2, ph // 2, ph - ph // 2))
        return g

    def global_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone(self.global_input(x))

    def forward_all(self, x: torch.Tensor) -> torch.Tensor:
        B = x.shape[0]
        feats = self.backbone(torch.cat([self.tiles(x), self.global_input(x)], 0))
        y = feats[: B * self.n_tiles].view(B, self.n_tiles, -1)
        y_i = feats[B * self.n_tiles:]
        outs: list[torch.Tensor | None] = [None] * (self.n_tiles + 1)
        if self.reconstruction:
            vs = []
            v_prev = torch.zeros_like(y[:, 0])
            for k in range(self.n_tiles):
                yk = y[:, k]
                outs[k + 1] = self.heads[k + 1](self.fuse[k](yk + v_prev))
                v_prev = torch.sigmoid(self.gate[k](yk)) * yk
                vs.append(v_prev)
            y0 = torch.stack(vs, 1).amax(1)
        else:  # GRiL: heads on the tile features directly
            for k in range(self.n_tiles):
                outs[k + 1] = self.heads[k + 1](y[:, k])
            y0 = y.amax(1)
        outs[0] = self.heads[0](y0)
        outs.append(self.heads[-1](y_i))
        return torch.stack(outs, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.full_inference:
            return full_model_logits(self, x)
        return self.heads[-1](self.global_features(x))


def full_model_logits(net: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The full GRiCoL model: the mean of every head's log-probabilities (B, num_classes).

    A per-call choice (the classifier runs ``forward`` or this), so a network
    shared between callers is never switched in place.
    """
    return torch.log_softmax(net.forward_all(x).float(), -1).mean(1)


def has_full_model(net: nn.Module) -> bool:
    """True for GRiCoL / GRiL, whose heads the full model averages."""
    return isinstance(net, GRiCoL)


class PlainClassifier(nn.Module):
    """Baseline: the backbone on the whole image plus one linear head."""

    def __init__(self, num_classes: int = NUM_CLASSES, in_channels: int = 1, width: float = 1.0,
                 layers: Sequence[int] = (3, 4, 6, 3), input_size: Sequence[int] = SEED_INPUT):
        super().__init__()
        self.input_size = (int(input_size[0]), int(input_size[1]))
        self.backbone = ResNetBackbone(in_channels, width, layers)
        self.head = nn.Linear(self.backbone.out_features, num_classes)

    def forward_all(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward(x).unsqueeze(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(x))


def _size(input_size) -> tuple[int, int]:
    if isinstance(input_size, int):
        return (input_size, input_size)
    return (int(input_size[0]), int(input_size[1]))


@register("gricol")
def build_gricol(num_classes: int = NUM_CLASSES, in_channels: int = 1, input_size=SEED_INPUT, grid: int = 3,
                 overlap: bool = True, tile=None, width: float = 0.5, layers=(3, 4, 6, 3),
                 full_inference: bool = False) -> GRiCoL:
    """GRiCoL as in the seed (defaults) or scaled down (``input_size=(64, 68), width=0.125``)."""
    return GRiCoL(num_classes, in_channels, _size(input_size), grid, overlap, tile, width, tuple(layers),
                  reconstruction=True, full_inference=full_inference)


@register("gril")
def build_gril(num_classes: int = NUM_CLASSES, in_channels: int = 1, input_size=SEED_INPUT, grid: int = 3,
               overlap: bool = True, tile=None, width: float = 0.5, layers=(3, 4, 6, 3),
               full_inference: bool = False) -> GRiCoL:
    """GRiL: GRiCoL's grid and heads without the reconstruction module."""
    return GRiCoL(num_classes, in_channels, _size(input_size), grid, overlap, tile, width, tuple(layers),
                  reconstruction=False, full_inference=full_inference)


@register("resnet50_chromosome")
def build_resnet50_chromosome(num_classes: int = NUM_CLASSES, in_channels: int = 1, input_size=SEED_INPUT,
                              width: float = 1.0, layers=(3, 4, 6, 3)) -> PlainClassifier:
    """Plain ResNet-50 (width multiplier, 1 = standard) on the whole chromosome image."""
    return PlainClassifier(num_classes, in_channels, width, tuple(layers), _size(input_size))


# ----------------------------------------------------------------------------- loss
class GRiCoLLoss:
    """``L = sum_k min(1, exp(e - lambda) + w_k * beta) * CE_k + CE_I``.

    ``w_k = k`` for the tile heads k = 1..N*N and ``N*N + 1`` (10 for N = 3) for
    Y_0; ``e`` is the epoch (0-based as counted by the training loop).  Early
    in training the global branch dominates; after ``lambda`` epochs every head
    weighs 1.  A (B, 1, C) output (the plain baseline) gets plain cross-entropy.
    """

    def __init__(self, beta: float = 0.1, lam: float = 150.0, label_smoothing: float = 0.0):
        self.beta = float(beta)
        self.lam = float(lam)
        self.label_smoothing = float(label_smoothing)

    def weights(self, epoch: float, n_tiles: int = 9) -> list[float]:
        """Weights of Y_0, Y_1 .. Y_{n_tiles} (the global head Y_I always weighs 1)."""
        w = [float(n_tiles + 1)] + [float(k) for k in range(1, n_tiles + 1)]
        ramp = math.exp(min(float(epoch) - self.lam, 50.0))
        return [min(1.0, ramp + wk * self.beta) for wk in w]

    def __call__(self, outputs: torch.Tensor, target: torch.Tensor, epoch: float = 0) -> torch.Tensor:
        ce = nn.functional.cross_entropy
        if outputs.dim() == 2 or outputs.shape[1] == 1:
            return ce(outputs.reshape(outputs.shape[0], -1), target, label_smoothing=self.label_smoothing)
        n_tiles = outputs.shape[1] - 2
        total = ce(outputs[:, -1].float(), target, label_smoothing=self.label_smoothing)
        for k, wk in enumerate(self.weights(epoch, n_tiles)):
            total = total + wk * ce(outputs[:, k].float(), target, label_smoothing=self.label_smoothing)
        return total


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())

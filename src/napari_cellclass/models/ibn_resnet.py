"""ResNet-34 with IBN blocks for white-blood-cell classification (seed 001).

IBN-a style: in the residual blocks of stages 1-3 the first norm layer is split
channel-wise, half instance norm (affine) and half batch norm.  Instance norm
removes per-image contrast/stain differences in early features, batch norm keeps
the content statistics; stage 4 keeps plain batch norm so the features the head
sees stay discriminative.  Parameter names follow torchvision's ResNet
(``conv1``, ``bn1``, ``layer1`` .. ``layer4``, ``fc``), which lets ImageNet
weights be mapped on directly; in an IBN layer the batch-norm half is
``bn1.BN`` and takes the pretrained statistics of the channels it covers.

``model(x)`` returns logits; ``model.forward_features(x)`` returns the pooled
embedding the metric loss (:mod:`napari_cellclass.models.wbc_losses`) works on.
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from .registry import register

RESNET34_LAYERS = (3, 4, 6, 3)


class IBN(nn.Module):
    """Instance norm on the first ``ratio`` of the channels, batch norm on the rest."""

    def __init__(self, channels: int, ratio: float = 0.5):
        super().__init__()
        self.half = int(channels * ratio)
        if not 0 < self.half < channels:
            raise ValueError(f"IBN needs at least 2 channels, got {channels}")
        self.IN = nn.InstanceNorm2d(self.half, affine=True)
        self.BN = nn.BatchNorm2d(channels - self.half)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a, b = torch.split(x, [self.half, x.shape[1] - self.half], dim=1)
        return torch.cat([self.IN(a.contiguous()), self.BN(b.contiguous())], dim=1)


class BasicBlock(nn.Module):
    """torchvision's ResNet basic block, with an optional IBN first norm."""

    def __init__(self, cin: int, cout: int, stride: int = 1, ibn: bool = False):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = IBN(cout) if ibn else nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.downsample = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class WBCResNet(nn.Module):
    """ResNet with basic blocks; ``ibn_stages`` of the first stages use IBN blocks."""

    def __init__(
        self,
        num_classes: int = 4,
        in_channels: int = 3,
        width: int = 64,
        layers: Sequence[int] = RESNET34_LAYERS,
        ibn_stages: int = 3,
    ):
        super().__init__()
        if len(layers) != 4:
            raise ValueError(f"layers must give 4 stage depths, got {list(layers)}")
        self.conv1 = nn.Conv2d(in_channels, width, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        cin = width
        for s, depth in enumerate(layers):
            cout = width * 2**s
            blocks = [
                BasicBlock(cin if i == 0 else cout, cout, stride=(1 if s == 0 or i > 0 else 2), ibn=s < ibn_stages)
                for i in range(int(depth))
            ]
            setattr(self, f"layer{s + 1}", nn.Sequential(*blocks))
            cin = cout
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.embedding_dim = cin
        self.fc = nn.Linear(cin, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, (nn.BatchNorm2d, nn.InstanceNorm2d)) and m.weight is not None:
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Pooled embedding (N, embedding_dim): the features of the metric loss."""
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return torch.flatten(self.avgpool(x), 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.forward_features(x))

    def forward_with_features(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(logits, features) in one pass, for training with a metric loss."""
        f = self.forward_features(x)
        return self.fc(f), f


def map_imagenet_state(model: WBCResNet, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Map torchvision ResNet-34 weights onto ``model``.

    Plain layers copy by name.  For an IBN layer the pretrained BN parameters and
    running statistics of channels ``half:`` go to ``bn1.BN``; the instance-norm
    half keeps its own initialisation (weight 1, bias 0).  The classifier (``fc``)
    and a first convolution with another channel count are left as initialised.
    """
    own = model.state_dict()
    mapped: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if key.startswith("fc."):
            continue
        if key in own and own[key].shape == value.shape:
            mapped[key] = value
            continue
        prefix, _, leaf = key.rpartition(".")
        bn_key = f"{prefix}.BN.{leaf}"
        if bn_key in own:
            n = own[bn_key].shape[0] if own[bn_key].dim() else None
            if n is not None and value.dim() == 1:
                mapped[bn_key] = value[value.shape[0] - n :]
            elif value.dim() == 0:  # num_batches_tracked
                mapped[bn_key] = value
    return mapped


def _build(num_classes: int, in_channels: int, width: int, layers: Sequence[int], ibn_stages: int,
           pretrained: bool) -> WBCResNet:
    model = WBCResNet(num_classes, in_channels, width, tuple(int(v) for v in layers), ibn_stages)
    if pretrained:
        if width != 64 or tuple(layers) != RESNET34_LAYERS or in_channels != 3:
            raise ValueError("ImageNet weights need the full ResNet-34 (width=64, layers=3,4,6,3, 3 channels)")
        from torchvision.models import ResNet34_Weights

        from .pretrained import load_pretrained_state

        state = load_pretrained_state(ResNet34_Weights.IMAGENET1K_V1)
        mapped = map_imagenet_state(model, state)
        wanted = [k for k in model.state_dict() if not k.startswith("fc.") and ".IN." not in k]
        if len(mapped) < 0.9 * len(wanted):  # other tensors under the published name: never train "pretrained" on them
            from ..errors import PretrainedWeightsUnavailable
            from .pretrained import cached_weights_path

            raise PretrainedWeightsUnavailable(
                f"the cached pretrained weights do not fit ResNet-34 (only {len(mapped)} of {len(wanted)} tensors "
                f"match): not the published file; delete it or replace it with the file from "
                f"{ResNet34_Weights.IMAGENET1K_V1.url}", cached_weights_path(ResNet34_Weights.IMAGENET1K_V1))
        model.load_state_dict(mapped, strict=False)
    return model


@register("ibn_resnet34")
def build_ibn_resnet34(num_classes: int = 4, in_channels: int = 3, width: int = 64,
                       layers: Sequence[int] = RESNET34_LAYERS, ibn_stages: int = 3,
                       pretrained: bool = False) -> WBCResNet:
    """IBN-ResNet-34 (IBN first norm in stages 1-3). ``width``/``layers`` shrink it for tests."""
    return _build(num_classes, in_channels, width, layers, ibn_stages, pretrained)


@register("resnet34")
def build_resnet34(num_classes: int = 4, in_channels: int = 3, width: int = 64,
                   layers: Sequence[int] = RESNET34_LAYERS, pretrained: bool = False) -> WBCResNet:
    """Plain ResNet-34 (batch norm only), the baseline of the ablation."""
    return _build(num_classes, in_channels, width, layers, 0, pretrained)


class WBCEnsemble(nn.Module):
    """Several white-cell networks whose class probabilities are averaged.

    Networks trained from scratch on a few hundred cells disagree on the hard
    cells (an eosinophil with few visible granules); averaging three of them is
    steadier than any one.  ``model(x)`` returns the log of the mean probability,
    so ``softmax(model(x))`` is that mean and ``argmax`` its decision.
    """

    def __init__(self, members: Sequence[dict], num_classes: int = 4, in_channels: int = 3):
        super().__init__()
        if not members:
            raise ValueError("an ensemble needs at least one member")
        nets = []
        for cfg in members:
            cfg = dict(cfg)
            arch = cfg.pop("arch", "ibn_resnet34")
            if arch not in ("ibn_resnet34", "resnet34"):
                raise ValueError(f"ensemble members must be ibn_resnet34 or resnet34, got {arch!r}")
            cfg.update(num_classes=num_classes, in_channels=in_channels)
            cfg.setdefault("ibn_stages", 3 if arch == "ibn_resnet34" else 0)
            nets.append(WBCResNet(int(cfg["num_classes"]), int(cfg["in_channels"]), int(cfg.get("width", 64)),
                                  tuple(int(v) for v in cfg.get("layers", RESNET34_LAYERS)), int(cfg["ibn_stages"])))
        self.members = nn.ModuleList(nets)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        p = torch.stack([torch.softmax(m(x).float(), dim=1) for m in self.members]).mean(0)
        return torch.log(p.clamp_min(1e-8))


@register("wbc_ensemble")
def build_wbc_ensemble(members: Sequence[dict], num_classes: int = 4, in_channels: int = 3) -> WBCEnsemble:
    """Mean-probability ensemble of IBN-ResNet/ResNet white-cell classifiers (``members``: their configs)."""
    return WBCEnsemble(members, num_classes, in_channels)

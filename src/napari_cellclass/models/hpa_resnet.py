"""ResNet with a 4-channel (RGBY) stem and 28 sigmoid outputs, for HPA fields (seed 000).

``build_resnet_rgby(depth=50, width=64)`` is torchvision's ResNet-50 with conv1
taking four channels; its weight names match torchvision's, so ImageNet weights
load directly (conv1 widened: the 4th channel's filters start as the mean of the
pretrained RGB filters).  ``depth``/``width`` give small variants for tests and
demos (e.g. ``depth=10, width=8``), built from torchvision's own blocks.
"""
from __future__ import annotations

import torch
from torch import nn
from torchvision.models import resnet as tvr

from ..classes import HPA_CLASSES
from .registry import register

NUM_CLASSES = len(HPA_CLASSES)
DEPTHS: dict[int, tuple[type[nn.Module], list[int]]] = {
    10: (tvr.BasicBlock, [1, 1, 1, 1]),
    18: (tvr.BasicBlock, [2, 2, 2, 2]),
    34: (tvr.BasicBlock, [3, 4, 6, 3]),
    50: (tvr.Bottleneck, [3, 4, 6, 3]),
    101: (tvr.Bottleneck, [3, 4, 23, 3]),
}


def _resnet(block: type[nn.Module], layers: list[int], width: int, in_channels: int, num_classes: int) -> tvr.ResNet:
    """torchvision ResNet with base width ``width`` (64 = the standard network)."""
    net = tvr.ResNet(block, layers, num_classes=num_classes)
    if width != 64 or in_channels != 3:
        net.inplanes = width
        net.conv1 = nn.Conv2d(in_channels, width, kernel_size=7, stride=2, padding=3, bias=False)
        net.bn1 = nn.BatchNorm2d(width)
        if width != 64:
            net.layer1 = net._make_layer(block, width, layers[0])
            net.layer2 = net._make_layer(block, width * 2, layers[1], stride=2)
            net.layer3 = net._make_layer(block, width * 4, layers[2], stride=2)
            net.layer4 = net._make_layer(block, width * 8, layers[3], stride=2)
            net.fc = nn.Linear(width * 8 * block.expansion, num_classes)
            for m in net.modules():
                if isinstance(m, nn.Conv2d):
                    nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
    return net


def widen_conv1(rgb_weight: torch.Tensor, in_channels: int = 4) -> torch.Tensor:
    """(out, 3, k, k) ImageNet filters -> (out, in_channels, k, k); extra channels = mean of RGB."""
    mean = rgb_weight.mean(dim=1, keepdim=True)
    extra = [mean] * (in_channels - 3)
    return torch.cat([rgb_weight, *extra], dim=1)


def _imagenet_weights(depth: int):
    from torchvision.models import ResNet18_Weights, ResNet34_Weights, ResNet50_Weights, ResNet101_Weights

    return {18: ResNet18_Weights.IMAGENET1K_V1, 34: ResNet34_Weights.IMAGENET1K_V1,
            50: ResNet50_Weights.IMAGENET1K_V2, 101: ResNet101_Weights.IMAGENET1K_V2}.get(depth)


def load_imagenet(net: tvr.ResNet, depth: int, in_channels: int) -> None:
    """Copy ImageNet weights (from the torch hub cache, see models.pretrained) into ``net``.

    Raises :class:`~napari_cellclass.errors.PretrainedWeightsUnavailable` when they
    are not cached and downloading is not allowed.
    """
    from .pretrained import load_pretrained_state

    weights = _imagenet_weights(depth)
    if weights is None:
        raise ValueError(f"no ImageNet weights for ResNet depth {depth}")
    state = load_pretrained_state(weights)
    state = {k: v for k, v in state.items() if not k.startswith("fc.")}
    try:
        state["conv1.weight"] = widen_conv1(state["conv1.weight"], in_channels)
        missing, unexpected = net.load_state_dict(state, strict=False)
        bad = [k for k in missing if not k.startswith("fc.")] + list(unexpected)
    except (KeyError, RuntimeError, ValueError, IndexError) as exc:
        bad = [str(exc).splitlines()[0][:80]]
    if bad:  # other tensors under the published name (a poisoned cache): one line naming the file
        from ..errors import PretrainedWeightsUnavailable
        from .pretrained import cached_weights_path

        raise PretrainedWeightsUnavailable(
            f"the cached pretrained weights do not fit ResNet-{depth} ({len(bad)} tensor(s) missing or other, e.g. "
            f"{bad[0]}): not the published file; delete it or replace it with the file from {weights.url}",
            cached_weights_path(weights))


@register("resnet50_rgby")
def build_resnet_rgby(
    num_classes: int = NUM_CLASSES,
    in_channels: int = 4,
    depth: int = 50,
    width: int = 64,
    pretrained: bool = False,
) -> nn.Module:
    """HPA classifier: ResNet-``depth`` (base width ``width``) on RGBY, ``num_classes`` logits.

    ``pretrained=True`` loads ImageNet weights (only for width 64); checkpoints
    store ``pretrained=False`` because their own weights replace them.
    """
    if depth not in DEPTHS:
        raise ValueError(f"depth must be one of {sorted(DEPTHS)}, got {depth}")
    if width < 4:
        raise ValueError(f"width must be >= 4, got {width}")
    block, layers = DEPTHS[depth]
    net = _resnet(block, layers, int(width), int(in_channels), int(num_classes))
    if pretrained:
        if width != 64:
            raise ValueError("ImageNet weights exist only for width 64")
        load_imagenet(net, depth, in_channels)
    return net

"""Detector builders (seed 002): torchvision Faster R-CNN / Mask R-CNN.

Every builder takes JSON-able keyword arguments only, so a checkpoint's
``arch_config`` rebuilds the network exactly (weights=None, no download).  COCO
transfer is a separate step, :func:`load_coco_transfer`, run once before
training: it copies every COCO weight that fits and leaves the class-specific
box/mask predictor heads freshly initialised for the user's classes.

``num_classes`` counts the user's classes *plus background* (index 0).

``fasterrcnn_tiny`` is a small single-scale detector (a 4-block conv backbone)
for tests and the demo: it trains from scratch in seconds on a CPU.
"""
from __future__ import annotations

from collections import OrderedDict
from typing import Any

import torch
from torch import nn

from ..errors import CellClassError
from .registry import register

ARCHS = ["fasterrcnn_resnet50_fpn_v2", "maskrcnn_resnet50_fpn_v2", "fasterrcnn_mobilenet_v3_large_fpn", "fasterrcnn_tiny"]
MASK_ARCHS = {"maskrcnn_resnet50_fpn_v2"}


def _common(min_size: int, max_size: int, detections_per_img: int) -> dict[str, Any]:
    return {"min_size": int(min_size), "max_size": int(max_size), "box_detections_per_img": int(detections_per_img)}


@register("fasterrcnn_resnet50_fpn_v2")
def build_fasterrcnn_resnet50_fpn_v2(num_classes: int = 3, min_size: int = 800, max_size: int = 1333,
                                     detections_per_img: int = 300) -> nn.Module:
    """Faster R-CNN, ResNet-50 FPN v2 (the seed's detector)."""
    from torchvision.models.detection import fasterrcnn_resnet50_fpn_v2

    return fasterrcnn_resnet50_fpn_v2(weights=None, weights_backbone=None, num_classes=int(num_classes),
                                      **_common(min_size, max_size, detections_per_img))


@register("maskrcnn_resnet50_fpn_v2")
def build_maskrcnn_resnet50_fpn_v2(num_classes: int = 3, min_size: int = 800, max_size: int = 1333,
                                   detections_per_img: int = 300) -> nn.Module:
    """Mask R-CNN, ResNet-50 FPN v2: boxes plus an instance mask per object."""
    from torchvision.models.detection import maskrcnn_resnet50_fpn_v2

    return maskrcnn_resnet50_fpn_v2(weights=None, weights_backbone=None, num_classes=int(num_classes),
                                    **_common(min_size, max_size, detections_per_img))


@register("fasterrcnn_mobilenet_v3_large_fpn")
def build_fasterrcnn_mobilenet(num_classes: int = 3, min_size: int = 800, max_size: int = 1333,
                               detections_per_img: int = 300) -> nn.Module:
    """Faster R-CNN with a MobileNetV3-Large FPN backbone: the laptop option (~5x faster on CPU)."""
    from torchvision.models.detection import fasterrcnn_mobilenet_v3_large_fpn

    return fasterrcnn_mobilenet_v3_large_fpn(weights=None, weights_backbone=None, num_classes=int(num_classes),
                                             **_common(min_size, max_size, detections_per_img))


class _TinyBackbone(nn.Module):
    """Four conv blocks, stride 8, one feature map named "0"."""

    def __init__(self, width: int = 32):
        super().__init__()
        layers: list[nn.Module] = []
        c = 3
        for i in range(4):
            out = width * (2 if i >= 2 else 1)
            stride = 2 if i < 3 else 1
            layers += [nn.Conv2d(c, out, 3, stride=stride, padding=1, bias=False), nn.BatchNorm2d(out),
                       nn.ReLU(inplace=True)]
            c = out
        self.body = nn.Sequential(*layers)
        self.out_channels = c

    def forward(self, x: torch.Tensor) -> "OrderedDict[str, torch.Tensor]":
        return OrderedDict([("0", self.body(x))])


@register("fasterrcnn_tiny")
def build_fasterrcnn_tiny(num_classes: int = 3, min_size: int = 128, max_size: int = 256,
                          detections_per_img: int = 100, width: int = 32, masks: bool = False,
                          anchor_sizes: list[int] | None = None) -> nn.Module:
    """Small Faster R-CNN (or Mask R-CNN with ``masks=True``) for tests and the demo."""
    from torchvision.models.detection import FasterRCNN, MaskRCNN
    from torchvision.models.detection.anchor_utils import AnchorGenerator
    from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
    from torchvision.ops import MultiScaleRoIAlign

    backbone = _TinyBackbone(int(width))
    sizes = tuple(int(s) for s in (anchor_sizes or [12, 24, 48]))
    anchors = AnchorGenerator(sizes=(sizes,), aspect_ratios=((0.5, 1.0, 2.0),))
    pool = MultiScaleRoIAlign(featmap_names=["0"], output_size=7, sampling_ratio=2)
    rep = 128
    kwargs = dict(
        rpn_anchor_generator=anchors,
        box_roi_pool=pool,
        box_head=TwoMLPHead(backbone.out_channels * 49, rep),
        box_predictor=FastRCNNPredictor(rep, int(num_classes)),
        rpn_pre_nms_top_n_train=300, rpn_pre_nms_top_n_test=300,
        rpn_post_nms_top_n_train=150, rpn_post_nms_top_n_test=150,
        box_batch_size_per_image=128,
        **_common(min_size, max_size, detections_per_img),
    )
    if masks:
        from torchvision.models.detection.mask_rcnn import MaskRCNNHeads, MaskRCNNPredictor

        return MaskRCNN(
            backbone, num_classes=None,
            mask_roi_pool=MultiScaleRoIAlign(featmap_names=["0"], output_size=14, sampling_ratio=2),
            mask_head=MaskRCNNHeads(backbone.out_channels, (64, 64), 1),
            mask_predictor=MaskRCNNPredictor(64, 64, int(num_classes)),
            **kwargs,
        )
    return FasterRCNN(backbone, num_classes=None, **kwargs)


def has_masks(model: nn.Module) -> bool:
    roi = getattr(model, "roi_heads", None)
    return roi is not None and getattr(roi, "mask_predictor", None) is not None


_COCO_WEIGHTS = {
    "fasterrcnn_resnet50_fpn_v2": "FasterRCNN_ResNet50_FPN_V2_Weights",
    "maskrcnn_resnet50_fpn_v2": "MaskRCNN_ResNet50_FPN_V2_Weights",
    "fasterrcnn_mobilenet_v3_large_fpn": "FasterRCNN_MobileNet_V3_Large_FPN_Weights",
}
_HEAD_PREFIXES = ("roi_heads.box_predictor.", "roi_heads.mask_predictor.mask_fcn_logits.")


def load_coco_transfer(model: nn.Module, arch: str, *, allow_download: bool | None = None) -> dict[str, int]:
    """Copy COCO-trained weights into ``model`` except the class-specific predictor heads.

    Raises :class:`PretrainedWeightsUnavailable` (with instructions) when the
    weights are neither cached nor downloadable.  Returns counts of copied/skipped tensors.
    """
    import torchvision.models.detection as tvd

    from .pretrained import load_pretrained_state

    if arch not in _COCO_WEIGHTS:
        raise CellClassError(f"no COCO weights exist for {arch!r}; train it from scratch (pretrained=False)")
    weights = getattr(tvd, _COCO_WEIGHTS[arch]).COCO_V1
    state = load_pretrained_state(weights, allow_download=allow_download)
    own = model.state_dict()
    keep = {k: v for k, v in state.items()
            if k in own and not k.startswith(_HEAD_PREFIXES) and own[k].shape == v.shape}
    model.load_state_dict(keep, strict=False)
    return {"copied": len(keep), "left_initialised": len(own) - len(keep)}

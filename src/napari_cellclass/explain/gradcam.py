"""Grad-CAM (Selvaraju et al. 2017) for any classifier that has a conv layer.

The map is ``relu(sum_k alpha_k A_k)`` where ``A`` are the activations of a conv
layer and ``alpha_k`` the spatially averaged gradients of the class score. The
last ``nn.Conv2d`` in module order is used unless a layer is named: for
tiny_cnn and ResNets that is the deepest conv; for GRiCoL pass the global
branch's layer name if the last conv belongs to another branch.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..errors import InputError


@dataclass
class Explanation:
    """A saliency map at input resolution (``H x W``, values in [0, 1]) and what it explains."""

    heatmap: np.ndarray
    class_index: int
    score: float
    probabilities: np.ndarray
    method: str
    layer: str = ""


def find_last_conv(model: nn.Module) -> tuple[str, nn.Module]:
    """Name and module of the last 2-D convolution (the usual Grad-CAM layer)."""
    found = None
    for name, m in model.named_modules():
        if isinstance(m, nn.Conv2d):
            found = (name, m)
    if found is None:
        raise InputError("the model has no Conv2d layer, so Grad-CAM cannot be computed")
    return found


def resolve_layer(model: nn.Module, layer: str | nn.Module | None) -> tuple[str, nn.Module]:
    if layer is None:
        return find_last_conv(model)
    if isinstance(layer, nn.Module):
        for name, m in model.named_modules():
            if m is layer:
                return name, m
        raise InputError("the given layer is not part of the model")
    modules = dict(model.named_modules())
    if layer not in modules:
        raise InputError(f"no layer named {layer!r} in the model")
    return layer, modules[layer]


def logits_of(output) -> torch.Tensor:
    """Class scores from a model output (tensor, tuple whose first item is the logits, or dict)."""
    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, dict):
        for key in ("logits", "global", "out"):
            if key in output:
                return output[key]
        return next(iter(output.values()))
    if isinstance(output, (list, tuple)):
        return output[0]
    raise InputError(f"cannot find class scores in a model output of type {type(output).__name__}")


def _probs(logits: torch.Tensor, multilabel: bool) -> np.ndarray:
    p = torch.sigmoid(logits) if multilabel else torch.softmax(logits, dim=-1)
    return p.detach().float().cpu().numpy()[0]


def grad_cam(
    model: nn.Module,
    x: torch.Tensor,
    class_index: int | None = None,
    layer: str | nn.Module | None = None,
    multilabel: bool = False,
) -> Explanation:
    """Grad-CAM of one image ``x`` (``1 x C x H x W``) for ``class_index`` (default: predicted)."""
    if x.ndim != 4 or x.shape[0] != 1:
        raise InputError(f"grad_cam expects one image as a 1 x C x H x W tensor, got shape {tuple(x.shape)}")
    name, module = resolve_layer(model, layer)
    store: dict[str, torch.Tensor] = {}

    def hook(mod, inp, out):
        store["act"] = out
        out.register_hook(lambda g: store.__setitem__("grad", g))

    was_training = model.training
    model.eval()
    handle = module.register_forward_hook(hook)
    try:
        with torch.enable_grad():
            xx = x.detach().clone().requires_grad_(True)  # makes hooks fire even with frozen weights
            logits = logits_of(model(xx))
            if class_index is None:
                class_index = int(logits[0].argmax())
            if not 0 <= class_index < logits.shape[-1]:
                raise InputError(f"class index {class_index} is out of range for {logits.shape[-1]} classes")
            score = logits[0, class_index]
            model.zero_grad(set_to_none=True)
            score.backward()
    finally:
        handle.remove()
        model.train(was_training)
    act, grad = store["act"].detach(), store["grad"].detach()
    weights = grad.mean(dim=(2, 3), keepdim=True)
    cam = F.relu((weights * act).sum(dim=1, keepdim=True))
    cam = F.interpolate(cam, size=x.shape[-2:], mode="bilinear", align_corners=False)[0, 0]
    cam = cam - cam.min()
    peak = float(cam.max())
    heat = (cam / peak).cpu().numpy() if peak > 0 else cam.cpu().numpy()
    return Explanation(heat.astype(np.float32), class_index, float(score.detach()), _probs(logits, multilabel),
                       "gradcam", name)

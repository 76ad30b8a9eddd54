"""Guided backpropagation (Springenberg et al. 2015) and guided Grad-CAM.

Gradients of the class score with respect to the input, where every ReLU passes
back only positive gradients at positive inputs. Implemented on a copy of the
model whose ReLU modules are replaced by a guided version, so the caller's model
is untouched (ReLUs applied as functions inside ``forward`` are not guided).
"""
from __future__ import annotations

import copy

import numpy as np
import torch
from torch import nn

from ..errors import InputError
from .gradcam import Explanation, _probs, grad_cam, logits_of


class _GuidedReLUFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return x.clamp_min(0)

    @staticmethod
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        return g.clamp_min(0) * (x > 0).to(g.dtype)


class GuidedReLU(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _GuidedReLUFn.apply(x)


def guided_model(model: nn.Module) -> nn.Module:
    """A deep copy of ``model`` with every ``nn.ReLU`` replaced by :class:`GuidedReLU`."""
    m = copy.deepcopy(model).eval()
    for parent in m.modules():
        for name, child in list(parent.named_children()):
            if isinstance(child, nn.ReLU):
                setattr(parent, name, GuidedReLU())
    return m


def guided_backprop(
    model: nn.Module, x: torch.Tensor, class_index: int | None = None, multilabel: bool = False
) -> Explanation:
    """Guided-backprop saliency of ``x`` (``1 x C x H x W``): max over channels of |grad|, scaled to [0, 1]."""
    if x.ndim != 4 or x.shape[0] != 1:
        raise InputError(f"guided_backprop expects a 1 x C x H x W tensor, got shape {tuple(x.shape)}")
    g = guided_model(model)
    with torch.enable_grad():
        xx = x.detach().clone().requires_grad_(True)
        logits = logits_of(g(xx))
        if class_index is None:
            class_index = int(logits[0].argmax())
        if not 0 <= class_index < logits.shape[-1]:
            raise InputError(f"class index {class_index} is out of range for {logits.shape[-1]} classes")
        score = logits[0, class_index]
        score.backward()
    grad = xx.grad[0].detach().float()
    sal = grad.clamp_min(0).amax(dim=0)
    peak = float(sal.max())
    heat = (sal / peak).cpu().numpy() if peak > 0 else sal.cpu().numpy()
    return Explanation(heat.astype(np.float32), class_index, float(score.detach()), _probs(logits, multilabel),
                       "guided_backprop")


def guided_grad_cam(
    model: nn.Module, x: torch.Tensor, class_index: int | None = None, layer=None, multilabel: bool = False
) -> Explanation:
    """Guided backprop times the Grad-CAM map: fine detail restricted to class-relevant regions."""
    cam = grad_cam(model, x, class_index, layer, multilabel)
    gb = guided_backprop(model, x, cam.class_index, multilabel)
    prod = cam.heatmap * gb.heatmap
    peak = float(prod.max())
    heat = prod / peak if peak > 0 else prod
    return Explanation(heat.astype(np.float32), cam.class_index, cam.score, cam.probabilities, "guided_gradcam",
                       cam.layer)


METHODS = {"gradcam": grad_cam, "guided_backprop": guided_backprop, "guided_gradcam": guided_grad_cam}


def explain(model: nn.Module, x: torch.Tensor, method: str = "gradcam", class_index: int | None = None,
            multilabel: bool = False, layer=None) -> Explanation:
    """Dispatch by method name: ``gradcam``, ``guided_backprop`` or ``guided_gradcam``."""
    key = method.lower().replace("-", "_").replace(" ", "_")
    key = {"grad_cam": "gradcam", "guided": "guided_backprop", "guided_grad_cam": "guided_gradcam"}.get(key, key)
    if key not in METHODS:
        raise InputError(f"unknown explanation method {method!r}; choose one of: {', '.join(METHODS)}")
    if key == "guided_backprop":
        return guided_backprop(model, x, class_index, multilabel)
    return METHODS[key](model, x, class_index, layer, multilabel)

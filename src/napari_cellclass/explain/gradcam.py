"""Grad-CAM (Selvaraju et al. 2017) for any classifier that has a conv layer.

The map is ``relu(sum_k alpha_k A_k)`` where ``A`` are the activations of a
layer and ``alpha_k`` the spatially averaged gradients of the class score.

Unless a layer is named, :func:`default_target` picks it by a rule per
architecture: the output of the last residual block (after the residual sum),
never a shortcut/downsample convolution, which is what the last ``nn.Conv2d`` in
module order is for these networks:

* GRiCoL / GRiL / the plain chromosome ResNet: ``backbone.stages[-1][-1]``, on
  the global branch as inference uses it (the backbone's input is the strided
  global convolution's output, centre-cropped/padded to the tile size; the map
  is carried back through that crop and stride onto the network's input);
* IBN-ResNet / ResNet (white cells): ``layer4[-1]``; a white-cell ensemble: the
  ``layer4[-1]`` of every member, summed;
* torchvision ResNets (HPA): ``layer4[-1]``;
* anything else: the last ``nn.Conv2d`` (:func:`find_last_conv`).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

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


def _name_of(model: nn.Module, module: nn.Module) -> str:
    for name, m in model.named_modules():
        if m is module:
            return name
    raise InputError("the given layer is not part of the model")


@dataclass
class Target:
    """Where Grad-CAM hooks: one or more modules whose activations are weighted and summed,
    and how the layer's map goes back onto the network's input (``to_input(cam, x)``)."""

    names: list[str]
    modules: list[nn.Module]
    to_input: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None
    pick: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None  # activation rows of the input

    @property
    def name(self) -> str:
        return "+".join(self.names)


def _resize_to_input(cam: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return F.interpolate(cam, size=x.shape[-2:], mode="bilinear", align_corners=False)


def _gricol_target(model: nn.Module) -> Target:
    """The last bottleneck of the backbone on the global branch, mapped back through R_I's geometry."""
    last = model.backbone.stages[-1][-1]
    th, tw = model.tile_size

    def pick(act: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return act[-x.shape[0]:]  # full model: tiles first, the global input last (one backbone batch)

    def to_input(cam: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        # the backbone saw R_I: the strided conv's output (gh x gw) centre-cropped / padded to th x tw
        with torch.no_grad():
            gh, gw = model.global_conv(x[:1, :, :, :].detach()).shape[-2:]
        cam = F.interpolate(cam, size=(th, tw), mode="bilinear", align_corners=False)
        dh, dw = gh - th, gw - tw
        top, left = max(dh, 0) // 2, max(dw, 0) // 2
        ph, pw = max(-dh, 0), max(-dw, 0)
        cam = cam[..., ph // 2: ph // 2 + min(th, gh), pw // 2: pw // 2 + min(tw, gw)]  # drop the padding
        full = cam.new_zeros(cam.shape[:-2] + (gh, gw))
        full[..., top: top + cam.shape[-2], left: left + cam.shape[-1]] = cam
        return _resize_to_input(full, x)

    return Target([_name_of(model, last)], [last], to_input, pick)


def default_target(model: nn.Module) -> Target:
    """The Grad-CAM layer of ``model`` by its architecture (see the module docstring)."""
    from ..models.gricol import GRiCoL, PlainClassifier
    from ..models.ibn_resnet import WBCEnsemble, WBCResNet

    if isinstance(model, GRiCoL):
        return _gricol_target(model)
    if isinstance(model, PlainClassifier):
        last = model.backbone.stages[-1][-1]
        return Target([_name_of(model, last)], [last])
    if isinstance(model, WBCEnsemble):
        lasts = [m.layer4[-1] for m in model.members]
        return Target([_name_of(model, m) for m in lasts], lasts)
    try:
        from torchvision.models import ResNet as TorchvisionResNet
    except ImportError:  # pragma: no cover - torchvision is a dependency
        TorchvisionResNet = ()
    if isinstance(model, (WBCResNet, TorchvisionResNet)):
        last = model.layer4[-1]
        return Target([_name_of(model, last)], [last])
    name, module = find_last_conv(model)
    return Target([name], [module])


def resolve_target(model: nn.Module, layer: str | nn.Module | None) -> Target:
    if layer is None:
        return default_target(model)
    name, module = resolve_layer(model, layer)
    return Target([name], [module])


def resolve_layer(model: nn.Module, layer: str | nn.Module | None) -> tuple[str, nn.Module]:
    """Name and module of ``layer`` (a name or a module); None: the first module of :func:`default_target`."""
    if layer is None:
        t = default_target(model)
        return t.names[0], t.modules[0]
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
    target = resolve_target(model, layer)
    store: dict[int, dict[str, torch.Tensor]] = {i: {} for i in range(len(target.modules))}

    def make_hook(i: int):
        def hook(mod, inp, out):
            store[i]["act"] = out
            out.register_hook(lambda g: store[i].__setitem__("grad", g))
        return hook

    was_training = model.training
    model.eval()
    handles = [m.register_forward_hook(make_hook(i)) for i, m in enumerate(target.modules)]
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
        for h in handles:
            h.remove()
        model.train(was_training)
    cam = None
    for i in store:
        if "act" not in store[i] or "grad" not in store[i]:
            raise InputError(f"layer {target.names[i]!r} did not take part in the class score")
        act, grad = store[i]["act"].detach(), store[i]["grad"].detach()
        if target.pick is not None:
            act, grad = target.pick(act, x), target.pick(grad, x)
        weights = grad.mean(dim=(2, 3), keepdim=True)
        part = (weights * act).sum(dim=1, keepdim=True)
        if part.shape[-2:] != (cam.shape[-2:] if cam is not None else part.shape[-2:]):
            part = F.interpolate(part, size=cam.shape[-2:], mode="bilinear", align_corners=False)
        cam = part if cam is None else cam + part
    cam = F.relu(cam)
    cam = (target.to_input or _resize_to_input)(cam, x)[0, 0]
    cam = cam - cam.min()
    peak = float(cam.max())
    heat = (cam / peak).cpu().numpy() if peak > 0 else cam.cpu().numpy()
    return Explanation(heat.astype(np.float32), class_index, float(score.detach()), _probs(logits, multilabel),
                       "gradcam", target.name)

"""Architecture names -> builder functions, so checkpoints can name their network.

Builders live in their family's module and register themselves with
:func:`register`; :data:`ARCH_MODULES` says which module to import for a name,
so looking up one architecture never imports the others.
"""
from __future__ import annotations

import importlib
from typing import Callable

import torch

from .._compat import avoid_triton_llvm_clash
from ..errors import CheckpointError

_BUILDERS: dict[str, Callable[..., torch.nn.Module]] = {}

# arch name -> module that registers it
ARCH_MODULES: dict[str, str] = {
    "tiny_cnn": "napari_cellclass.models.tiny",
    "resnet50_rgby": "napari_cellclass.models.hpa_resnet",
    "ibn_resnet34": "napari_cellclass.models.ibn_resnet",
    "resnet34": "napari_cellclass.models.ibn_resnet",
    "wbc_ensemble": "napari_cellclass.models.ibn_resnet",
    "gricol": "napari_cellclass.models.gricol",
    "gril": "napari_cellclass.models.gricol",
    "resnet50_chromosome": "napari_cellclass.models.gricol",
    "fasterrcnn_resnet50_fpn_v2": "napari_cellclass.models.detection",
    "maskrcnn_resnet50_fpn_v2": "napari_cellclass.models.detection",
    "fasterrcnn_mobilenet_v3_large_fpn": "napari_cellclass.models.detection",
    "fasterrcnn_tiny": "napari_cellclass.models.detection",
    "centernet": "napari_cellclass.models.centernet",
    "recipe_model": "napari_cellclass.recipes.config",
    "chromdet_unet": "napari_cellclass.models.chromdet",
}


def register(name: str):
    def deco(fn: Callable[..., torch.nn.Module]):
        _BUILDERS[name] = fn
        return fn

    return deco


def get_builder(name: str) -> Callable[..., torch.nn.Module]:
    if name not in _BUILDERS and name in ARCH_MODULES:
        importlib.import_module(ARCH_MODULES[name])
    if name not in _BUILDERS:
        known = ", ".join(sorted(set(ARCH_MODULES) | set(_BUILDERS)))
        raise CheckpointError(f"unknown architecture {name!r}; known: {known}")
    return _BUILDERS[name]


def build_model(name: str, **config) -> torch.nn.Module:
    avoid_triton_llvm_clash()
    try:
        return get_builder(name)(**config)
    except TypeError as exc:
        raise CheckpointError(f"architecture {name!r} cannot be built with {config}: {exc}") from None

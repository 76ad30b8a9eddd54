"""Regularisation options: L1 penalty, dropout and DropConnect before the head, augmentation.

L2 is the optimizer's ``weight_decay``; early stopping is ``fit(early_stopping_patience=...)``.
Dropout and DropConnect are applied without changing parameter names, so a
checkpoint trained with them loads into the plain architecture.
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from ..engine.augment import flips_and_turns as augment_batch  # noqa: F401  (the batch augmenters live together)


def find_head(model: nn.Module) -> tuple[nn.Module, str, nn.Linear] | None:
    """The last ``nn.Linear`` in module order (the classifier head) with its parent."""
    found = None
    for parent in model.modules():
        for name, child in parent.named_children():
            if isinstance(child, nn.Linear):
                found = (parent, name, child)
    return found


def l1_penalty(strength: float) -> Callable[[nn.Module], torch.Tensor]:
    """``strength * sum |w|`` over weight matrices/kernels (not biases or norm scales)."""

    def penalty(model: nn.Module) -> torch.Tensor:
        terms = [p.abs().sum() for n, p in model.named_parameters() if p.requires_grad and p.ndim > 1]
        if not terms:
            return torch.zeros(())
        return strength * torch.stack(terms).sum()

    return penalty


def add_dropout_before(module: nn.Module, p: float) -> None:
    """Dropout on the input of ``module`` while training (a forward pre-hook; no new weights)."""

    def hook(mod: nn.Module, args: tuple) -> tuple:
        if not mod.training:
            return args
        return (F.dropout(args[0], p, training=True),) + tuple(args[1:])

    module.register_forward_pre_hook(hook)


class DropConnectLinear(nn.Linear):
    """A Linear whose weights are randomly zeroed while training (Wan et al. 2013).

    Inference uses the full weights (the expectation), like inverted dropout.
    Same parameter names as ``nn.Linear``, so checkpoints stay compatible.
    """

    drop_p: float = 0.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training and self.drop_p > 0:
            mask = torch.rand_like(self.weight) >= self.drop_p
            w = self.weight * mask / (1.0 - self.drop_p)
            return F.linear(x, w, self.bias)
        return super().forward(x)


def make_dropconnect(linear: nn.Linear, p: float) -> nn.Linear:
    """Turn an existing Linear into a DropConnectLinear in place (weights kept)."""
    if not 0 <= p < 1:
        raise ValueError(f"dropconnect must be in [0, 1), got {p}")
    linear.__class__ = DropConnectLinear
    linear.drop_p = float(p)
    return linear

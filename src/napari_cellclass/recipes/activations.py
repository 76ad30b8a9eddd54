"""Activation swap (ReLU, PReLU, RReLU, ELU, Softplus, ...) for any network.

The review compares activations on the same network; swapping the modules in place
keeps the builder untouched. PReLU adds weights, so swap *before* building the
optimizer (``Recipe.apply_to_model`` does this) and record the swap in the
checkpoint (``Recipe.arch_config``) so the network can be rebuilt.
"""
from __future__ import annotations

from typing import Callable

from torch import nn

ACTIVATIONS: dict[str, Callable[[], nn.Module]] = {
    "relu": lambda: nn.ReLU(inplace=True),
    "prelu": lambda: nn.PReLU(),
    "rrelu": lambda: nn.RReLU(),
    "elu": lambda: nn.ELU(inplace=True),
    "softplus": lambda: nn.Softplus(),
    "leaky_relu": lambda: nn.LeakyReLU(0.01, inplace=True),
    "gelu": lambda: nn.GELU(),
    "silu": lambda: nn.SiLU(inplace=True),
}


def make_activation(name: str) -> nn.Module:
    key = name.lower().replace("-", "_")
    if key not in ACTIVATIONS:
        raise ValueError(f"unknown activation {name!r}; choose one of: {', '.join(ACTIVATIONS)}")
    return ACTIVATIONS[key]()


def swap_activations(model: nn.Module, name: str, target: type[nn.Module] = nn.ReLU) -> int:
    """Replace every ``target`` module (default ReLU) by a fresh ``name`` activation.

    A module object used twice (torchvision's BasicBlock reuses ``self.relu``) is
    replaced by one new object, so the sharing is preserved. Returns the count.
    """
    replaced: dict[int, nn.Module] = {}
    count = 0
    for parent in model.modules():
        for child_name, child in list(parent.named_children()):
            if type(child) is target:
                new = replaced.get(id(child))
                if new is None:
                    new = make_activation(name)
                    replaced[id(child)] = new
                setattr(parent, child_name, new)
                count += 1
    return count

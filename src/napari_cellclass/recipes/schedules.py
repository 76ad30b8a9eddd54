"""Learning-rate schedules from the review, as torch schedulers stepped once per batch.

torch's own schedulers are used where they exist (MultiStepLR, PolynomialLR,
ExponentialLR, CosineAnnealingLR); inverse-time, linear-cosine and noisy
linear-cosine decay are written here as ``LambdaLR`` multipliers. Time ``t`` is
measured in epochs (fractional), so ``decay_rate`` means "per epoch".
"""
from __future__ import annotations

import math
from typing import Any, Callable

import torch
from torch.optim import lr_scheduler as S

SCHEDULES = (
    "constant", "piecewise_constant", "polynomial", "exponential", "inverse_time",
    "natural_exp", "cosine", "linear_cosine", "noisy_linear_cosine",
)
ALIASES = {
    "none": "constant", "": "constant", "step": "piecewise_constant", "multistep": "piecewise_constant",
    "piecewise": "piecewise_constant", "poly": "polynomial", "exp": "exponential",
    "inverse": "inverse_time", "natural_exponential": "natural_exp", "cos": "cosine",
    "cosine_annealing": "cosine", "noisy_cosine": "noisy_linear_cosine",
}


def canonical_schedule(name: str | None) -> str:
    key = (name or "constant").lower().replace("-", "_")
    key = ALIASES.get(key, key)
    if key not in SCHEDULES:
        raise ValueError(f"unknown LR schedule {name!r}; choose one of: {', '.join(SCHEDULES)}")
    return key


def linear_cosine_factor(step: int, total: int, num_periods: float = 0.5, alpha: float = 0.0, beta: float = 0.001) -> float:
    """``(alpha + (T - t)/T) * 0.5 * (1 + cos(2 pi P t / T)) + beta`` (Bello et al. 2017)."""
    t = min(step, total)
    linear = (total - t) / total
    cosine = 0.5 * (1 + math.cos(math.pi * 2 * num_periods * t / total))
    return (alpha + linear) * cosine + beta


def noisy_factor_fn(
    total: int, num_periods: float = 0.5, alpha: float = 0.0, beta: float = 0.001,
    initial_variance: float = 0.1, variance_decay: float = 0.55, seed: int = 0,
) -> Callable[[int], float]:
    """Linear-cosine decay with Gaussian noise of variance ``v0 / (1 + t) ** decay`` on the linear part.

    The noise is drawn once per step from a seeded generator, so a run is reproducible;
    the factor is clipped at 0 (a learning rate cannot be negative). The default
    ``initial_variance`` is 0.1 (TensorFlow used 1.0, which can double or zero the
    rate in the first steps).
    """
    gen = torch.Generator().manual_seed(seed)
    noise = torch.randn(total + 1, generator=gen, dtype=torch.float64)
    std = torch.sqrt(initial_variance / (1 + torch.arange(total + 1, dtype=torch.float64)) ** variance_decay)
    eps = (noise * std).tolist()

    def factor(step: int) -> float:
        t = min(step, total)
        linear = (total - t) / total + eps[t]
        cosine = 0.5 * (1 + math.cos(math.pi * 2 * num_periods * t / total))
        return max(0.0, (alpha + linear) * cosine + beta)

    return factor


def make_scheduler(
    optimizer: torch.optim.Optimizer,
    name: str | None,
    steps_per_epoch: int,
    epochs: int,
    *,
    milestones: list[float] | None = None,
    gamma: float = 0.1,
    decay_rate: float = 0.5,
    power: float = 1.0,
    min_lr: float = 0.0,
    warmup_epochs: float = 0.0,
    seed: int = 0,
    **params: Any,
) -> tuple[Any, bool]:
    """Return ``(scheduler, per_batch=True)``, or ``(None, False)`` for a constant rate.

    ``milestones`` (piecewise constant) are epochs; the rate is multiplied by
    ``gamma`` at each. ``decay_rate`` is per epoch for exponential, inverse-time and
    natural-exponential decay. ``min_lr`` is the floor of cosine decay.
    ``warmup_epochs`` > 0 prepends a linear warm-up (torch's SequentialLR).
    """
    key = canonical_schedule(name)
    if key == "constant" and warmup_epochs <= 0:
        return None, False
    spe = max(1, int(steps_per_epoch))
    total = max(1, spe * int(epochs))
    base = optimizer.param_groups[0]["lr"]
    if key == "constant":
        sched: Any = S.LambdaLR(optimizer, lambda s: 1.0)
    elif key == "piecewise_constant":
        ms = milestones if milestones else [epochs * 0.5, epochs * 0.75]
        if not isinstance(ms, (list, tuple)):
            ms = [ms]
        sched = S.MultiStepLR(optimizer, milestones=sorted({max(1, round(float(m) * spe)) for m in ms}), gamma=gamma)
    elif key == "polynomial":
        sched = S.PolynomialLR(optimizer, total_iters=total, power=power)
    elif key == "exponential":
        sched = S.ExponentialLR(optimizer, gamma=decay_rate ** (1.0 / spe))
    elif key == "natural_exp":
        sched = S.ExponentialLR(optimizer, gamma=math.exp(-decay_rate / spe))
    elif key == "inverse_time":
        sched = S.LambdaLR(optimizer, lambda s: 1.0 / (1.0 + decay_rate * s / spe))
    elif key == "cosine":
        sched = S.CosineAnnealingLR(optimizer, T_max=total, eta_min=min_lr)
    elif key == "linear_cosine":
        sched = S.LambdaLR(optimizer, lambda s: linear_cosine_factor(s, total, **_pick(params, "num_periods", "alpha", "beta")))
    else:  # noisy_linear_cosine
        fn = noisy_factor_fn(total, seed=seed, **_pick(params, "num_periods", "alpha", "beta", "initial_variance", "variance_decay"))
        sched = S.LambdaLR(optimizer, fn)
    if warmup_epochs > 0:
        n_warm = max(1, round(warmup_epochs * spe))
        for g in optimizer.param_groups:  # undo the first step's change before chaining
            g["lr"] = g.get("initial_lr", base)
        warm = S.LambdaLR(optimizer, lambda s: min(1.0, (s + 1) / n_warm))
        sched = S.SequentialLR(optimizer, [warm, sched], milestones=[n_warm])
    return sched, True


def _pick(params: dict[str, Any], *names: str) -> dict[str, Any]:
    return {k: float(params[k]) for k in names if k in params and params[k] is not None}


def lr_curve(name: str, steps_per_epoch: int = 20, epochs: int = 30, lr: float = 0.1, **kw: Any) -> list[float]:
    """The learning rate at every step of a run (for plots and tests; no training)."""
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=lr)
    sched, _ = make_scheduler(opt, name, steps_per_epoch, epochs, **kw)
    out = []
    for _ in range(steps_per_epoch * epochs):
        out.append(opt.param_groups[0]["lr"])
        opt.step()
        if sched is not None:
            sched.step()
    return out

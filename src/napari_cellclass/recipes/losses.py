"""Loss menu from the ResNet review: cross-entropy, focal, centre, hinge, label smoothing,
large-margin cosine softmax (CosFace / AM-softmax).

Every loss is an ``nn.Module`` called as ``loss(logits, targets, features=None)``;
``targets`` are class indices (single-label) or a 0/1 matrix (multi-label).
Only the centre loss needs ``features`` (the penultimate activations).
"""
from __future__ import annotations


import torch
import torch.nn.functional as F
from torch import nn

from ..models.wbc_losses import CenterLoss  # lives with the models' metric losses; re-exported here


class _Loss(nn.Module):
    """Base: a uniform ``(logits, targets, features=None)`` signature."""

    needs_features = False


class CrossEntropy(_Loss):
    def __init__(self, multilabel: bool = False, label_smoothing: float = 0.0, pos_weight: torch.Tensor | None = None):
        super().__init__()
        self.multilabel = multilabel
        self.label_smoothing = float(label_smoothing)
        self.register_buffer("pos_weight", pos_weight if pos_weight is not None else None, persistent=False)

    def forward(self, logits: torch.Tensor, targets: torch.Tensor, features: torch.Tensor | None = None) -> torch.Tensor:
        if self.multilabel:
            t = targets.float()
            if self.label_smoothing:
                t = t * (1 - self.label_smoothing) + 0.5 * self.label_smoothing
            return F.binary_cross_entropy_with_logits(logits, t, pos_weight=self.pos_weight)
        return F.cross_entropy(logits, targets.long(), label_smoothing=self.label_smoothing)


class FocalLoss(_Loss):
    """Focal loss (Lin et al. 2017): down-weights easy examples by ``(1 - p_t) ** gamma``."""

    def __init__(self, gamma: float = 2.0, alpha: float | None = None, multilabel: bool = False, label_smoothing: float = 0.0):
        super().__init__()
        self.gamma, self.alpha, self.multilabel = float(gamma), alpha, multilabel
        self.label_smoothing = float(label_smoothing)

    def forward(self, logits: torch.Tensor, targets: torch.Tensor, features: torch.Tensor | None = None) -> torch.Tensor:
        if self.multilabel:
            t = targets.float()
            if self.label_smoothing:
                t = t * (1 - self.label_smoothing) + 0.5 * self.label_smoothing
            bce = F.binary_cross_entropy_with_logits(logits, t, reduction="none")
            p = torch.sigmoid(logits)
            p_t = p * t + (1 - p) * (1 - t)
            w = (1 - p_t).clamp_min(0) ** self.gamma
            if self.alpha is not None:
                w = w * (self.alpha * t + (1 - self.alpha) * (1 - t))
            return (w * bce).mean()
        logp = F.log_softmax(logits, dim=1)
        targets = targets.long()
        logp_t = logp.gather(1, targets[:, None]).squeeze(1)
        p_t = logp_t.exp()
        if self.label_smoothing:
            eps = self.label_smoothing
            nll = -(1 - eps) * logp_t - eps * logp.mean(dim=1)
        else:
            nll = -logp_t
        w = (1 - p_t).clamp_min(0) ** self.gamma
        if self.alpha is not None:
            w = w * self.alpha
        return (w * nll).mean()


class HingeLoss(_Loss):
    """Multi-class hinge (Crammer-Singer style, torch's MultiMarginLoss); binary hinge per label."""

    def __init__(self, margin: float = 1.0, multilabel: bool = False):
        super().__init__()
        self.margin, self.multilabel = float(margin), multilabel

    def forward(self, logits: torch.Tensor, targets: torch.Tensor, features: torch.Tensor | None = None) -> torch.Tensor:
        if self.multilabel:
            sign = targets.float() * 2 - 1
            return F.relu(self.margin - sign * logits).mean()
        return F.multi_margin_loss(logits, targets.long(), margin=self.margin)


class CosineMarginLoss(_Loss):
    """Large-margin cosine softmax (CosFace / AM-softmax).

    Expects logits ``s * cos(theta)`` from a :class:`CosineLinear` head (``Recipe``
    installs it when ``loss="cosface"``); subtracts ``s * m`` from the target logit
    before the softmax, forcing a cosine margin ``m`` between classes.
    """

    def __init__(self, margin: float = 0.35, scale: float = 16.0, label_smoothing: float = 0.0):
        super().__init__()
        self.margin, self.scale, self.label_smoothing = float(margin), float(scale), float(label_smoothing)

    def forward(self, logits: torch.Tensor, targets: torch.Tensor, features: torch.Tensor | None = None) -> torch.Tensor:
        onehot = F.one_hot(targets.long(), logits.shape[1]).to(logits.dtype)
        return F.cross_entropy(logits - self.scale * self.margin * onehot, targets.long(), label_smoothing=self.label_smoothing)


class CosineLinear(nn.Linear):
    """Head computing ``scale * cos(angle(x, w_c))``; same weight names as ``nn.Linear``."""

    scale: float = 16.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.scale * F.linear(F.normalize(x, dim=1), F.normalize(self.weight, dim=1))


def make_cosine_head(linear: nn.Linear, scale: float) -> nn.Linear:
    """Turn the classifier's Linear into a CosineLinear in place (bias is ignored but kept)."""
    linear.__class__ = CosineLinear
    linear.scale = float(scale)
    return linear


class WithCenter(_Loss):
    """A base loss plus ``weight * centre loss`` on the features."""

    needs_features = True

    def __init__(self, base: nn.Module, num_classes: int, weight: float = 0.01, alpha: float = 0.5):
        super().__init__()
        self.base = base
        self.center = CenterLoss(num_classes, alpha)
        self.weight = float(weight)

    def forward(self, logits: torch.Tensor, targets: torch.Tensor, features: torch.Tensor | None = None) -> torch.Tensor:
        if features is None:
            raise ValueError("the centre loss needs the features: call loss(logits, targets, features)")
        return self.base(logits, targets) + self.weight * self.center(features, targets)


LOSSES = ("cross_entropy", "focal", "center", "hinge", "label_smoothing", "cosface")
ALIASES = {
    "ce": "cross_entropy", "crossentropy": "cross_entropy", "xent": "cross_entropy", "bce": "cross_entropy",
    "centre": "center", "center_loss": "center", "multimargin": "hinge", "svm": "hinge",
    "smoothing": "label_smoothing", "ls": "label_smoothing", "am_softmax": "cosface", "amsoftmax": "cosface",
    "cosine": "cosface", "large_margin": "cosface", "lmcl": "cosface", "cosine_softmax": "cosface",
}


def canonical_loss(name: str) -> str:
    key = name.lower().replace("-", "_")
    key = ALIASES.get(key, key)
    if key not in LOSSES:
        raise ValueError(f"unknown loss {name!r}; choose one of: {', '.join(LOSSES)}")
    return key


def features_and_logits(model: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Run ``model`` and also capture the input of its head (penultimate features).

    Lets the centre loss work with any network that ends in a Linear layer.
    """
    from .regularization import find_head

    found = find_head(model)
    if found is None:
        raise ValueError("model has no Linear head to take features from")
    head = found[2]
    box: list[torch.Tensor] = []
    handle = head.register_forward_pre_hook(lambda m, a: box.append(a[0]))
    try:
        logits = model(x)
    finally:
        handle.remove()
    return box[-1], logits



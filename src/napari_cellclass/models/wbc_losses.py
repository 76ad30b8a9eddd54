"""Losses for the white-blood-cell classifier (seed 001).

``L = CE + lambda * L_f`` with the seed's hard-mining centre-triplet hinge

    L_f = max(0, max_i ||f_i - c_{y_i}||^2 + m - min_{j: y_j != y*} ||f_j - c_{y*}||^2)

where ``i*`` is the sample farthest from its own class centre (hardest positive),
``y* = y_{i*}``, and the negative term is the sample of another class closest to
``c_{y*}`` (hardest negative).  Easy samples contribute nothing: only the worst
pair in the batch is pushed apart.  ``mode="per_class"`` applies the same hinge
once per class present in the batch and averages (more gradient signal per
batch; a variant, not the seed's formula).

Centres are running means of each class's features (``centers="running"``,
updated without gradients like the centre loss of Wen et al.) or parameters
learned with the network (``centers="learned"``; add the loss's parameters to the
optimiser).  With ``normalize=True`` (default) features are L2-normalised before
the metric term, so the margin has a fixed scale (squared distances lie in
[0, 4]); the seed works on raw features, ``normalize=False`` does the same.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

LOSS_KINDS = ("ce", "center", "triplet")
_ALIASES = {"cross_entropy": "ce", "softmax": "ce", "centre": "center", "center_triplet": "triplet",
            "centre_triplet": "triplet", "hard_triplet": "triplet"}


def canonical_wbc_loss(name: str) -> str:
    key = str(name).lower().replace("-", "_")
    key = _ALIASES.get(key, key)
    if key not in LOSS_KINDS:
        raise ValueError(f"unknown WBC loss {name!r}; choose one of: {', '.join(LOSS_KINDS)}")
    return key


def center_triplet_hinge(
    features: torch.Tensor,
    targets: torch.Tensor,
    centers: torch.Tensor,
    margin: float = 0.5,
    mode: str = "seed",
) -> torch.Tensor:
    """The hard-mining centre-triplet hinge for one batch (a scalar).

    ``features`` (N, D), ``targets`` (N,) class indices, ``centers`` (C, D).
    Returns 0 when the batch holds a single class (there is no negative).
    """
    targets = targets.long()
    d = ((features[:, None, :] - centers[None, :, :]) ** 2).sum(-1)  # (N, C): sample to every centre
    own = d.gather(1, targets[:, None]).squeeze(1)  # distance to own centre
    if mode == "seed":
        i_star = int(torch.argmax(own.detach()))
        y_star = int(targets[i_star])
        neg = targets != y_star
        if not bool(neg.any()):
            return features.sum() * 0.0
        return F.relu(own[i_star] + margin - d[neg, y_star].min())
    if mode != "per_class":
        raise ValueError(f"mode must be 'seed' or 'per_class', got {mode!r}")
    terms = []
    for k in torch.unique(targets).tolist():
        pos = targets == k
        if bool(pos.all()):
            continue
        terms.append(F.relu(own[pos].max() + margin - d[~pos, k].min()))
    if not terms:
        return features.sum() * 0.0
    return torch.stack(terms).mean()


class CenterLoss(nn.Module):
    """Centre loss (Wen et al. 2016): pulls each feature towards its class centre.

    Centres are buffers updated by a running mean (rate ``alpha``) as in the paper,
    not by the optimizer, so nothing needs registering; they are created lazily when
    the feature size is first seen.
    """

    def __init__(self, num_classes: int, alpha: float = 0.5):
        super().__init__()
        self.num_classes, self.alpha = num_classes, float(alpha)
        self.register_buffer("centers", torch.zeros(0))

    def forward(self, features: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        features = features.flatten(1)
        targets = targets.long()
        if self.centers.numel() == 0 or self.centers.shape[1] != features.shape[1]:
            self.centers = torch.zeros(self.num_classes, features.shape[1], device=features.device)  # float32
        if self.centers.device != features.device:
            self.centers = self.centers.to(features.device)
        centers = self.centers.to(features.dtype)
        diff = features - centers[targets]
        loss = 0.5 * (diff**2).sum(dim=1).mean()
        if self.training:
            with torch.no_grad():
                d = diff.detach().float()
                delta = torch.zeros_like(self.centers, dtype=torch.float32)
                delta.index_add_(0, targets, d)
                counts = torch.bincount(targets, minlength=self.num_classes).float().clamp_min(1)[:, None]
                self.centers += self.alpha * delta / (1 + counts)
        return loss


class CenterTripletLoss(nn.Module):
    """The hinge of :func:`center_triplet_hinge` with centres kept by the module."""

    def __init__(self, num_classes: int, feat_dim: int, margin: float = 0.5, centers: str = "running",
                 alpha: float = 0.5, normalize: bool = True, mode: str = "seed"):
        super().__init__()
        if centers not in ("running", "learned"):
            raise ValueError(f"centers must be 'running' or 'learned', got {centers!r}")
        self.margin, self.alpha, self.normalize, self.mode = float(margin), float(alpha), normalize, mode
        self.learned = centers == "learned"
        init = torch.randn(num_classes, feat_dim) * (0.1 if normalize else 1.0)
        if self.learned:
            self.centers = nn.Parameter(init)
        else:
            self.register_buffer("centers", torch.zeros(num_classes, feat_dim))
        self.register_buffer("seen", torch.zeros(num_classes, dtype=torch.bool))

    def forward(self, features: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        f = features.flatten(1).float()
        if self.normalize:
            f = F.normalize(f, dim=1)
        targets = targets.long()
        if not self.learned and self.training:
            self._update_centers(f.detach(), targets)
        centers = self.centers if self.learned else self.centers.detach()
        return center_triplet_hinge(f, targets, centers.to(f.dtype), self.margin, self.mode)

    @torch.no_grad()
    def _update_centers(self, f: torch.Tensor, targets: torch.Tensor) -> None:
        """Running class means; a class seen for the first time starts at its batch mean."""
        for k in torch.unique(targets).tolist():
            mean = f[targets == k].mean(0)
            if not bool(self.seen[k]):
                self.centers[k] = mean
                self.seen[k] = True
            else:
                self.centers[k] += self.alpha * (mean - self.centers[k])


class WBCLoss(nn.Module):
    """Cross-entropy, optionally plus ``lam`` * a centre or centre-triplet term.

    Called as ``loss(logits, targets, features)``; ``class_weights`` weight the
    cross-entropy (one way to handle class imbalance).
    """

    needs_features = True

    def __init__(self, kind: str = "triplet", num_classes: int = 4, feat_dim: int = 512, lam: float = 0.1,
                 margin: float = 0.5, centers: str = "running", mode: str = "seed",
                 class_weights: torch.Tensor | None = None, normalize: bool = True, center_alpha: float = 0.5):
        super().__init__()
        self.kind = canonical_wbc_loss(kind)
        self.lam = float(lam)
        self.register_buffer("class_weights", class_weights, persistent=False)
        self.metric: nn.Module | None = None
        if self.kind == "triplet":
            self.metric = CenterTripletLoss(num_classes, feat_dim, margin, centers, center_alpha, normalize, mode)
        elif self.kind == "center":
            self.metric = CenterLoss(num_classes, center_alpha)

    def forward(self, logits: torch.Tensor, targets: torch.Tensor, features: torch.Tensor | None = None) -> torch.Tensor:
        ce = F.cross_entropy(logits.float(), targets.long(), weight=self.class_weights)
        if self.metric is None:
            return ce
        if features is None:
            raise ValueError(f"the {self.kind} loss needs the features: loss(logits, targets, features)")
        return ce + self.lam * self.metric(features.float(), targets)

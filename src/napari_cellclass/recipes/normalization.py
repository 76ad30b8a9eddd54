"""Batch renormalisation (Ioffe 2017) as a drop-in for BatchNorm2d.

Batch renorm corrects the batch statistics towards the running ones with clipped
factors ``r`` and ``d``, so small or non-i.i.d. batches train like large ones.
The module keeps BatchNorm2d's parameter and buffer names, so converted
networks load ordinary checkpoints and vice versa.
"""
from __future__ import annotations

import torch
from torch import nn


class BatchRenorm2d(nn.BatchNorm2d):
    r_max: float = 3.0
    d_max: float = 5.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or not self.track_running_stats:
            return super().forward(x)
        dims = (0, 2, 3)
        mean = x.mean(dims)
        var = x.var(dims, unbiased=False)
        std = (var + self.eps).sqrt()
        run_std = (self.running_var + self.eps).sqrt()
        with torch.no_grad():
            r = (std / run_std).clamp(1 / self.r_max, self.r_max)
            d = ((mean - self.running_mean) / run_std).clamp(-self.d_max, self.d_max)
            m = self.momentum if self.momentum is not None else 0.1
            n = x.numel() / x.shape[1]
            self.running_mean.lerp_(mean.detach(), m)
            self.running_var.lerp_(var.detach() * n / max(n - 1, 1), m)
            self.num_batches_tracked += 1
        y = (x - mean[None, :, None, None]) / std[None, :, None, None]
        y = y * r[None, :, None, None] + d[None, :, None, None]
        if self.affine:
            y = y * self.weight[None, :, None, None] + self.bias[None, :, None, None]
        return y


def convert_to_batch_renorm(model: nn.Module) -> int:
    """Turn every BatchNorm2d into a BatchRenorm2d in place; returns the count."""
    n = 0
    for m in model.modules():
        if type(m) is nn.BatchNorm2d:
            m.__class__ = BatchRenorm2d
            n += 1
    return n

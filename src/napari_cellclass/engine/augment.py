"""The batch augmenters of the training data, in one place.

Each works on a whole batch of tensors and draws one set of parameters *per sample*
from the task's own seeded ``torch.Generator``:

* :func:`dihedral_batch` - the 8 flips/turns (WBC crops, the seed's augmentation);
* :func:`affine_colour_batch` - rotation 0-360, mirror, shift, zoom, colour, hue and
  blur of wide fixed-scale blood-cell crops (the built-in WBC models);
* :func:`affine_gamma_batch` - flips, a small rotation, scale/shift, gamma, contrast
  and blur of upright chromosome crops (the built-in chromosome models);
* :func:`flips_and_turns` - flips and transposes (the recipe tests' tiny CNN);
* :func:`flip_detection` - a mirrored image with its boxes and masks (torchvision
  transforms v2 functionals).

Why not torchvision's v2 random transforms for the batches: a v2 transform draws one
set of parameters per call, so a batch would be turned as a whole, and it draws them
from the global RNG, which the model's initialisation and dropout share; a run would
then depend on more than ``--seed`` and torchrun processes could not rebuild the same
global batch. Per-sample parameters from the task's generator, applied with
``affine_grid``/``grid_sample`` on the whole batch, keep both. Where the geometry of
targets matters (boxes, masks), v2's functionals do the work (:func:`flip_detection`).

Augmentations that are part of making a sample stay with the code that makes it: HPA's
per-image flips/crop/jitter run inside its ``Dataset`` (in DataLoader worker processes,
``io/hpa_dataset.py``); the CenterNet canvas placement and the chromosome detector's
patch sampling build their targets as they crop, so they stay in their batchers.
"""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F


def dihedral(x: torch.Tensor, k: int) -> torch.Tensor:
    """One of the 8 flips/90-degree rotations/transposes of a (..., H, W) tensor."""
    if k >= 4:
        x = x.transpose(-1, -2)
    return torch.rot90(x, k % 4, dims=(-2, -1))


def affine_colour_batch(x: torch.Tensor, size: int, gen: torch.Generator, *, rotate: bool = True,
                  shift: float = 0.06, scale: float = 0.08, colour: float = 0.12, hue: float = 0.03,
                  blur_p: float = 0.25) -> torch.Tensor:
    """Random rotation (0-360), mirror, shift, mild scale, colour jitter and blur for a batch.

    ``x`` is (N, 3, S, S) in [0, 1] with S >= size * sqrt(2) margin; the output is
    the centre ``size`` x ``size`` view, so a rotation never shows invented corners.
    Colour changes stay mild: the stain (orange eosinophil granules, blue
    lymphocyte cytoplasm) is part of the class.
    """
    n, _, s, _ = x.shape
    u = lambda *shape: torch.rand(*shape, generator=gen)
    theta_ang = u(n) * 2 * math.pi if rotate else torch.zeros(n)
    flip = torch.where(u(n) < 0.5, -1.0, 1.0)
    zoom = 1.0 + (u(n) * 2 - 1) * scale
    frac = size / s  # the view covers this fraction of the stored crop
    cos, sin = torch.cos(theta_ang), torch.sin(theta_ang)
    a = torch.zeros(n, 2, 3)
    a[:, 0, 0] = cos * frac / zoom * flip
    a[:, 0, 1] = -sin * frac / zoom
    a[:, 1, 0] = sin * frac / zoom * flip
    a[:, 1, 1] = cos * frac / zoom
    a[:, :, 2] = (u(n, 2) * 2 - 1) * shift * 2 * frac
    grid = F.affine_grid(a, [n, 3, size, size], align_corners=False)
    out = F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)
    if colour:
        b = 1.0 + (u(n, 1, 1, 1) * 2 - 1) * colour
        c = 1.0 + (u(n, 1, 1, 1) * 2 - 1) * colour
        sat = 1.0 + (u(n, 1, 1, 1) * 2 - 1) * colour
        mean = out.mean(dim=(1, 2, 3), keepdim=True)
        out = (out - mean) * c + mean
        gray = out.mean(dim=1, keepdim=True)
        out = (out - gray) * sat + gray
        out = out * b
    if hue:
        # small hue rotation: mix channels with a rotation about the gray axis
        ang = (u(n) * 2 - 1) * hue * 2 * math.pi
        k = torch.full((3,), 1 / math.sqrt(3))
        cos_h, sin_h = torch.cos(ang), torch.sin(ang)
        kx = torch.tensor([[0, -k[2], k[1]], [k[2], 0, -k[0]], [-k[1], k[0], 0]])
        outer = torch.outer(k, k)
        rot = (cos_h[:, None, None] * torch.eye(3) + sin_h[:, None, None] * kx
               + (1 - cos_h)[:, None, None] * outer)
        out = torch.einsum("nij,njhw->nihw", rot, out)
    if blur_p:
        sel = u(n) < blur_p
        if bool(sel.any()):
            kern = torch.tensor([1.0, 2.0, 1.0]) / 4
            k2 = (kern[:, None] * kern[None, :]).expand(3, 1, 3, 3)
            out[sel] = F.conv2d(F.pad(out[sel], (1, 1, 1, 1), mode="replicate"), k2, groups=3)
    return out.clamp_(0.0, 1.0)


def affine_gamma_batch(x: torch.Tensor, g: torch.Generator, strength: float = 1.0,
                       degrade: float = 0.0) -> torch.Tensor:
    """Light geometric and photometric jitter of prepared crops (B, 1, H, W) in 0..1.

    Flips, a small rotation (the crops are already upright, so only about +-10 deg),
    scale and shift jitter (other labs image at other magnifications), then contrast,
    gamma and blur jitter (other labs stain and focus differently).  ``strength`` 0
    leaves the batch untouched but for flips.  ``degrade``: the share of crops
    brought down to 35-80 % of their resolution and back, with sensor noise (a
    coarser scanner than the training lab's).
    """
    b = x.shape[0]
    rnd = lambda *shape: torch.rand(*shape, generator=g)
    flip_v, flip_h = rnd(b) < 0.5, rnd(b) < 0.5
    x = torch.where(flip_v[:, None, None, None], x.flip(-2), x)
    x = torch.where(flip_h[:, None, None, None], x.flip(-1), x)
    if strength <= 0:
        return x
    ang = (rnd(b) * 2 - 1) * math.radians(10) * strength
    scale = 1 + (rnd(b) * 2 - 1) * 0.12 * strength
    shift = (rnd(b, 2) * 2 - 1) * 0.05 * strength
    cos, sin = torch.cos(ang) / scale, torch.sin(ang) / scale
    theta = torch.stack([torch.stack([cos, -sin, shift[:, 0]], 1), torch.stack([sin, cos, shift[:, 1]], 1)], 1)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    x = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    gamma = torch.exp((rnd(b, 1, 1, 1) * 2 - 1) * 0.35 * strength)
    x = x.clamp(0, 1) ** gamma * (0.8 + 0.4 * rnd(b, 1, 1, 1))
    blur = rnd(b) < 0.3 * strength
    if blur.any():
        k = torch.tensor([0.25, 0.5, 0.25])
        k2 = (k[:, None] * k[None, :])[None, None]
        x = torch.where(blur[:, None, None, None], F.conv2d(x, k2, padding=1), x)
    if degrade > 0:
        pick = rnd(b) < degrade
        if pick.any():
            h, w = x.shape[-2:]
            f = float(0.35 + 0.45 * rnd(1))
            small = F.interpolate(x, size=(max(8, round(h * f)), max(8, round(w * f))), mode="area")
            coarse = F.interpolate(small, size=(h, w), mode="bilinear", align_corners=False)
            coarse = coarse + torch.randn(x.shape, generator=g) * (0.01 + 0.04 * rnd(b, 1, 1, 1))
            x = torch.where(pick[:, None, None, None], coarse, x)
    return x.clamp(0, 1.2)


def flips_and_turns(x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Cheap label-preserving augmentation for cell crops: random flips and 90-degree turns.

    Used by tasks when ``recipe.augment`` is on (microscopy has no canonical orientation).
    """
    if x.ndim != 4:
        return x
    n = x.shape[0]
    dev = x.device
    flip_h = torch.rand(n, generator=generator).to(dev) < 0.5
    flip_v = torch.rand(n, generator=generator).to(dev) < 0.5
    x = torch.where(flip_h[:, None, None, None], x.flip(-1), x)
    x = torch.where(flip_v[:, None, None, None], x.flip(-2), x)
    if x.shape[-1] == x.shape[-2]:
        turn = torch.rand(n, generator=generator).to(dev) < 0.5
        x = torch.where(turn[:, None, None, None], x.transpose(-1, -2), x)
    return x


def dihedral_batch(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Each sample of a (N, ..., H, W) batch under one of the 8 flips/turns, drawn from ``gen``."""
    ks = torch.randint(0, 8, (len(x),), generator=gen).tolist()
    return torch.stack([dihedral(img, k) for img, k in zip(x, ks)])


def flip_detection(image: torch.Tensor, boxes: np.ndarray, masks: np.ndarray | None, horizontal: bool,
                   vertical: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """(C, H, W) image, (N, 4) x0, y0, x1, y1 boxes and (N, H, W) masks mirrored together (torchvision v2)."""
    from torchvision import tv_tensors
    from torchvision.transforms.v2 import functional as TF

    h, w = image.shape[-2:]
    img = tv_tensors.Image(image)
    bx = tv_tensors.BoundingBoxes(torch.as_tensor(boxes), format="XYXY", canvas_size=(h, w))
    m = tv_tensors.Mask(torch.from_numpy(np.ascontiguousarray(masks))) if masks is not None else None
    for flip, on in ((TF.horizontal_flip, horizontal), (TF.vertical_flip, vertical)):
        if on:
            img, bx = flip(img), flip(bx)
            m = flip(m) if m is not None else None
    return (img.as_subclass(torch.Tensor), bx.as_subclass(torch.Tensor).float(),
            m.as_subclass(torch.Tensor) if m is not None else None)

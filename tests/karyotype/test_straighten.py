"""Straightening bent chromosomes along the medial axis."""
from __future__ import annotations

import numpy as np

from napari_cellclass.io.chromosome_dataset import orient_crop
from napari_cellclass.karyotype.straighten import straighten
from napari_cellclass.synth.chromosomes import make_chromosome


def _bend(x: np.ndarray, angle: float) -> np.ndarray:
    """Lay a straight upright chromosome along a circular arc of ``angle`` radians (a C shape)."""
    from scipy import ndimage as ndi

    H, W = x.shape
    R = H / angle
    size = int(2 * R + W + 8)
    yy, xx = np.mgrid[0:size, 0:size].astype(float)
    cy, cx = size / 2, 4 + W / 2  # arc centre; the chromosome lies to its right
    r = np.hypot(yy - cy, xx - cx)
    theta = np.arctan2(yy - cy, xx - cx)  # 0 along +x
    s_ = theta * R + H / 2  # position along the axis
    t_ = r - R + W / 2  # position across
    out = ndi.map_coordinates(x, [s_, t_], order=1, cval=0.0)
    out[(np.abs(theta) > angle / 2 + 0.05)] = 0
    keep = out > 0.02
    ys, xs = np.nonzero(keep)
    return out[ys.min():ys.max() + 1, xs.min():xs.max() + 1].astype(np.float32)


def _row_width(x: np.ndarray) -> float:
    rows = (x > 0.2).sum(1)
    return float(rows[rows > 0].mean())


def test_bent_chromosome_is_laid_out_straight():
    straight = orient_crop(*make_chromosome(0, seed=3, bend=0.0))
    bent = orient_crop(_bend(straight, 3.0))  # a C-shaped chromosome 1
    fixed = straighten(bent)
    L = (straight > 0.05).any(1).sum()
    assert (bent > 0.05).any(1).sum() < 0.82 * L  # bent: shorter on the page ...
    assert _row_width(bent) > 1.2 * _row_width(straight)  # ... and wider across
    assert (fixed > 0.05).any(1).sum() > 0.85 * L  # straightened: its length is back
    assert abs(_row_width(fixed) / _row_width(straight) - 1) < 0.3  # and so is its width


def test_straight_chromosome_is_left_alone():
    straight = orient_crop(*make_chromosome(5, seed=1, bend=0.0))
    assert straighten(straight) is straight or np.array_equal(straighten(straight), straight)


def test_degenerate_input_is_returned_unchanged():
    x = np.zeros((6, 6), np.float32)
    assert straighten(x) is x

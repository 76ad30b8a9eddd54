"""The karyogram lays bent chromosomes out straight (and leaves straight ones as they are)."""
from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi

from napari_cellclass.karyotype.karyogram import render_karyogram
from napari_cellclass.synth.chromosomes import make_chromosome


def _arc(gray: np.ndarray, mask: np.ndarray, angle: float) -> tuple[np.ndarray, np.ndarray]:
    """Lay an upright chromosome (dark on light) along a circular arc of ``angle`` radians: a C."""
    H, W = gray.shape
    R = H / angle
    size = int(2 * R + W + 8)
    yy, xx = np.mgrid[0:size, 0:size].astype(float)
    cy, cx = size / 2, 4 + W / 2
    theta = np.arctan2(yy - cy, xx - cx)
    s_ = theta * R + H / 2  # along the axis
    t_ = np.hypot(yy - cy, xx - cx) - R + W / 2  # across
    g = ndi.map_coordinates(gray.astype(float), [s_, t_], order=1, cval=float(gray.max()))
    m = ndi.map_coordinates(mask.astype(float), [s_, t_], order=1, cval=0.0) > 0.5
    m &= np.abs(theta) < angle / 2 + 0.05
    ys, xs = np.nonzero(m)
    sl = (slice(ys.min(), ys.max() + 1), slice(xs.min(), xs.max() + 1))
    return g[sl], m[sl]


def test_bent_chromosome_is_drawn_straight_at_its_length():
    straight, smask = make_chromosome(0, seed=3, bend=0.0)  # a chromosome 1, straight
    bent, bmask = _arc(straight, smask, 2.6)
    image = np.full((260, 320), float(straight.max()))
    labels = np.zeros(image.shape, np.int32)
    for lid, (g, m, (y, x)) in enumerate([(straight, smask, (20, 20)), (bent, bmask, (30, 150))], start=1):
        h, w = m.shape
        image[y:y + h, x:x + w][m] = g[m]
        labels[y:y + h, x:x + w][m] = lid
    image = image.astype(np.uint8)
    length = int(smask.any(1).sum())

    k = render_karyogram(image, labels, [0, 0], ideograms=False, title=None)
    plain = render_karyogram(image, labels, [0, 0], ideograms=False, title=None, straighten=False)
    assert k.orientation[2].straightened and not k.orientation[1].straightened
    assert not plain.orientation[2].straightened

    def height(kg, lid):
        y0, _, y1, _ = kg.items[lid]
        return y1 - y0

    def width(kg, lid):
        _, x0, _, x1 = kg.items[lid]
        return x1 - x0

    # as cut, the C is much shorter and wider than its straight twin; laid out straight it matches it
    assert height(plain, 2) < 0.87 * height(plain, 1) and width(plain, 2) > 1.8 * width(plain, 1)
    assert height(k, 2) > max(0.88 * height(k, 1), height(plain, 2) + 5) and width(k, 2) < 1.3 * width(k, 1)
    assert height(k, 1) >= 0.9 * length * min(1.0, (140 - 8) / length)  # the straight one keeps its length

"""Classical segmentation of chromosomes in a metaphase spread (no model needed).

Steps: gray conversion; background flattening (divide by a heavily smoothed copy,
so uneven illumination does not move the threshold); Otsu threshold of the
dark-on-light stain; clean-up; removal of interphase nuclei (large, round, solid
blobs) and debris (tiny specks); then a distance-transform watershed splits
clusters of touching chromosomes.  Sizes are measured from the spread itself
(the median chromosome width), so the same defaults work on a 500 px and a
1400 px image.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage as ndi
from skimage import filters, measure, morphology, segmentation

from ..errors import InputError


@dataclass
class SegmentOptions:
    """Knobs of :func:`segment_spread`; the defaults suit G-band spreads."""

    background_sigma: float = 0.08  # fraction of the image's short side
    threshold_scale: float = 0.5  # multiplies the Otsu threshold (tuned on Tseng G-band spreads)
    min_area_frac: float = 0.12  # debris: smaller than this fraction of the median object
    nucleus_area: float = 6.0  # nuclei: larger than this many median chromosomes ...
    nucleus_solidity: float = 0.88  # ... and this solid
    split: bool = True
    split_h: float = 0.35  # h-maxima depth as a fraction of the chromosome half-width
    split_min_area: float = 1.6  # only clusters larger than this many median objects are split ...
    split_max_solidity: float = 0.80  # ... or less solid than this
    skeleton_split: bool = True  # also cut crossings / T-junctions along the skeleton


def to_gray(image: np.ndarray) -> np.ndarray:
    """Any 2D gray or (H, W, 3|4) colour image -> float32 in [0, 1], dark-on-light kept."""
    img = np.asarray(image)
    if img.ndim == 3 and img.shape[-1] in (3, 4):
        img = img[..., :3].astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)
    elif img.ndim == 3 and img.shape[0] in (3, 4) and img.shape[-1] > 4:
        img = np.moveaxis(img[:3], 0, -1).astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)
    if img.ndim != 2:
        raise InputError(f"a spread must be a 2D gray or RGB image, got shape {np.shape(image)}")
    img = img.astype(np.float32)
    lo, hi = float(img.min()), float(img.max())
    if hi - lo < 1e-6:
        return np.ones_like(img)
    return (img - lo) / (hi - lo)


def foreground(gray: np.ndarray, opts: SegmentOptions) -> np.ndarray:
    """Stain mask after background flattening (True = dark object)."""
    sigma = max(2.0, opts.background_sigma * min(gray.shape))
    bg = filters.gaussian(gray, sigma=sigma)
    flat = np.clip(gray / np.maximum(bg, 1e-3), 0, 1.5)
    inv = filters.gaussian(1.0 - np.clip(flat, 0, 1), sigma=1.0)
    t = filters.threshold_otsu(inv) * opts.threshold_scale
    mask = inv > t
    mask = ndi.binary_opening(mask, morphology.disk(1))
    return ndi.binary_fill_holes(mask)


def segment_spread(image: np.ndarray, opts: SegmentOptions | None = None) -> np.ndarray:
    """Label each chromosome of a spread; returns an int32 label image (0 = background).

    Examples
    --------
    >>> img = np.full((64, 64), 230, np.uint8); img[10:40, 20:27] = 40; img[20:50, 40:47] = 40
    >>> int(segment_spread(img).max())
    2
    """
    opts = opts or SegmentOptions()
    gray = to_gray(image)
    mask = foreground(gray, opts)
    lab, n = ndi.label(mask)
    if n == 0:
        return lab.astype(np.int32)
    props = measure.regionprops(lab)
    areas = np.array([p.area for p in props], float)
    # chromosome scale: the size of the object a random stained pixel belongs to (area-weighted
    # median), so hundreds of specks of debris do not make "typical" mean "speck"; round solid
    # blobs (interphase nuclei, specks) are left out of it, chromosomes are elongated
    elongated = np.array([p.eccentricity > 0.75 or p.solidity < 0.85 for p in props])
    med = _weighted_median_area(areas[elongated] if elongated.sum() >= 3 else areas)
    dist = ndi.distance_transform_edt(mask)
    widths = [2 * dist[lab == p.label].max() for p in props if 0.5 * med <= p.area <= 2 * med]
    half_width = float(np.median(widths)) / 2 if widths else 4.0
    keep = np.zeros(n + 1, bool)
    for p in props:
        if p.area < opts.min_area_frac * med:
            continue  # debris
        if p.area > opts.nucleus_area * med and p.solidity > opts.nucleus_solidity:
            continue  # interphase nucleus
        if p.area > 4 * opts.nucleus_area * med:
            continue  # stain blob far larger than any chromosome cluster
        keep[p.label] = True
    mask = keep[lab]
    lab, n = ndi.label(mask)
    if opts.split and n:
        lab = _split_clusters(lab, dist * mask, med, half_width, opts)
        if opts.skeleton_split:
            lab = _split_crossings(lab, dist * (lab > 0), med, half_width, opts)
    sizes = np.bincount(lab.ravel())
    lab[(sizes < max(4, opts.min_area_frac * med))[lab]] = 0
    out, _, _ = segmentation.relabel_sequential(lab)
    return out.astype(np.int32)


def _weighted_median_area(areas: np.ndarray) -> float:
    a = np.sort(areas)
    cum = np.cumsum(a)
    return float(a[np.searchsorted(cum, cum[-1] / 2)])


def _split_clusters(lab, dist, med, half_width, opts) -> np.ndarray:
    """Watershed on the distance transform of clusters that look like several chromosomes."""
    out = lab.copy()
    next_label = int(lab.max()) + 1
    h = max(1.0, opts.split_h * half_width)
    smooth = filters.gaussian(dist, sigma=max(1.0, half_width / 3))
    for p in measure.regionprops(lab):
        if p.area < opts.split_min_area * med and p.solidity > opts.split_max_solidity:
            continue
        sl = p.slice
        region = lab[sl] == p.label
        d = smooth[sl] * region
        peaks = morphology.h_maxima(d, h) & region
        markers, k = ndi.label(peaks)
        if k < 2:
            continue
        ws = segmentation.watershed(-d, markers, mask=region)
        sub = out[sl]
        for j in range(1, k + 1):
            part = ws == j
            if not part.any():
                continue
            if j == 1:
                sub[part] = p.label
            else:
                sub[part] = next_label
                next_label += 1
    return out


def _split_crossings(lab, dist, med, half_width, opts) -> np.ndarray:
    """Cut clusters at skeleton junctions; arms that continue each other straight stay one chromosome."""
    out = lab.copy()
    next_label = int(lab.max()) + 1
    for p in measure.regionprops(lab):
        if p.area < opts.split_min_area * med and p.solidity > opts.split_max_solidity:
            continue
        sl = p.slice
        region = lab[sl] == p.label
        groups = _arm_groups(np.pad(region, 1), half_width)
        if groups is None:
            continue
        groups = groups[1:-1, 1:-1]
        ws = segmentation.watershed(-dist[sl], groups, mask=region)
        sub = out[sl]
        for j, g in enumerate(np.unique(ws[ws > 0])):
            part = ws == g
            sub[part] = p.label if j == 0 else next_label
            if j:
                next_label += 1
    return out


def _arm_groups(region: np.ndarray, half_width: float) -> np.ndarray | None:
    """Marker image of skeleton arms, merged into chromosomes through junctions; None if no cut."""
    skel = morphology.skeletonize(region)
    nb = ndi.convolve(skel.astype(np.int32), np.ones((3, 3), np.int32), mode="constant") - 1
    branch = skel & (nb >= 3)
    if not branch.any():
        return None
    r = max(2, int(round(1.3 * half_width)))
    zones, nz = ndi.label(ndi.binary_dilation(branch, structure=morphology.disk(r)))
    arms, na = ndi.label(skel & (zones == 0), structure=np.ones((3, 3)))
    if na < 2:
        return None
    sizes = np.bincount(arms.ravel(), minlength=na + 1)
    ends = skel & (nb == 1)
    touch = ndi.binary_dilation(zones > 0, iterations=2)
    # arm -> junction zones it touches
    arm_zones: dict[int, set[int]] = {a: set() for a in range(1, na + 1)}
    near = ndi.grey_dilation(zones, size=5)
    for a, z in zip(arms[touch & (arms > 0)], near[touch & (arms > 0)]):
        if z:
            arm_zones[int(a)].add(int(z))
    free_end = np.bincount(arms[ends], minlength=na + 1) > 0
    keep = [a for a in range(1, na + 1)
            if not (free_end[a] and sizes[a] < 1.5 * half_width and arm_zones[a])]  # spurs go
    if len(keep) < 2:
        return None
    parent = {a: a for a in keep}

    def find(a):
        while parent[a] != a:
            parent[a] = parent[parent[a]]
            a = parent[a]
        return a

    centres = ndi.center_of_mass(np.ones_like(zones), zones, range(1, nz + 1))
    for z in range(1, nz + 1):
        members = [a for a in keep if z in arm_zones[a]]
        if len(members) < 2:
            continue
        if len(members) == 2:
            parent[find(members[0])] = find(members[1])
            continue
        cy, cx = centres[z - 1]
        vecs = {}
        for a in members:
            ys, xs = np.nonzero((arms == a) & (np.hypot(*np.mgrid[:arms.shape[0], :arms.shape[1]] - np.array(
                [cy, cx])[:, None, None]) < r + 3 * half_width))
            if len(ys) == 0:
                continue
            v = np.array([ys.mean() - cy, xs.mean() - cx])
            vecs[a] = v / (np.linalg.norm(v) + 1e-9)
        pairs = sorted(((float(vecs[a] @ vecs[b]), a, b) for i, a in enumerate(vecs) for b in list(vecs)[i + 1:]))
        used: set[int] = set()
        for cos, a, b in pairs:
            if cos > -0.6:
                break
            if a in used or b in used:
                continue
            used |= {a, b}
            parent[find(a)] = find(b)
    roots = sorted({find(a) for a in keep})
    if len(roots) < 2:
        return None
    markers = np.zeros(region.shape, np.int32)
    for k, root in enumerate(roots, start=1):
        for a in keep:
            if find(a) == root:
                markers[arms == a] = k
    return markers


def label_boxes(labels: np.ndarray) -> np.ndarray:
    """(N, 4) boxes y0, x0, y1, x1 (exclusive) of labels 1..N (empty labels give zeros)."""
    n = int(labels.max()) if labels.size else 0
    boxes = np.zeros((n, 4), dtype=int)
    for i, sl in enumerate(ndi.find_objects(labels), start=1):
        if sl is not None and i <= n:
            boxes[i - 1] = (sl[0].start, sl[1].start, sl[0].stop, sl[1].stop)
    return boxes

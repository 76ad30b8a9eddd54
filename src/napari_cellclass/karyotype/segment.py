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
from skimage import filters, measure, morphology, segmentation, transform

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
    check_input: bool = True  # refuse images that are clearly not a spread (fluorescence cell fields)


MAX_PIXELS = 50_000_000  # ~7000 x 7000: beyond this a spread is refused, not segmented into swap
#: Objects (after debris is dropped) one spread may hold: a repeating pattern of 13 M px gave ~4,700,
#: and karyotyping them ran past 500 s and 2.2 GiB (benchmarks/memory_budget.py); real spreads hold < 200.
MAX_OBJECTS = 1000
BLANK_CONTRAST = 0.04  # (p99 - p1) / p99 of the raw values below this: nothing to segment


@dataclass
class SpreadCheck:
    """What :func:`check_spread` found out about an image before segmenting it."""

    polarity: str  # "dark-on-light" (G-band, bright field) or "light-on-dark" (Q-band, fluorescence)
    contrast: float  # (p99 - p1) / p99 of the raw intensities
    notes: list[str]

    @property
    def inverted(self) -> bool:
        return self.polarity == "light-on-dark"


_LUMA = (0.299, 0.587, 0.114)


def to_gray(image: np.ndarray, _raw: bool = False) -> np.ndarray:
    """Any 2D gray or (H, W, 3|4) colour image -> float32 in [0, 1], dark-on-light kept.

    Colour is mixed one channel at a time, so a 4000 px RGB image costs one float
    image of memory, not three.  ``_raw`` skips the rescaling to [0, 1].
    """
    img = np.asarray(image)
    if img.ndim == 3 and img.shape[-1] in (3, 4):
        chans = [img[..., k] for k in range(3)]
    elif img.ndim == 3 and img.shape[0] in (3, 4) and img.shape[-1] > 4:
        chans = [img[k] for k in range(3)]
    else:
        chans = None
    if chans is not None:
        out = np.zeros(chans[0].shape, np.float32)
        for c, wgt in zip(chans, _LUMA):
            out += np.float32(wgt) * c.astype(np.float32)
        img = out
    if img.ndim != 2:
        raise InputError(f"a spread must be a 2D gray or RGB image, got shape {np.shape(image)}")
    img = img.astype(np.float32, copy=chans is None)
    if _raw:
        return img
    lo, hi = float(img.min()), float(img.max())
    if hi - lo < 1e-6:
        return np.ones_like(img)
    img -= np.float32(lo)
    img *= np.float32(1.0 / (hi - lo))
    return img


def check_spread(image: np.ndarray) -> SpreadCheck:
    """Refuse blank or oversized images; tell dark-on-light from light-on-dark ones.

    Uses a subsample, so it costs almost nothing on a 4000 px image.  A bright
    background (the median pixel) means G-band or another bright-field stain; a
    dark one means a Q-band (fluorescent) spread, an inverted G-band image or a
    fluorescence image that is no spread at all (:func:`segment_spread` tells
    those apart from the objects it finds).
    """
    img = np.asarray(image)
    if img.ndim < 2:
        raise InputError(f"a spread must be a 2D gray or RGB image, got shape {img.shape}")
    h, w = img.shape[1:3] if img.ndim == 3 and img.shape[0] in (3, 4) and img.shape[-1] > 4 else img.shape[:2]
    if h * w > MAX_PIXELS:
        raise InputError(f"the image is {w} x {h} px ({h * w / 1e6:.0f} MP); spreads above "
                         f"{MAX_PIXELS / 1e6:.0f} MP are refused: downsample it first")
    if h < 16 or w < 16:
        raise InputError(f"the image is {w} x {h} px: too small to hold a metaphase spread")
    step = max(1, int(np.sqrt(h * w / 250_000)))
    channels_first = img.ndim == 3 and img.shape[0] in (3, 4) and img.shape[-1] > 4
    sub = to_gray(img[:, ::step, ::step] if channels_first else img[::step, ::step], _raw=True)
    p1, p50, p99 = np.percentile(sub, [1, 50, 99])
    contrast = float((p99 - p1) / max(abs(p99), 1e-9))
    if not np.isfinite(contrast) or contrast < BLANK_CONTRAST:
        raise InputError("the image is blank (no contrast between background and objects): "
                         "there is nothing to segment")
    mid = (p50 - p1) / max(p99 - p1, 1e-9)
    if mid >= 0.5:
        return SpreadCheck("dark-on-light", contrast, [])
    return SpreadCheck("light-on-dark", contrast, [
        "light objects on a dark background (a Q-band/fluorescent spread or an inverted image): "
        "segmented on the inverted image; use a classifier trained on this banding"])


def foreground(gray: np.ndarray, opts: SegmentOptions) -> np.ndarray:
    """Stain mask after background flattening (True = dark object).

    The background is a Gaussian of a few percent of the image size; it is
    computed on a copy shrunk so that sigma is ~8 px and then enlarged, which
    gives the same smooth surface in a fraction of the time (a 160 px sigma on a
    2000 px image took 15 s at full size).
    """
    sigma = max(2.0, opts.background_sigma * min(gray.shape))
    f = max(1, int(sigma // 8))
    if f > 1:
        H, W = gray.shape
        small = transform.downscale_local_mean(  # edge-padded to whole blocks: no dark border
            np.pad(gray, ((0, -H % f), (0, -W % f)), mode="edge"), (f, f)).astype(np.float32)
        bg_small = filters.gaussian(small, sigma=sigma / f, preserve_range=True)
        shape = (small.shape[0] * f, small.shape[1] * f)
        bg = transform.resize(bg_small, shape, order=1, mode="edge", preserve_range=True)[:H, :W]
        bg = bg.astype(np.float32)
        del small, bg_small
    else:
        bg = filters.gaussian(gray, sigma=sigma, preserve_range=True).astype(np.float32)
    np.maximum(bg, np.float32(1e-3), out=bg)
    np.divide(gray, bg, out=bg)  # bg now holds the flattened image
    np.clip(bg, 0, 1, out=bg)
    np.subtract(1.0, bg, out=bg)
    inv = filters.gaussian(bg, sigma=1.0, preserve_range=True).astype(np.float32, copy=False)
    del bg
    t = filters.threshold_otsu(inv) * opts.threshold_scale
    mask = inv > t
    del inv
    mask = ndi.binary_opening(mask, morphology.disk(1))
    return ndi.binary_fill_holes(mask)


def segment_spread(image: np.ndarray, opts: SegmentOptions | None = None) -> np.ndarray:
    """Label each chromosome of a spread; returns an int32 label image (0 = background).

    Light-on-dark images (Q-band) are segmented on their inverse.  Raises
    :class:`InputError` for a blank image, an oversized one, and (with
    ``opts.check_input``) a fluorescence image of cells rather than chromosomes.
    Memory stays within a few copies of the image (under 2 GB at 4000 x 4000 px;
    ``benchmarks/karyotype_memory.py`` measures it).

    Examples
    --------
    >>> img = np.full((64, 64), 230, np.uint8); img[10:40, 20:27] = 40; img[20:50, 40:47] = 40
    >>> int(segment_spread(img).max())
    2
    """
    opts = opts or SegmentOptions()
    check = check_spread(image)
    gray = to_gray(image)
    if check.inverted:
        np.subtract(1.0, gray, out=gray)
    mask = foreground(gray, opts)
    del gray
    lab, n = ndi.label(mask)
    if n == 0:
        return lab.astype(np.int32)
    areas = np.bincount(lab.ravel(), minlength=n + 1)[1:].astype(float)
    # chromosome scale: the size of the object a random stained pixel belongs to (area-weighted
    # median), so hundreds of specks of debris do not make "typical" mean "speck"; round solid
    # blobs (interphase nuclei, specks) are left out of it, chromosomes are elongated
    big = areas >= 4  # shape measures of 1-3 px specks mean nothing (and there may be 100 000 of them)
    elongated = np.zeros(n, bool)
    for p in measure.regionprops(np.where(big[lab - 1] & mask, lab, 0)):
        elongated[p.label - 1] = p.eccentricity > 0.75 or p.solidity < 0.85
    med = _weighted_median_area(areas[elongated] if elongated.sum() >= 3 else areas)
    if opts.check_input:
        _refuse_non_spread(check, areas, med, mask.size)
    slices = ndi.find_objects(lab)
    typical = (areas >= 0.5 * med) & (areas <= 2 * med)
    max_dist = [_edt(lab[slices[i]] == i + 1, slices[i], lab.shape).max() for i in np.nonzero(typical)[0]]
    half_width = float(np.median(max_dist)) if max_dist else 4.0
    keep = np.zeros(n + 1, bool)
    keep[1:] = areas >= opts.min_area_frac * med  # debris goes
    solidity = np.ones(n)
    large = np.nonzero(areas > opts.nucleus_area * med)[0]
    if len(large):
        sub = np.where(np.isin(lab, large + 1), lab, 0)
        for p in measure.regionprops(sub):
            solidity[p.label - 1] = p.solidity
    keep[1:] &= ~((areas > opts.nucleus_area * med) & (solidity > opts.nucleus_solidity))  # interphase nucleus
    keep[1:] &= ~(areas > 4 * opts.nucleus_area * med)  # stain blob far larger than any chromosome cluster
    mask = keep[lab]
    lab, n = ndi.label(mask)
    del mask
    if n > MAX_OBJECTS:  # work per spread is bounded like memory: each object is cropped, straightened, classified
        raise InputError(f"{n:,} separate objects found, more than the {MAX_OBJECTS:,} one spread is analysed with "
                         "(a metaphase has about 46 chromosomes); is this a metaphase spread?")
    if opts.split and n:
        dist = np.zeros(lab.shape, np.float32)  # per object, so memory follows the objects, not the image
        for i, sl in enumerate(ndi.find_objects(lab), start=1):
            region = lab[sl] == i
            dist[sl][region] = _edt(region, sl, lab.shape)[region]
        lab = _split_clusters(lab, dist, med, half_width, opts)
        if opts.skeleton_split:
            dist *= lab > 0
            lab = _split_crossings(lab, dist, med, half_width, opts)
    sizes = np.bincount(lab.ravel())
    lab[(sizes < max(4, opts.min_area_frac * med))[lab]] = 0
    out, _, _ = segmentation.relabel_sequential(lab)
    return out.astype(np.int32)


def _refuse_non_spread(check: SpreadCheck, areas: np.ndarray, med: float, image_px: int) -> None:
    """InputError when a light-on-dark image holds a few cell-sized objects, not chromosomes.

    Measured on 16 HPA fluorescence images (all caught) and 194 G-band spreads
    inverted to look like Q-band ones (6 caught: crowded spreads whose clusters
    look cell-sized); those can pass ``SegmentOptions(check_input=False)``.
    Dark-on-light images are refused only when the stain covers most of the
    image (noise, tissue): the most a real spread covered here was 30%.
    """
    n_objects = int((areas >= 0.12 * med).sum())
    share = med / image_px
    stain = float(areas.sum()) / image_px
    if stain > 0.5:
        raise InputError(
            f"this does not look like a metaphase spread: the stain covers {100 * stain:.0f}% of the image "
            f"(a spread is mostly background). Is it noise, tissue or a cell field?")
    if not check.inverted:
        return
    if share > 0.008 and (n_objects < 20 or stain > 0.28):
        raise InputError(
            f"this does not look like a metaphase spread: light objects on a dark background, "
            f"{n_objects} of them, the typical one covering {100 * share:.1f}% of the image and the stain "
            f"{100 * stain:.0f}% (a spread has ~46 chromosomes, each well under 1%). "
            f"Is it a fluorescence image of cells?")


def _edt(region: np.ndarray, box: tuple[slice, slice], shape: tuple[int, int]) -> np.ndarray:
    """Euclidean distance to the background within one object's box.

    The box is padded with background, except where it meets the image edge:
    there (as for a transform of the whole image) the edge is not background.
    """
    (ys, xs), (H, W) = box, shape
    pads = ((int(ys.start > 0), int(ys.stop < H)), (int(xs.start > 0), int(xs.stop < W)))
    padded = np.pad(region, pads)
    edge = ((1 - pads[0][0], 1 - pads[0][1]), (1 - pads[1][0], 1 - pads[1][1]))
    padded = np.pad(padded, edge, mode="edge")
    return ndi.distance_transform_edt(padded)[1:-1, 1:-1].astype(np.float32)


def _weighted_median_area(areas: np.ndarray) -> float:
    a = np.sort(areas)
    cum = np.cumsum(a)
    return float(a[np.searchsorted(cum, cum[-1] / 2)])


def _split_clusters(lab, dist, med, half_width, opts) -> np.ndarray:
    """Watershed on the distance transform of clusters that look like several chromosomes."""
    out = lab.copy()
    next_label = int(lab.max()) + 1
    h = max(1.0, opts.split_h * half_width)
    sigma = max(1.0, half_width / 3)
    pad = int(np.ceil(4 * sigma)) + 1
    H, W = lab.shape
    for p in measure.regionprops(lab):
        if p.area < opts.split_min_area * med and p.solidity > opts.split_max_solidity:
            continue
        sl = p.slice
        region = lab[sl] == p.label
        # the Gaussian of the distance map, computed on the object's box plus a margin only
        y0, x0 = max(0, sl[0].start - pad), max(0, sl[1].start - pad)
        y1, x1 = min(H, sl[0].stop + pad), min(W, sl[1].stop + pad)
        smooth = filters.gaussian(dist[y0:y1, x0:x1], sigma=sigma, preserve_range=True)
        d = smooth[sl[0].start - y0:sl[0].stop - y0, sl[1].start - x0:sl[1].stop - x0] * region
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
    """Marker image of skeleton arms, merged into chromosomes through junctions; None if no cut.

    Works on skeleton *points* (a k-d tree of junction pixels) rather than on
    images dilated with a disk: a large structuring element makes scipy's binary
    dilation allocate memory that grows with the disk's area squared (23 GB on a
    512 px fluorescence image), while this stays linear in the skeleton length.
    """
    from scipy.spatial import cKDTree

    skel = morphology.skeletonize(region)
    nb = ndi.convolve(skel.astype(np.uint8), np.ones((3, 3), np.uint8), mode="constant").astype(np.int16) - 1
    branch = skel & (nb >= 3)
    if not branch.any():
        return None
    r = max(2, int(round(1.3 * half_width)))
    bpts = np.argwhere(branch)
    spts = np.argwhere(skel)
    # junction zones: disks of radius r around junction pixels, merged where they overlap
    zone_of_branch = _union_find_labels(len(bpts), cKDTree(bpts).query_pairs(2 * r, output_type="ndarray"))
    nz = int(zone_of_branch.max()) + 1
    tree = cKDTree(bpts)
    d, nearest = tree.query(spts, distance_upper_bound=r + 2.5)
    found = np.isfinite(d)
    in_zone = found & (d <= r)
    touch = found  # within r + 2 px of a zone: the arm touches it
    zone_id = np.full(len(spts), -1)
    zone_id[found] = zone_of_branch[nearest[found]]
    # arms: connected skeleton pieces outside every zone
    free = spts[~in_zone]
    arm_img = np.zeros(region.shape, bool)
    arm_img[free[:, 0], free[:, 1]] = True
    arms, na = ndi.label(arm_img, structure=np.ones((3, 3)))
    if na < 2:
        return None
    arm_of_pt = arms[spts[:, 0], spts[:, 1]]
    sizes = np.bincount(arm_of_pt, minlength=na + 1)
    arm_zones: dict[int, set[int]] = {a: set() for a in range(1, na + 1)}
    for a, z in zip(arm_of_pt[touch & (arm_of_pt > 0)], zone_id[touch & (arm_of_pt > 0)]):
        arm_zones[int(a)].add(int(z))
    ends = skel & (nb == 1)
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

    centres = np.zeros((nz, 2))
    np.add.at(centres, zone_of_branch, bpts.astype(float))
    centres /= np.maximum(np.bincount(zone_of_branch, minlength=nz), 1)[:, None]
    arm_pts = {a: spts[arm_of_pt == a] for a in keep}
    for z in range(nz):
        members = [a for a in keep if z in arm_zones[a]]
        if len(members) < 2:
            continue
        if len(members) == 2:
            parent[find(members[0])] = find(members[1])
            continue
        vecs = {}
        for a in members:
            pts = arm_pts[a] - centres[z]
            pts = pts[np.hypot(pts[:, 0], pts[:, 1]) < r + 3 * half_width]
            if len(pts) == 0:
                continue
            v = pts.mean(axis=0)
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
    root_index = {root: k for k, root in enumerate(roots, start=1)}
    markers = np.zeros(region.shape, np.int32)
    for a in keep:
        pts = arm_pts[a]
        markers[pts[:, 0], pts[:, 1]] = root_index[find(a)]
    return markers


def _union_find_labels(n: int, pairs: np.ndarray) -> np.ndarray:
    """Connected-component index 0..k-1 of n items joined by (i, j) pairs."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    pairs = np.asarray(pairs, dtype=np.int64).reshape(-1, 2)
    g = coo_matrix((np.ones(len(pairs)), (pairs[:, 0], pairs[:, 1])), shape=(n, n))
    return connected_components(g, directed=False)[1]


def label_boxes(labels: np.ndarray) -> np.ndarray:
    """(N, 4) boxes y0, x0, y1, x1 (exclusive) of labels 1..N (empty labels give zeros)."""
    n = int(labels.max()) if labels.size else 0
    boxes = np.zeros((n, 4), dtype=int)
    for i, sl in enumerate(ndi.find_objects(labels), start=1):
        if sl is not None and i <= n:
            boxes[i - 1] = (sl[0].start, sl[1].start, sl[0].stop, sl[1].stop)
    return boxes

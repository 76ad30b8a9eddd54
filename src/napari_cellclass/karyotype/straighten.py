"""Straighten a bent chromosome along its medial axis.

A bent chromosome's bands run across a curve; the classifier learnt them across a
straight axis.  Following the skeleton's longest path (extended to the tips),
sampling the image along normals to that path lays the chromosome out straight,
band by band, as cytogeneticists' software does before it compares banding.
Straight chromosomes (path barely longer than the crop) are returned unchanged,
so resampling never blurs what did not need it.
"""
from __future__ import annotations

import numpy as np


def _longest_path(skel: np.ndarray) -> np.ndarray:
    """Pixel coordinates (N, 2) of the skeleton's longest geodesic path (its diameter)."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import breadth_first_order, dijkstra

    ys, xs = np.nonzero(skel)
    n = len(ys)
    if n < 2:
        return np.stack([ys, xs], 1).astype(float)
    index = -np.ones(skel.shape, np.int64)
    index[ys, xs] = np.arange(n)
    rows, cols, w = [], [], []
    H, W = skel.shape
    for dy, dx in ((0, 1), (1, 0), (1, 1), (1, -1)):
        y2, x2 = ys + dy, xs + dx
        ok = (y2 >= 0) & (y2 < H) & (x2 >= 0) & (x2 < W)
        j = np.full(n, -1)
        j[ok] = index[y2[ok], x2[ok]]
        keep = j >= 0
        rows.append(np.arange(n)[keep])
        cols.append(j[keep])
        w.append(np.full(keep.sum(), np.hypot(dy, dx)))
    r, c, ww = np.concatenate(rows), np.concatenate(cols), np.concatenate(w)
    g = coo_matrix((np.r_[ww, ww], (np.r_[r, c], np.r_[c, r])), shape=(n, n)).tocsr()
    start = int(breadth_first_order(g, 0, directed=False, return_predecessors=False)[-1])
    d = dijkstra(g, indices=start, directed=False)
    d[~np.isfinite(d)] = -1
    end = int(np.argmax(d))
    _, pred = dijkstra(g, indices=start, directed=False, return_predecessors=True)
    path = [end]
    while path[-1] != start and pred[path[-1]] >= 0:
        path.append(int(pred[path[-1]]))
    return np.stack([ys[path], xs[path]], 1).astype(float)


def _extend(path: np.ndarray, mask: np.ndarray, look: int = 4) -> np.ndarray:
    """Carry both ends on along their tangent to the mask's edge (skeletons stop short of the tips)."""
    out = [path]
    for end, before in ((0, min(look, len(path) - 1)), (-1, -1 - min(look, len(path) - 1))):
        p, q = path[end], path[before]
        t = p - q
        norm = np.hypot(*t)
        if norm == 0:
            continue
        t = t / norm
        ext = []
        cur = p.copy()
        for _ in range(max(mask.shape)):
            cur = cur + t
            y, x = int(round(cur[0])), int(round(cur[1]))
            if not (0 <= y < mask.shape[0] and 0 <= x < mask.shape[1]) or not mask[y, x]:
                break
            ext.append(cur.copy())
        if ext:
            ext = np.array(ext)
            out = [ext[::-1]] + out if end == 0 else out + [ext]
    return np.concatenate(out, 0)


def _resample(path: np.ndarray, step: float = 1.0) -> np.ndarray:
    seg = np.hypot(*np.diff(path, axis=0).T)
    s = np.r_[0, np.cumsum(seg)]
    if s[-1] < 2:
        return path
    t = np.arange(0, s[-1], step)
    return np.stack([np.interp(t, s, path[:, 0]), np.interp(t, s, path[:, 1])], 1)


def _sampling_grid(x: np.ndarray, mask: np.ndarray, min_bend: float,
                   min_sag: float | None = None) -> np.ndarray | None:
    """Where to sample ``x`` to lay it out straight: (L, 2*half+1, 2) coordinates, rows along the
    medial axis and columns along its normals; None when the chromosome is already straight or no
    usable axis is found.

    Straight means: the axis is shorter than ``min_bend`` times the crop's height, or, when
    ``min_sag`` is given, the axis strays from the line between its ends by less than
    ``min_sag`` times the chromosome's mean width (a gentle C whose axis the skeleton
    measures a little short still counts as bent).
    """
    from scipy import ndimage as ndi
    from skimage.morphology import skeletonize

    if mask.sum() < 20 or min(x.shape) < 5:
        return None
    smooth = ndi.binary_closing(ndi.binary_opening(mask, iterations=1), iterations=2)
    smooth = ndi.binary_fill_holes(smooth)
    skel = skeletonize(smooth)
    if skel.sum() < 5:
        return None
    path = _longest_path(skel)
    path = _extend(path, smooth)
    if len(path) < 5:
        return None
    k = max(3, len(path) // 12)  # smooth the axis so that normals do not flicker
    kernel = np.ones(k) / k
    padded = np.pad(path, ((k, k), (0, 0)), mode="edge")
    path = np.stack([np.convolve(padded[:, i], kernel, mode="same")[k:-k] for i in range(2)], 1)
    path = _resample(path)
    if min_sag is None:
        if len(path) < min_bend * x.shape[0]:
            return None
    else:
        chord = path[-1] - path[0]
        norm = float(np.hypot(*chord))
        if norm < 2:
            return None
        rel = path - path[0]
        sag = float(np.abs(rel[:, 0] * chord[1] - rel[:, 1] * chord[0]).max()) / norm
        if sag < max(3.0, min_sag * mask.sum() / len(path)):
            return None
    tangent = np.gradient(path, axis=0)
    tangent /= np.maximum(np.hypot(tangent[:, 0], tangent[:, 1])[:, None], 1e-6)
    normal = np.stack([-tangent[:, 1], tangent[:, 0]], 1)
    half = int(np.ceil(ndi.distance_transform_edt(smooth).max() * 1.6)) + 1
    offs = np.arange(-half, half + 1, dtype=np.float32)
    coords = path[:, None, :] + offs[None, :, None] * normal[:, None, :]
    if path[0, 0] > path[-1, 0]:  # keep the end that was on top on top
        coords = coords[::-1]
    return coords


def _sample(x: np.ndarray, coords: np.ndarray, order: int = 1) -> np.ndarray:
    from scipy import ndimage as ndi

    out = ndi.map_coordinates(x, [coords[..., 0], coords[..., 1]], order=order, mode="constant", cval=0.0)
    return np.ascontiguousarray(out.astype(np.float32))


def straighten(x: np.ndarray, mask: np.ndarray | None = None, min_bend: float = 1.05) -> np.ndarray:
    """Straightened copy of an upright, background-zeroed chromosome crop ``x`` (float, H x W).

    ``mask`` marks the chromosome (default ``x > 0.05``).  Returns ``x`` itself when the
    medial axis is less than ``min_bend`` times the crop's height (already straight) or
    when no usable axis is found.
    """
    x = np.asarray(x, np.float32)
    mask = (x > 0.05) if mask is None else np.asarray(mask, bool)
    coords = _sampling_grid(x, mask, min_bend)
    return x if coords is None else _sample(x, coords)


def straighten_with_mask(x: np.ndarray, mask: np.ndarray, min_bend: float = 1.05,
                         min_sag: float | None = None) -> tuple[np.ndarray, np.ndarray, bool]:
    """:func:`straighten` for a crop and its mask together (the karyogram needs both).

    Returns (crop, mask, straightened); the inputs themselves when nothing was done.
    The mask is resampled along the same grid, so it stays aligned with the crop.
    ``min_sag``: see :func:`_sampling_grid` (the karyogram's test for "bent").
    """
    x = np.asarray(x, np.float32)
    mask = np.asarray(mask, bool)
    coords = _sampling_grid(x, mask, min_bend, min_sag)
    if coords is None:
        return x, mask, False
    out_mask = _sample(mask.astype(np.float32), coords) > 0.5
    if out_mask.sum() < 0.5 * mask.sum():  # a degenerate axis lost the chromosome: keep it as it was
        return x, mask, False
    return _sample(x, coords), out_mask, True

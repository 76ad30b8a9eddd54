"""By-smear splits for blood-smear image sets whose fields of view overlap.

BCCD (and any set photographed by moving the stage a little) holds pairs of
images that show the same cells shifted by a few dozen pixels.  Splitting by
image would put one copy in training and the other in validation, and the
validation score would measure memory.  :func:`overlap_groups` finds such pairs
by phase correlation of small gray thumbnails (after removing the fixed pattern
that dust on the optics adds to every image) and unions them into groups;
:func:`napari_cellclass.io.splits.grouped_split` then holds out whole groups,
stratified by a label per image (the white-cell class in BCCD), so every class
lands on both sides.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from .splits import grouped_split

THUMB = (128, 96)  # thumbnail (width, height) the correlation runs on
PEAK = 0.12  # phase-correlation peak above which two fields are treated as the same smear area


def _thumbnails(paths: Sequence[Path]) -> np.ndarray:
    from PIL import Image

    from .limits import read_image, to_uint8

    out = []
    for p in paths:
        a = read_image(p)  # the plugin's one image reader (size checked first)
        if a.ndim == 3 and a.shape[-1] in (2, 4):
            a = a[..., :-1]  # drop alpha
        im = Image.fromarray(np.ascontiguousarray(to_uint8(a[..., 0] if a.ndim == 3 and a.shape[-1] == 1 else a)))
        a = np.asarray(im.convert("L").resize(THUMB, Image.BILINEAR), dtype=np.float64)
        out.append((a - a.mean()) / (a.std() + 1e-6))
    stack = np.array(out)
    return stack - stack.mean(0)  # dust and vignetting are the same in every field: remove them


def overlap_pairs(paths: Sequence[Path], peak: float = PEAK) -> list[tuple[int, int, float]]:
    """(i, j, peak) for every pair of images whose fields of view overlap (also mirrored copies)."""
    paths = [Path(p) for p in paths]
    if len(paths) < 2:
        return []
    a = _thumbnails(paths)
    spec = np.fft.rfft2(a)
    pairs = []
    for i in range(len(a) - 1):
        for flipped in (False, True):
            fi = np.fft.rfft2(a[i][:, ::-1]) if flipped else spec[i]
            r = fi[None] * np.conj(spec[i + 1 :])
            r /= np.abs(r) + 1e-9
            corr = np.fft.irfft2(r, s=a.shape[1:])
            peaks = corr.reshape(len(corr), -1).max(1)
            for k in np.nonzero(peaks > peak)[0]:
                pairs.append((i, i + 1 + int(k), float(peaks[k])))
    return pairs


_GROUP_CACHE: dict[tuple, list[int]] = {}


def overlap_groups(paths: Sequence[Path], peak: float = PEAK) -> list[int]:
    """A group id per image: images linked by overlapping fields share one (union-find).

    Remembered per process for the same files (path, size, mtime): a benchmark that
    trains many models on one folder computes it once.
    """
    key = (float(peak),) + tuple((str(p), *_stamp(Path(p))) for p in paths)
    if key not in _GROUP_CACHE:
        _GROUP_CACHE[key] = _overlap_groups(paths, peak)
    return list(_GROUP_CACHE[key])


def _stamp(p: Path) -> tuple[int, int]:
    try:
        st = p.stat()
        return st.st_size, st.st_mtime_ns
    except OSError:
        return -1, -1


def _overlap_groups(paths: Sequence[Path], peak: float) -> list[int]:
    parent = list(range(len(paths)))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for i, j, _ in overlap_pairs(paths, peak):
        parent[find(j)] = find(i)
    roots = [find(i) for i in range(len(paths))]
    ids = {r: k for k, r in enumerate(dict.fromkeys(roots))}
    return [ids[r] for r in roots]


def bccd_split(root: str | Path, val_fraction: float = 0.2, seed: int = 0) -> dict[str, list[str]]:
    """The by-smear split of a BCCD-layout folder: image file names for "train" and "val".

    Strata are the white-cell class of each image from ``wbc_labels.csv`` (``"none"``
    for images without one), groups the overlapping fields.  Deterministic for a
    given folder, fraction and seed, so the detector and the classifier share it.
    """
    import csv

    root = Path(root)
    image_dir = root / "JPEGImages" if (root / "JPEGImages").is_dir() else root
    files = sorted(p for p in image_dir.iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
    label = {}
    table = root / "wbc_labels.csv"
    if table.is_file():
        with open(table, newline="") as fh:
            for row in csv.DictReader(fh):
                label[row["image"].strip()] = (row.get("category") or "none").strip().upper() or "none"
    strata = [label.get(f.name, "none") for f in files]
    groups = overlap_groups(files)
    tr, va = grouped_split(groups, val_fraction, seed, strata=strata)
    n_groups = len(set(groups))
    return {"train": [files[i].name for i in tr], "val": [files[i].name for i in va],
            "rule": f"by smear area: {len(files)} images in {n_groups} groups of overlapping fields "
                    f"(phase correlation > {PEAK}); {val_fraction:.0%} of the groups of each white-cell "
                    f"class held out, seed {seed}"}

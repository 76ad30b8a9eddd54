"""Schematic G-band ideograms of the 24 human chromosomes, drawn beside karyogram pairs.

What the table holds, honestly:

* relative lengths (percent of the haploid autosomal length) and centromere
  indices (p / (p + q)) close to the classic ISCN measurements;
* the *main* dark G-bands at roughly the 300-band level, written for this plugin
  from the general look of the published ISCN ideogram. Positions are fractions
  of the chromosome from pter (0) to qter (1) and are approximate (a few percent
  of the length); several sub-bands are merged into one. They help the eye
  orient and compare a chromosome; they are not a reference for band-level calls;
* heterochromatin (1q12, 9q12, 16q11.2, Yq12) and the stalks and satellites of
  the acrocentric short arms (13, 14, 15, 21, 22).

The same profile lets :func:`orientation_score` judge which end of a straightened
chromosome is pter (see ``karyogram.py``).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .assign import CLASS_NAMES

# stain intensities: 0 = gneg (light), 0.25..1 = gpos25..gpos100
GVAR = "gvar"  # variable heterochromatin
STALK = "stalk"  # acrocentric p-arm stalk (narrow, pale)


@dataclass(frozen=True)
class Ideogram:
    name: str
    rel_length: float  # percent of the haploid autosomal length
    centromere: float  # centromere index p / (p + q)
    bands: tuple[tuple[float, float, object], ...]  # (start, end, stain) from pter = 0 to qter = 1


def _acro_p(c: float) -> list[tuple[float, float, object]]:
    """Short arm of an acrocentric: satellite (p13), stalk (p12), p11.2 (scaled to the arm)."""
    return [(0.0, 0.24 * c, 0.5), (0.24 * c, 0.48 * c, STALK), (0.55 * c, 0.85 * c, 0.5)]


_TABLE: dict[str, tuple[float, float, list]] = {
    # name: (relative length %, centromere index, dark bands)
    "1": (8.44, 0.48, [(0.06, 0.08, 0.25), (0.17, 0.20, 0.5), (0.22, 0.30, 1.0), (0.32, 0.34, 0.75),
                       (0.36, 0.40, 1.0), (0.42, 0.44, 0.5), (0.49, 0.56, GVAR), (0.62, 0.64, 0.5),
                       (0.655, 0.675, 0.75), (0.69, 0.71, 0.5), (0.74, 0.79, 1.0), (0.82, 0.83, 0.5),
                       (0.86, 0.90, 1.0), (0.92, 0.93, 0.5), (0.94, 0.97, 0.75)]),
    "2": (8.02, 0.39, [(0.05, 0.09, 0.75), (0.13, 0.17, 1.0), (0.21, 0.24, 1.0), (0.26, 0.27, 0.5),
                       (0.31, 0.34, 1.0), (0.43, 0.45, 0.5), (0.47, 0.49, 0.5), (0.56, 0.60, 1.0),
                       (0.61, 0.62, 0.5), (0.64, 0.68, 0.75), (0.74, 0.78, 1.0), (0.79, 0.82, 0.75),
                       (0.84, 0.86, 0.75), (0.89, 0.92, 0.75)]),
    "3": (6.83, 0.47, [(0.00, 0.03, 0.5), (0.06, 0.10, 1.0), (0.13, 0.16, 0.75), (0.26, 0.30, 0.75),
                       (0.31, 0.32, 0.5), (0.34, 0.39, 1.0), (0.48, 0.50, 0.5), (0.53, 0.56, 1.0),
                       (0.58, 0.60, 0.75), (0.64, 0.66, 0.5), (0.69, 0.73, 1.0), (0.75, 0.78, 0.75),
                       (0.80, 0.83, 1.0), (0.85, 0.88, 0.75), (0.92, 0.95, 0.5)]),
    "4": (6.30, 0.29, [(0.05, 0.08, 0.75), (0.11, 0.15, 1.0), (0.20, 0.22, 0.5), (0.33, 0.37, 1.0),
                       (0.43, 0.47, 1.0), (0.51, 0.54, 0.75), (0.58, 0.63, 1.0), (0.66, 0.74, 1.0),
                       (0.78, 0.80, 0.75), (0.82, 0.84, 0.75), (0.86, 0.89, 1.0), (0.92, 0.94, 0.75)]),
    "5": (6.08, 0.27, [(0.03, 0.05, 0.5), (0.08, 0.16, 1.0), (0.19, 0.21, 0.5), (0.23, 0.25, 0.75),
                       (0.33, 0.36, 1.0), (0.38, 0.40, 0.5), (0.41, 0.47, 1.0), (0.50, 0.56, 1.0),
                       (0.57, 0.59, 0.5), (0.60, 0.66, 1.0), (0.69, 0.70, 0.5), (0.76, 0.82, 0.75),
                       (0.84, 0.88, 1.0)]),
    "6": (5.90, 0.39, [(0.04, 0.06, 0.75), (0.09, 0.15, 1.0), (0.21, 0.22, 0.5), (0.29, 0.34, 1.0),
                       (0.41, 0.44, 0.75), (0.47, 0.50, 0.75), (0.51, 0.53, 0.5), (0.55, 0.60, 1.0),
                       (0.62, 0.68, 1.0), (0.70, 0.76, 1.0), (0.80, 0.82, 0.75), (0.85, 0.88, 0.75),
                       (0.95, 0.97, 0.25)]),
    "7": (5.36, 0.39, [(0.05, 0.11, 1.0), (0.14, 0.20, 0.75), (0.22, 0.27, 1.0), (0.31, 0.33, 0.5),
                       (0.48, 0.58, 1.0), (0.66, 0.70, 1.0), (0.72, 0.76, 1.0), (0.80, 0.82, 0.75),
                       (0.83, 0.85, 0.5), (0.86, 0.89, 0.75)]),
    "8": (4.93, 0.32, [(0.03, 0.06, 0.75), (0.10, 0.14, 1.0), (0.18, 0.20, 0.5), (0.23, 0.28, 1.0),
                       (0.29, 0.30, 0.5), (0.36, 0.39, 0.75), (0.45, 0.49, 1.0), (0.52, 0.58, 1.0),
                       (0.68, 0.77, 1.0), (0.84, 0.87, 0.75)]),
    "9": (4.80, 0.35, [(0.04, 0.08, 0.75), (0.10, 0.13, 0.5), (0.14, 0.22, 1.0), (0.29, 0.31, 0.5),
                       (0.36, 0.45, GVAR), (0.47, 0.53, 1.0), (0.57, 0.62, 0.75), (0.64, 0.70, 1.0),
                       (0.74, 0.78, 0.75), (0.88, 0.89, 0.25)]),
    "10": (4.59, 0.32, [(0.04, 0.08, 0.75), (0.14, 0.18, 0.75), (0.20, 0.23, 0.5), (0.25, 0.28, 0.75),
                        (0.38, 0.50, 1.0), (0.59, 0.64, 0.75), (0.72, 0.78, 1.0), (0.85, 0.88, 0.75)]),
    "11": (4.61, 0.40, [(0.03, 0.06, 0.5), (0.10, 0.18, 1.0), (0.23, 0.28, 1.0), (0.34, 0.37, 0.5),
                        (0.54, 0.62, 1.0), (0.63, 0.65, 0.5), (0.66, 0.74, 1.0), (0.78, 0.80, 0.5),
                        (0.85, 0.88, 0.5)]),
    "12": (4.66, 0.27, [(0.05, 0.07, 0.5), (0.10, 0.15, 1.0), (0.17, 0.21, 0.75), (0.24, 0.25, 0.5),
                        (0.30, 0.33, 1.0), (0.43, 0.46, 0.75), (0.47, 0.48, 0.5), (0.49, 0.59, 1.0),
                        (0.63, 0.67, 0.75), (0.75, 0.77, 0.5), (0.83, 0.87, 0.75)]),
    "13": (3.74, 0.17, _acro_p(0.17) + [(0.22, 0.24, 0.5), (0.33, 0.35, 0.5), (0.36, 0.40, 0.75),
                                        (0.41, 0.56, 1.0), (0.63, 0.73, 1.0), (0.80, 0.86, 1.0)]),
    "14": (3.56, 0.18, _acro_p(0.18) + [(0.23, 0.27, 1.0), (0.31, 0.41, 1.0), (0.45, 0.49, 0.75),
                                        (0.55, 0.57, 0.5), (0.64, 0.74, 1.0), (0.80, 0.82, 0.5)]),
    "15": (3.46, 0.19, _acro_p(0.19) + [(0.24, 0.26, 0.5), (0.30, 0.34, 0.75), (0.39, 0.48, 1.0),
                                        (0.63, 0.66, 0.5), (0.67, 0.74, 0.75), (0.85, 0.88, 0.5)]),
    "16": (3.36, 0.43, [(0.07, 0.09, 0.5), (0.17, 0.25, 1.0), (0.44, 0.51, GVAR), (0.53, 0.56, 0.75),
                        (0.58, 0.60, 0.5), (0.62, 0.68, 1.0), (0.74, 0.82, 1.0)]),
    "17": (3.25, 0.33, [(0.08, 0.16, 1.0), (0.40, 0.43, 0.5), (0.50, 0.53, 0.5), (0.57, 0.66, 1.0),
                        (0.71, 0.79, 1.0)]),
    "18": (2.93, 0.30, [(0.10, 0.18, 0.5), (0.38, 0.50, 1.0), (0.55, 0.58, 0.75), (0.70, 0.82, 1.0)]),
    "19": (2.67, 0.46, [(0.12, 0.15, 0.25), (0.36, 0.42, 0.5), (0.49, 0.54, 0.5), (0.67, 0.70, 0.25),
                        (0.85, 0.88, 0.25)]),
    "20": (2.56, 0.45, [(0.08, 0.26, 1.0), (0.53, 0.60, 0.75), (0.73, 0.80, 0.75)]),
    "21": (1.90, 0.27, _acro_p(0.27) + [(0.33, 0.62, 1.0), (0.77, 0.80, 0.5)]),
    "22": (2.04, 0.28, _acro_p(0.28) + [(0.50, 0.58, 0.75), (0.70, 0.73, 0.5)]),
    "X": (5.12, 0.40, [(0.05, 0.07, 0.5), (0.12, 0.22, 1.0), (0.25, 0.28, 0.75), (0.47, 0.50, 0.5),
                       (0.52, 0.63, 1.0), (0.68, 0.71, 0.75), (0.74, 0.79, 1.0), (0.81, 0.84, 0.5),
                       (0.87, 0.91, 0.75)]),
    "Y": (2.15, 0.30, [(0.08, 0.16, 0.5), (0.38, 0.44, 0.5), (0.58, 1.00, GVAR)]),
}

IDEOGRAMS: dict[str, Ideogram] = {
    name: Ideogram(name, rl, ci, tuple(bands)) for name, (rl, ci, bands) in _TABLE.items()
}
assert list(IDEOGRAMS) == CLASS_NAMES


def rel_lengths() -> np.ndarray:
    """(24,) relative lengths in class order (1..22, X, Y)."""
    return np.array([IDEOGRAMS[c].rel_length for c in CLASS_NAMES])


def stain_profile(name: str, n: int = 64) -> np.ndarray:
    """Expected darkness (0 light .. 1 dark) at ``n`` points from pter to qter.

    Heterochromatin counts as dark (it stains dark in G-banding), the centromere
    as mid-grey, stalks as light.
    """
    ideo = IDEOGRAMS[name]
    t = (np.arange(n) + 0.5) / n
    prof = np.zeros(n)
    for a, b, stain in ideo.bands:
        val = 0.8 if stain == GVAR else (0.0 if stain == STALK else float(stain))
        prof[(t >= a) & (t < b)] = val
    prof[np.abs(t - ideo.centromere) < 0.5 / n + 0.01] = 0.5
    return prof


def width_profile(name: str, n: int = 64) -> np.ndarray:
    """Expected relative width at ``n`` points: narrow at the centromere, stalks and the tips."""
    ideo = IDEOGRAMS[name]
    t = (np.arange(n) + 0.5) / n
    w = np.ones(n)
    w -= 0.35 * np.exp(-0.5 * ((t - ideo.centromere) / 0.03) ** 2)  # primary constriction
    w -= 0.25 * np.exp(-0.5 * (t / 0.04) ** 2) + 0.25 * np.exp(-0.5 * ((1 - t) / 0.04) ** 2)  # rounded ends
    for a, b, stain in ideo.bands:
        if stain == STALK:
            w[(t >= a) & (t < b)] -= 0.4
    return w


def draw_ideogram(name: str, height: int, width: int = 9) -> np.ndarray:
    """(height, width + 2, 3) uint8 RGB ideogram on white: bands grey to black, centromere waist.

    Heterochromatin is hatched, stalks are drawn narrow, as on printed ideograms.
    """
    height = max(int(height), 12)
    ideo = IDEOGRAMS[name]
    W = width + 2
    out = np.full((height, W, 3), 255, np.uint8)
    t = (np.arange(height) + 0.5) / height
    shade = np.full(height, 250.0)
    hatch = np.zeros(height, bool)
    stalk = np.zeros(height, bool)
    for a, b, stain in ideo.bands:
        sel = (t >= a) & (t < b)
        if stain == GVAR:
            hatch |= sel
        elif stain == STALK:
            stalk |= sel
        else:
            shade[sel] = 250 - 225 * float(stain)
    cen_row = ideo.centromere * height
    half = (width - 1) / 2.0
    for y in range(height):
        # half-width: waist at the centromere, rounded tips, narrow stalks
        d = abs(y + 0.5 - cen_row)
        hw = half * (0.45 + 0.55 * min(1.0, d / max(2.0, 0.04 * height)))
        tip = min(y + 0.5, height - y - 0.5)
        if tip < half:
            hw = min(hw, np.sqrt(max(half ** 2 - (half - tip) ** 2, 0.25)))
        if stalk[y]:
            hw = min(hw, half * 0.35)
        x0, x1 = int(round(1 + half - hw)), int(round(1 + half + hw)) + 1
        x0, x1 = max(0, x0), min(W, x1)
        if x1 <= x0:
            continue
        row = np.full(x1 - x0, shade[y])
        if hatch[y]:
            row = np.where((np.arange(x0, x1) + y) % 3 == 0, 40.0, 200.0)
        out[y, x0:x1] = row.astype(np.uint8)[:, None]
        out[y, x0] = out[y, x1 - 1] = 0  # outline
    ys = [y for y in range(height) if (out[y] < 255).any()]
    if ys:
        for y in (ys[0], ys[-1]):
            out[y][out[y, :, 0] < 255] = 0
    return out


def orientation_score(darkness: np.ndarray, widths: np.ndarray, name: str) -> float:
    """How much better ``name``'s ideogram fits the profiles as given (pter at index 0) than reversed.

    ``darkness`` and ``widths`` are measured along a chromosome's long axis (any
    length, resampled here).  Positive: the first end is pter (p arm up).  The
    score adds the banding correlation and the centromere-constriction fit; for
    metacentric chromosomes with weak banding it is near 0 (cannot tell).
    """
    darkness = np.asarray(darkness, float)
    widths = np.asarray(widths, float)
    if darkness.size < 4 or name not in IDEOGRAMS:
        return 0.0
    n = 64
    x = np.linspace(0, 1, darkness.size)
    t = (np.arange(n) + 0.5) / n
    d = np.interp(t, x, darkness)
    w = np.interp(t, np.linspace(0, 1, widths.size), widths)
    ref_d, ref_w = stain_profile(name, n), width_profile(name, n)

    def corr(a, b):
        a = a - a.mean()
        b = b - b.mean()
        den = np.sqrt((a * a).sum() * (b * b).sum())
        return float((a * b).sum() / den) if den > 1e-9 else 0.0

    inner = slice(int(0.12 * n), int(0.88 * n))  # tips are narrow both ways: use the body
    band = corr(d, ref_d) - corr(d, ref_d[::-1])
    waist = corr(w[inner], ref_w[inner]) - corr(w[inner], ref_w[::-1][inner])
    return band + 0.5 * waist

"""How often the karyogram's automatic "p arm up" agrees with a cytogeneticist.

Data: the karyograms a cytogeneticist made (``raw_spreads/*/*.K.*``, CytoVision
sheets: four rows of pairs over numbered baselines, every chromosome placed p arm
up).  Each chromosome is cut out, its class read from the baseline it stands on,
and :func:`napari_cellclass.karyotype.karyogram.upright` is asked whether it would
turn it.  Prints, per class group and overall: kept as placed (agrees), turned
(disagrees) and left alone because the banding could not tell (uncertain).

    python benchmarks/karyogram_orientation.py [--data ../shared/data/chromosomes/raw_spreads]
"""
from __future__ import annotations

import argparse
from collections import Counter
from pathlib import Path

import numpy as np
from scipy import ndimage as ndi

from napari_cellclass.io.spread_reader import read_gray
from napari_cellclass.karyotype.assign import CLASS_NAMES
from napari_cellclass.karyotype.karyogram import chromosome_crop, upright
from napari_cellclass.karyotype.segment import to_gray

ROWS = [["1", "2", "3", "4", "5"], ["6", "7", "8", "9", "10", "11", "12"], ["13", "14", "15", "16", "17", "18"],
        ["19", "20", "21", "22", "X", "Y"]]


def baselines(gray: np.ndarray) -> list[tuple[int, list[tuple[int, int]]]]:
    """(y, [(x0, x1), ...]) of the horizontal lines the pairs stand on, top to bottom."""
    dark = gray < 0.6
    rows = np.nonzero(dark.sum(1) > 0.4 * gray.shape[1])[0]
    out: list[tuple[int, list[tuple[int, int]]]] = []
    for y in rows:
        if out and y - out[-1][0] < 5:
            continue
        lab, n = ndi.label(dark[y])
        segs = [(sl[0].start, sl[0].stop) for sl in ndi.find_objects(lab) if sl[0].stop - sl[0].start > 60]
        if len(segs) >= 5:  # a row of chromosomes can be dark across the sheet too; a baseline is split in cells
            out.append((int(y), segs))
    return out


def sheet_chromosomes(path: Path):
    """Yield (class index, crop, mask) for every chromosome on one karyogram sheet."""
    gray = to_gray(read_gray(path))
    lines = baselines(gray)
    if len(lines) != 4:
        return
    fg = ndi.binary_opening(gray < 0.85, iterations=1)
    prev = 0
    for r, (y, segs) in enumerate(lines):
        names = ROWS[r]
        if len(segs) != len(names):
            prev = y
            continue
        band = np.zeros_like(fg)
        band[prev + 30:y - 1] = fg[prev + 30:y - 1]
        lab, n = ndi.label(band)
        for i, sl in enumerate(ndi.find_objects(lab), start=1):
            if sl is None or (lab[sl] == i).sum() < 150:
                continue
            cx = (sl[1].start + sl[1].stop) / 2
            k = [j for j, (x0, x1) in enumerate(segs) if x0 <= cx < x1]
            if not k:
                continue
            m = lab == i
            # two touching homologues make one object twice as wide as tall-ish: skip those
            h, w = sl[0].stop - sl[0].start, sl[1].stop - sl[1].start
            if w > 1.3 * h and names[k[0]] not in ("19", "20", "21", "22", "Y"):
                continue
            crop, mask = chromosome_crop(gray, m.astype(np.int32), 1)
            yield CLASS_NAMES.index(names[k[0]]), crop, mask
        prev = y


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    here = Path(__file__).resolve().parents[1]
    ap.add_argument("--data", type=Path, default=here / ".." / "shared" / "data" / "chromosomes" / "raw_spreads")
    args = ap.parse_args()
    sheets = sorted(p for p in args.data.rglob("*") if ".K." in p.name or p.parent.name == "k")
    if not sheets:
        raise SystemExit(f"no karyogram sheets under {args.data}")
    tally: dict[str, Counter] = {}
    groups = {"A (1-3)": range(3), "B (4-5)": range(3, 5), "C (6-12, X)": list(range(5, 12)) + [22],
              "D (13-15)": range(12, 15), "E (16-18)": range(15, 18), "F (19-20)": range(18, 20),
              "G (21-22, Y)": [20, 21, 23]}
    used = 0
    for sheet in sheets:
        n_before = sum(sum(c.values()) for c in tally.values())
        for cls, crop, mask in sheet_chromosomes(sheet):
            _, _, info = upright(crop, mask, cls)
            verdict = "uncertain" if info.method == "uncertain" else ("turned" if info.turned else "kept")
            g = next(name for name, members in groups.items() if cls in members)
            tally.setdefault(g, Counter())[verdict] += 1
            tally.setdefault("all", Counter())[verdict] += 1
        used += int(sum(sum(c.values()) for c in tally.values()) > n_before)
    print(f"{used} karyogram sheets, chromosomes placed p arm up by a cytogeneticist")
    print(f"{'group':14s} {'n':>4s} {'kept (agree)':>13s} {'turned (wrong)':>15s} {'uncertain':>10s}  agree among decided")
    for g in list(groups) + ["all"]:
        c = tally.get(g, Counter())
        n = sum(c.values())
        decided = c["kept"] + c["turned"]
        print(f"{g:14s} {n:4d} {c['kept']:13d} {c['turned']:15d} {c['uncertain']:10d}  "
              f"{c['kept'] / decided if decided else float('nan'):.2f}")


if __name__ == "__main__":
    main()

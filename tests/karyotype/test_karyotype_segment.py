"""Spread segmentation on generated spreads, box matching, karyogram layout and exports."""
from __future__ import annotations

import csv

import numpy as np
import pytest

from napari_cellclass.errors import InputError
from napari_cellclass.karyotype.karyogram import (
    KARYOGRAM_ROWS,
    chromosome_table,
    make_karyogram,
    orient_vertical,
    render_karyogram,
    save_png,
    write_csv,
)
from napari_cellclass.karyotype.metrics import box_iou, match_boxes
from napari_cellclass.karyotype.segment import label_boxes, segment_spread
from napari_cellclass.synth.chromosomes import make_spread


def test_segmentation_finds_the_placed_chromosomes():
    matched = total = 0
    for seed in (1, 2, 3):
        s = make_spread(seed, "46,XY", size=(512, 512))
        labels = segment_spread(s["image"])
        assert labels.dtype == np.int32 and labels.shape == s["image"].shape
        matches = match_boxes(label_boxes(labels), s["boxes"], 0.5)
        matched += len(matches)
        total += len(s["boxes"])
        # the interphase nucleus is not called a chromosome
        nuc = s["nucleus"]
        if nuc.any():
            assert (labels[nuc] > 0).mean() < 0.05
    assert matched / total >= 0.9


def test_segmentation_splits_two_touching_chromosomes():
    img = np.full((120, 200), 230, np.uint8)
    yy, xx = np.mgrid[:120, :200]

    def chromosome(cy, cx):
        img[(yy - cy) ** 2 / 16 ** 2 + (xx - cx) ** 2 / 6 ** 2 <= 1] = 40

    chromosome(25, 30)  # two touching end to end ...
    chromosome(56, 33)
    for cx in (80, 110, 140, 170):  # ... and singles that set the size scale
        chromosome(30, cx)
        chromosome(85, cx)
    labels = segment_spread(img)
    assert labels.max() == 10
    assert labels[25, 30] != labels[56, 33] and labels[25, 30] > 0 and labels[56, 33] > 0


def test_segment_rejects_bad_input():
    with pytest.raises(InputError):
        segment_spread(np.zeros((2, 3, 4, 5)))


def test_box_iou_and_matching():
    a = np.array([[0, 0, 10, 10], [20, 20, 30, 30]])
    b = np.array([[0, 0, 10, 12], [50, 50, 60, 60]])
    iou = box_iou(a, b)
    assert iou[0, 0] == pytest.approx(100 / 120)
    assert iou[1, 1] == 0
    assert match_boxes(a, b) == [(0, 0)]


def test_orient_vertical_turns_a_horizontal_bar():
    crop = np.ones((20, 60), np.float32)
    mask = np.zeros((20, 60), bool)
    mask[8:12, 5:55] = True
    crop[mask] = 0.2
    c, m = orient_vertical(crop, mask)
    assert m.shape[0] > 3 * m.shape[1]


def test_karyogram_layout_rows_pairs_and_exports(tmp_path):
    s = make_spread(4, "47,XX,+21", size=(512, 512))
    classes = s["classes"]
    flagged = [c == 20 for c in classes]
    img, layout = make_karyogram(s["image"], s["labels"], classes, flagged=flagged, title="47,XX,+21",
                                 return_layout=True)
    assert img.ndim == 3 and img.shape[2] == 3 and img.dtype == np.uint8
    assert [r[-1] for r in KARYOGRAM_ROWS] == ["5", "X", "18", "Y"]
    # rows go down the page, pairs left to right within a row
    tops = [layout[r[0]][0] for r in KARYOGRAM_ROWS]
    assert tops == sorted(tops) and len(set(tops)) == 4
    for row in KARYOGRAM_ROWS:
        lefts = [layout[nm][1] for nm in row]
        assert lefts == sorted(lefts)
        assert len({layout[nm][0] for nm in row}) == 1

    k = render_karyogram(s["image"], s["labels"], classes, flagged=flagged)

    def placed(name):  # chromosomes drawn inside a cell (its ideogram is not one)
        y0, x0, y1, x1 = k.cells[name]
        return [lid for lid, (a, b, c, d) in k.items.items() if y0 <= a and c <= y1 and x0 <= b and d <= x1]

    assert placed("Y") == []  # 46,XX has no Y
    assert len(placed("1")) == 2 and len(placed("X")) == 2 and len(placed("21")) == 3
    for name, (y0, x0, y1, x1) in k.cells.items():  # every cell shows its class's ideogram
        assert (k.image[y0:y1 - 18, x0:x0 + 20].min(axis=2) < 60).any(), name
    # three 21s make a wider cell than the two 22s; flagged ones get a red frame
    assert layout["21"][3] - layout["21"][1] > layout["22"][3] - layout["22"][1]
    y0, x0, y1, x1 = layout["21"]
    cell = img[y0:y1, x0:x1].astype(int)
    assert ((cell[..., 0] > 180) & (cell[..., 1] < 80)).any()
    png = save_png(img, tmp_path / "k.png")
    assert png.stat().st_size > 1000
    rows = chromosome_table(s["labels"], classes, np.full(len(classes), 0.9), flagged)
    write_csv(rows, tmp_path / "k.csv")
    with open(tmp_path / "k.csv") as fh:
        back = list(csv.DictReader(fh))
    assert len(back) == 47 and back[0]["id"] == "1"
    assert {"class", "confidence", "flagged", "y0", "x0", "y1", "x1", "area"} <= set(back[0])
    assert sum(r["class"] == "21" for r in back) == 3


def test_segmentation_cuts_a_t_junction_along_the_skeleton():
    img = np.full((120, 200), 230, np.uint8)
    img[10:60, 20:28] = 40  # vertical chromosome ...
    img[30:38, 28:70] = 40  # ... with another butting into its side (a T)
    for sl in [np.s_[60:110, 100:108], np.s_[20:28, 120:170], np.s_[40:48, 120:190], np.s_[70:110, 140:148],
               np.s_[70:110, 170:178]]:
        img[sl] = 40  # singles for the size scale
    labels = segment_spread(img)
    assert labels.max() == 7
    assert labels[15, 24] == labels[50, 24] != labels[34, 60]


def test_blank_noise_and_cell_fields_are_refused_with_a_clear_message():
    from napari_cellclass.karyotype.segment import check_spread

    with pytest.raises(InputError, match="blank"):
        segment_spread(np.zeros((200, 200), np.uint8))
    rng = np.random.default_rng(0)
    with pytest.raises(InputError, match="blank"):
        segment_spread((200 + rng.integers(0, 3, (200, 200))).astype(np.uint8))
    with pytest.raises(InputError, match="stain covers"):
        segment_spread(rng.integers(0, 256, (300, 300), dtype=np.uint8))
    # a fluorescence field: a dozen bright cells on black
    field = np.zeros((512, 512), np.uint8)
    yy, xx = np.mgrid[:512, :512]
    for cy, cx in rng.integers(60, 452, (12, 2)):
        field[(yy - cy) ** 2 + (xx - cx) ** 2 < 45 ** 2] = 180
    field = np.clip(field + rng.normal(0, 6, field.shape), 0, 255).astype(np.uint8)
    assert check_spread(field).polarity == "light-on-dark"
    with pytest.raises(InputError, match="fluorescence"):
        segment_spread(field)
    with pytest.raises(InputError, match="MP"):
        check_spread(np.broadcast_to(np.uint8(0), (8000, 8000)))  # refused before any pixel is read


def test_inverted_spread_is_segmented_like_the_original():
    from napari_cellclass.karyotype.segment import check_spread

    s = make_spread(3, "46,XX", size=(512, 512))
    inv = 255 - s["image"]
    assert check_spread(s["image"]).polarity == "dark-on-light"
    c = check_spread(inv)
    assert c.polarity == "light-on-dark" and "inverted" in c.notes[0]
    a, b = segment_spread(s["image"]), segment_spread(inv)
    assert abs(int(a.max()) - int(b.max())) <= 1
    assert ((a > 0) == (b > 0)).mean() > 0.98


@pytest.mark.realdata
def test_real_fluorescence_channel_is_refused_quickly_within_bounded_memory():
    """The 512 px HPA channel that grew napari to 23 GB: now an InputError, in a 3 GB address-space cap."""
    import subprocess
    import sys
    from pathlib import Path

    path = Path(__file__).resolve().parents[2] / ".." / "shared" / "data" / "hpa" / "derived_kaggle_format_512"
    path = path / "800_A6_1_green.png"
    if not path.is_file():
        pytest.skip(f"real data not found: {path}")
    code = (
        "import resource, sys, numpy as np\n"
        "resource.setrlimit(resource.RLIMIT_AS, (3 << 30, 3 << 30))\n"
        "from PIL import Image\n"
        "from napari_cellclass.errors import InputError\n"
        "from napari_cellclass.karyotype.segment import SegmentOptions, segment_spread\n"
        f"img = np.asarray(Image.open({str(path)!r}))\n"
        "try:\n    segment_spread(img)\nexcept InputError as e:\n    print('REFUSED', e)\n"
        "lab = segment_spread(img, SegmentOptions(check_input=False))\n"  # forced through: the old bomb path
        "print('FORCED', int(lab.max()))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "REFUSED" in out.stdout and "fluorescence" in out.stdout
    assert "FORCED" in out.stdout


def test_arm_groups_memory_does_not_grow_with_the_junction_radius():
    """A huge half-width once meant a huge disk for binary dilation (memory ~ disk area squared)."""
    import subprocess
    import sys

    code = (
        "import resource, numpy as np\n"
        "resource.setrlimit(resource.RLIMIT_AS, (3 << 30, 3 << 30))\n"
        "from napari_cellclass.karyotype.segment import _arm_groups\n"
        "r = np.zeros((900, 900), bool)\n"
        "r[100:800, 430:470] = True; r[430:470, 100:800] = True; r[200:240, 470:700] = True\n"
        "g = _arm_groups(r, 150.0)\n"
        "print('OK', None if g is None else int(g.max()))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0 and "OK" in out.stdout, out.stderr[-2000:]

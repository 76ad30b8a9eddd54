"""Synthetic chromosomes/spreads and the chromosome dataset readers."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from napari_cellclass.errors import InputError
from napari_cellclass.io.chromosome_dataset import (
    detect_layout,
    load_crop,
    orient_crop,
    prepare_crop,
    scan_dataset,
    split_by_cell,
    voc_class,
)
from napari_cellclass.synth.chromosomes import (
    CHROMOSOME_CLASSES,
    make_chromosome,
    make_spread,
    napari_sample,
    parse_karyotype,
    write_dataset,
)


def test_classes():
    assert CHROMOSOME_CLASSES == [str(i) for i in range(1, 23)] + ["X", "Y"]


def test_chromosome_deterministic_and_class_specific():
    a, ma = make_chromosome(0, seed=3)
    b, mb = make_chromosome(0, seed=3)
    assert a.dtype == np.uint8 and a.shape == ma.shape and ma.dtype == bool
    assert np.array_equal(a, b) and np.array_equal(ma, mb)
    assert not np.array_equal(a, make_chromosome(0, seed=4)[0])
    # dark on light, and chromosome 1 is longer than chromosome 21
    assert a[ma].mean() < a[~ma].mean() - 40
    assert orient_crop(a, ma).shape[0] > 2 * orient_crop(*make_chromosome(20, seed=3)).shape[0]


def test_spread_46xy():
    sp = make_spread(seed=1, size=(640, 640))
    img, lab = sp["image"], sp["labels"]
    assert img.dtype == np.uint8 and img.shape == (640, 640)
    assert lab.dtype == np.int32 and lab.max() == 46 == len(sp["classes"])
    assert sorted(sp["classes"]).count(CHROMOSOME_CLASSES.index("Y")) == 1
    assert sp["boxes"].shape == (46, 4)
    for i, (y0, x0, y1, x1) in enumerate(sp["boxes"]):
        ys, xs = np.nonzero(lab == i + 1)
        assert (ys.min(), xs.min(), ys.max() + 1, xs.max() + 1) == (y0, x0, y1, x1)
    assert sp["nucleus"].any() and not (sp["nucleus"] & (lab > 0)).any()
    again = make_spread(seed=1, size=(640, 640))
    assert np.array_equal(again["image"], img) and again["classes"] == sp["classes"]


@pytest.mark.parametrize("kary,n,extra", [("47,XX,+21", 47, "21"), ("45,X", 45, None), ("47,XXY", 47, "Y")])
def test_spread_abnormal(kary, n, extra):
    classes = parse_karyotype(kary)
    assert len(classes) == n
    if extra == "21":
        assert classes.count(20) == 3
    if extra == "Y":
        assert classes.count(23) == 1 and classes.count(22) == 2
    sp = make_spread(seed=2, karyotype=classes, size=(640, 640), nucleus=False)
    assert sp["labels"].max() == n and not sp["nucleus"].any()


def test_parse_karyotype_errors():
    with pytest.raises(InputError):
        parse_karyotype("46,XY,+21")  # count does not match
    with pytest.raises(InputError):
        parse_karyotype("hello")


def test_napari_sample():
    layers = napari_sample()
    assert [t for _, _, t in layers] == ["image", "labels"]
    assert layers[1][0].max() == 46


def test_write_dataset_and_scan(tmp_path):
    root = write_dataset(tmp_path / "ds", n_cells=2, seed=0)
    assert detect_layout(root) == "class_folders"
    samples = scan_dataset(root)
    assert len(samples) == 92
    assert {s.cell for s in samples} == {"cell000", "cell001"}
    assert sum(s.class_name == "Y" for s in samples) == 1  # cell 0 is 46,XX, cell 1 is 46,XY
    train, val = split_by_cell(samples, 0.5, seed=0)
    assert {s.cell for s in train}.isdisjoint({s.cell for s in val}) and len(train) + len(val) == 92
    # same seed -> same files
    root2 = write_dataset(tmp_path / "ds2", n_cells=2, seed=0)
    f = sorted((root / "7").iterdir())[0]
    assert np.array_equal(np.asarray(Image.open(f)), np.asarray(Image.open(root2 / "7" / f.name)))


def test_prepare_crop_orients_and_normalises():
    img, mask = make_chromosome(2, seed=5, rotate=True)
    x = prepare_crop(img, mask, size=(64, 68))
    assert x.shape == (64, 68) and x.dtype == np.float32
    assert 0 <= x.min() and x.max() <= 1.0001
    ys, xs = np.nonzero(x > 0.2)
    assert np.ptp(ys) > 1.5 * np.ptp(xs)  # long axis vertical
    border = np.concatenate([x[0], x[-1], x[:, 0], x[:, -1]])
    assert np.median(border) < 0.05 and x.max() > 0.8  # background dark (polarity flipped)
    # bright-on-dark input (Q-band) gives the same picture as its inverse
    y = prepare_crop(255 - img, None, size=(64, 68))
    assert np.corrcoef(x.ravel(), y.ravel())[0, 1] > 0.9
    # pad_to keeps a short chromosome small on the canvas
    small = prepare_crop(*make_chromosome(20, seed=5), size=(64, 68), pad_to=90)
    assert (small > 0.2).sum() < 0.5 * (x > 0.2).sum()
    with pytest.raises(InputError):
        prepare_crop(np.zeros((1, 5), np.uint8))


def test_bioimlab_names(tmp_path):
    for cell, names in {"1": ["1 1a", "1 1b", "1 23a", "1 23b"], "2": ["2 1a", "2 23", "2 24"]}.items():
        (tmp_path / cell).mkdir()
        for n in names:
            img, _ = make_chromosome(0, seed=len(n))
            Image.fromarray(255 - img).save(tmp_path / cell / f"{n}.bmp")
    assert detect_layout(tmp_path) == "bioimlab"
    s = scan_dataset(tmp_path)
    assert sorted((x.cell, x.class_name) for x in s) == sorted(
        [("1", "1"), ("1", "1"), ("1", "X"), ("1", "X"), ("2", "1"), ("2", "X"), ("2", "Y")])


def test_voc_spreads(tmp_path):
    sp = make_spread(seed=4, size=(512, 512), nucleus=False)
    (tmp_path / "images").mkdir()
    (tmp_path / "annotations").mkdir()
    Image.fromarray(sp["image"]).save(tmp_path / "images" / "s1.jpg")
    groups = {1: "A", 2: "A", 3: "A", 4: "B", 5: "B", 21: "G", 22: "G"}
    objs = []
    for c, (y0, x0, y1, x1) in zip(sp["classes"], sp["boxes"]):
        name = CHROMOSOME_CLASSES[c]
        if name.isdigit():
            k = int(name)
            name = groups.get(k, "C" if k <= 12 else "D" if k <= 15 else "E" if k <= 18 else "F") + name
        objs.append(f"<object><name>{name}</name><bndbox><xmin>{x0}</xmin><ymin>{y0}</ymin>"
                    f"<xmax>{x1}</xmax><ymax>{y1}</ymax></bndbox></object>")
    (tmp_path / "annotations" / "s1.xml").write_text(
        f"<annotation><filename>s1.jpg</filename>{''.join(objs)}</annotation>")
    assert detect_layout(tmp_path) == "spreads"
    samples = scan_dataset(tmp_path)
    assert [s.label for s in samples] == sp["classes"]
    crop = load_crop(samples[0])
    y0, x0, y1, x1 = sp["boxes"][0]
    assert crop.shape == (y1 - y0, x1 - x0)
    assert voc_class("G21") == 20 and voc_class("X") == 22 and voc_class("a1") == 0
    with pytest.raises(InputError):
        voc_class("Z9")


def test_not_a_dataset(tmp_path):
    (tmp_path / "foo").mkdir()
    with pytest.raises(InputError):
        scan_dataset(tmp_path)


@pytest.mark.realdata
def test_real_bioimlab(shared_data: Path):
    root = shared_data / "chromosomes" / "qband_bioimlab"
    if not root.is_dir():
        pytest.skip("BioImLab data absent")
    samples = scan_dataset(root)
    assert len(samples) > 4000
    assert {s.label for s in samples} == set(range(24))
    assert len({s.cell for s in samples}) == len([p for p in root.iterdir() if p.is_dir()])
    train, val = split_by_cell(samples, 0.2, seed=0)
    assert {s.cell for s in train}.isdisjoint({s.cell for s in val})
    x = prepare_crop(load_crop(samples[0]), size=(64, 68), pad_to=100)
    assert x.shape == (64, 68) and x.max() > 0.5


@pytest.mark.realdata
def test_real_gband_spreads(shared_data: Path):
    root = shared_data / "chromosomes" / "tseng2023_gband_spreads"
    if not root.is_dir():
        pytest.skip("Tseng 2023 spreads absent")
    samples = scan_dataset(root)
    assert len({s.cell for s in samples}) >= 100 and {s.label for s in samples} == set(range(24))
    crop = load_crop(samples[0])
    x = prepare_crop(crop, size=(64, 68))
    assert x.shape == (64, 68) and x.max() > 0.5


def _crop_files(root: Path, names: dict[str, list[str]]) -> Path:
    rng = np.random.default_rng(0)
    for cls, stems in names.items():
        (root / cls).mkdir(parents=True, exist_ok=True)
        for stem in stems:
            a = np.full((30, 12), 230, np.uint8)
            a[4:26, 3:9] = rng.integers(20, 120, (22, 6))
            Image.fromarray(a).save(root / cls / f"{stem}.png")
    return root


def test_one_class_per_cell_is_refused_with_the_expected_pattern(tmp_path):
    # every crop named by its own class: each "cell" holds one class, a split by cell is a split by class
    root = _crop_files(tmp_path / "ds", {"1": ["one_a", "one_b"], "2": ["two_a", "two_b"], "X": ["x_a"]})
    with pytest.raises(InputError, match=r"one class only.*'<cell>_<anything>\.<ext>'"):
        scan_dataset(root)


def test_patient_karyotype_names_split_by_patient(tmp_path):
    stems = [f"{p}-{k}_{i}" for p in ("p1", "p2", "p3", "p4", "p5") for k in (1, 2) for i in range(2)]
    root = _crop_files(tmp_path / "lab2", {"1": stems, "2": stems})
    samples = scan_dataset(root)
    assert {s.cell for s in samples} == {f"p{p}-{k}" for p in range(1, 6) for k in (1, 2)}  # scale unit
    train, val = split_by_cell(samples, 0.4, seed=0)
    patients = lambda ss: {s.cell.split("-")[0] for s in ss}  # noqa: E731
    assert patients(train).isdisjoint(patients(val)) and len(patients(val)) == 2


def test_sources_list_keeps_each_folder_split(tmp_path):
    a = write_dataset(tmp_path / "labA", n_cells=5, seed=0)
    stems = [f"{p}-{k}_{i}" for p in ("p1", "p2", "p3", "p4") for k in (1, 2) for i in range(2)]
    b = _crop_files(tmp_path / "labB", {"3": stems, "X": stems})
    (tmp_path / "sources.txt").write_text("# two labs\nlabA\nlabB   # patients\n\n")
    assert detect_layout(tmp_path / "sources.txt") == "sources"
    samples = scan_dataset(tmp_path / "sources.txt")
    assert {s.source for s in samples} == {"labA", "labB"}
    train, val = split_by_cell(samples, 0.4, seed=0)
    alone_train, alone_val = split_by_cell(scan_dataset(a), 0.4, seed=0)
    assert sorted(s.path for s in val if s.source == "labA") == sorted(s.path for s in alone_val)
    assert {s.source for s in val} == {"labA", "labB"}
    (tmp_path / "bad.txt").write_text("labA\nmissing_folder\n")
    with pytest.raises(InputError, match="line 2.*missing_folder"):
        scan_dataset(tmp_path / "bad.txt")
    assert b.is_dir()


def test_sources_list_reports_what_each_folder_skipped(tmp_path):
    from napari_cellclass.io.chromosome_dataset import LAST_SCAN

    stems = [f"{p}-{k}_{i}" for p in ("p1", "p2") for k in (1, 2) for i in range(2)]
    _crop_files(tmp_path / "labA", {"1": stems, "2": stems})
    _crop_files(tmp_path / "labB", {"3": stems, "X": stems})
    (tmp_path / "labA" / "7").mkdir()  # an empty class folder in the first folder: skipped, and said so
    (tmp_path / "sources.txt").write_text("labA\nlabB\n")
    scan_dataset(tmp_path / "sources.txt")
    assert [p.name for p in LAST_SCAN.skipped["empty class folder(s)"]] == ["7"]
    scan_dataset(tmp_path / "labB")  # a later scan does not inherit it
    assert not LAST_SCAN.skipped

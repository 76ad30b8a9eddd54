"""Every file a data set loader opens lies inside the data set (issue 24, part 2).

The loaders run under a Python audit hook (``sys.addaudithook``, event ``open``) on
adversarial data sets: HPA ``train.csv`` Ids with ``..`` or an absolute path, chromosome
class folders, VOC and COCO files naming files outside, and symbolic links leading out.
Any open outside the data set (other than the Python installation, site-packages and
the test's own output folder) fails the test; a refusal must be a one-line
:class:`CellClassError`.
"""
from __future__ import annotations

import json
import os
import site
import sys
import sysconfig
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from napari_cellclass.errors import CellClassError

_WATCH: dict[str, object] = {"roots": None, "outside": []}


def _hook(event: str, args: tuple) -> None:
    if event != "open" or _WATCH["roots"] is None or not args:
        return
    path = args[0]
    if isinstance(path, int):  # an already-open descriptor
        return
    try:
        real = os.path.realpath(os.fsdecode(path))
    except (TypeError, ValueError):
        return
    if not any(real == r or real.startswith(r + os.sep) for r in _WATCH["roots"]):
        _WATCH["outside"].append(real)


sys.addaudithook(_hook)  # cannot be removed: it only records while a test watches


def _library_roots() -> list[str]:
    roots = {sys.prefix, sys.base_prefix, sys.exec_prefix, *site.getsitepackages(), site.getusersitepackages()}
    roots |= {p for p in sysconfig.get_paths().values() if p}
    roots |= {os.path.dirname(os.path.dirname(os.path.abspath(__import__("napari_cellclass").__file__)))}
    roots |= {os.path.dirname(os.path.dirname(os.path.abspath(__file__)))}  # the tests (warnings show their lines)
    # what the libraries read about the machine (CPU features, time zone), never a data set's files
    roots |= {"/dev/null", "/dev/urandom", "/proc/self", "/proc/cpuinfo", "/sys/devices/system/cpu",
              "/sys/fs/cgroup", "/etc/localtime", "/usr/share/zoneinfo"}
    return [os.path.realpath(r) for r in roots if r]


@contextmanager
def opens_confined_to(*folders: Path):
    """Fail when anything under the block opens a file outside ``folders`` (and the library)."""
    _WATCH["outside"] = []
    _WATCH["roots"] = [os.path.realpath(f) for f in folders] + _library_roots()
    try:
        yield
    finally:
        _WATCH["roots"] = None
    outside = list(dict.fromkeys(_WATCH["outside"]))
    assert not outside, f"opened outside the data set: {outside}"


def _png(path: Path, value: int | None = None, size=(32, 32), rgb: bool = False) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(len(str(path)))
    shape = size + ((3,) if rgb else ())
    a = rng.integers(0, 255, shape).astype(np.uint8) if value is None else np.full(shape, value, np.uint8)
    Image.fromarray(a).save(path)
    return path


@pytest.fixture()
def outside(tmp_path):
    """A folder beside the data set with files an attacker would like the plugin to read."""
    d = tmp_path / "outside_secret"
    for c in ("red", "green", "blue", "yellow"):
        _png(d / f"victim_{c}.png")
    _png(d / "victim.png", rgb=True)
    _png(d / "victim_gray.png")
    return d


def _run_refused_or_confined(fn, data: Path, out: Path):
    with opens_confined_to(data, out):
        try:
            return fn()
        except CellClassError as exc:
            assert "\n" not in str(exc)
            return exc


# ----------------------------------------------------------------------------- HPA

@pytest.mark.parametrize("bad_id", ["../outside_secret/victim", "../../outside_secret/victim", "ABSOLUTE"])
def test_hpa_ids_that_leave_the_data_set_are_refused(tmp_path, outside, bad_id):
    from napari_cellclass.io import hpa_dataset as D

    data = tmp_path / "hpa"
    for c in ("red", "green", "blue", "yellow"):
        _png(data / "train" / f"good_{c}.png")
    if bad_id == "ABSOLUTE":
        bad_id = str(outside / "victim")
    (data / "train.csv").write_text(f"Id,Target\ngood,0\n{bad_id},1\n")

    def load():
        items = D.read_labels(D.find_csv(data))
        folder = D.image_folder(data)
        return [D.load_set(folder, it.set_id) for it in items]

    res = _run_refused_or_confined(load, data, tmp_path / "out")
    assert isinstance(res, CellClassError) and "Id" in str(res) and "train.csv" in str(res)


def test_hpa_channel_link_leading_out_is_refused(tmp_path, outside):
    from napari_cellclass.io import hpa_dataset as D

    data = tmp_path / "hpa"
    for c in ("red", "green", "blue", "yellow"):
        (data / "train").mkdir(parents=True, exist_ok=True)
        os.symlink(outside / f"victim_{c}.png", data / "train" / f"linked_{c}.png")
    (data / "train.csv").write_text("Id,Target\nlinked,0\n")

    def load():
        items = D.read_labels(D.find_csv(data))
        return [D.load_set(D.image_folder(data), it.set_id) for it in items]

    res = _run_refused_or_confined(load, data, tmp_path / "out")
    assert isinstance(res, CellClassError) and "outside the data set" in str(res)


def test_train_hpa_refuses_an_escaping_id(tmp_path, outside, capsys):
    """``train hpa`` exits 2 naming the Id, and opens nothing outside."""
    from napari_cellclass.cli import main

    data = tmp_path / "hpa"
    for k in range(3):
        for c in ("red", "green", "blue", "yellow"):
            _png(data / "train" / f"g{k}_{c}.png")
    (data / "train.csv").write_text("Id,Target\ng0,0\ng1,1\ng2,0\n../../outside_secret/victim,1\n")
    with opens_confined_to(data, tmp_path / "run"):
        code = main(["train", "hpa", str(data), "--out", str(tmp_path / "run"), "--quick", "--epochs", "1",
                     "--device", "cpu", "--quiet"])
    err = capsys.readouterr().err
    assert code == 2 and "Id" in err and "outside" in err and len(err.strip().splitlines()) == 1


# ----------------------------------------------------------------------------- chromosome class folders

def test_chromosome_class_folder_links_leading_out(tmp_path, outside):
    from napari_cellclass.io import chromosome_dataset as C

    data = tmp_path / "chrom"
    for cls in ("1", "2"):
        for k in range(2):
            _png(data / cls / f"cell{k}_{cls}.png", size=(40, 16))
    os.symlink(outside / "victim_gray.png", data / "1" / "cell9_1.png")  # a file link
    os.symlink(outside, data / "2" / "sub")  # a folder link

    def load():
        samples = C.scan_dataset(data)
        return [C.load_crop(s) for s in samples]

    _run_refused_or_confined(load, data, tmp_path / "out")


# ----------------------------------------------------------------------------- VOC / COCO detection folders

def _voc(path: Path, filename: str, w: int = 32, h: int = 32) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"<annotation><filename>{filename}</filename><size><width>{w}</width><height>{h}</height>"
                    "<depth>3</depth></size><object><name>RBC</name><bndbox><xmin>2</xmin><ymin>2</ymin>"
                    "<xmax>20</xmax><ymax>20</ymax></bndbox></object></annotation>")


@pytest.mark.parametrize("name", ["../../outside_secret/victim.png", "ABSOLUTE", "link.png"])
def test_voc_file_names_and_links_stay_inside(tmp_path, outside, name):
    from napari_cellclass.io.detection_dataset import load_dataset

    data = tmp_path / "voc"
    _png(data / "JPEGImages" / "ok.png", rgb=True)
    _voc(data / "Annotations" / "ok.xml", "ok.png")
    if name == "ABSOLUTE":
        name = str(outside / "victim.png")
    if name == "link.png":
        os.symlink(outside / "victim.png", data / "JPEGImages" / "link.png")
    _voc(data / "Annotations" / "bad.xml", name)

    def load():
        ds = load_dataset(data)
        return [ds.image(i) for i in range(len(ds))]

    _run_refused_or_confined(load, data, tmp_path / "out")


@pytest.mark.parametrize("name", ["../outside_secret/victim.png", "ABSOLUTE", "link.png"])
def test_coco_file_names_and_links_stay_inside(tmp_path, outside, name):
    from napari_cellclass.io.detection_dataset import load_dataset

    data = tmp_path / "coco"
    _png(data / "ok.png", rgb=True)
    if name == "ABSOLUTE":
        name = str(outside / "victim.png")
    if name == "link.png":
        os.symlink(outside / "victim.png", data / "link.png")
    coco = {"images": [{"id": 1, "file_name": "ok.png", "width": 32, "height": 32},
                       {"id": 2, "file_name": name, "width": 32, "height": 32}],
            "annotations": [{"id": k, "image_id": k, "category_id": 1, "bbox": [2, 2, 10, 10], "area": 100,
                             "iscrowd": 0} for k in (1, 2)],
            "categories": [{"id": 1, "name": "RBC"}]}
    (data / "ann.json").write_text(json.dumps(coco))

    def load():
        ds = load_dataset(data / "ann.json")
        return [ds.image(i) for i in range(len(ds))]

    _run_refused_or_confined(load, data, tmp_path / "out")


# ----------------------------------------------------------------------------- WBC class folders

def test_wbc_class_folder_links_leading_out(tmp_path, outside):
    from napari_cellclass.io import wbc_dataset as W

    data = tmp_path / "wbc"
    for cls in ("NEUTROPHIL", "LYMPHOCYTE"):
        for k in range(2):
            _png(data / cls / f"c{k}.png", rgb=True)
    os.symlink(outside / "victim.png", data / "NEUTROPHIL" / "c9.png")

    def load():
        recs = W.find_records(data)
        return W.load_crops(recs, 16)

    _run_refused_or_confined(load, data, tmp_path / "out")

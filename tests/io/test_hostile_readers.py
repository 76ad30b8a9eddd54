"""Hostile annotation files: COCO numbers and nesting, VOC coordinates at 1e300 (issue 24).

Before: a 400-digit integer gave a raw ``OverflowError``, JSON nested 100,000 deep a
``RecursionError``, and ``train detect`` on a VOC box with ``xmax=1e300`` and no
``<size>`` died inside ``roi_align`` with exit 139, printing nothing.
"""
from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
from bench_utils import load_benchmark

from napari_cellclass.errors import InputError



B = load_benchmark("memory_budget")


@pytest.mark.parametrize("kind, match", [("bigint", "number|not numbers"), ("deep", "nested too deeply")])
def test_coco_numbers_and_nesting_are_one_line(tmp_path, kind, match):
    from napari_cellclass.io import annotation_reader as A
    from napari_cellclass.io.detection_dataset import load_dataset

    folder = B.coco_with(tmp_path / kind, kind)
    js = folder / "annotations.json"
    for fn in (lambda: load_dataset(folder), lambda: load_dataset(js), lambda: A.get_reader(str(js))(str(js))):
        with pytest.raises(InputError, match=match) as info:
            fn()
        assert "annotations.json" in str(info.value) and "\n" not in str(info.value)


def test_voc_box_at_1e300_is_refused_naming_the_file(tmp_path):
    from napari_cellclass.io.detection_dataset import load_dataset

    folder = B.voc_absurd_box(tmp_path / "voc")
    with pytest.raises(InputError, match=r"x1=1e\+300") as info:
        load_dataset(folder)
    assert "img5.xml" in str(info.value)


@pytest.mark.parametrize("value", ["nan", "inf", "-1e30"])
def test_voc_non_finite_or_absurd_coordinates_are_refused(tmp_path, value):
    from napari_cellclass.io.detection_dataset import load_dataset

    folder = B.voc_absurd_box(tmp_path / "voc")
    xml = folder / "Annotations" / "img5.xml"
    xml.write_text(xml.read_text().replace("<xmin>30</xmin>", f"<xmin>{value}</xmin>"))
    with pytest.raises(InputError) as info:
        load_dataset(folder)
    assert "img5.xml" in str(info.value)


def test_voc_box_past_the_image_without_size_is_clipped_on_reading(tmp_path):
    """No <size>: the box is clipped once the image's size is known, so no kernel sees it."""
    from napari_cellclass.io.detection_dataset import load_dataset

    folder = B.voc_absurd_box(tmp_path / "voc")
    xml = folder / "Annotations" / "img5.xml"
    xml.write_text(xml.read_text().replace("1e300", "5000"))
    ds = load_dataset(folder)
    k = [i for i, it in enumerate(ds.items) if it.source.name == "img5.xml"][0]
    img = ds.image(k)
    assert ds.items[k].boxes.max() <= img.shape[1]
    assert np.allclose(ds.items[k].boxes[0], [30, 20, 96, 50])


def test_voc_box_wholly_outside_the_image_names_the_file(tmp_path):
    from napari_cellclass.io.detection_dataset import load_dataset

    folder = B.voc_absurd_box(tmp_path / "voc")
    xml = folder / "Annotations" / "img5.xml"
    xml.write_text(xml.read_text().replace("<xmin>30</xmin>", "<xmin>4000</xmin>").replace("1e300", "5000"))
    ds = load_dataset(folder)
    k = [i for i, it in enumerate(ds.items) if it.source.name == "img5.xml"][0]
    with pytest.raises(InputError, match="outside the 96x96 image") as info:
        ds.image(k)
    assert "img5.xml" in str(info.value)


@pytest.mark.slow
def test_train_detect_on_a_1e300_box_does_not_crash(tmp_path):
    """The CLI in a fresh process: no segfault (rc -11 / 139), one line naming the annotation."""
    folder = B.voc_absurd_box(tmp_path / "voc")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CELLCLASS_ALLOW_DOWNLOAD": "0"}
    p = subprocess.run([sys.executable, "-m", "napari_cellclass.cli", "train", "detect", str(folder), "--out",
                        str(tmp_path / "run"), "--device", "cpu", "--quick", "--epochs", "1"],
                       capture_output=True, text=True, timeout=300, env=env)
    assert p.returncode not in (-11, 139), p.stderr[-500:]
    assert p.returncode == 2
    last = [ln for ln in p.stderr.splitlines() if ln.startswith("cellclass:")]
    assert len(last) == 1 and "img5.xml" in last[0] and "1e+300" in last[0], p.stderr[-500:]

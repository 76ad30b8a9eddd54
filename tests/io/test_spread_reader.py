"""Spread reader: images with a VOC/COCO sidecar open as gray image + shapes; others are declined."""
from __future__ import annotations

import json

import numpy as np
from PIL import Image

from napari_cellclass.io.spread_reader import find_sidecar, get_reader

VOC = """<annotation><filename>{name}</filename><size><width>{w}</width><height>{h}</height><depth>3</depth></size>
{objects}</annotation>"""
OBJ = ("<object><name>{label}</name><bndbox><xmin>{x0}</xmin><ymin>{y0}</ymin><xmax>{x1}</xmax>"
       "<ymax>{y1}</ymax></bndbox></object>")


def _spread(path, rgb=True):
    img = np.full((60, 80, 3) if rgb else (60, 80), 220, np.uint8)
    img[10:40, 10:16] = 30
    Image.fromarray(img).save(path)


def test_voc_sidecar_opens_gray_image_and_shapes(tmp_path):
    p = tmp_path / "cell1.jpg"
    _spread(p)
    objs = "".join([OBJ.format(label="A1", x0=9, y0=9, x1=17, y1=41), OBJ.format(label="X", x0=50, y0=5, x1=60,
                                                                                 y1=30)])
    (tmp_path / "cell1.xml").write_text(VOC.format(name="cell1.jpg", w=80, h=60, objects=objs))
    reader = get_reader(str(p))
    assert reader is not None
    layers = reader(str(p))
    (img, img_kw, kind), (shapes, sh_kw, kind2) = layers
    assert kind == "image" and img.shape == (60, 80) and img.dtype == np.uint8
    assert kind2 == "shapes" and len(shapes) == 2
    assert list(sh_kw["features"]["label"]) == ["A1", "X"]
    # napari order (row, col): the first box spans rows 9..41, columns 9..17
    s0 = np.asarray(shapes[0])
    assert s0[:, 0].min() == 9 and s0[:, 0].max() == 41 and s0[:, 1].max() == 17


def test_voc_layout_with_sibling_annotations_folder(tmp_path):
    (tmp_path / "images").mkdir()
    (tmp_path / "annotations").mkdir()
    p = tmp_path / "images" / "s.png"
    _spread(p, rgb=False)
    (tmp_path / "annotations" / "s.xml").write_text(
        VOC.format(name="s.png", w=80, h=60, objects=OBJ.format(label="B4", x0=1, y0=1, x1=5, y1=5)))
    assert find_sidecar(p) == tmp_path / "annotations" / "s.xml"
    assert len(get_reader(p)(p)) == 2


def test_coco_sidecar(tmp_path):
    p = tmp_path / "c.png"
    _spread(p)
    coco = {"images": [{"id": 1, "file_name": "c.png", "width": 80, "height": 60}],
            "categories": [{"id": 1, "name": "21"}],
            "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [10, 10, 6, 30],
                             "segmentation": [[10, 10, 16, 10, 16, 40, 10, 40]], "area": 180, "iscrowd": 0}]}
    (tmp_path / "c.json").write_text(json.dumps(coco))
    layers = get_reader(str(p))(str(p))
    assert layers[1][1]["features"]["label"].tolist() == ["21"]


def test_images_without_sidecar_are_not_claimed(tmp_path):
    p = tmp_path / "plain.png"
    _spread(p)
    assert get_reader(str(p)) is None
    assert get_reader(str(tmp_path / "notes.txt")) is None
    assert get_reader([str(p), str(p)]) is None

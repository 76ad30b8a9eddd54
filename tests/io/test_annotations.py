"""VOC / COCO readers: real BCCD XML, generated files, and every refusal."""
from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest

from napari_cellclass.errors import InputError
from napari_cellclass.io.annotations import is_coco, is_voc, read_coco, read_voc


def _voc(tmp_path: Path, objects: str, size: str = "<size><width>100</width><height>80</height><depth>3</depth></size>") -> Path:
    p = tmp_path / "a.xml"
    p.write_text(f"<annotation><filename>a.png</filename>{size}{objects}</annotation>")
    return p


def _obj(name: str, x0, y0, x1, y1, extra: str = "") -> str:
    return (f"<object><name>{name}</name><difficult>0</difficult>{extra}<bndbox><xmin>{x0}</xmin><ymin>{y0}</ymin>"
            f"<xmax>{x1}</xmax><ymax>{y1}</ymax></bndbox></object>")


def test_voc_generated(tmp_path):
    p = _voc(tmp_path, _obj("A", 10, 20, 30, 40, "<score>0.9</score>") + _obj("B", 50, 5, 60, 15))
    (tmp_path / "a.png").write_bytes(b"x")
    a = read_voc(p)
    assert a.width == 100 and a.height == 80
    assert a.labels == ["A", "B"]
    np.testing.assert_allclose(a.boxes, [[10, 20, 30, 40], [50, 5, 60, 15]])
    assert a.attributes[0]["score"] == pytest.approx(0.9) and a.attributes[0]["difficult"] == 0
    assert a.polygons == [None, None]
    assert a.image_path == tmp_path / "a.png"
    assert is_voc(p)


def test_voc_polygon_cvat_style(tmp_path):
    poly = "<polygon><x1>10</x1><y1>10</y1><x2>30</x2><y2>10</y2><x3>20</x3><y3>30</y3></polygon>"
    a = read_voc(_voc(tmp_path, f"<object><name>N</name>{poly}</object>"))
    np.testing.assert_allclose(a.boxes, [[10, 10, 30, 30]])
    assert a.polygons[0].shape == (3, 2)


@pytest.mark.parametrize(
    "objects, msg",
    [
        (_obj("A", 30, 20, 10, 40), "inverted box"),
        (_obj("A", 200, 200, 210, 210), "entirely outside"),
        ("<object><name>A</name></object>", "neither <bndbox> nor <polygon>"),
        ("<object><bndbox><xmin>1</xmin></bndbox></object>", "no <name>"),
        (_obj("A", "x", 1, 2, 3), "not a number"),
    ],
)
def test_voc_refusals(tmp_path, objects, msg):
    with pytest.raises(InputError, match=msg) as info:
        read_voc(_voc(tmp_path, objects))
    assert "a.xml" in str(info.value)


def test_voc_malformed_and_foreign(tmp_path):
    bad = tmp_path / "bad.xml"
    bad.write_text("<annotation><object>")
    with pytest.raises(InputError, match="malformed XML"):
        read_voc(bad)
    other = tmp_path / "svg.xml"
    other.write_text("<svg></svg>")
    with pytest.raises(InputError, match="not a Pascal VOC"):
        read_voc(other)
    assert not is_voc(other)
    assert is_voc(bad)  # claimed by its root tag, so the reader reports the damage instead of ignoring it


def test_voc_clips_and_drops(tmp_path):
    objs = _obj("A", -3, 10, 20, 90) + _obj("B", 5, 5, 5, 9)
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        a = read_voc(_voc(tmp_path, objs))
    np.testing.assert_allclose(a.boxes, [[0, 10, 20, 80]])
    assert a.attributes[0]["clipped"] is True
    assert len(a.notes) == 1 and "zero width" in a.notes[0] and w


def _coco(tmp_path: Path, anns: list, images=None, cats=None) -> Path:
    data = {
        "images": images or [{"id": 1, "file_name": "im.png", "width": 64, "height": 48},
                             {"id": 2, "file_name": "empty.png", "width": 64, "height": 48}],
        "annotations": anns,
        "categories": cats or [{"id": 1, "name": "cell"}, {"id": 2, "name": "debris"}],
    }
    p = tmp_path / "c.json"
    p.write_text(json.dumps(data))
    return p


def test_coco_polygon_and_rle(tmp_path):
    from pycocotools import mask as mask_utils

    m = np.zeros((48, 64), dtype=np.uint8, order="F")
    m[10:20, 30:45] = 1
    rle = mask_utils.encode(m)
    rle["counts"] = rle["counts"].decode()
    anns = [
        {"id": 1, "image_id": 1, "category_id": 1, "bbox": [5, 6, 10, 8], "iscrowd": 0,
         "segmentation": [[5, 6, 15, 6, 15, 14, 5, 14]], "score": 0.8, "area": 80},
        {"id": 2, "image_id": 1, "category_id": 2, "segmentation": rle},
    ]
    p = _coco(tmp_path, anns)
    assert is_coco(p)
    ims = read_coco(p)
    assert len(ims) == 2 and len(ims[1]) == 0  # the empty image is kept
    a = ims[0]
    assert a.labels == ["cell", "debris"]
    np.testing.assert_allclose(a.boxes[0], [5, 6, 15, 14])
    np.testing.assert_allclose(a.boxes[1], [30, 10, 45, 20])  # from the RLE extent
    assert a.attributes[0]["score"] == 0.8 and "area" not in a.attributes[0]
    assert a.polygons[0].shape == (4, 2)
    assert a.masks[1].sum() == m.sum() and a.polygons[1] is not None
    # uncompressed RLE decodes too
    un = {"size": [48, 64], "counts": _uncompressed_counts(m)}
    a2 = read_coco(_coco(tmp_path, [{"id": 3, "image_id": 1, "category_id": 1, "segmentation": un}]))[0]
    assert a2.masks[0].sum() == m.sum()


def _uncompressed_counts(m: np.ndarray) -> list[int]:
    flat = m.flatten(order="F")
    counts, cur, run = [], 0, 0
    for v in flat:
        if v != cur:
            counts.append(run)
            cur, run = v, 0
        run += 1
    counts.append(run)
    return counts


@pytest.mark.parametrize(
    "anns, msg",
    [
        ([{"id": 1, "image_id": 9, "category_id": 1, "bbox": [1, 1, 2, 2]}], "unknown image_id"),
        ([{"id": 1, "image_id": 1, "category_id": 7, "bbox": [1, 1, 2, 2]}], "unknown category_id"),
        ([{"id": 1, "image_id": 1, "category_id": 1, "bbox": [1, 1, -2, 2]}], "inverted"),
        ([{"id": 1, "image_id": 1, "category_id": 1}], "lacks both"),
        ([{"id": 1, "image_id": 1, "bbox": [1, 1, 2, 2]}], "lacks 'category_id'"),
        ([{"id": 1, "image_id": 1, "category_id": 1, "bbox": [100, 100, 2, 2]}], "entirely outside"),
    ],
)
def test_coco_refusals(tmp_path, anns, msg):
    with pytest.raises(InputError, match=msg) as info:
        read_coco(_coco(tmp_path, anns))
    assert "c.json" in str(info.value)


def test_coco_malformed(tmp_path):
    p = tmp_path / "x.json"
    p.write_text("{not json")
    with pytest.raises(InputError, match="malformed JSON"):
        read_coco(p)
    p.write_text(json.dumps({"images": []}))
    with pytest.raises(InputError, match="'annotations'"):
        read_coco(p)
    assert not is_coco(p)


@pytest.mark.realdata
def test_voc_real_bccd(shared_data):
    ann = shared_data / "bccd" / "Annotations"
    counts: dict[str, int] = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        files = sorted(ann.glob("*.xml"))
        for p in files:
            a = read_voc(p)
            assert a.image_path is not None and a.image_path.is_file()
            assert a.width == 640 and a.height == 480
            assert np.all(a.boxes[:, 2] > a.boxes[:, 0]) and np.all(a.boxes[:, 3] > a.boxes[:, 1])
            for lab in a.labels:
                counts[lab] = counts.get(lab, 0) + 1
    assert len(files) > 250
    assert set(counts) == {"RBC", "WBC", "Platelets"}
    assert counts["RBC"] > counts["WBC"] > 0


def test_roundtrip_through_plugin_writers(tmp_path):
    """Files written by io/writers.py (VOC and COCO) read back with the same boxes, labels and scores."""
    import pandas as pd

    from napari_cellclass.io import writers

    rects = [np.array([[10, 20], [10, 40], [30, 40], [30, 20]]), np.array([[50, 5], [50, 25], [60, 25], [60, 5]])]
    attrs = {"features": pd.DataFrame({"label": ["A", "B"], "score": [0.9, 0.5]}),
             "shape_type": ["rectangle", "rectangle"], "name": "x", "metadata": {}}
    writers.write_shapes_voc(str(tmp_path / "rt.xml"), rects, attrs)
    writers.write_shapes_coco(str(tmp_path / "rt.json"), rects, attrs)
    for a in (read_voc(tmp_path / "rt.xml"), read_coco(tmp_path / "rt.json")[0]):
        np.testing.assert_allclose(a.boxes, [[20, 10, 40, 30], [5, 50, 25, 60]])  # x0, y0, x1, y1
        assert a.labels == ["A", "B"] and [x["score"] for x in a.attributes] == [0.9, 0.5]

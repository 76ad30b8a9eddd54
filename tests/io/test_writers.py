"""Writers: refusals happen before writing; failures mid-write leave the old file and no temporaries."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from napari_cellclass.errors import InputError
from napari_cellclass.io import writers as W
from napari_cellclass.io.layer_reader import get_reader

RECT = np.array([[1.0, 2.0], [1.0, 8.0], [5.0, 8.0], [5.0, 2.0]])
POLY = np.array([[1.0, 1.0], [4.0, 2.5], [2.0, 6.0]])


def _labels() -> np.ndarray:
    lab = np.zeros((16, 20), np.int32)
    lab[2:6, 3:9] = 1
    lab[9:14, 10:18] = 2
    return lab


def _snapshot(folder: Path) -> dict[str, bytes]:
    out = {}
    for root, _dirs, files in os.walk(folder):
        for f in files:
            p = Path(root) / f
            out[str(p.relative_to(folder))] = p.read_bytes()
    return out


# ----------------------------------------------------------------------------- refusals

@pytest.mark.parametrize(
    "writer, name, data, attrs, needle",
    [
        (W.write_labels_zarr, "a.zarr", np.zeros((4, 4), np.float32), {}, "integers"),
        (W.write_labels_tiff, "a.tif", np.zeros((4, 4), np.float64), {}, "integers"),
        (W.write_labels_tiff, "a.tif", np.zeros(5, np.uint8), {}, "2 to 5 dimensions"),
        (W.write_labels_zarr, "a.zarr", np.zeros((0, 4), np.uint8), {}, "empty"),
        (W.write_labels_zarr, "a.zarr", np.zeros((4, 4), np.uint8), {"scale": (1, 2, 3)}, "scale"),
        (W.write_labels_tiff, "a.png", np.zeros((4, 4), np.uint8), {}, ".tif"),
        (W.write_shapes_voc, "a.xml", [POLY], {"shape_type": ["polygon"]}, "polygon"),
        (W.write_shapes_voc, "a.xml", [np.array([[0, 0], [1, 5], [4, 4], [3, -1.0]])],
         {"shape_type": ["rectangle"]}, "rotated"),
        (W.write_shapes_voc, "a.xml", [np.c_[[0, 1, 1, 0], RECT]], {"shape_type": ["rectangle"]}, "planes"),
        (W.write_shapes_voc, "a.xml", [RECT], {"shape_type": ["rectangle"],
                                              "features": pd.DataFrame({"label": ["a", "b"]})}, "rows"),
        (W.write_shapes_coco, "a.json", [RECT], {"shape_type": ["ellipse"]}, "ellipse"),
        (W.write_shapes_coco, "a.json", [RECT[:2]], {"shape_type": ["path"]}, "path"),
        (W.write_shapes_csv, "a.csv", [np.array([[0, np.nan]])], {"shape_type": ["path"]}, "non-finite"),
        (W.write_shapes_csv, "a.csv", [RECT], {"shape_type": ["rectangle"],
                                              "features": pd.DataFrame({"vertices": [1]})}, "clash"),
    ],
)
def test_refusals_raise_before_writing(tmp_path, writer, name, data, attrs, needle):
    target = tmp_path / name
    with pytest.raises(InputError) as info:
        writer(str(target), data, attrs)
    assert needle in str(info.value)
    assert str(target) in str(info.value)  # message names the file
    assert list(tmp_path.iterdir()) == []  # nothing written, no temporaries


# ----------------------------------------------------------------------------- atomicity

def _fail_after_partial_text(monkeypatch):
    real = Path.write_text

    def broken(self, text, *a, **k):
        real(self, text[: len(text) // 2], *a, **k)
        raise OSError("disk full (simulated)")

    monkeypatch.setattr(Path, "write_text", broken)


CASES = [
    ("voc", "boxes.xml", W.write_shapes_voc, [RECT], {"shape_type": ["rectangle"]}),
    ("coco", "boxes.json", W.write_shapes_coco, [RECT, POLY], {"shape_type": ["rectangle", "polygon"]}),
    ("csv", "shapes.csv", W.write_shapes_csv, [RECT, POLY], {"shape_type": ["rectangle", "polygon"]}),
]


@pytest.mark.parametrize("fmt, name, writer, data, attrs", CASES)
def test_text_writers_failure_keeps_previous_file(tmp_path, monkeypatch, fmt, name, writer, data, attrs):
    target = tmp_path / name
    writer(str(target), data, attrs)
    before = _snapshot(tmp_path)
    _fail_after_partial_text(monkeypatch)
    shifted = [d + 1 for d in data]
    with pytest.raises(OSError, match="simulated"):
        writer(str(target), shifted, attrs)
    assert _snapshot(tmp_path) == before


def test_tiff_failure_keeps_previous_file(tmp_path, monkeypatch):
    import tifffile

    target = tmp_path / "labels.tif"
    W.write_labels_tiff(str(target), _labels(), {})
    before = _snapshot(tmp_path)

    def broken(fh, *a, **k):
        fh.write(b"II*\x00partial")
        raise OSError("disk full (simulated)")

    monkeypatch.setattr(tifffile, "imwrite", broken)
    with pytest.raises(OSError, match="simulated"):
        W.write_labels_tiff(str(target), _labels() * 2, {})
    assert _snapshot(tmp_path) == before
    (data, _kw, _t), = get_reader(str(target))(str(target))
    assert np.array_equal(data, _labels())


def test_zarr_failure_keeps_previous_folder(tmp_path, monkeypatch):
    import zarr

    target = tmp_path / "labels.zarr"
    W.write_labels_zarr(str(target), _labels(), {})
    before = _snapshot(tmp_path)
    real = zarr.Group.create_array

    def broken(self, *a, **k):
        real(self, *a, **k)  # the array's metadata lands in the temporary folder ...
        raise OSError("disk full (simulated)")  # ... then the write dies

    monkeypatch.setattr(zarr.Group, "create_array", broken)
    with pytest.raises(OSError, match="simulated"):
        W.write_labels_zarr(str(target), _labels() * 3, {})
    assert _snapshot(tmp_path) == before
    (data, _kw, _t), = get_reader(str(target))(str(target))
    assert np.array_equal(data, _labels())


def test_overwrite_replaces_existing_outputs(tmp_path):
    for name, writer in (("l.zarr", W.write_labels_zarr), ("l.tif", W.write_labels_tiff)):
        target = tmp_path / name
        writer(str(target), _labels(), {})
        writer(str(target), _labels() + 5, {})
        (data, _kw, _t), = get_reader(str(target))(str(target))
        assert np.array_equal(data, _labels() + 5)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["l.tif", "l.zarr"]


# ----------------------------------------------------------------------------- format details

def test_zarr_is_ngff_labels_in_zarr_v2(tmp_path):
    import json

    import zarr

    target = tmp_path / "cells.zarr"
    feats = pd.DataFrame({"index": [1, 2], "class": ["A", "B"], "score": [0.9, 0.8]})
    W.write_labels_zarr(str(target), _labels(), {"features": feats, "scale": (0.5, 0.25)})
    attrs = json.loads((target / ".zattrs").read_text())
    assert (target / ".zgroup").is_file() and (target / "0" / ".zarray").is_file()
    ms = attrs["multiscales"][0]
    assert ms["version"] == "0.4" and [a["name"] for a in ms["axes"]] == ["y", "x"]
    assert ms["datasets"][0]["coordinateTransformations"][0] == {"type": "scale", "scale": [0.5, 0.25]}
    assert attrs["image-label"]["properties"][1] == {"label-value": 2, "class": "B", "score": 0.8}
    z = zarr.open_array(str(target / "0"), mode="r")
    assert z.metadata.zarr_format == 2 and np.array_equal(z[...], _labels())


def test_voc_is_labelimg_layout(tmp_path):
    import xml.etree.ElementTree as ET

    target = tmp_path / "img1.xml"
    W.write_shapes_voc(str(target), [RECT], {"shape_type": ["rectangle"],
                                             "features": pd.DataFrame({"label": ["WBC"], "score": [0.75]}),
                                             "metadata": {"image_path": "/data/JPEGImages/img1.jpg",
                                                          "image_shape": (480, 640, 3)}})
    root = ET.parse(target).getroot()
    assert root.findtext("filename") == "img1.jpg" and root.findtext("folder") == "JPEGImages"
    assert (root.findtext("size/width"), root.findtext("size/height"), root.findtext("size/depth")) == ("640", "480", "3")
    obj = root.find("object")
    assert obj.findtext("name") == "WBC"
    # napari (row, col) corners -> VOC x = column, y = row
    assert [obj.findtext(f"bndbox/{k}") for k in ("xmin", "ymin", "xmax", "ymax")] == ["2", "1", "8", "5"]


def test_coco_structure(tmp_path):
    import json

    target = tmp_path / "a.json"
    feats = pd.DataFrame({"label": ["x", "y"], "score": [0.5, 0.25], "id": [10, 11]})
    W.write_shapes_coco(str(target), [RECT, POLY], {"shape_type": ["rectangle", "polygon"], "features": feats})
    doc = json.loads(target.read_text())
    assert [c["name"] for c in doc["categories"]] == ["x", "y"]
    a, b = doc["annotations"]
    assert a["bbox"] == [2.0, 1.0, 6.0, 4.0] and a["segmentation"] == [] and a["score"] == 0.5
    assert b["segmentation"] == [[1.0, 1.0, 2.5, 4.0, 6.0, 2.0]]
    assert a["id"] == 1 and a["attributes"] == {"id": 10}  # a feature named like a COCO key is nested
    assert np.isclose(b["area"], 6.75) and np.isclose(a["area"], 24.0)


def test_png_and_csv_helpers(tmp_path):
    import imageio.v3 as iio

    img = (np.arange(12 * 10 * 3) % 251).astype(np.uint8).reshape(12, 10, 3)
    p = W.write_png_atomic(tmp_path / "k.png", img)
    assert np.array_equal(iio.imread(p), img)
    c = W.write_csv_atomic(tmp_path / "k.csv", [{"chromosome": "1", "confidence": 0.9}], columns=["chromosome", "confidence"])
    assert pd.read_csv(c).to_dict("records") == [{"chromosome": 1, "confidence": 0.9}]
    with pytest.raises(InputError, match="lacks column"):
        W.write_csv_atomic(tmp_path / "bad.csv", [{"a": 1}], columns=["b"])
    with pytest.raises(InputError, match="PNG"):
        W.write_png_atomic(tmp_path / "bad.png", np.zeros((2, 2, 7), np.uint8))
    with pytest.raises(InputError, match="JSON"):
        W.write_json_atomic(tmp_path / "bad.json", {"x": float("nan")})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["k.csv", "k.png"]

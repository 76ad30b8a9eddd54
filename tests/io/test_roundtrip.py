"""What the writers write, the plugin's readers read back: arrays exactly, vertices and features too."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from napari_cellclass.io import writers as W
from napari_cellclass.io.layer_reader import get_reader

RECT = np.array([[1.0, 2.0], [1.0, 8.5], [5.25, 8.5], [5.25, 2.0]])
POLY = np.array([[1.0, 1.0], [4.0, 2.5], [2.0, 6.0], [0.5, 3.0]])
ELLIPSE = np.array([[10.0, 10.0], [10.0, 14.0], [12.0, 14.0], [12.0, 10.0]])
LINE = np.array([[0.0, 0.0], [9.0, 9.123456789]])
PATH = np.array([[0.0, 0.0], [3.0, 4.0], [6.0, 1.0]])


def _features(n: int) -> pd.DataFrame:
    rng = np.random.default_rng(n)
    p = rng.dirichlet(np.ones(3), size=n)
    return pd.DataFrame({
        "label": [f"class{i % 2}" for i in range(n)],
        "score": p.max(1),
        "probabilities": [list(map(float, r)) for r in p],
        "count": np.arange(n, dtype=np.int64),
        "flag": [bool(i % 2) for i in range(n)],
        "kind": pd.Categorical([("a", "b")[i % 2] for i in range(n)], categories=["a", "b", "c"]),
    })


def _labels(shape, dtype) -> np.ndarray:
    rng = np.random.default_rng(0)
    lab = rng.integers(0, 5, size=shape)
    if np.dtype(dtype) == bool:
        return lab > 2
    return lab.astype(dtype)


def _read_one(path):
    reader = get_reader(str(path))
    assert reader is not None, f"plugin declined its own output {path}"
    layers = reader(str(path))
    assert len(layers) == 1
    return layers[0]


@pytest.mark.parametrize("ext, writer", [(".zarr", W.write_labels_zarr), (".tif", W.write_labels_tiff)])
@pytest.mark.parametrize(
    "shape, dtype",
    [((17, 23), np.uint8), ((17, 23), np.int32), ((3, 9, 11), np.uint16), ((2, 3, 5, 7), np.int64),
     ((9, 8), np.uint64), ((6, 7), bool), ((1, 2, 3, 4, 5), np.uint32)],
)
def test_labels_roundtrip_exact(tmp_path, ext, writer, shape, dtype):
    lab = _labels(shape, dtype)
    feats = pd.DataFrame({"index": [1, 2, 3, 4], "class": ["A", "B", "A", "C"], "score": [0.5, np.nan, 1.0, 0.25],
                          "probabilities": [[0.5, 0.5], [0.1, 0.9], [1.0, 0.0], [0.3, 0.7]]})
    scale = tuple(float(i + 1) / 2 for i in range(len(shape)))
    target = tmp_path / f"cells{ext}"
    assert writer(str(target), lab, {"name": "cells", "features": feats, "scale": scale,
                                     "metadata": {"model": "tiny", "bad": object()}}) == [str(target)]
    data, kw, kind = _read_one(target)
    assert kind == "labels" and kw["name"] == "cells"
    assert data.dtype == lab.dtype and data.shape == lab.shape and np.array_equal(data, lab)
    assert kw["scale"] == list(scale)
    pd.testing.assert_frame_equal(kw["features"], feats)
    assert kw["metadata"]["model"] == "tiny"


def test_labels_multiscale_input_keeps_full_resolution(tmp_path):
    lab = _labels((16, 16), np.uint8)
    W.write_labels_zarr(str(tmp_path / "m.zarr"), [lab, lab[::2, ::2]], {})
    data, _kw, _k = _read_one(tmp_path / "m.zarr")
    assert np.array_equal(data, lab)


def test_labels_properties_dict_is_used_when_features_absent(tmp_path):
    lab = _labels((8, 8), np.uint8)
    W.write_labels_tiff(str(tmp_path / "p.tif"), lab, {"properties": {"index": np.array([1, 2]),
                                                                      "class": np.array(["x", "y"], dtype=object)}})
    _data, kw, _k = _read_one(tmp_path / "p.tif")
    assert kw["features"]["class"].tolist() == ["x", "y"]


@pytest.mark.parametrize("ndim", [2, 3])
def test_csv_roundtrip_all_shape_types(tmp_path, ndim):
    shapes = [RECT, POLY, ELLIPSE, LINE, PATH]
    if ndim == 3:
        shapes = [np.c_[np.full(len(s), 2.0), s] for s in shapes]
    types = ["rectangle", "polygon", "ellipse", "line", "path"]
    feats = _features(len(shapes))
    feats.loc[2, "score"] = np.nan
    target = tmp_path / "shapes.csv"
    W.write_shapes_csv(str(target), shapes, {"shape_type": types, "features": feats, "name": "cells"})
    data, kw, kind = _read_one(target)
    assert kind == "shapes" and kw["shape_type"] == types and kw["name"] == "cells"
    for a, b in zip(data, shapes):
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-6)  # repr() floats: exact in fact
        assert np.array_equal(a, b)
    pd.testing.assert_frame_equal(kw["features"], feats)


def test_csv_without_features_and_empty_layer(tmp_path):
    W.write_shapes_csv(str(tmp_path / "a.csv"), [RECT], {"shape_type": "rectangle"})
    data, kw, _ = _read_one(tmp_path / "a.csv")
    assert np.array_equal(data[0], RECT) and kw["features"].shape == (1, 0)
    W.write_shapes_csv(str(tmp_path / "b.csv"), [], {"shape_type": []})
    data, kw, _ = _read_one(tmp_path / "b.csv")
    assert data == [] and kw["shape_type"] == []


def _box(v: np.ndarray) -> list[float]:
    """(x0, y0, x1, y1) of napari (row, col) vertices."""
    return [v[:, 1].min(), v[:, 0].min(), v[:, 1].max(), v[:, 0].max()]


def test_voc_roundtrip_through_read_voc(tmp_path):
    from napari_cellclass.io.annotations import read_voc

    rects = [RECT, RECT + [10.0, 3.0], np.array([[0.0, 0.0], [0.0, 31.0], [31.0, 31.0], [31.0, 0.0]])]
    feats = _features(3)
    target = tmp_path / "img.xml"
    W.write_shapes_voc(str(target), rects, {"shape_type": ["rectangle"] * 3, "features": feats,
                                            "metadata": {"image_shape": (32, 40)}})
    ann = read_voc(target)
    assert (ann.width, ann.height) == (40, 32)
    np.testing.assert_allclose(ann.boxes, [_box(r) for r in rects], atol=1e-6)
    assert ann.labels == feats["label"].tolist()
    for attrs, row in zip(ann.attributes, feats.to_dict("records")):
        assert attrs["score"] == pytest.approx(row["score"], abs=1e-12)
        assert attrs["probabilities"] == pytest.approx(row["probabilities"])
        assert attrs["count"] == row["count"] and attrs["kind"] == row["kind"]
        assert type(attrs["count"]) is int and type(attrs["flag"]) is bool and attrs["flag"] == row["flag"]


def test_coco_roundtrip_through_read_coco(tmp_path):
    from napari_cellclass.io.annotations import read_coco

    shapes = [RECT, POLY, RECT + 7]
    feats = _features(3)
    target = tmp_path / "ann.json"
    W.write_shapes_coco(str(target), shapes, {"shape_type": ["rectangle", "polygon", "rectangle"],
                                              "features": feats, "metadata": {"image_path": "f/img.png",
                                                                              "image_shape": (40, 50)}})
    (ann,) = read_coco(target)
    assert (ann.width, ann.height) == (50, 40) and ann.image_path.name == "img.png"
    np.testing.assert_allclose(ann.boxes, [_box(s) for s in shapes], atol=1e-6)
    assert ann.labels == feats["label"].tolist()
    assert ann.polygons[0] is None and ann.polygons[2] is None
    np.testing.assert_allclose(ann.polygons[1], POLY[:, ::-1], atol=1e-6)  # x, y
    for attrs, row in zip(ann.attributes, feats.to_dict("records")):
        assert attrs["score"] == pytest.approx(row["score"], abs=1e-12)
        assert attrs["count"] == row["count"] and attrs["flag"] == row["flag"]


def _annotation_layers(path):
    from napari_cellclass.io import annotation_reader as mod

    reader = mod.get_reader(str(path))
    assert reader is not None
    return reader(str(path))


def test_voc_roundtrip_through_plugin_reader(tmp_path):
    rects = [RECT, RECT + [10.0, 3.0]]
    feats = _features(2)[["label", "score"]]
    target = tmp_path / "img.xml"
    W.write_shapes_voc(str(target), rects, {"shape_type": ["rectangle"] * 2, "features": feats,
                                            "metadata": {"image_shape": (32, 40)}})
    layers = [ld for ld in _annotation_layers(target) if ld[2] == "shapes"]
    data, kw, _ = layers[0]
    got = sorted(_box(np.asarray(v)[:, -2:]) for v in data)
    np.testing.assert_allclose(got, sorted(_box(r) for r in rects), atol=1e-6)
    f = pd.DataFrame(kw["features"])
    assert f["label"].tolist() == feats["label"].tolist()
    np.testing.assert_allclose(f["score"].astype(float), feats["score"], atol=1e-12)


def test_coco_roundtrip_through_plugin_reader(tmp_path):
    shapes = [RECT, POLY]
    feats = _features(2)[["label", "score"]]
    target = tmp_path / "ann.json"
    W.write_shapes_coco(str(target), shapes, {"shape_type": ["rectangle", "polygon"], "features": feats,
                                              "metadata": {"image_shape": (40, 50)}})
    layers = [ld for ld in _annotation_layers(target) if ld[2] == "shapes"]
    data, kw, _ = layers[0]
    assert len(data) == 2
    f = pd.DataFrame(kw["features"])
    assert f["label"].tolist() == feats["label"].tolist()
    np.testing.assert_allclose(f["score"].astype(float), feats["score"], atol=1e-12)
    np.testing.assert_allclose(sorted(_box(np.asarray(v)[:, -2:]) for v in data),
                               sorted(_box(s) for s in shapes), atol=1e-6)


def test_generic_ngff_labels_group_is_read(tmp_path):
    """An OME-Zarr image with a ``labels/`` group (as ome-zarr-py writes) opens its label images."""
    import zarr

    root = zarr.open_group(str(tmp_path / "img.zarr"), mode="w", zarr_format=2)
    root.attrs["multiscales"] = [{"version": "0.4", "axes": [{"name": "y"}, {"name": "x"}],
                                  "datasets": [{"path": "0"}]}]
    root.create_array("0", shape=(8, 8), dtype="uint8")
    labels = root.create_group("labels")
    labels.attrs["labels"] = ["nuclei"]
    nuc = labels.create_group("nuclei")
    nuc.attrs.update({"multiscales": [{"version": "0.4", "axes": [{"name": "y"}, {"name": "x"}],
                                       "datasets": [{"path": "0", "coordinateTransformations": [
                                           {"type": "scale", "scale": [2.0, 2.0]}]}]}],
                      "image-label": {"version": "0.4", "properties": [{"label-value": 3, "class": "nucleus"}]}})
    lab = np.zeros((8, 8), np.uint16)
    lab[2:4, 2:5] = 3
    nuc.create_array("0", shape=lab.shape, dtype=lab.dtype)[...] = lab
    data, kw, kind = _read_one(tmp_path / "img.zarr")
    assert kind == "labels" and kw["name"] == "nuclei" and np.array_equal(data, lab)
    assert kw["scale"] == [2.0, 2.0]
    assert kw["features"].to_dict("records") == [{"index": 3, "class": "nucleus"}]

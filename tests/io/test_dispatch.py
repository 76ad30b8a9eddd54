"""viewer.open / layer.save reach the right napari-cellclass reader and writer (real viewer, npe2)."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from napari_cellclass.io import writers as W

pytestmark = pytest.mark.viewer

RECT = np.array([[1.0, 2.0], [1.0, 8.0], [5.0, 8.0], [5.0, 2.0]])
POLY = np.array([[1.0, 1.0], [4.0, 2.5], [2.0, 6.0]])


@pytest.fixture
def prefer_ours():
    """Plain ``viewer.open(path)`` asks napari's reader preferences (Preferences > Plugins >
    file extension readers); napari's built-ins otherwise take *.tif/*.csv/*.zarr/*.png first.
    This is what a user sets once; the test sets it and restores it."""
    from napari.settings import get_settings

    plugins = get_settings().plugins
    old = dict(plugins.extension2reader)
    plugins.extension2reader = {**old, **{p: "napari-cellclass" for p in
                                          ("*.zarr", "*.zarr/", "*.tif", "*.csv", "*.xml", "*.json", "*_red.png")}}
    yield
    plugins.extension2reader = old


def _labels() -> np.ndarray:
    lab = np.zeros((16, 20), np.uint16)
    lab[2:6, 3:9] = 1
    lab[9:14, 10:18] = 2
    return lab


@pytest.mark.parametrize("plugin", [None, "napari-cellclass"])
def test_open_our_outputs(make_napari_viewer, tmp_path, plugin, prefer_ours):
    viewer = make_napari_viewer()
    feats = pd.DataFrame({"index": [1, 2], "class": ["A", "B"]})
    W.write_labels_zarr(str(tmp_path / "l.zarr"), _labels(), {"features": feats, "name": "zl"})
    W.write_labels_tiff(str(tmp_path / "l.tif"), _labels(), {"features": feats, "name": "tl"})
    sf = pd.DataFrame({"label": ["a", "b"], "score": [0.5, 0.75]})
    W.write_shapes_csv(str(tmp_path / "s.csv"), [RECT, POLY], {"shape_type": ["rectangle", "polygon"],
                                                               "features": sf, "name": "cs"})
    # napari 0.9's viewer.open defaults to plugin="napari" (built-ins only); plugin=None is
    # the automatic dispatch that drag-and-drop uses (reader preferences, then any match)
    kw = {"plugin": plugin}
    (zl,) = viewer.open(str(tmp_path / "l.zarr"), **kw)
    (tl,) = viewer.open(str(tmp_path / "l.tif"), **kw)
    (cs,) = viewer.open(str(tmp_path / "s.csv"), **kw)
    for layer in (zl, tl):
        assert layer._type_string == "labels" and np.array_equal(np.asarray(layer.data), _labels())
        assert layer.features["class"].tolist() == ["A", "B"]
    assert cs._type_string == "shapes" and cs.shape_type == ["rectangle", "polygon"]
    assert cs.features["score"].tolist() == [0.5, 0.75]
    np.testing.assert_allclose(cs.data[1], POLY)


def test_layer_save_uses_our_writers_and_reopens(make_napari_viewer, tmp_path):
    viewer = make_napari_viewer()
    lab = viewer.add_labels(_labels(), name="cells", features=pd.DataFrame({"index": [0, 1, 2],
                                                                            "class": ["bg", "A", "B"]}))
    shp = viewer.add_shapes([RECT, RECT + 5], shape_type="rectangle", name="boxes",
                            features=pd.DataFrame({"label": ["x", "y"], "score": [0.9, 0.8]}))
    for name in ("cells.zarr", "cells.tif"):
        lab.save(str(tmp_path / name), plugin="napari-cellclass")
    for name in ("boxes.csv", "boxes.xml", "boxes.json"):
        shp.save(str(tmp_path / name), plugin="napari-cellclass")
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        ["cells.zarr", "cells.tif", "boxes.csv", "boxes.xml", "boxes.json"])
    for name in ("cells.zarr", "cells.tif"):
        (layer,) = viewer.open(str(tmp_path / name), plugin="napari-cellclass")
        assert np.array_equal(np.asarray(layer.data), _labels())
        assert layer.features["class"].tolist() == ["bg", "A", "B"]
    (back,) = viewer.open(str(tmp_path / "boxes.csv"), plugin="napari-cellclass")
    for a, b in zip(back.data, shp.data):
        np.testing.assert_allclose(a, b, atol=1e-6)
    pd.testing.assert_frame_equal(back.features, shp.features)


def test_hpa_tiff_is_not_claimed_by_layer_reader(tmp_path):
    import tifffile

    from napari_cellclass.io.layer_reader import get_reader

    for c in ("red", "green", "blue", "yellow"):
        tifffile.imwrite(tmp_path / f"s_{c}.tif", np.ones((8, 8), np.uint16))
    assert get_reader(str(tmp_path / "s_red.tif")) is None  # no marker: the HPA reader's file
    from napari_cellclass.io.hpa_reader import read_hpa

    assert get_reader(str(tmp_path)) is read_hpa  # the plugin's one folder reader hands HPA sets on


def test_open_hpa_set(make_napari_viewer, tmp_path, prefer_ours):
    import imageio.v3 as iio

    viewer = make_napari_viewer()
    for i, c in enumerate(("red", "green", "blue", "yellow")):
        iio.imwrite(tmp_path / f"set1_{c}.png", np.full((12, 12), 10 * (i + 1), np.uint8))
    layers = viewer.open(str(tmp_path / "set1_green.png"), plugin="napari-cellclass")
    assert len(layers) == 4 and all(lay._type_string == "image" for lay in layers)
    viewer.layers.clear()
    layers = viewer.open(str(tmp_path / "set1_red.png"), plugin=None)  # automatic dispatch
    assert len(layers) == 4


def test_open_spread_then_its_sidecar(make_napari_viewer, tmp_path):
    """A colour smear opens with napari's own reader (no dialog, in colour); dropping its VOC
    sidecar adds the boxes with typed features (our only reader for *.xml)."""
    import imageio.v3 as iio

    viewer = make_napari_viewer()
    smear = np.zeros((32, 40, 3), np.uint8)
    smear[..., 0] = 200
    iio.imwrite(tmp_path / "spread.png", smear)
    W.write_shapes_voc(str(tmp_path / "spread.xml"), [RECT], {"shape_type": "rectangle",
                                                              "features": pd.DataFrame({"label": ["21"],
                                                                                        "flag": [True]}),
                                                              "metadata": {"image_shape": (32, 40, 3)}})
    (img,) = viewer.open(str(tmp_path / "spread.png"), plugin=None)
    assert img.rgb and img.data.shape == (32, 40, 3)
    layers = viewer.open(str(tmp_path / "spread.xml"), plugin=None)
    shapes = next(lay for lay in layers if lay._type_string == "shapes")
    assert shapes.features["label"].astype(str).tolist() == ["21"]
    assert shapes.features["flag"].tolist() == [True]


@pytest.mark.parametrize("name, writer", [("a.xml", W.write_shapes_voc), ("a.json", W.write_shapes_coco)])
def test_open_voc_and_coco(make_napari_viewer, tmp_path, name, writer, prefer_ours):
    viewer = make_napari_viewer()
    writer(str(tmp_path / name), [RECT, RECT + 4], {"shape_type": "rectangle",
                                                    "features": pd.DataFrame({"label": ["a", "b"]}),
                                                    "metadata": {"image_shape": (32, 40)}})
    for kw in ({"plugin": "napari-cellclass"}, {"plugin": None}):
        viewer.layers.clear()
        layers = viewer.open(str(tmp_path / name), **kw)
        shapes = [lay for lay in layers if lay._type_string == "shapes"]
        assert shapes and shapes[0].features["label"].astype(str).tolist() == ["a", "b"]

"""Which reader napari (npe2) picks: ours only for what we can read, napari's own for the rest.

napari shows its "which reader?" dialog whenever two plugins' filename patterns match a
path, so a plain image must match none of our patterns, and every get_reader of ours must
return None for files that are not ours.  No viewer needed: this is npe2's resolution.
"""
from __future__ import annotations

import importlib
import json

import imageio.v3 as iio
import numpy as np
import pandas as pd
import pytest
import tifffile

from napari_cellclass.io import writers as W

PLUGIN = "napari-cellclass"
RECT = np.array([[1.0, 2.0], [1.0, 8.0], [5.0, 8.0], [5.0, 2.0]])


@pytest.fixture(scope="module")
def pm():
    import npe2

    pm = npe2.PluginManager.instance()
    pm.discover()
    assert PLUGIN in pm._manifests
    return pm


def _ours(pm, path) -> list:
    """Our reader contributions whose filename patterns match ``path`` (what napari sees)."""
    return [r for r in pm.iter_compatible_readers([str(path)]) if r.plugin_name == PLUGIN]


def _plugins(pm, path) -> set[str]:
    return {r.plugin_name for r in pm.iter_compatible_readers([str(path)])}


def _claims(pm, path) -> list[str]:
    """Commands of ours whose get_reader returns a reader for ``path``."""
    out = []
    for r in _ours(pm, path):
        module, _, attr = pm.get_command(r.command).python_name.partition(":")
        if getattr(importlib.import_module(module), attr)(str(path)) is not None:
            out.append(r.command)
    return out


def _smear(path, rgb=True):
    rng = np.random.default_rng(0)
    img = rng.integers(0, 255, (24, 32, 3) if rgb else (24, 32), dtype=np.uint8)
    iio.imwrite(path, img)
    return img


@pytest.mark.parametrize("name", ["plain.png", "plain.jpg", "plain.bmp", "stack.npy", "scan.czi", "scan.nd2",
                                  "red.png", "cell_red_1.png"])
def test_plain_files_match_no_pattern_of_ours(pm, tmp_path, name):
    """No dialog: at most napari's own reader matches (or nobody, for formats napari lacks)."""
    p = tmp_path / name
    if p.suffix in (".png", ".jpg", ".bmp"):
        _smear(p)
    else:
        p.write_bytes(b"\x00" * 64)
    assert _ours(pm, p) == []
    assert _plugins(pm, p) <= {"napari"}


def test_plain_csv_and_folder_are_declined_a_plain_tiff_opens_as_an_image(pm, tmp_path):
    """napari's reader also matches *.tif/*.csv/folders (npe2 cannot look inside a file), so
    ours declines plain CSVs and folders: they are napari's, never "refused" by us.  A plain
    TIFF reaches us only when the user chose this plugin for it (dialog or a remembered
    "*.tif" preference, issue 22): declining would fail the open, so it opens as an image."""
    tifffile.imwrite(tmp_path / "plain.tif", np.ones((8, 8), np.uint16))
    pd.DataFrame({"a": [1, 2]}).to_csv(tmp_path / "plain.csv", index=False)
    folder = tmp_path / "pngs"
    folder.mkdir()
    _smear(folder / "a.png")
    for p in (tmp_path / "plain.csv", folder):
        assert _claims(pm, p) == [], p
    assert _claims(pm, tmp_path / "plain.tif") == ["napari-cellclass.read_layers"]
    from napari_cellclass.io.layer_reader import get_reader

    [(data, kw, kind)] = get_reader(str(tmp_path / "plain.tif"))(str(tmp_path / "plain.tif"))
    assert kind == "image" and data.shape == (8, 8) and kw["name"] == "plain"


def test_hpa_channel_files_and_folders_are_ours(pm, tmp_path):
    for i, c in enumerate(("red", "green", "blue", "yellow")):
        iio.imwrite(tmp_path / f"set1_{c}.png", np.full((12, 12), 10 * (i + 1), np.uint8))
    assert _claims(pm, tmp_path / "set1_green.png") == ["napari-cellclass.read_hpa"]
    assert _claims(pm, tmp_path) == ["napari-cellclass.read_layers"]  # the one folder reader -> HPA sets
    layers = pm.get_command("napari-cellclass.read_layers")  # resolves
    assert layers is not None
    from napari_cellclass.io.layer_reader import get_reader

    out = get_reader(str(tmp_path))(str(tmp_path))
    assert len(out) == 4 and all(kind == "image" for _, _, kind in out)


def test_hpa_folder_with_too_many_sets_is_refused_not_opened(tmp_path):
    from napari_cellclass.errors import InputError
    from napari_cellclass.io.hpa_reader import MAX_SETS_PER_OPEN, read_hpa

    for k in range(MAX_SETS_PER_OPEN + 1):
        iio.imwrite(tmp_path / f"s{k}_red.png", np.zeros((4, 4), np.uint8))
    with pytest.raises(InputError, match="at most"):
        read_hpa(tmp_path)


def test_smear_with_voc_sidecar_opens_in_colour(pm, tmp_path):
    """A BCCD-like colour smear with a VOC sidecar: the spread reader takes it (API/widgets) and
    keeps its colour; the sidecar alone is ours in the viewer; the image alone stays napari's."""
    from napari_cellclass.io.spread_reader import get_reader

    img = _smear(tmp_path / "smear.png")
    W.write_shapes_voc(str(tmp_path / "smear.xml"), [RECT], {
        "shape_type": "rectangle", "features": pd.DataFrame({"label": ["WBC"], "flag": [True]}),
        "metadata": {"image_path": "smear.png", "image_shape": (24, 32, 3)}})
    reader = get_reader(str(tmp_path / "smear.png"))
    assert reader is not None
    (data, kw, kind), (_, skw, skind) = reader(str(tmp_path / "smear.png"))
    assert kind == "image" and kw.get("rgb") is True and np.array_equal(data, img)
    assert skind == "shapes" and skw["features"]["flag"].tolist() == [True]
    assert _claims(pm, tmp_path / "smear.xml") == ["napari-cellclass.read_annotations"]
    assert _ours(pm, tmp_path / "smear.png") == []
    # the same smear without a sidecar is declined
    _smear(tmp_path / "other.png")
    assert get_reader(str(tmp_path / "other.png")) is None


def test_spread_tiff_with_sidecar_is_read_when_cell_class_is_chosen(pm, tmp_path):
    """*.tif is one of our patterns (our labels), so napari offers Cell Class for any TIFF:
    accepting it on a spread with a sidecar opens the spread, not "refused the file"."""
    import npe2

    gray = _smear(tmp_path / "sp.tif", rgb=False)
    W.write_shapes_voc(str(tmp_path / "sp.xml"), [RECT], {"shape_type": "rectangle",
                                                          "features": pd.DataFrame({"label": ["1"]}),
                                                          "metadata": {"image_shape": (24, 32)}})
    assert _claims(pm, tmp_path / "sp.tif") == ["napari-cellclass.read_layers"]
    (img, _, kind), (_, _, kind2) = npe2.read([str(tmp_path / "sp.tif")], plugin_name=PLUGIN, stack=False)
    assert kind == "image" and kind2 == "shapes" and np.array_equal(img, gray)


def test_gray_spread_stays_gray(tmp_path):
    from napari_cellclass.io.spread_reader import read_spread

    gray = _smear(tmp_path / "g.png", rgb=False)
    iio.imwrite(tmp_path / "g_rgb.png", np.stack([gray] * 3, -1))
    for name in ("g.png", "g_rgb.png"):
        W.write_shapes_voc(str(tmp_path / (name[:-4] + ".xml")), [RECT], {
            "shape_type": "rectangle", "features": pd.DataFrame({"label": ["1"]}),
            "metadata": {"image_shape": (24, 32)}})
        (data, kw, _), _ = read_spread(tmp_path / name)
        assert data.shape == (24, 32) and kw["colormap"] == "gray" and np.array_equal(data, gray)


def test_our_outputs_are_recognised_by_marker_and_round_trip(pm, tmp_path):
    import npe2

    lab = np.zeros((16, 20), np.uint16)
    lab[2:6, 3:9] = 1
    feats = pd.DataFrame({"index": [1], "class": ["A"]})
    W.write_labels_zarr(str(tmp_path / "l.zarr"), lab, {"features": feats})
    W.write_labels_tiff(str(tmp_path / "l.tif"), lab, {"features": feats})
    sf = pd.DataFrame({"label": ["a"], "flag": [True], "n": np.array([3], np.int64)})
    W.write_shapes_csv(str(tmp_path / "s.csv"), [RECT], {"shape_type": ["rectangle"], "features": sf})
    assert _claims(pm, tmp_path / "l.tif") == ["napari-cellclass.read_layers"]
    assert _claims(pm, tmp_path / "s.csv") == ["napari-cellclass.read_layers"]
    assert _claims(pm, tmp_path / "l.zarr") == ["napari-cellclass.read_layers"]
    for name in ("l.zarr", "l.tif"):
        ((data, kw, kind),) = npe2.read([str(tmp_path / name)], plugin_name=PLUGIN, stack=False)
        assert kind == "labels" and np.array_equal(np.asarray(data), lab)
        pd.testing.assert_frame_equal(kw["features"], feats)
    ((shapes, kw, kind),) = npe2.read([str(tmp_path / "s.csv")], plugin_name=PLUGIN, stack=False)
    assert kind == "shapes" and np.allclose(shapes[0], RECT)
    pd.testing.assert_frame_equal(kw["features"], sf)


@pytest.mark.parametrize("name, writer", [("a.xml", W.write_shapes_voc), ("a.json", W.write_shapes_coco)])
def test_voc_and_coco_keep_feature_types(tmp_path, name, writer):
    """bool stays bool, int stays int, ``id`` is kept, lists stay lists, NaN stays NaN."""
    from napari_cellclass.io.annotation_reader import get_reader

    feats = pd.DataFrame({"label": ["a", "b"], "id": [10, 11], "flag": [True, False],
                          "count": np.array([3, 4], np.int64), "score": [0.5, np.nan],
                          "probabilities": [[0.25, 0.75], [0.5, 0.5]]})
    writer(str(tmp_path / name), [RECT, RECT + 3], {"shape_type": "rectangle", "features": feats,
                                                    "metadata": {"image_shape": (32, 40)}})
    ((_, kw, _),) = [ld for ld in get_reader(str(tmp_path / name))(str(tmp_path / name)) if ld[2] == "shapes"]
    got = kw["features"]
    assert list(got.columns) == list(feats.columns)
    assert got["flag"].dtype == bool and got["flag"].tolist() == [True, False]
    assert got["id"].dtype == np.int64 and got["id"].tolist() == [10, 11]
    assert got["count"].dtype == np.int64
    assert got["score"].tolist()[0] == 0.5 and np.isnan(got["score"].tolist()[1])
    assert got["probabilities"].tolist() == [[0.25, 0.75], [0.5, 0.5]]


def test_other_tools_coco_types_are_inferred(tmp_path):
    from napari_cellclass.io.annotation_reader import get_reader

    doc = {"images": [{"id": 1, "file_name": "x.png", "width": 40, "height": 30}],
           "categories": [{"id": 1, "name": "cell"}],
           "annotations": [{"id": 7, "image_id": 1, "category_id": 1, "bbox": [1, 1, 5, 5], "area": 25,
                            "iscrowd": 0, "attributes": {"occluded": False, "track": 2}},
                           {"id": 8, "image_id": 1, "category_id": 1, "bbox": [9, 9, 5, 5], "area": 25,
                            "iscrowd": 0, "attributes": {"occluded": True, "track": 3}}]}
    (tmp_path / "x.json").write_text(json.dumps(doc))
    ((_, kw, _),) = get_reader(str(tmp_path / "x.json"))(str(tmp_path / "x.json"))
    f = kw["features"]
    assert f["occluded"].dtype == bool and f["track"].dtype == np.int64 and f["iscrowd"].tolist() == [0, 0]

"""What a user saves from napari's File menu reopens with its classes, scores and review marks.

napari's Save Selected/All Layers dialog lists every compatible writer as a file type, napari's
own first, and saves with the writer of the chosen file type (``viewer.layers.save(path,
selected=True, _writer=...)``).  Scripts use ``napari.save_layers`` / ``layer.save``, where
npe2 picks the writer with the longest matching extension.  These tests drive both paths on
every kind of layer the plugin creates (``layers.py``: smear analysis and classified white
cells as shapes, detections as shapes, karyotype and HPA cells as labels) and reopen the files
with the plugin's reader.  No Qt needed: a ``ViewerModel`` has the same layer list and save.
"""
from __future__ import annotations

import csv

import napari
import numpy as np
import pandas as pd
import pytest
from napari.components import ViewerModel

from napari_cellclass import layers as L
from napari_cellclass.engine.csvsafe import FORMULA_START
from napari_cellclass.io import writers as W
from napari_cellclass.io.layer_reader import KEEPS_FEATURES_CSV, get_reader

PLUGIN = "napari-cellclass"


@pytest.fixture(autouse=True)
def _plugins(request, mock_app_model):
    """What napari.Viewer() does (builtins, then discovered plugins), into napari's test app: the
    real app is left untouched, so a later plain napari.Viewer() can register the plugin itself.
    (make_napari_viewer does this itself.)"""
    from napari.plugins import _initialize_plugins

    if "make_napari_viewer" not in request.fixturenames:
        _initialize_plugins.cache_clear()
        _initialize_plugins()


def _smear_result() -> dict:
    return {"class_names": ["neutrophil", "lymphocyte"], "labels": ["RBC", "WBC", "Platelets", "WBC"],
            "scores": [0.91, 0.83, 0.72, 0.64], "wbc_index": [1, 3],
            "probabilities": [[0.3, 0.7], [0.9, 0.1]], "wbc_class": ["", "lymphocyte", "", "neutrophil"],
            "wbc_score": [np.nan, 0.7, np.nan, 0.9],
            "boxes": [[0, 0, 10, 10], [20, 20, 40, 40.5], [5, 50, 9, 60], [30, 60, 52, 81]]}


def _review(layer) -> None:
    """A reviewer's correction, as the gallery makes it: new class, ``corrected``, new tag."""
    f = layer.features.copy()
    f.loc[1, "reviewed_class"] = "neutrophil"
    f.loc[1, "corrected"] = True
    f["tag"] = [L.blood_tag(r) for _, r in f.iterrows()]
    layer.features = f


def _smear(viewer):
    (layer,) = L.add_layers(viewer, L.smear_layers(_smear_result()))
    _review(layer)
    return layer


def _wbc(viewer):
    cells = viewer.add_shapes(L.rectangles([[0, 0, 12, 12], [20, 20, 41, 40]]), shape_type="rectangle",
                              name="cells", features=pd.DataFrame({"label": ["WBC", "WBC"]}))
    res = {"class_names": ["neutrophil", "lymphocyte"], "probabilities": [[0.2, 0.8]], "classes": ["lymphocyte"],
           "scores": [0.8], "boxes": [[20, 20, 41, 40]], "differential": {}}
    (layer,) = L.add_layers(viewer, L.wbc_layers(res, cells=cells, selected=[1]))
    _review(layer)
    return layer


def _detections(viewer):
    res = {"class_names": ["RBC", "WBC"], "labels": ["RBC", "WBC"], "scores": [0.5, 0.25],
           "boxes": [[1, 2, 5, 8], [10, 10, 20, 22]]}
    return L.add_layers(viewer, L.detect_layers(res))[0]


def _karyotype_result() -> dict:
    lab = np.zeros((40, 50), np.int32)
    lab[2:10, 3:8], lab[12:30, 20:26], lab[31:38, 40:47] = 1, 2, 3
    return {"labels": lab, "classes": [0, 22, -1], "confidence": [0.9871, 0.5, 0.2], "flagged": [False, True, True],
            "boxes": [[2, 3, 10, 8], [12, 20, 30, 26], [31, 40, 38, 47]], "summary": {}}


def _karyotype(viewer):
    layers = L.add_layers(viewer, L.karyotype_layers(_karyotype_result()))
    return next(ly for ly in layers if ly._type_string == "labels")


def _karyotype_shapes(viewer):
    layers = L.add_layers(viewer, L.karyotype_layers(_karyotype_result()))
    return next(ly for ly in layers if ly._type_string == "shapes")


def _hpa(viewer):
    lab = np.zeros((30, 30), np.uint16)
    lab[2:12, 2:12], lab[15:28, 14:29] = 1, 2
    res = {"mode": "cells", "labels": lab, "class_names": ["Nucleoplasm", "Cytosol"], "thresholds": [0.5, 0.5],
           "cells": [{"label": 1, "top_class": "Cytosol", "predicted": ["Cytosol"], "score": 0.75,
                      "probabilities": [0.25, 0.75]},
                     {"label": 2, "top_class": "Nucleoplasm", "predicted": [], "score": 0.4,
                      "probabilities": [0.4, 0.1]}]}
    return L.add_layers(viewer, L.hpa_layers(res))[0]


MAKERS = {"smear": _smear, "wbc": _wbc, "detections": _detections, "karyotype_shapes": _karyotype_shapes,
          "karyotype": _karyotype, "hpa": _hpa}
OUR_EXT = {"shapes": W.SHAPES_CSV_EXT, "labels": W.LABELS_TIFF_EXT}
PLAIN_EXT = {"shapes": ".csv", "labels": ".tif"}


def _reopen(path):
    """Open ``path`` as the user does after choosing Cell Class in napari's reader dialog."""
    viewer = ViewerModel()
    (layer,) = viewer.open(str(path), plugin=PLUGIN)
    return layer


def _same(back, layer) -> None:
    kind = layer._type_string
    assert back._type_string == kind
    if kind == "labels":
        assert np.array_equal(np.asarray(back.data), np.asarray(layer.data))
    else:
        assert back.shape_type == layer.shape_type
        for a, b in zip(back.data, layer.data):
            assert np.array_equal(a, b)
    pd.testing.assert_frame_equal(back.features, layer.features)  # classes, scores, review marks, dtypes
    if "tag" in layer.features:
        assert back.features["tag"].tolist() == layer.features["tag"].tolist()
        assert "" in back.features["tag"].tolist() and not back.features["tag"].isna().any()


@pytest.mark.parametrize("make", list(MAKERS))
def test_save_layers_without_plugin_to_our_extension(tmp_path, make):
    """``napari.save_layers("x.cellclass.csv", [layer])``: npe2 prefers the longer extension."""
    viewer = ViewerModel()
    layer = MAKERS[make](viewer)
    path = tmp_path / f"out{OUR_EXT[layer._type_string]}"
    assert napari.save_layers(str(path), [layer]) == [str(path)]
    _same(_reopen(path), layer)


@pytest.mark.parametrize("make", list(MAKERS))
def test_save_layers_with_plugin_name_to_plain_extension(tmp_path, make):
    viewer = ViewerModel()
    layer = MAKERS[make](viewer)
    path = tmp_path / f"out{PLAIN_EXT[layer._type_string]}"
    assert napari.save_layers(str(path), [layer], plugin=PLUGIN) == [str(path)]
    _same(_reopen(path), layer)


@pytest.mark.parametrize("make", ["smear", "hpa"])
def test_selected_layers_save_as_the_menu_does(tmp_path, make):
    """``viewer.layers.save(path, selected=True)``: the call behind File > Save Selected Layers."""
    viewer = ViewerModel()
    layer = MAKERS[make](viewer)
    viewer.layers.selection = {layer}
    path = tmp_path / f"sel{OUR_EXT[layer._type_string]}"
    assert viewer.layers.save(str(path), selected=True) == [str(path)]
    _same(_reopen(path), layer)
    zarr_path = tmp_path / "sel.zarr"  # no napari writer has .zarr: ours, whatever is typed
    if layer._type_string == "labels":
        assert viewer.layers.save(str(zarr_path), selected=True) == [str(zarr_path)]
        _same(_reopen(zarr_path), layer)


def _dialog_writer(layers, title_start: str):
    """The writer napari's Save dialog uses when the user picks the file type ``title_start``
    (napari.plugins._npe2.file_extensions_string_for_layers + QtViewer's filter decoding)."""
    from napari.plugins._npe2 import file_extensions_string_for_layers

    ext_str, writers = file_extensions_string_for_layers(layers)
    entries = ext_str.split(";;")
    return entries, next(w for e, w in zip(entries, writers) if e.startswith(title_start))


@pytest.mark.parametrize("make, title, typed", [
    ("smear", KEEPS_FEATURES_CSV, "smear.csv"),
    ("wbc", KEEPS_FEATURES_CSV, "cells"),  # no extension typed: ours appends .cellclass.csv
    ("karyotype", "Cell Class TIFF labels keeping the class table", "chromosomes.tif"),
    ("hpa", "Cell Class OME-Zarr labels keeping the class table", "hpa cells"),
])
def test_save_dialog_with_our_file_type_keeps_features(tmp_path, make, title, typed):
    viewer = ViewerModel()
    layer = MAKERS[make](viewer)
    viewer.layers.selection = {layer}
    entries, writer = _dialog_writer([layer], title)
    assert writer.plugin_name == PLUGIN
    (saved,) = viewer.layers.save(str(tmp_path / typed), selected=True, _writer=writer)
    assert saved.startswith(str(tmp_path / typed))
    _same(_reopen(saved), layer)


def test_save_dialog_default_file_type_is_napari_and_reopens_with_a_warning(tmp_path):
    """The first file type the dialog offers is napari's own CSV writer (npe2 ties go to napari,
    registered first): coordinates only.  Our reader opens that file too, and says what is
    missing and which file type keeps it."""
    viewer = ViewerModel()
    layer = _smear(viewer)
    entries, writer = _dialog_writer([layer], "napari")
    assert entries[0].startswith("napari builtins") and writer.plugin_name == "napari"
    assert any(e.startswith(KEEPS_FEATURES_CSV) for e in entries)  # ours is offered, by that name
    (saved,) = viewer.layers.save(str(tmp_path / "smear.csv"), selected=True, _writer=writer)
    assert get_reader(saved) is not None
    with pytest.warns(UserWarning, match=f"coordinates only.*{KEEPS_FEATURES_CSV}"):
        back = _reopen(saved)
    assert back.shape_type == layer.shape_type and back.features.shape[1] == 0
    for a, b in zip(back.data, layer.data):
        assert np.array_equal(a, b)


def test_other_extensions_are_refused_in_one_line(tmp_path):
    from napari_cellclass.errors import InputError

    with pytest.raises(InputError, match="ending in .csv"):
        W.write_shapes_csv(str(tmp_path / "a.txt"), [L.rectangles([[0, 0, 2, 2]])[0]], {"shape_type": "rectangle"})
    assert list(tmp_path.iterdir()) == []


# ------------------------------------------------------------------ CSV cells are never formulas

HOSTILE = ["=HYPERLINK(\"http://x\",\"y\")", "+1+2", "-A1", "@SUM(A1)", "\tx", "\r=x", "'=quoted", "'", "''",
           "", "plain", "-1.5", "+3", "=", "lymphocyte"]


def test_csv_escapes_formula_cells_and_reads_them_back_exactly(tmp_path):
    n = len(HOSTILE)
    feats = pd.DataFrame({
        "label": pd.Series(HOSTILE, dtype=object),  # an object column of strings: plain cells
        "tag": pd.Series(HOSTILE, dtype="str"),
        "kind": pd.Categorical(HOSTILE[:3] * (n // 3), categories=HOSTILE[:3]),
        "note": pd.Series([None if i % 4 == 0 else v for i, v in enumerate(HOSTILE)], dtype="str"),
        "=score": np.linspace(-1, 1, n),
        "mixed": pd.Series([[v] if i % 2 else v for i, v in enumerate(HOSTILE)], dtype=object),
    })
    shapes = L.rectangles(np.c_[np.arange(n), np.arange(n), np.arange(n) + 2, np.arange(n) + 3])
    path = tmp_path / f"h{W.SHAPES_CSV_EXT}"
    W.write_shapes_csv(str(path), shapes, {"shape_type": "rectangle", "features": feats})
    with open(path, encoding="utf-8", newline="") as fh:
        next(fh)  # line 1: our JSON header (a comment starting with '#')
        cells = [c for row in csv.reader(fh) for c in row]

    def number(c: str) -> bool:
        try:
            float(c)
        except ValueError:
            return False
        return True

    formulas = [c for c in cells if c.startswith(FORMULA_START) and not number(c)]
    assert formulas == []
    assert "'=HYPERLINK(\"http://x\",\"y\")" in cells and "'=score" in cells
    (data, kw, kind), = get_reader(str(path))(str(path))
    pd.testing.assert_frame_equal(kw["features"], feats)
    assert kw["features"]["tag"].tolist()[HOSTILE.index("")] == ""
    assert kw["features"]["note"].isna().tolist() == [i % 4 == 0 for i in range(n)]


def test_csv_from_before_escaping_reads_as_written(tmp_path):
    """Files written before issue 24 carry no quotes: a leading ' there is the user's own."""
    path = tmp_path / "old.csv"
    W.write_shapes_csv(str(path), L.rectangles([[0, 0, 2, 2]]), {"shape_type": "rectangle",
                                                                  "features": pd.DataFrame({"t": ["'=x"]})})
    text = path.read_text(encoding="utf-8").replace(',"text_escape":"leading-quote"', "")
    text = text.replace("''=x", "'=x")
    path.write_text(text, encoding="utf-8")
    (_, kw, _), = get_reader(str(path))(str(path))
    assert kw["features"]["t"].tolist() == ["'=x"]


# ------------------------------------------------------------------ File > Save All Layers

FOLDER_TITLE = "Cell Class folder keeping classes and review marks"


def _smear_viewer():
    viewer = ViewerModel()
    rng = np.random.default_rng(0)
    img = viewer.add_image(rng.integers(0, 255, (90, 100, 3), dtype=np.uint8), rgb=True, name="BloodImage_00041",
                           scale=(0.5, 0.5))
    (layer,) = L.add_layers(viewer, L.smear_layers(_smear_result(), source=img))
    _review(layer)
    return viewer


def _karyotype_viewer():
    viewer = ViewerModel()
    res = _karyotype_result()
    viewer.add_image(np.random.default_rng(1).integers(0, 255, res["labels"].shape, dtype=np.uint8), name="spread",
                     colormap="gray", contrast_limits=(10, 200))
    res["karyogram"] = np.zeros((20, 30, 3), np.uint8)
    L.add_layers(viewer, L.karyotype_layers(res))
    return viewer


def _hpa_viewer():
    viewer = ViewerModel()
    for i, c in enumerate(("red", "green", "blue", "yellow")):
        viewer.add_image(np.full((30, 30), 10 * (i + 1), np.uint16), name=f"s1_{c}", blending="additive")
    _hpa(viewer)
    return viewer


def _same_viewer(back: list, viewer) -> None:
    assert [ly.name for ly in back] == [ly.name for ly in viewer.layers]
    for b, ly in zip(back, viewer.layers):
        assert b._type_string == ly._type_string
        np.testing.assert_array_equal(b.scale, ly.scale)
        np.testing.assert_array_equal(b.translate, ly.translate)
        if ly._type_string == "image":
            assert np.array_equal(np.asarray(b.data), np.asarray(ly.data)) and b.rgb == ly.rgb
            assert b.colormap.name == ly.colormap.name and b.blending == ly.blending
            np.testing.assert_allclose(b.contrast_limits, ly.contrast_limits)
        else:
            _same(b, ly)


@pytest.mark.parametrize("make", [_smear_viewer, _karyotype_viewer, _hpa_viewer])
def test_save_all_layers_default_file_type_is_our_folder(tmp_path, make):
    """For a mix of images with labels or shapes, the dialog's first file type is ours (npe2
    sorts writers with fewer layer-type bounds first: ours has 2-3, napari SVG 5)."""
    viewer = make()
    entries, writer = _dialog_writer(list(viewer.layers), "")
    assert entries[0].startswith(FOLDER_TITLE) and writer.plugin_name == PLUGIN
    (saved,) = viewer.layers.save(str(tmp_path / "results"), selected=False, _writer=writer)
    assert saved == str(tmp_path / f"results{W.LAYERS_FOLDER_EXT}")
    back = ViewerModel().open(saved, plugin=PLUGIN)
    _same_viewer(back, viewer)
    # and from a script: the extension picks our writer without plugin=
    again = tmp_path / f"again{W.LAYERS_FOLDER_EXT}"
    assert napari.save_layers(str(again), list(viewer.layers)) == [str(again)]
    _same_viewer(ViewerModel().open(str(again), plugin=PLUGIN), viewer)


def test_layer_folder_refuses_files_outside_it(tmp_path):
    import json

    from napari_cellclass.errors import InputError

    viewer = _smear_viewer()
    (saved,) = napari.save_layers(str(tmp_path / f"r{W.LAYERS_FOLDER_EXT}"), list(viewer.layers))
    manifest = tmp_path / f"r{W.LAYERS_FOLDER_EXT}" / W.LAYERS_MANIFEST
    info = json.loads(manifest.read_text())
    info["layers"][0]["file"] = "../outside.tif"
    manifest.write_text(json.dumps(info))
    with pytest.raises(InputError, match="not a plain file name inside the folder"):
        get_reader(saved)(saved)


def test_csv_keeps_the_look_and_the_result_mark(tmp_path):
    """A reopened smear analysis shows its class colours and tags and keeps the plugin's mark."""
    viewer = ViewerModel()
    layer = _smear(viewer)
    path = tmp_path / f"s{W.SHAPES_CSV_EXT}"
    napari.save_layers(str(path), [layer])
    back = _reopen(path)
    np.testing.assert_allclose(back.edge_color, layer.edge_color, atol=1e-6)
    assert list(back.edge_width) == list(layer.edge_width)
    assert back.text.string.format == "{tag}" and back.text.values.tolist() == layer.text.values.tolist()
    assert back.metadata[L.MARK] == layer.metadata[L.MARK]


@pytest.mark.parametrize("edit", [
    ('"missing":[', '"missing":[Infinity,'),
    ('"string":"{tag}"', '"string":"{tag:{width}}"'),
    ('"string":"{tag}"', '"string":"{nope}"'),
    ('"edge_width":[', '"edge_width":[-1e309,'),
])
def test_hostile_csv_header_is_refused_or_ignored(tmp_path, edit):
    """A tampered line 1 gives one InputError or a layer without the bad look, never a raw error."""
    from napari_cellclass.errors import InputError

    viewer = ViewerModel()
    feats = _smear(viewer).features.copy()
    feats.loc[0, "tag"] = None
    layer = viewer.add_shapes(list(viewer.layers[0].data), shape_type="rectangle", features=feats,
                              text={"string": "{tag}"}, edge_width=list(viewer.layers[0].edge_width))
    path = tmp_path / f"h{W.SHAPES_CSV_EXT}"
    napari.save_layers(str(path), [layer])
    text = path.read_text(encoding="utf-8")
    assert edit[0] in text
    path.write_text(text.replace(edit[0], edit[1], 1), encoding="utf-8")
    try:
        back = ViewerModel().open(str(path), plugin=PLUGIN)[0]
    except InputError:
        return
    assert getattr(back.text.string, "format", "") in ("", "{tag}") and len(back.data) == len(layer.data)


# ------------------------------------------------------------------ real smear, shipped models

@pytest.mark.realdata
@pytest.mark.slow  # about 8 s: the shipped detector and classifier on CPU
def test_real_smear_analysis_reopens_with_classes_and_review_marks(shared_data, tmp_path, monkeypatch):
    """BloodImage_00095 (held out by both built-in models): analyse, correct one white cell,
    save as the dialogs do (selected layer with our CSV type, all layers with the default
    type), reopen, and every class, score and review mark is back."""
    from napari_cellclass import api
    from napari_cellclass.io.limits import read_image

    monkeypatch.delenv("CELLCLASS_ZOO_DIR", raising=False)
    path = shared_data / "bccd" / "JPEGImages" / "BloodImage_00095.jpg"
    viewer = ViewerModel()
    img = viewer.add_image(read_image(path), rgb=True, name=path.stem)
    (layer,) = api.analyse_smear(img, device="cpu", viewer=viewer)
    assert (layer.features["kind"] == "WBC").sum() >= 1 and (layer.features["tag"] == "").sum() >= 1
    wbc = int(np.flatnonzero(layer.features["kind"] == "WBC")[0])
    f = layer.features.copy()
    f.loc[wbc, "reviewed_class"], f.loc[wbc, "corrected"] = "Basophil", True
    f["tag"] = [L.blood_tag(r) for _, r in f.iterrows()]
    layer.features = f
    viewer.layers.selection = {layer}
    _, writer = _dialog_writer([layer], KEEPS_FEATURES_CSV)
    (saved,) = viewer.layers.save(str(tmp_path / "smear"), selected=True, _writer=writer)
    _same(_reopen(saved), layer)
    entries, writer = _dialog_writer(list(viewer.layers), "")
    (folder,) = viewer.layers.save(str(tmp_path / "all"), selected=False, _writer=writer)
    _same_viewer(ViewerModel().open(folder, plugin=PLUGIN), viewer)


# ------------------------------------------------------------------ napari's own Save dialog, in Qt

@pytest.mark.viewer
@pytest.mark.parametrize("which", ["ours", "napari default"])
def test_qt_save_selected_dialog(make_napari_viewer, tmp_path, monkeypatch, which):
    """File > Save Selected Layers itself (QtViewer._save_layers_dialog), the file dialog
    answered as a user would: our file type keeps everything, napari's preselected one does
    not and our reader says so on reopening."""
    from napari._qt import qt_viewer as qv

    viewer = make_napari_viewer()
    layer = _smear(viewer)
    viewer.layers.selection = {layer}
    offered = {}

    def answer(*args, **kwargs):  # called on a QFileDialog instance: (dialog, parent, caption, dir)
        entries = kwargs["filter"].split(";;")
        offered["entries"] = entries
        chosen = next(e for e in entries if e.startswith(KEEPS_FEATURES_CSV)) if which == "ours" else entries[0]
        return str(tmp_path / "smear.csv"), chosen

    monkeypatch.setattr(qv.QFileDialog, "getSaveFileName", answer)
    viewer.window._qt_viewer._save_layers_dialog(selected=True)
    assert offered["entries"][0].startswith("napari builtins")
    if which == "ours":
        _same(_reopen(tmp_path / "smear.csv"), layer)
    else:
        with pytest.warns(UserWarning, match="coordinates only"):
            back = _reopen(tmp_path / "smear.csv")
        assert back.features.shape[1] == 0


@pytest.mark.viewer
def test_qt_save_all_dialog_default_keeps_everything(make_napari_viewer, tmp_path, monkeypatch):
    """File > Save All Layers on a smear and its analysis: the preselected file type is our
    folder; the name typed without an extension becomes ``NAME.cellclass``."""
    from napari._qt import qt_viewer as qv

    viewer = make_napari_viewer()
    img = viewer.add_image(np.random.default_rng(2).integers(0, 255, (60, 90, 3), dtype=np.uint8), rgb=True,
                           name="smear")
    (layer,) = L.add_layers(viewer, L.smear_layers(_smear_result(), source=img))
    _review(layer)
    monkeypatch.setattr(qv.QFileDialog, "getSaveFileName",
                        lambda *a, **k: (str(tmp_path / "results"), k["filter"].split(";;")[0]))
    viewer.window._qt_viewer._save_layers_dialog(selected=False)
    back = ViewerModel().open(str(tmp_path / f"results{W.LAYERS_FOLDER_EXT}"), plugin=PLUGIN)
    _same_viewer(back, viewer)

"""napari_cellclass.layers: task results -> layer-data tuples (pure), and add_layers on a real viewer."""
from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

from napari_cellclass import layers as L
from napari_cellclass.errors import InputError


def _by_name(tuples):
    return {kw["name"]: (data, kw, kind) for data, kw, kind in tuples}


def _detect_result(n=3):
    boxes = np.array([[10, 20, 30, 50], [40, 5, 60, 25], [0, 0, 8, 8]], float)[:n]
    labels = ["RBC", "WBC", "RBC"][:n]
    return {"boxes": boxes, "labels": labels, "scores": np.array([0.9, 0.8, 0.75])[:n],
            "class_names": ["RBC", "WBC", "Platelets"], "tiles": 1, "device": "cpu"}


def test_module_is_pure():
    import subprocess
    import sys

    code = ("import sys; import napari_cellclass.layers; "
            "bad = [m for m in sys.modules if m.split('.')[0] in ('qtpy', 'PyQt5', 'PyQt6', 'PySide2', 'PySide6', "
            "'napari')]; print(bad); assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_detect_layers_boxes_colours_text_and_instances():
    from napari_cellclass.io.annotation_reader import PALETTE

    res = _detect_result()
    res["instance_labels"] = np.zeros((64, 64), np.int32)
    src = SimpleNamespace(name="smear", scale=(1, 0.5, 0.5), translate=(0, 3.0, 4.0))
    out = L.detect_layers(res, source=src)
    (rects, kw, kind), (_inst, ikw, ikind) = out
    assert kind == "shapes" and kw["name"] == "smear detections" and kw["shape_type"] == "rectangle"
    assert len(rects) == 3
    np.testing.assert_array_equal(rects[0], [[10, 20], [10, 50], [30, 50], [30, 20]])
    assert list(kw["features"]["label"]) == ["RBC", "WBC", "RBC"]
    assert kw["features"]["score"].dtype == float
    assert kw["edge_color"] == [PALETTE[0], PALETTE[1], PALETTE[0]]  # colour by class order
    assert kw["text"]["string"] == "{label} {score:.2f}"
    assert kw["face_color"] == "transparent" and kw["edge_width"] == 2
    assert kw["feature_defaults"] == {"label": "RBC", "score": 1.0}
    assert kw["scale"] == (0.5, 0.5) and kw["translate"] == (3.0, 4.0)  # last two axes of the source
    assert kw["metadata"]["cellclass"] == {"task": "detect", "role": "detections", "name": "smear detections"}
    assert ikind == "labels" and ikw["name"] == "smear instances" and ikw["opacity"] == 0.4


def test_detect_layers_without_detections_keep_typed_columns():
    res = _detect_result(0)
    res["class_names"] = []
    [(rects, kw, _)] = L.detect_layers(res)
    assert rects == [] and kw["name"] == "image detections"
    assert "edge_color" not in kw and "text" not in kw
    assert kw["features"]["label"].dtype == object and kw["feature_defaults"]["label"] == "object"


def _smear_result():
    return {"labels": ["RBC", "WBC", "Platelets", "WBC"], "boxes": np.arange(16, dtype=float).reshape(4, 4),
            "scores": np.array([0.9, 0.8, 0.7, 0.95]), "wbc_index": [1, 3],
            "wbc_class": ["", "NEUTROPHIL", "", "NOT_A_CLASS"], "wbc_score": np.array([np.nan, 0.9, np.nan, 0.6]),
            "probabilities": np.array([[0.9, 0.1], [0.4, 0.6]]), "class_names": ["NEUTROPHIL", "LYMPHOCYTE"]}


def test_smear_layers_features_colours_widths_tags():
    from napari_cellclass.synth.blood import CLASS_COLOURS

    [(rects, kw, kind)] = L.smear_layers(_smear_result(), source=SimpleNamespace(name="s1", scale=None,
                                                                               translate=None))
    assert kind == "shapes" and kw["name"] == "s1 smear analysis" and len(rects) == 4
    f = kw["features"]
    assert list(f["kind"]) == ["RBC", "WBC", "Platelets", "WBC"]
    assert list(f["reviewed_class"]) == list(f["wbc_class"]) and not f["corrected"].any()
    assert np.isnan(f.loc[0, "p_NEUTROPHIL"]) and f.loc[1, "p_LYMPHOCYTE"] == pytest.approx(0.1)
    assert list(f["tag"]) == ["", "NEUT 0.90", "", "NOT_ 0.60"]
    assert kw["edge_width"] == [1, 3, 1, 3]
    np.testing.assert_allclose(kw["edge_color"][0], L.OTHER_COLOURS["RBC"])
    np.testing.assert_allclose(kw["edge_color"][1], CLASS_COLOURS["NEUTROPHIL"])
    np.testing.assert_allclose(kw["edge_color"][2], L.OTHER_COLOURS["Platelets"])
    np.testing.assert_allclose(kw["edge_color"][3], L.UNKNOWN_WBC_COLOUR)
    assert kw["text"]["string"] == "{tag}" and "scale" not in kw


def test_blood_tag_marks_corrections():
    row = pd.Series({"reviewed_class": "MONOCYTE", "wbc_score": 0.5, "corrected": True})
    assert L.blood_tag(row) == "MONO*"
    assert L.blood_tag(pd.Series({"reviewed_class": ""})) == ""


def _wbc_result(n=2):
    return {"class_names": ["NEUTROPHIL", "LYMPHOCYTE"], "classes": ["LYMPHOCYTE", "NEUTROPHIL"][:n],
            "probabilities": np.array([[0.2, 0.8], [0.7, 0.3]])[:n], "scores": np.array([0.8, 0.7])[:n],
            "boxes": np.array([[0, 0, 10, 10], [5, 5, 20, 20]], float)[:n], "label_ids": None,
            "differential": {}, "device": "cpu"}


def test_wbc_layers_keep_the_users_shapes_and_features():
    user = SimpleNamespace(
        name="my cells", data=[np.array([[0, 0], [0, 9], [9, 9], [9, 0]], float),
                               np.array([[1, 1], [3, 8], [8, 2]], float),
                               np.array([[5, 5], [5, 20], [20, 20], [20, 5]], float)],
        shape_type=["rectangle", "polygon", "rectangle"],
        features=pd.DataFrame({"label": ["WBC", "RBC", "WBC"], "tag": ["a", "b", "c"]}), scale=(2, 2),
        translate=(0, 0))
    [(rects, kw, _)] = L.wbc_layers(_wbc_result(), cells=user, selected=[0, 2])
    assert kw["name"] == "my cells (classified)" and kw["shape_type"] == user.shape_type
    assert len(rects) == 3 and rects[1] is not user.data[1] and np.array_equal(rects[1], user.data[1])
    f = kw["features"]
    assert list(f["label"]) == ["WBC", "RBC", "WBC"] and list(f["tag_user"]) == ["a", "b", "c"]  # kept, renamed
    assert list(f["wbc_class"]) == ["LYMPHOCYTE", "", "NEUTROPHIL"] and list(f["kind"]) == ["WBC", "", "WBC"]
    assert np.isnan(f.loc[1, "wbc_score"]) and f.loc[2, "p_NEUTROPHIL"] == pytest.approx(0.7)
    assert kw["edge_width"] == [3, 1, 3]
    assert user.features.columns.tolist() == ["label", "tag"]  # the user's table is not changed


def test_wbc_layers_from_boxes_and_label_ids():
    res = _wbc_result()
    res["label_ids"] = np.array([4, 7])
    [(rects, kw, _)] = L.wbc_layers(res, source=SimpleNamespace(name="img", scale=(1, 1), translate=(0, 0)))
    assert kw["name"] == "img (classified)" and len(rects) == 2
    assert list(kw["features"]["label_id"]) == [4, 7] and list(kw["features"]["tag"]) == ["LYMP 0.80", "NEUT 0.70"]


def test_hpa_layers_cells_and_whole():
    labels = np.zeros((20, 20), np.int32)
    labels[2:6, 2:6], labels[10:15, 10:15] = 1, 3
    res = {"mode": "cells", "class_names": ["Nucleoplasm", "Cytosol"], "thresholds": [0.5, 0.5],
           "labels": labels, "device": "cpu",
           "cells": [{"label": 1, "top_class": "Cytosol", "predicted": ["Cytosol"], "score": 0.9,
                      "probabilities": [0.1, 0.9]},
                     {"label": 3, "top_class": "Nucleoplasm", "predicted": [], "score": 0.4,
                      "probabilities": [0.4, 0.2]}]}
    [(data, kw, kind)] = L.result_layers(res)
    assert kind == "labels" and kw["name"] == "HPA cells" and kw["opacity"] == 0.4
    assert data is labels or np.array_equal(data, labels)
    assert kw["features"]["class"][1] == "Cytosol" and kw["features"]["p_Nucleoplasm"][3] == 0.4
    assert kw["metadata"]["hpa_class_names"] == ["Nucleoplasm", "Cytosol"]
    assert L.result_layers({**res, "mode": "whole"}) == []


@pytest.fixture(scope="module")
def karyotype_result():
    from napari_cellclass.karyotype.corrections import KaryotypeSession
    from napari_cellclass.synth.chromosomes import make_spread

    spread = make_spread(seed=1, karyotype="46,XX", size=(320, 320), nucleus=False)
    session = KaryotypeSession(spread["image"], spread["labels"])  # no classifier: uniform rows
    session.fixed[1] = -1  # one object rejected by the user: class "?"
    return spread, session.update()


def test_karyotype_layers_labels_shapes_karyogram(karyotype_result):
    _spread, res = karyotype_result
    tuples = L.karyotype_layers(res)
    named = _by_name(tuples)
    assert list(named) == ["chromosomes", "chromosome classes", "karyogram"]
    labels, lkw, lkind = named["chromosomes"]
    assert lkind == "labels" and lkw["opacity"] == 0.4 and labels is not res["labels"]
    np.testing.assert_array_equal(labels, res["labels"])
    assert list(lkw["features"]["index"]) == [int(i) for i in res["ids"]]
    assert lkw["features"]["class"][0] == "?"
    rects, skw, _ = named["chromosome classes"]
    assert len(rects) == len(res["ids"]) and skw["text"]["string"] == "{class}"
    assert skw["edge_color"] == ["red" if f else "lime" for f in res["flagged"]]
    assert list(skw["features"]["id"]) == [int(i) for i in res["ids"]]
    k, kkw, kkind = named["karyogram"]
    H, W = res["labels"].shape
    s = H / k.shape[0]
    assert kkind == "image" and kkw["rgb"] is True
    assert kkw["scale"] == pytest.approx((s, s)) and kkw["translate"] == pytest.approx((0, W + 20))
    # on a scaled, shifted source the karyogram keeps its place right of the spread
    src = SimpleNamespace(name="spread", scale=(2.0, 2.0), translate=(5.0, 7.0))
    kkw2 = _by_name(L.karyotype_layers(res, source=src))["karyogram"][1]
    assert kkw2["scale"] == pytest.approx((2 * s, 2 * s))
    assert kkw2["translate"] == pytest.approx((5.0, 7.0 + 2 * (W + 20)))


def test_karyotype_layers_from_the_pipeline_result_number_rows_by_label():
    labels = np.zeros((40, 40), np.int32)
    labels[1:5, 1:5], labels[10:20, 10:14] = 1, 2
    res = {"labels": labels, "classes": np.array([0, 22]), "confidence": np.array([0.91234, 0.3]),
           "flagged": np.array([False, True]), "boxes": np.array([[1, 1, 5, 5], [10, 10, 20, 14]]),
           "summary": "2", "karyogram": None}
    named = _by_name(L.result_layers(res))
    assert list(named) == ["chromosomes", "chromosome classes"]
    f = named["chromosomes"][1]["features"]
    assert list(f["index"]) == [1, 2] and list(f["class"]) == ["1", "X"] and f["confidence"][0] == 0.912
    assert named["chromosome classes"][1]["edge_color"] == ["lime", "red"]


def test_explanation_layer_sits_on_the_crop():
    res = {"heatmap": np.ones((4, 6), np.float32), "offset": (10, 20), "method": "gradcam", "class": "X",
           "probabilities": {"X": 1.0}}
    [(_heat, kw, kind)] = L.result_layers(res, source=SimpleNamespace(name="i", scale=(2.0, 3.0),
                                                                     translate=(1.0, 1.0)))
    assert kind == "image" and kw["name"] == "gradcam: X" and kw["colormap"] == "inferno"
    assert kw["translate"] == pytest.approx((21.0, 61.0)) and kw["scale"] == pytest.approx((2.0, 3.0))
    assert "heatmap" not in kw["metadata"]["cellclass_explanation"]


def test_unknown_result_is_a_clear_error():
    with pytest.raises(InputError, match="cannot tell which task"):
        L.result_layers({"foo": 1})
    with pytest.raises(InputError, match="no layers for task 'nope'"):
        L.result_layers(_detect_result(), task="nope")


@pytest.mark.viewer
def test_add_layers_updates_ours_and_leaves_the_users(make_napari_viewer, karyotype_result):
    _spread, res = karyotype_result
    viewer = make_napari_viewer()
    users = viewer.add_labels(np.zeros_like(res["labels"]), name="chromosomes")  # the user's own layer
    first = L.add_layers(viewer, L.karyotype_layers(res))
    assert [ly.name for ly in first] == ["chromosomes [1]", "chromosome classes", "karyogram"]
    assert not users.data.any() and "cellclass" not in users.metadata
    assert first[0].metadata["cellclass"]["name"] == "chromosomes"
    assert first[1].features["class"].tolist() == list(L._karyo_names(res))
    edited = dict(res, labels=np.where(res["labels"] == 2, 0, res["labels"]))
    again = L.add_layers(viewer, L.karyotype_layers(edited))
    assert again[0] is first[0] and again[2] is first[2]  # labels and karyogram updated in place
    assert not (again[0].data == 2).any()
    assert len(viewer.layers) == 4
    # the replaced shapes layer keeps its place in the layer list
    assert [ly.name for ly in viewer.layers] == ["chromosomes", "chromosomes [1]", "chromosome classes",
                                                 "karyogram"]
    det = L.add_layers(viewer, L.detect_layers(_detect_result(0)))
    assert len(det[0].data) == 0 and det[0].name == "image detections"

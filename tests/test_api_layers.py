"""api.classify/detect/karyotype with napari layers as input, as_layers=True and viewer= (issue 11, part 9)."""
from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

from napari_cellclass import api
from napari_cellclass.errors import InputError


@pytest.fixture(autouse=True)
def _packaged_zoo(monkeypatch, tmp_path):
    monkeypatch.delenv("CELLCLASS_ZOO_DIR", raising=False)
    monkeypatch.setenv("CELLCLASS_CACHE_DIR", str(tmp_path / "cache"))


@pytest.fixture(scope="module")
def spread():
    from napari_cellclass.synth.chromosomes import make_spread

    return make_spread(seed=3, karyotype="46,XY", size=(384, 384), nucleus=False)


def _fake_layer(data, name, scale=(1.0, 1.0), translate=(0.0, 0.0), **more):
    """Duck-typed stand-in for a napari layer (the pure path needs no napari)."""
    return SimpleNamespace(data=data, name=name, scale=scale, translate=translate, **more)


def test_karyotype_as_layers_takes_the_layer_and_keeps_the_plain_result(spread):
    layer = _fake_layer(spread["image"], "my spread", scale=(0.5, 0.5), translate=(10.0, 0.0))
    out = api.karyotype(layer, labels=_fake_layer(spread["labels"], "truth"), device="cpu", as_layers=True)
    assert isinstance(out, list) and [kw["name"] for _, kw, _ in out] == ["chromosomes", "chromosome classes",
                                                                        "karyogram"]
    labels, kw, kind = out[0]
    assert kind == "labels" and kw["scale"] == (0.5, 0.5) and kw["translate"] == (10.0, 0.0)
    np.testing.assert_array_equal(labels > 0, spread["labels"] > 0)  # the labels we gave were used
    assert out.result["count"] == 46 and out.result["summary"].startswith("46,")
    # neither viewer nor as_layers: the same dict as before this change
    plain = api.karyotype(spread["image"], labels=spread["labels"], device="cpu")
    assert isinstance(plain, dict) and plain["summary"] == out.result["summary"]
    with pytest.raises(InputError, match="not both"):
        api.karyotype(layer, labels=spread["labels"], device="cpu", viewer=object(), as_layers=True)


def test_classify_white_cells_of_a_shapes_layer_keeps_its_features():
    from napari_cellclass.samples import bccd_samples

    sample = bccd_samples()[0]
    boxes, labels = sample.boxes()
    rects = [np.array([[y0, x0], [y0, x1], [y1, x1], [y1, x0]], float) for y0, x0, y1, x1 in boxes]
    wbc = [i for i, lab in enumerate(labels) if lab == "WBC"]
    cells = _fake_layer([rects[i] for i in wbc], "my boxes", shape_type=["rectangle"] * len(wbc),
                        features=pd.DataFrame({"note": [f"cell {i}" for i in wbc]}))
    image = _fake_layer(sample.read(), "BloodImage")
    out = api.classify(image, "bccd-wbc-ibnresnet34", cells=cells, device="cpu", as_layers=True)
    [(data, kw, kind)] = out
    assert kind == "shapes" and kw["name"] == "my boxes (classified)" and len(data) == len(wbc)
    f = kw["features"]
    assert list(f["note"]) == list(cells.features["note"])  # the user's column travels with the boxes
    assert list(f["wbc_class"]) == list(out.result["classes"]) and set(f["kind"]) == {"WBC"}


def test_detect_from_a_path_names_layers_after_the_file():
    from napari_cellclass.samples import bccd_samples

    path = bccd_samples()[0].image
    out = api.detect(path, "bccd-blood-cells-centernet", device="cpu", as_layers=True)
    data, kw, kind = out[0]
    assert kind == "shapes" and kw["name"] == f"{path.stem} detections"
    assert len(data) == len(out.result["boxes"]) and list(kw["features"]["label"]) == list(out.result["labels"])


def test_analyse_smear_as_layers_is_the_blood_widgets_layer():
    from napari_cellclass.samples import bccd_samples

    sample = bccd_samples()[0]
    out = api.analyse_smear(_fake_layer(sample.read(), "smear 1"), device="cpu", as_layers=True)
    [(data, kw, kind)] = out
    assert kind == "shapes" and kw["name"] == "smear 1 smear analysis" and len(data) == len(out.result["labels"])
    f = kw["features"]
    assert list(f["wbc_class"]) == list(out.result["wbc_class"]) and "tag" in f.columns
    assert sum(k == "WBC" for k in f["kind"]) == out.result["counts"]["WBC"]


@pytest.mark.viewer
def test_karyotype_into_a_viewer_then_correct_and_show_again(make_napari_viewer, spread):
    viewer = make_napari_viewer()
    image = viewer.add_image(spread["image"], name="spread", scale=(2.0, 2.0))
    added = api.karyotype(image, viewer=viewer, labels=spread["labels"], device="cpu")
    assert [ly.name for ly in added] == ["chromosomes", "chromosome classes", "karyogram"]
    assert all(ly in viewer.layers for ly in added)
    assert tuple(viewer.layers["chromosomes"].scale) == (2.0, 2.0)
    assert viewer.layers["karyogram"].translate[1] == pytest.approx(2.0 * (384 + 20))
    assert added.result["count"] == 46
    session = api.karyotype_session(image, added.result, device="cpu")
    session.delete(int(session.ids[0]))
    again = api.show(session.update(), viewer, source=image)
    assert again[0] is added[0]  # the labels layer is updated in place, not a new one
    assert again.result["count"] == 45 and len(viewer.layers["chromosome classes"].data) == 45
    assert len(viewer.layers) == 4

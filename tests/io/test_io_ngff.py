"""Our OME-Zarr labels carry NGFF 0.4 metadata that passes the specification's schema rules."""
from __future__ import annotations

import copy
import json

import numpy as np
import pandas as pd
import pytest

from napari_cellclass.io import ngff
from napari_cellclass.io import writers as W


@pytest.mark.parametrize("ndim", [2, 3, 4, 5])
def test_written_labels_validate(tmp_path, ndim):
    lab = np.zeros((2,) * (ndim - 2) + (6, 7), np.uint16)
    lab[..., 1:3, 2:4] = 1
    W.write_labels_zarr(str(tmp_path / "l.zarr"), lab, {
        "features": pd.DataFrame({"index": [0, 1], "class": ["bg", "A"]}),
        "scale": [0.5] * ndim, "translate": [1.0] * ndim})
    attrs = json.loads((tmp_path / "l.zarr" / ".zattrs").read_text())
    ngff.validate_labels_attrs(attrs, ndim)
    ms = attrs["multiscales"][0]
    assert ms["version"] == "0.4" and [a["name"] for a in ms["axes"]] == ngff.AXES_BY_NDIM[ndim]
    assert attrs["image-label"]["properties"] == [{"label-value": 0, "class": "bg"}, {"label-value": 1, "class": "A"}]
    assert (tmp_path / "l.zarr" / ms["datasets"][0]["path"] / ".zarray").is_file()


def _good() -> dict:
    return {"multiscales": ngff.multiscales("x", 2, [1.0, 1.0], [0.0, 0.0]), "image-label": {"version": "0.4"}}


@pytest.mark.parametrize("breakage, match", [
    (lambda a: a.pop("image-label"), "image-label"),
    (lambda a: a["multiscales"][0].update(version="0.3"), "0.4"),
    (lambda a: a["multiscales"][0]["datasets"].clear(), "datasets"),
    (lambda a: a["multiscales"][0]["datasets"][0]["coordinateTransformations"].insert(
        0, {"type": "translation", "translation": [0, 0]}), "coordinateTransformations"),
    (lambda a: a["multiscales"][0]["datasets"][0]["coordinateTransformations"][0].update(scale=[1.0, 2.0, 3.0]), "values"),
    (lambda a: a["multiscales"][0]["axes"].insert(1, {"name": "t", "type": "time"}), "time|space"),
    (lambda a: a["multiscales"][0]["axes"][0].update(name="x"), "repeat"),
    (lambda a: a["image-label"].update(colors=[{"label-value": 1, "rgba": [0, 0, 300, 0]}]), "colors"),
])
def test_broken_metadata_is_named(breakage, match):
    attrs = copy.deepcopy(_good())
    ngff.validate_labels_attrs(attrs, 2)
    breakage(attrs)
    with pytest.raises(ValueError, match=match):
        ngff.validate_labels_attrs(attrs)

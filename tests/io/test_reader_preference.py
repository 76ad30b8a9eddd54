"""napari's "remember this choice" for our reader leaves every image openable (issue 22, part C).

Ticking "remember" in napari's reader dialog after choosing napari-cellclass for an HPA
channel ``x_red.jpg`` stores ``"*.jpg": "napari-cellclass"``.  napari then looked up that
preference for every JPEG, found that none of our reader patterns matches a smear or a
spread JPEG, and warned "Can't find napari-cellclass plugin associated with ... files"
(or asked again when another plugin reads JPEGs too).  Now the preference is narrowed to
the HPA channel patterns as soon as it is stored (``hpa_reader.narrow_preferences``), and
TIFFs (``*.tif`` is one of our patterns) handed to us are opened whatever they hold.
"""
from __future__ import annotations

import warnings

import imageio.v3 as iio
import numpy as np
import pytest
import tifffile

from napari_cellclass.io.hpa_reader import CHANNELS, narrow_preferences

pytestmark = pytest.mark.viewer

PLUGIN = "napari-cellclass"


@pytest.fixture
def settings():
    from napari.settings import get_settings

    plugins = get_settings().plugins
    old = dict(plugins.extension2reader)
    yield plugins
    plugins.extension2reader = old


def _write(path, img):
    if path.suffix == ".tif":
        tifffile.imwrite(path, img)
    elif path.suffix == ".jpg":
        iio.imwrite(path, img, quality=95)
    else:
        iio.imwrite(path, img)


def _files(folder, ext):
    rng = np.random.default_rng(0)
    smear = np.full((48, 64, 3), (230, 200, 210), np.uint8)
    smear[10:30, 20:44] = (120, 60, 160)
    spread = (rng.random((64, 64)) * 40 + 200).astype(np.uint8)
    spread[20:44, 30:34] = 40  # one dark chromosome on a light background
    _write(folder / f"BloodImage_00001{ext}", smear)
    _write(folder / f"spread_01{ext}", spread)
    for c in CHANNELS:
        _write(folder / f"field1_{c}{ext}", (rng.random((32, 32)) * 255).astype(np.uint8))
    return folder / f"BloodImage_00001{ext}", folder / f"spread_01{ext}", folder / f"field1_red{ext}"


def _open(viewer, path):
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*Can't find.*")
        return viewer.open(str(path), plugin=None)  # the automatic dispatch (drag and drop, File > Open)


def test_narrow_preferences_rules():
    assert narrow_preferences({"*.jpg": PLUGIN}) == {f"*_{c}.jpg": PLUGIN for c in CHANNELS}
    assert narrow_preferences({"*.png": f"{PLUGIN}.read_hpa", "*.czi": "other"}) == {
        **{f"*_{c}.png": PLUGIN for c in CHANNELS}, "*.czi": "other"}
    # patterns we claim as such stay (our own layer reader reads every TIFF it is handed)
    assert narrow_preferences({"*.tif": f"{PLUGIN}.read_layers", "*.jpg": "napari"}) == {
        "*.tif": PLUGIN, "*.jpg": "napari"}


@pytest.mark.parametrize("ext", [".jpg", ".png", ".tif"])
@pytest.mark.parametrize("reader", [PLUGIN, f"{PLUGIN}.read_hpa"])
def test_remembered_choice_leaves_smears_spreads_and_hpa_openable(make_napari_viewer, tmp_path, settings, ext,
                                                                   reader):
    viewer = make_napari_viewer()
    smear, spread, hpa = _files(tmp_path, ext)
    # what napari's reader dialog does: open with the chosen plugin, then remember it for the extension
    first = viewer.open(str(hpa), plugin=PLUGIN)
    assert len(first) == 4 and {lay.metadata.get("hpa_channel") for lay in first} == set(CHANNELS)
    settings.extension2reader = {**settings.extension2reader, f"*{ext}": reader}
    for _ in range(2):  # and on later opens, in the same session
        (s,) = _open(viewer, smear)
        assert s._type_string == "image" and s.data.shape[:2] == (48, 64)
        assert s.rgb and s.data.shape[-1] == 3
        (g,) = _open(viewer, spread)
        assert g._type_string == "image" and g.data.shape[:2] == (64, 64)
        h = _open(viewer, hpa)
        assert len(h) == 4 and {lay.metadata.get("hpa_channel") for lay in h} == set(CHANNELS)
    prefs = settings.extension2reader
    assert all(v == PLUGIN for k, v in prefs.items() if k.endswith(ext) and v.startswith(PLUGIN))

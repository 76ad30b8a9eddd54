"""The plugin's sample data opens in a real napari viewer."""
from __future__ import annotations

import numpy as np
import pytest

SAMPLES = {"hpa_field": 4, "blood_smear": 1, "metaphase_spread": 1}


@pytest.mark.viewer
@pytest.mark.parametrize("key,min_layers", SAMPLES.items())
def test_sample_opens_in_viewer(make_napari_viewer, key, min_layers):
    viewer = make_napari_viewer()
    viewer.open_sample("napari-cellclass", key)
    assert len(viewer.layers) >= min_layers
    images = [layer for layer in viewer.layers if layer._type_string == "image"]
    assert images, "a sample must add at least one image layer"
    for layer in images:
        data = np.asarray(layer.data)
        assert data.ndim >= 2 and data.size > 0 and float(data.max()) > float(data.min())

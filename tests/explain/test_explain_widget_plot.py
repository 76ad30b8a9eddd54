"""The Explain dock shows its embedding plot only once there is an embedding (no empty white plot)."""
from __future__ import annotations

import numpy as np
import pytest


@pytest.mark.viewer
def test_plot_is_hidden_until_an_embedding_is_drawn(make_napari_viewer, qtbot):
    from napari_cellclass.widgets.explain import ExplainWidget

    viewer = make_napari_viewer()
    w = ExplainWidget(viewer)
    viewer.window.add_dock_widget(w)
    qtbot.waitExposed(w)
    assert w.canvas.isHidden() and not w.canvas.isVisibleTo(w)
    rng = np.random.default_rng(0)
    w._on_embedded({"coords": rng.normal(size=(20, 2)), "labels": np.repeat([0, 1], 10),
                    "class_names": ["a", "b"], "method": "pca", "n": 20, "neighbour_agreement": 0.9,
                    "png": "embedding.png"})
    assert not w.canvas.isHidden() and w.canvas.isVisibleTo(w) and len(w.ax.collections) == 2

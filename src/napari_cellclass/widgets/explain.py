"""Explain a prediction: Grad-CAM / guided-backprop maps as image layers, and a
feature-embedding plot (t-SNE/PCA) of a dataset coloured by class.

Thin: reads the chosen layers on the GUI thread, runs
:mod:`napari_cellclass.explain` in a ``thread_worker``, and adds the map as an
image layer aligned with the image (or with the chosen cell's crop).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from qtpy.QtWidgets import QHBoxLayout, QLabel, QPushButton, QSpinBox, QWidget

from .. import zoo
from .._compat import avoid_triton_llvm_clash
from ..engine.progress import CancelToken
from ..errors import CellClassError
from ._forms import Choice, DeviceChoice, LayerChoice, PathEdit, add_all, form, scrolling_layout
from ._model_chooser import ModelChooser
from ._runner import JobRunner, RunsJobs

PREDICTED = "(predicted class)"
WHOLE = "(whole image)"
METHODS = ["gradcam", "guided_backprop", "guided_gradcam"]
CONTEXT = 1.15


def crop_box(shape_vertices: np.ndarray, image_hw: tuple[int, int], context: float = CONTEXT) -> tuple[int, int, int, int]:
    """Square crop (``r0, c0, r1, c1``) around a shape, ``context`` times its longer side, clipped."""
    v = np.asarray(shape_vertices, dtype=float)[:, -2:]
    (y0, x0), (y1, x1) = v.min(0), v.max(0)
    half = max(y1 - y0, x1 - x0) * context / 2
    cy, cx = (y0 + y1) / 2, (x0 + x1) / 2
    h, w = image_hw
    r0, r1 = int(max(0, np.floor(cy - half))), int(min(h, np.ceil(cy + half)))
    c0, c1 = int(max(0, np.floor(cx - half))), int(min(w, np.ceil(cx + half)))
    if r1 - r0 < 2 or c1 - c0 < 2:
        raise CellClassError("the chosen cell is too small or outside the image")
    return r0, c0, r1, c1


def explain_job(checkpoint: Path, image: np.ndarray, box: tuple[int, int, int, int] | None, method: str,
                class_name: str | None, device: str | None, cancel: CancelToken | None = None):
    """Job: :func:`napari_cellclass.explain.job.explain_job` (the model's declared preprocessing)."""
    from ..explain.job import explain_job as job

    return (yield from job(checkpoint, image, box, method, class_name, device, cancel))


class ExplainWidget(RunsJobs, QWidget):
    """Image, checkpoint, class, method, optional cell -> a saliency layer; dataset -> embedding plot."""

    def __init__(self, napari_viewer):
        from napari.layers import Image, Shapes

        super().__init__()
        self.viewer = napari_viewer
        self.last_result: dict[str, Any] | None = None
        self.last_embedding: dict[str, Any] | None = None
        self.class_names: list[str] = []

        def not_ours(layer) -> bool:
            return not layer.metadata.get("cellclass_explanation")

        self.image_box = LayerChoice(napari_viewer, Image, where=not_ours)
        self.model_edit = ModelChooser(None)  # built-in classifiers first, Browse... for any checkpoint
        self.model_edit.changed.connect(self._load_classes)
        self.class_box = Choice(choices=[PREDICTED])
        self.method_box = Choice(choices=METHODS)
        self.cells_box = LayerChoice(napari_viewer, Shapes, where=not_ours, extra=[(WHOLE, None)],
                                     tooltip="explain one cell: the selected shape of this layer (else shape "
                                             "number below)")
        self.cell_spin = QSpinBox()
        self.cell_spin.setRange(0, 100000)
        self.device_box = DeviceChoice()
        self.device_label = self.device_box.label  # where the model runs, shown from the start

        self.run_button = QPushButton("Explain")
        self.run_button.clicked.connect(lambda: self.start())
        self.data_edit = PathEdit("d", "class-per-folder dataset for the embedding")
        self.embed_method = Choice(choices=["tsne", "pca"])
        self.out_edit = PathEdit("d", "folder for embedding.png/.csv (default: next to the model)")
        self.embed_button = QPushButton("Embed dataset")
        self.embed_button.clicked.connect(lambda: self.start_embedding())
        self.runner = JobRunner([self.run_button, self.embed_button], context="explanation failed")
        buttons = QHBoxLayout()
        buttons.addWidget(self.run_button)
        buttons.addWidget(self.cancel_button)

        from matplotlib.backends.backend_qtagg import FigureCanvasQTAgg
        from matplotlib.figure import Figure

        self.figure = Figure(figsize=(4, 3.6), dpi=90)
        self.ax = self.figure.add_subplot(111)
        self.ax.set_axis_off()
        self.canvas = FigureCanvasQTAgg(self.figure)
        self.canvas.setMinimumHeight(260)
        self.canvas.setVisible(False)  # no empty white plot: shown once there is an embedding to draw

        add_all(scrolling_layout(self), [
            form(("image layer", self.image_box), ("model", self.model_edit), ("class", self.class_box),
                 ("method", self.method_box), ("cell from", self.cells_box), ("cell number", self.cell_spin),
                 ("device", self.device_box)),
            self.device_label, buttons, QLabel("<b>Feature embedding</b>"),
            form(("dataset", self.data_edit), ("embedding", self.embed_method), ("save to", self.out_edit)),
            self.embed_button, self.progress, self.status, self.canvas])

    # ------------------------------------------------------------------ form
    def _load_classes(self) -> None:
        from ..engine.checkpoint import read_meta

        text = self.model_edit.text().strip()
        self.class_box.choices = [PREDICTED]
        if not text:
            return
        try:
            if self.model_edit.is_builtin:  # the card says it all; no hashing or download while choosing
                card = zoo.card(text)
                task, arch, classes = card["task"], card["arch"], card["classes"]
                trained_on = card["trained_on"]["source"] if not card["trained_on"].get("synthetic") else "synthetic"
            else:
                meta = read_meta(Path(text))
                task, arch, classes, trained_on = meta.task, meta.arch, meta.class_names, meta.trained_on
        except CellClassError as exc:
            self.status.setText(f"error: {exc}")
            return
        self.class_names = list(classes)
        self.class_box.choices = [PREDICTED, *self.class_names]
        warning = zoo.synthetic_warning(trained_on)
        self.status.setText(f"{task} model ({arch}), {len(classes)} classes, trained on {trained_on}"
                            + (f". {warning}" if warning else ""))

    # ------------------------------------------------------------------ running
    def start(self, sync: bool = False):
        """Compute the chosen map in a worker; the result becomes an image layer."""
        avoid_triton_llvm_clash()
        return self.runner.start(self._explain_job, self._on_explained, sync=sync, busy_text="explaining...")

    def _explain_job(self):
        layer = self.image_box.layer
        if layer is None:
            raise CellClassError("choose an image layer")
        ckpt = self.model_edit.value  # built-in name or path -> verified checkpoint
        if ckpt is None:
            raise CellClassError("choose a model: a built-in or a checkpoint file")
        image = np.asarray(layer.data)
        rgb = bool(getattr(layer, "rgb", False))
        hw = image.shape[:2] if rgb else image.shape[-2:]
        box = None
        shapes = self.cells_box.layer
        if shapes is not None:
            if not len(shapes.data):
                raise CellClassError(f"shapes layer {shapes.name!r} has no shapes")
            sel = sorted(shapes.selected_data)
            i = sel[0] if sel else self.cell_spin.value()
            if i >= len(shapes.data):
                raise CellClassError(f"shapes layer {shapes.name!r} has {len(shapes.data)} shapes; no number {i}")
            box = crop_box(shapes.data[i], hw)
        self._source_layer = layer
        return explain_job(ckpt, image.copy(), box, self.method_box.value, self.class_box.value,
                           self.device_box.device, self.runner.new_token())

    def start_embedding(self, sync: bool = False):
        """Embed the dataset's penultimate features in 2-D, plot them here and save PNG/CSV."""
        from ..explain.embedding import embedding_job

        def job():
            ckpt = self.model_edit.value  # built-in name or path -> verified checkpoint
            if ckpt is None:
                raise CellClassError("choose a model: a built-in or a checkpoint file")
            data = Path(self.data_edit.text())
            if not self.data_edit.text() or not data.is_dir():
                raise CellClassError(f"dataset folder {self.data_edit.text()!r} does not exist")
            default_out = (Path.home() / "cellclass-embeddings" / self.model_edit.text()  # never into the package
                           if self.model_edit.is_builtin else ckpt.parent / "embedding")
            out = self.out_edit.path() or default_out
            return embedding_job(ckpt, data, out, method=self.embed_method.value)  # no token: Cancel stops it

        avoid_triton_llvm_clash()
        return self.runner.start(job, self._on_embedded, sync=sync, busy_text="embedding the dataset...")

    def _on_explained(self, result: Any) -> None:
        self.last_result = result
        src = self._source_layer
        r0, c0 = result["offset"]
        scale = np.asarray(src.scale[-2:], dtype=float)
        translate = np.asarray(src.translate[-2:], dtype=float) + np.array([r0, c0]) * scale
        name = f"{result['method']}: {result['class']}"
        heat = result["heatmap"]
        if not result.get("aligned", True):  # a re-drawn view (chromosome canvas): the map on what the model saw
            width = src.data.shape[-2] if src.rgb else src.data.shape[-1]
            translate = np.asarray(src.translate[-2:], dtype=float) + np.array([0.0, width + 10]) * scale
            self.viewer.add_image(result["model_input"], name=f"model input: {result['class']}", colormap="gray",
                                  scale=scale, translate=translate)
            heat = result["model_heatmap"]
        self.viewer.add_image(
            heat, name=name, colormap="inferno", blending="translucent", opacity=0.5,
            contrast_limits=(0.0, 1.0), scale=scale, translate=translate,
            metadata={"cellclass_explanation": {k: v for k, v in result.items()
                                                if k not in ("heatmap", "model_input", "model_heatmap")}},
        )
        top = sorted(result["probabilities"].items(), key=lambda kv: -kv[1])[:3]
        self.status.setText(
            f"{result['method']} for {result['class']} (layer {result['layer'] or 'input'}, {result['device']}); "
            + ", ".join(f"{k} {v:.2f}" for k, v in top)
            + (f". {zoo.synthetic_warning(result.get('trained_on'))}" if zoo.is_synthetic(result.get("trained_on"))
               else "")
        )

    def _on_embedded(self, result: Any) -> None:
        from ..explain.embedding import plot_embedding

        self.last_embedding = result
        plot_embedding(result["coords"], result["labels"], result["class_names"], ax=self.ax,
                       title=f"{result['method']}: {result['n']} images, kNN agreement {result['neighbour_agreement']:.2f}")
        self.canvas.setVisible(True)
        self.canvas.draw_idle()
        self.status.setText(f"embedding saved to {result.get('png')}")

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
from qtpy.QtWidgets import (
    QComboBox, QFileDialog, QFormLayout, QHBoxLayout, QLabel, QLineEdit, QProgressBar, QPushButton,
    QSpinBox, QVBoxLayout, QWidget,
)

from ._errors import error_message
from ._model_chooser import ModelChooser
from .. import zoo
from ..engine.device import DEVICE_CHOICES
from ..engine.progress import CancelToken, Progress
from ..errors import CellClassError
from .._compat import avoid_triton_llvm_clash
from .train import _drive, _Failure

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


class ExplainWidget(QWidget):
    """Image, checkpoint, class, method, optional cell -> a saliency layer; dataset -> embedding plot."""

    def __init__(self, napari_viewer):
        super().__init__()
        self.viewer = napari_viewer
        self.worker = None
        self.cancel_token: CancelToken | None = None
        self.running = False
        self.last_result: dict[str, Any] | None = None
        self.last_embedding: dict[str, Any] | None = None
        self.last_error: str | None = None
        self.class_names: list[str] = []

        form = QFormLayout()
        self.image_box = QComboBox()
        form.addRow("image layer", self.image_box)
        self.model_edit = ModelChooser(None)  # built-in classifiers first, Browse... for any checkpoint
        self.model_edit.changed.connect(self._load_classes)
        form.addRow("model", self.model_edit)
        self.class_box = QComboBox()
        self.class_box.addItem(PREDICTED)
        form.addRow("class", self.class_box)
        self.method_box = QComboBox()
        self.method_box.addItems(METHODS)
        form.addRow("method", self.method_box)
        self.cells_box = QComboBox()
        self.cells_box.setToolTip("explain one cell: the selected shape of this layer (else shape number below)")
        form.addRow("cell from", self.cells_box)
        self.cell_spin = QSpinBox()
        self.cell_spin.setRange(0, 100000)
        form.addRow("cell number", self.cell_spin)
        self.device_box = QComboBox()
        self.device_box.addItems(list(DEVICE_CHOICES))
        form.addRow("device", self.device_box)

        buttons = QHBoxLayout()
        self.run_button = QPushButton("Explain")
        self.run_button.clicked.connect(self.start)
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.setEnabled(False)
        self.cancel_button.clicked.connect(self.cancel)
        buttons.addWidget(self.run_button)
        buttons.addWidget(self.cancel_button)

        emb_form = QFormLayout()
        self.data_edit = QLineEdit()
        self.data_edit.setPlaceholderText("class-per-folder dataset for the embedding")
        data_browse = QPushButton("Browse...")
        data_browse.clicked.connect(lambda: self._browse_dir(self.data_edit))
        drow = QHBoxLayout()
        drow.addWidget(self.data_edit)
        drow.addWidget(data_browse)
        emb_form.addRow("dataset", drow)
        self.embed_method = QComboBox()
        self.embed_method.addItems(["tsne", "pca"])
        emb_form.addRow("embedding", self.embed_method)
        self.out_edit = QLineEdit()
        self.out_edit.setPlaceholderText("folder for embedding.png/.csv (default: next to the model)")
        emb_form.addRow("save to", self.out_edit)
        self.embed_button = QPushButton("Embed dataset")
        self.embed_button.clicked.connect(self.start_embedding)

        self.progress = QProgressBar()
        self.progress.setRange(0, 1000)
        self.status = QLabel("")
        self.status.setWordWrap(True)

        from matplotlib.backends.backend_qtagg import FigureCanvasQTAgg
        from matplotlib.figure import Figure

        self.figure = Figure(figsize=(4, 3.6), dpi=90)
        self.ax = self.figure.add_subplot(111)
        self.ax.set_axis_off()
        self.canvas = FigureCanvasQTAgg(self.figure)
        self.canvas.setMinimumHeight(260)

        layout = QVBoxLayout(self)
        layout.addLayout(form)
        layout.addLayout(buttons)
        layout.addWidget(QLabel("<b>Feature embedding</b>"))
        layout.addLayout(emb_form)
        layout.addWidget(self.embed_button)
        layout.addWidget(self.progress)
        layout.addWidget(self.status)
        layout.addWidget(self.canvas)

        self.viewer.layers.events.inserted.connect(self._refresh_layers)
        self.viewer.layers.events.removed.connect(self._refresh_layers)
        self._refresh_layers()

    # ------------------------------------------------------------------ form
    def _browse_dir(self, edit: QLineEdit) -> None:
        path = QFileDialog.getExistingDirectory(self, "folder")
        if path:
            edit.setText(path)

    def _load_classes(self) -> None:
        from ..engine.checkpoint import read_meta

        text = self.model_edit.text().strip()
        self.class_box.clear()
        self.class_box.addItem(PREDICTED)
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
        self.class_box.addItems(self.class_names)
        warning = zoo.synthetic_warning(trained_on)
        self.status.setText(f"{task} model ({arch}), {len(classes)} classes, trained on {trained_on}"
                            + (f". {warning}" if warning else ""))

    def _refresh_layers(self, event=None) -> None:
        from napari.layers import Image, Shapes

        for box, kind, extra in ((self.image_box, Image, []), (self.cells_box, Shapes, [WHOLE])):
            current = box.currentText()
            box.clear()
            names = extra + [layer.name for layer in self.viewer.layers
                             if isinstance(layer, kind) and not layer.metadata.get("cellclass_explanation")]
            box.addItems(names)
            if current in names:
                box.setCurrentText(current)

    # ------------------------------------------------------------------ running
    def _run(self, job, on_done) -> Any:
        from napari.qt.threading import create_worker

        avoid_triton_llvm_clash()
        self.worker = create_worker(_drive, job, _start_thread=False)
        self.worker.yielded.connect(self._on_progress)
        self.worker.returned.connect(on_done)
        self.worker.finished.connect(self._on_finished)
        self.running = True
        self.run_button.setEnabled(False)
        self.embed_button.setEnabled(False)
        self.cancel_button.setEnabled(True)
        self.progress.setValue(0)
        self.worker.start()
        return self.worker

    def start(self):
        """Compute the chosen map in a worker; the result becomes an image layer."""
        if self.running:
            return self.worker
        self.last_error = None
        try:
            img_name = self.image_box.currentText()
            if img_name not in [layer.name for layer in self.viewer.layers]:
                raise CellClassError("choose an image layer")
            ckpt = self.model_edit.value  # built-in name or path -> verified checkpoint
            if ckpt is None:
                raise CellClassError("choose a model: a built-in or a checkpoint file")
            layer = self.viewer.layers[img_name]
            image = np.asarray(layer.data)
            rgb = bool(getattr(layer, "rgb", False))
            hw = image.shape[:2] if rgb else image.shape[-2:]
            box = None
            cells = self.cells_box.currentText()
            if cells and cells != WHOLE:
                shapes = self.viewer.layers[cells]
                if not len(shapes.data):
                    raise CellClassError(f"shapes layer {cells!r} has no shapes")
                sel = sorted(shapes.selected_data)
                i = sel[0] if sel else self.cell_spin.value()
                if i >= len(shapes.data):
                    raise CellClassError(f"shapes layer {cells!r} has {len(shapes.data)} shapes; no number {i}")
                box = crop_box(shapes.data[i], hw)
            self.cancel_token = CancelToken()
            device = None if self.device_box.currentText() == "auto" else self.device_box.currentText()
            job = explain_job(ckpt, image.copy(), box, self.method_box.currentText(), self.class_box.currentText(),
                              device, self.cancel_token)
        except Exception as exc:
            self._fail(exc)
            return None
        self._source_layer = layer
        return self._run(job, self._on_explained)

    def start_embedding(self):
        """Embed the dataset's penultimate features in 2-D, plot them here and save PNG/CSV."""
        from ..explain.embedding import embedding_job

        if self.running:
            return self.worker
        self.last_error = None
        try:
            ckpt = self.model_edit.value  # built-in name or path -> verified checkpoint
            if ckpt is None:
                raise CellClassError("choose a model: a built-in or a checkpoint file")
            data = Path(self.data_edit.text().strip())
            if not data.is_dir():
                raise CellClassError(f"dataset folder {str(data)!r} does not exist")
            default_out = (Path.home() / "cellclass-embeddings" / self.model_edit.text()  # never into the package
                           if self.model_edit.is_builtin else ckpt.parent / "embedding")
            out = Path(self.out_edit.text().strip()) if self.out_edit.text().strip() else default_out
            job = embedding_job(ckpt, data, out, method=self.embed_method.currentText())
        except Exception as exc:
            self._fail(exc)
            return None
        return self._run(job, self._on_embedded)

    def cancel(self) -> None:
        if self.cancel_token is not None:
            self.cancel_token.cancel()
        if self.worker is not None:
            self.worker.quit()

    def _on_progress(self, p: Progress) -> None:
        if p.fraction is not None:
            self.progress.setValue(int(p.fraction * 1000))
        self.status.setText(f"{p.stage}: {p.message}")

    def _on_explained(self, result: Any) -> None:
        if isinstance(result, _Failure):
            self._fail(result.exc)
            return
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
        self.progress.setValue(1000)

    def _on_embedded(self, result: Any) -> None:
        if isinstance(result, _Failure):
            self._fail(result.exc)
            return
        from ..explain.embedding import plot_embedding

        self.last_embedding = result
        plot_embedding(result["coords"], result["labels"], result["class_names"], ax=self.ax,
                       title=f"{result['method']}: {result['n']} images, kNN agreement {result['neighbour_agreement']:.2f}")
        self.canvas.draw_idle()
        self.status.setText(f"embedding saved to {result.get('png')}")
        self.progress.setValue(1000)

    def _fail(self, exc: BaseException) -> None:
        from napari.utils.notifications import show_error

        from ..errors import Cancelled

        if isinstance(exc, Cancelled):
            self.last_error = "cancelled"
            self.status.setText("cancelled")
            return
        msg = error_message(exc)
        self.last_error = msg
        self.status.setText(f"error: {msg}")
        show_error(msg)

    def _on_finished(self) -> None:
        self.running = False
        self.run_button.setEnabled(True)
        self.embed_button.setEnabled(True)
        self.cancel_button.setEnabled(False)

"""Detect widget: predict boxes (and masks) on the current image, edit, fine-tune.

Thin: collects parameters, runs ``tasks.detect`` jobs in a napari thread worker
(progress bar + Cancel), and turns results into layers.  ``sync=True`` on the
run methods runs the job in the calling thread (tests, scripts).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from qtpy.QtWidgets import QDoubleSpinBox, QFormLayout, QPushButton, QSpinBox, QWidget

from ..errors import CellClassError
from ..layers import class_colour_map  # noqa: F401  (kept importable from here)
from ..tasks.base import TaskOptions
from ._forms import DeviceChoice, LayerChoice, add_all, form, scrolling_layout
from ._model_chooser import ModelChooser
from ._runner import JobRunner, RunsJobs


class DetectWidget(RunsJobs, QWidget):
    def __init__(self, napari_viewer):
        from napari.layers import Image, Shapes

        super().__init__()
        self.viewer = napari_viewer
        self.last_result: dict[str, Any] | None = None
        self.last_train: dict[str, Any] | None = None
        self.classes: list[str] = []

        self.image_combo = LayerChoice(napari_viewer, Image)
        self.boxes_combo = LayerChoice(napari_viewer, Shapes)
        # built-in detectors first (the best is the default), or any checkpoint via Browse...
        self.model_edit = ModelChooser("detect")
        self.score_spin = QDoubleSpinBox(); self.score_spin.setRange(0.0, 1.0); self.score_spin.setSingleStep(0.05)
        self.score_spin.setValue(0.7)
        self.model_edit.changed.connect(self._model_changed)
        self._model_changed()
        self.nms_spin = QDoubleSpinBox(); self.nms_spin.setRange(0.05, 1.0); self.nms_spin.setSingleStep(0.05)
        self.nms_spin.setValue(0.5)
        self.tile_spin = QSpinBox(); self.tile_spin.setRange(0, 8192); self.tile_spin.setSpecialValueText("auto")
        self.tile_spin.setSingleStep(128)
        self.epochs_spin = QSpinBox(); self.epochs_spin.setRange(1, 1000); self.epochs_spin.setValue(10)
        self.device_combo = DeviceChoice()
        self.device_label = self.device_combo.label

        self.predict_btn = QPushButton("Detect")
        self.predict_btn.clicked.connect(lambda: self.run_predict())
        self.train_btn = QPushButton("Train / fine-tune on edited boxes")
        self.train_btn.clicked.connect(lambda: self.run_train())
        self.runner = JobRunner([self.predict_btn, self.train_btn], context="detection failed")
        self.cancel_btn = self.cancel_button  # name kept for scripts

        fields = form(("image", self.image_combo), ("model", self.model_edit), ("score threshold", self.score_spin),
                      ("NMS IoU", self.nms_spin), ("tile (px)", self.tile_spin), ("device", self.device_combo),
                      ("", self.device_label), ("boxes to train on", self.boxes_combo),
                      ("epochs", self.epochs_spin))
        # the built-in's whole name stays readable: the row puts its label above when the dock is narrow
        self.model_edit.combo.setMinimumContentsLength(max([18] + [len(n) for n in self.model_edit._cards]))
        fields.setRowWrapPolicy(QFormLayout.WrapLongRows)
        lay = scrolling_layout(self)
        add_all(lay, [fields, self.predict_btn, self.train_btn, self.progress, self.cancel_btn, self.status])
        lay.addStretch(1)

    @property
    def device(self) -> str | None:
        return self.device_combo.device

    def _model_changed(self, *_: Any) -> None:
        """Start from the score threshold the chosen detector was validated at."""
        try:
            path = self.model_edit.value
            if path is not None:
                from ..engine.checkpoint import read_meta
                from ..tasks.detect import model_score_threshold

                self.score_spin.setValue(model_score_threshold(read_meta(path)))
        except CellClassError:
            pass  # the summary line under the field already says what is wrong

    def _image_data(self) -> Any:
        layer = self.image_combo.layer
        if layer is None:
            raise CellClassError("open or choose an image layer first")
        data = np.asarray(layer.data)
        if not layer.rgb and data.ndim == 3 and data.shape[0] not in (4,):
            data = data[int(self.viewer.dims.current_step[0])]  # a stack: use the slice shown
        return data

    # ------------------------------------------------------------------ predict
    def run_predict(self, sync: bool = False) -> Any:
        """Detect on the chosen image (the slice shown, for a stack); returns the result when ``sync``."""
        from ..tasks.detect import detect

        def job():
            image = self._image_data()
            model = self.model_edit.value  # a built-in name or a path -> verified checkpoint
            if model is None:
                raise CellClassError("choose a detector (a built-in or a checkpoint .safetensors) first")
            return detect(image, model, device=self.device, score_threshold=self.score_spin.value(),
                          nms_iou=self.nms_spin.value(), tile=self.tile_spin.value() or None,
                          cancel=self.runner.new_token())

        return self.runner.start(job, self._show_result, sync=sync, busy_text="detecting...")

    def _show_result(self, r: dict[str, Any]) -> None:
        from ..layers import add_layers, detect_layers

        self.last_result = r
        self.classes = list(r["class_names"])
        source = self.image_combo.layer
        layer = add_layers(self.viewer, detect_layers(r, source=source))[0]
        rects = layer.data
        if rects:  # an empty result is not offered as training boxes
            self.boxes_combo.setCurrentText(layer.name)
        counts = {c: r["labels"].count(c) for c in self.classes}
        per_class = f" ({', '.join(f'{k}: {v}' for k, v in counts.items())})" if rects else ""
        self.status.setText(f"{r.get('message', f'{len(rects)} object(s)')}{per_class}; {r['tiles']} tile(s); "
                            f"{r['device']}")

    # ------------------------------------------------------------------ train
    def run_train(self, sync: bool = False, out: Path | None = None, **extra: Any) -> Any:
        """Train on the chosen shapes layer (rectangles and polygons with a ``label`` feature).

        Fine-tunes the model in the model field when there is one; the new
        checkpoint path replaces it in the field when training ends.
        """
        from ..tasks.detect import train_from_layers

        def job():
            image = self._image_data()
            layer = self.boxes_combo.layer
            if layer is None or len(layer.data) == 0:
                raise CellClassError("draw boxes in a shapes layer (with a 'label' feature) and choose it first")
            if "label" not in layer.features:
                raise CellClassError(f"shapes layer {layer.name!r} has no 'label' feature (class of each box)")
            boxes, polygons = [], []
            for data, kind in zip(layer.data, layer.shape_type):
                d = np.asarray(data)[:, -2:]
                boxes.append([d[:, 0].min(), d[:, 1].min(), d[:, 0].max(), d[:, 1].max()])
                polygons.append(d if kind == "polygon" else None)
            labels = [str(v) for v in layer.features["label"]]
            model_text = str(self.model_edit.value or "") if self.model_edit.text().strip() else ""
            opts = TaskOptions(epochs=self.epochs_spin.value(), device=self.device, out=out,
                               model=Path(model_text) if model_text else None, quick=not model_text,
                               cancel=self.runner.new_token(), extra=dict(extra))
            return train_from_layers(image, np.asarray(boxes), labels, opts, polygons=polygons)

        return self.runner.start(job, self._trained, sync=sync, busy_text="training...")

    def _trained(self, r: dict[str, Any]) -> None:
        self.last_train = r
        self.model_edit.setText(r["checkpoint"])
        loss = r["best_metrics"].get("loss", float("nan"))
        self.status.setText(f"trained {len(r['history'])} epoch(s) in {r['seconds']} s, loss {loss:.3g}; "
                            f"saved {r['checkpoint']} ({r['device']})")

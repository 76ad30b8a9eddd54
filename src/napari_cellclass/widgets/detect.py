"""Detect widget: predict boxes (and masks) on the current image, edit, fine-tune.

Thin: collects parameters, runs ``tasks.detect`` jobs in a napari thread worker
(progress bar + Cancel), and turns results into layers.  ``sync=True`` on the
run methods runs the job in the calling thread (tests, scripts).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import numpy as np
import pandas as pd
from qtpy.QtWidgets import (
    QComboBox, QDoubleSpinBox, QFormLayout, QLabel, QProgressBar,
    QPushButton, QSpinBox, QVBoxLayout, QWidget,
)

from ._errors import error_message
from ._model_chooser import ModelChooser
from ..engine.device import DEVICE_CHOICES, resolve_device
from ..engine.progress import CancelToken, Progress, run_sync
from ..errors import CellClassError
from ..io.annotation_reader import PALETTE
from ..tasks.base import TaskOptions


def class_colour_map(classes: list[str]) -> dict[str, str]:
    return {c: PALETTE[i % len(PALETTE)] for i, c in enumerate(classes)}


class DetectWidget(QWidget):
    def __init__(self, napari_viewer):
        super().__init__()
        self.viewer = napari_viewer
        self._worker = None
        self._cancel: CancelToken | None = None
        self.last_result: dict[str, Any] | None = None
        self.last_train: dict[str, Any] | None = None
        self.classes: list[str] = []

        self.image_combo = QComboBox()
        self.boxes_combo = QComboBox()
        # built-in detectors first (the best is the default), or any checkpoint via Browse...
        self.model_edit = ModelChooser("detect")
        row = self.model_edit
        self.score_spin = QDoubleSpinBox(); self.score_spin.setRange(0.0, 1.0); self.score_spin.setSingleStep(0.05)
        self.score_spin.setValue(0.7)
        self.model_edit.changed.connect(self._model_changed)
        self._model_changed()
        self.nms_spin = QDoubleSpinBox(); self.nms_spin.setRange(0.05, 1.0); self.nms_spin.setSingleStep(0.05)
        self.nms_spin.setValue(0.5)
        self.tile_spin = QSpinBox(); self.tile_spin.setRange(0, 8192); self.tile_spin.setSpecialValueText("auto")
        self.tile_spin.setSingleStep(128)
        self.epochs_spin = QSpinBox(); self.epochs_spin.setRange(1, 1000); self.epochs_spin.setValue(10)
        self.device_combo = QComboBox(); self.device_combo.addItems(list(DEVICE_CHOICES))
        self.device_label = QLabel()
        self._show_device()
        self.device_combo.currentTextChanged.connect(self._show_device)

        self.predict_btn = QPushButton("Detect")
        self.predict_btn.clicked.connect(lambda: self.run_predict())
        self.train_btn = QPushButton("Train / fine-tune on edited boxes")
        self.train_btn.clicked.connect(lambda: self.run_train())
        self.cancel_btn = QPushButton("Cancel"); self.cancel_btn.setEnabled(False)
        self.cancel_btn.clicked.connect(self.cancel)
        self.progress = QProgressBar(); self.progress.setRange(0, 100); self.progress.setValue(0)
        self.status = QLabel(""); self.status.setWordWrap(True)

        form = QFormLayout()
        form.addRow("image", self.image_combo)
        form.addRow("model", row)
        form.addRow("score threshold", self.score_spin)
        form.addRow("NMS IoU", self.nms_spin)
        form.addRow("tile (px)", self.tile_spin)
        form.addRow("device", self.device_combo)
        form.addRow("", self.device_label)
        form.addRow("boxes to train on", self.boxes_combo)
        form.addRow("epochs", self.epochs_spin)
        lay = QVBoxLayout(self)
        lay.addLayout(form)
        lay.addWidget(self.predict_btn)
        lay.addWidget(self.train_btn)
        lay.addWidget(self.progress)
        lay.addWidget(self.cancel_btn)
        lay.addWidget(self.status)
        lay.addStretch(1)

        self.viewer.layers.events.inserted.connect(self._refresh_layers)
        self.viewer.layers.events.removed.connect(self._refresh_layers)
        self._refresh_layers()

    # ------------------------------------------------------------------ helpers
    def _refresh_layers(self, *_: Any) -> None:
        from napari.layers import Image, Shapes

        for combo, kind in ((self.image_combo, Image), (self.boxes_combo, Shapes)):
            current = combo.currentText()
            combo.clear()
            names = [ly.name for ly in self.viewer.layers if isinstance(ly, kind)]
            combo.addItems(names)
            if current in names:
                combo.setCurrentText(current)

    def _show_device(self, *_: Any) -> None:
        try:
            self.device_label.setText(f"using: {resolve_device(self.device).describe()}")
        except CellClassError as exc:
            self.device_label.setText(str(exc))

    @property
    def device(self) -> str:
        return self.device_combo.currentText()

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

    def _layer(self, name: str):
        return self.viewer.layers[name] if name and name in self.viewer.layers else None

    def _image_data(self) -> Any:
        layer = self._layer(self.image_combo.currentText())
        if layer is None:
            raise CellClassError("open or choose an image layer first")
        data = np.asarray(layer.data)
        if not layer.rgb and data.ndim == 3 and data.shape[0] not in (4,):
            data = data[int(self.viewer.dims.current_step[0])]  # a stack: use the slice shown
        return data

    def _on_progress(self, p: Progress) -> None:
        if p.fraction is not None:
            self.progress.setValue(int(100 * p.fraction))
        metrics = " ".join(f"{k}={v:.3g}" for k, v in p.metrics.items() if k in ("loss", "mAP50"))
        self.status.setText(f"{p.stage} {p.message} {metrics}".strip())

    def _run(self, job, on_done: Callable[[Any], None], sync: bool) -> Any:
        from napari.utils.notifications import show_error

        if sync:
            try:
                result = run_sync(job, self._on_progress)
            except CellClassError as exc:
                show_error(str(exc))
                self.status.setText(str(exc))
                return None
            on_done(result)
            return result
        from napari.qt.threading import create_worker

        self._set_busy(True)
        worker = create_worker(lambda: (yield from job), _start_thread=False)
        worker.yielded.connect(self._on_progress)
        worker.returned.connect(on_done)

        def failed(exc: Exception) -> None:
            msg = error_message(exc)
            show_error(msg)
            self.status.setText(msg)

        worker.errored.connect(failed)
        worker.finished.connect(lambda: self._set_busy(False))
        self._worker = worker
        worker.start()
        return worker

    def _set_busy(self, busy: bool) -> None:
        self.predict_btn.setEnabled(not busy)
        self.train_btn.setEnabled(not busy)
        self.cancel_btn.setEnabled(busy)

    def cancel(self) -> None:
        if self._cancel is not None:
            self._cancel.cancel()
        self.status.setText("cancelling...")

    # ------------------------------------------------------------------ predict
    def run_predict(self, sync: bool = False) -> Any:
        from napari.utils.notifications import show_error

        from ..tasks.detect import detect

        try:
            image = self._image_data()
            model = self.model_edit.value  # a built-in name or a path -> verified checkpoint
            if model is None:
                raise CellClassError("choose a detector (a built-in or a checkpoint .safetensors) first")
        except CellClassError as exc:
            show_error(str(exc))
            self.status.setText(str(exc))
            return None
        self._cancel = CancelToken()
        job = detect(image, model, device=self.device, score_threshold=self.score_spin.value(),
                     nms_iou=self.nms_spin.value(), tile=self.tile_spin.value() or None, cancel=self._cancel)
        return self._run(job, self._show_result, sync)

    def _show_result(self, r: dict[str, Any]) -> None:
        self.last_result = r
        self.classes = list(r["class_names"])
        colours = class_colour_map(self.classes)
        base = self.image_combo.currentText() or "image"
        rects = [np.array([[y0, x0], [y0, x1], [y1, x1], [y1, x0]]) for y0, x0, y1, x1 in r["boxes"]]
        # explicit dtypes: with zero detections an untyped empty column became float and the
        # default label ("cell") could not be stored in it
        features = pd.DataFrame({"label": pd.Series([str(v) for v in r["labels"]], dtype=object),
                                 "score": pd.Series(np.asarray(r["scores"], dtype=float), dtype=float)})
        name = f"{base} detections"
        if name in self.viewer.layers:
            self.viewer.layers.remove(name)
        kwargs: dict[str, Any] = dict(name=name, shape_type="rectangle", features=features, face_color="transparent",
                                      edge_width=2)
        if rects:
            kwargs["edge_color"] = [colours.get(lab, PALETTE[0]) for lab in r["labels"]]
            kwargs["text"] = {"string": "{label} {score:.2f}", "size": 9, "color": "white", "anchor": "upper_left"}
        layer = self.viewer.add_shapes(rects or None, **kwargs)
        layer.feature_defaults = {"label": self.classes[0] if self.classes else "object", "score": 1.0}
        if "instance_labels" in r:
            lname = f"{base} instances"
            if lname in self.viewer.layers:
                self.viewer.layers.remove(lname)
            self.viewer.add_labels(r["instance_labels"], name=lname, opacity=0.4)
        if rects:  # an empty result is not offered as training boxes
            self.boxes_combo.setCurrentText(name)
        self.progress.setValue(100)
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
        from napari.utils.notifications import show_error

        from ..tasks.detect import train_from_layers

        try:
            image = self._image_data()
            layer = self._layer(self.boxes_combo.currentText())
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
        except CellClassError as exc:
            show_error(str(exc))
            self.status.setText(str(exc))
            return None
        model_text = str(self.model_edit.value or "") if self.model_edit.text().strip() else ""
        self._cancel = CancelToken()
        opts = TaskOptions(epochs=self.epochs_spin.value(), device=self.device, out=out,
                           model=Path(model_text) if model_text else None, quick=not model_text,
                           cancel=self._cancel, extra=dict(extra))
        job = train_from_layers(image, np.asarray(boxes), labels, opts, polygons=polygons)
        return self._run(job, self._trained, sync)

    def _trained(self, r: dict[str, Any]) -> None:
        self.last_train = r
        self.model_edit.setText(r["checkpoint"])
        self.progress.setValue(100)
        loss = r["best_metrics"].get("loss", float("nan"))
        self.status.setText(f"trained {len(r['history'])} epoch(s) in {r['seconds']} s, loss {loss:.3g}; "
                            f"saved {r['checkpoint']} ({r['device']})")

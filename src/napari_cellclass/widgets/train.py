"""Train a classifier or detector from the viewer, with live loss/metric curves.

Thin: collects task, data (a folder, or the open image + annotation layers,
exported to a temporary dataset by :mod:`napari_cellclass.io.layers_dataset`),
recipe, device and budget into :class:`TaskOptions`; runs the task's ``train`` job
in a ``thread_worker``; plots every stage-"epoch" Progress; Cancel sets the
CancelToken (the best checkpoint so far survives); Resume continues from
``<output>/resume.pt``.
"""
from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from qtpy.QtWidgets import (
    QCheckBox, QComboBox, QDoubleSpinBox, QFileDialog, QFormLayout, QHBoxLayout, QLabel, QLineEdit,
    QProgressBar, QPushButton, QSpinBox, QVBoxLayout, QWidget,
)

from ._errors import error_message
from ..engine.device import DEVICE_CHOICES
from .._compat import avoid_triton_llvm_clash
from ..engine.progress import CancelToken, Progress
from ..errors import CellClassError

TASK_NAMES = ["wbc", "chromosome", "hpa", "detect"]
FOLDER, LAYERS = "folder", "image + annotation layers"
SKIP_METRICS = {"epoch", "lr", "loss"}


def parse_settings(text: str) -> dict[str, Any]:
    """``"loss=focal, schedule=cosine"`` -> dict (values parsed like ``--set``)."""
    from ..tasks.base import parse_value

    out: dict[str, Any] = {}
    for part in text.replace(";", " ").split():
        part = part.strip().rstrip(",")
        if not part:
            continue
        if "=" not in part:
            raise CellClassError(f"setting {part!r} is not key=value")
        k, v = part.split("=", 1)
        out[k.strip()] = parse_value(v.strip())
    return out


def layers_training_job(task: str, image: np.ndarray, boxes: np.ndarray, classes: list[str], opts):
    """Export the layers to a temporary dataset, then run the task's training (a generator)."""
    from ..io.layers_dataset import export_class_folders, export_voc
    from ..tasks.base import task_function, task_module

    if task == "hpa":
        raise CellClassError("training the HPA model from layers is not supported; choose an HPA dataset folder")
    if task == "detect" and hasattr(task_module("detect"), "train_from_layers"):
        result = yield from task_module("detect").train_from_layers(image, boxes, classes, opts)
        return result
    tmp = Path(tempfile.mkdtemp(prefix="cellclass-layers-"))
    yield Progress(0, None, "export", f"writing the annotated objects to {tmp}")
    if task == "detect":
        export_voc(image, boxes, classes, tmp)
    else:
        export_class_folders(image, boxes, classes, tmp)
    result = yield from task_function(task, "train")(tmp, opts)
    if isinstance(result, dict):
        result.setdefault("dataset", str(tmp))
    return result


class TrainWidget(QWidget):
    """Task, data, recipe, device, budget -> training in a worker with live curves."""

    def __init__(self, napari_viewer):
        super().__init__()
        self.viewer = napari_viewer
        self.cancel_token: CancelToken | None = None
        self.worker = None
        self.history: list[dict[str, float]] = []
        self.last_result: dict[str, Any] | None = None
        self.last_error: str | None = None
        self.running = False
        self._t0 = 0.0

        form = QFormLayout()
        self.task_box = QComboBox()
        self.task_box.addItems(TASK_NAMES)
        form.addRow("task", self.task_box)
        self.source_box = QComboBox()
        self.source_box.addItems([FOLDER, LAYERS])
        self.source_box.currentTextChanged.connect(self._source_changed)
        form.addRow("data from", self.source_box)
        self.data_edit, data_row = self._path_row("dataset folder", folder=True)
        form.addRow("data folder", data_row)
        self.image_box = QComboBox()
        self.annot_box = QComboBox()
        self.annot_box.setToolTip("shapes (one per object) or labels layer; its features name each object's class")
        self.feature_edit = QLineEdit("label")
        form.addRow("image layer", self.image_box)
        form.addRow("annotations", self.annot_box)
        form.addRow("class feature", self.feature_edit)
        self.recipe_edit, recipe_row = self._path_row("optional recipe .yaml/.json", folder=False)
        form.addRow("recipe", recipe_row)
        self.settings_edit = QLineEdit()
        self.settings_edit.setPlaceholderText("e.g. loss=focal schedule=cosine early_stopping=5")
        form.addRow("settings", self.settings_edit)
        self.device_box = QComboBox()
        self.device_box.addItems(list(DEVICE_CHOICES))
        form.addRow("device", self.device_box)
        self.epochs_spin = QSpinBox()
        self.epochs_spin.setRange(0, 10000)
        self.epochs_spin.setSpecialValueText("task default")
        form.addRow("epochs", self.epochs_spin)
        self.batch_spin = QSpinBox()
        self.batch_spin.setRange(0, 4096)
        self.batch_spin.setSpecialValueText("task default")
        form.addRow("batch size", self.batch_spin)
        self.lr_spin = QDoubleSpinBox()
        self.lr_spin.setDecimals(6)
        self.lr_spin.setRange(0.0, 10.0)
        self.lr_spin.setSingleStep(1e-4)
        self.lr_spin.setSpecialValueText("recipe default")
        form.addRow("learning rate", self.lr_spin)
        self.out_edit, out_row = self._path_row("output folder (default runs/<task>-<time>)", folder=True)
        form.addRow("output", out_row)
        self.quick_check = QCheckBox("quick (tiny model, smoke test)")
        self.resume_check = QCheckBox("resume from output/resume.pt")
        form.addRow(self.quick_check)
        form.addRow(self.resume_check)

        buttons = QHBoxLayout()
        self.train_button = QPushButton("Train")
        self.train_button.clicked.connect(self.start)
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.setEnabled(False)
        self.cancel_button.clicked.connect(self.cancel)
        buttons.addWidget(self.train_button)
        buttons.addWidget(self.cancel_button)
        self.progress = QProgressBar()
        self.progress.setRange(0, 1000)
        self.eta_label = QLabel("")
        self.device_label = QLabel("device: (chosen when training starts)")
        self.status = QLabel("")
        self.status.setWordWrap(True)

        from matplotlib.backends.backend_qtagg import FigureCanvasQTAgg
        from matplotlib.figure import Figure

        self.figure = Figure(figsize=(4, 3.2), dpi=90)
        self.ax_loss = self.figure.add_subplot(211)
        self.ax_metric = self.figure.add_subplot(212)
        self.canvas = FigureCanvasQTAgg(self.figure)
        self.canvas.setMinimumHeight(240)
        self._draw_curves()

        layout = QVBoxLayout(self)
        layout.addLayout(form)
        layout.addLayout(buttons)
        layout.addWidget(self.progress)
        layout.addWidget(self.eta_label)
        layout.addWidget(self.device_label)
        layout.addWidget(self.canvas)
        layout.addWidget(self.status)

        self.viewer.layers.events.inserted.connect(self._refresh_layers)
        self.viewer.layers.events.removed.connect(self._refresh_layers)
        self._refresh_layers()
        self._source_changed(self.source_box.currentText())

    # ------------------------------------------------------------------ form helpers
    def _path_row(self, placeholder: str, folder: bool) -> tuple[QLineEdit, QHBoxLayout]:
        edit = QLineEdit()
        edit.setPlaceholderText(placeholder)
        button = QPushButton("Browse...")

        def browse() -> None:
            if folder:
                path = QFileDialog.getExistingDirectory(self, placeholder)
            else:
                path, _ = QFileDialog.getOpenFileName(self, placeholder, "", "Recipes (*.yaml *.yml *.json)")
            if path:
                edit.setText(path)

        button.clicked.connect(browse)
        row = QHBoxLayout()
        row.addWidget(edit)
        row.addWidget(button)
        return edit, row

    def _refresh_layers(self, event=None) -> None:
        from napari.layers import Image, Labels, Shapes

        for box, kinds in ((self.image_box, (Image,)), (self.annot_box, (Shapes, Labels))):
            current = box.currentText()
            box.clear()
            names = [layer.name for layer in self.viewer.layers if isinstance(layer, kinds)]
            box.addItems(names)
            if current in names:
                box.setCurrentText(current)

    def _source_changed(self, text: str) -> None:
        layers = text == LAYERS
        self.data_edit.setEnabled(not layers)
        for w in (self.image_box, self.annot_box, self.feature_edit):
            w.setEnabled(layers)

    # ------------------------------------------------------------------ options and job
    def options(self):
        """The TaskOptions the form describes (a fresh CancelToken)."""
        from ..tasks.base import TaskOptions

        recipe = self.recipe_edit.text().strip()
        out = self.out_edit.text().strip()
        task = self.task_box.currentText()
        self.cancel_token = CancelToken()
        return TaskOptions(
            epochs=self.epochs_spin.value() or None,
            batch_size=self.batch_spin.value() or None,
            lr=self.lr_spin.value() or None,
            device=None if self.device_box.currentText() == "auto" else self.device_box.currentText(),
            out=Path(out) if out else Path("runs") / f"{task}-{time.strftime('%Y%m%d-%H%M%S')}",
            recipe=Path(recipe) if recipe else None,
            quick=self.quick_check.isChecked(),
            resume=self.resume_check.isChecked(),
            extra=parse_settings(self.settings_edit.text()),
            cancel=self.cancel_token,
        )

    def _layer_data(self) -> tuple[np.ndarray, np.ndarray, list[str]]:
        """Read the chosen layers on the GUI thread (copies) for the worker."""
        from napari.layers import Labels

        from ..io.layers_dataset import class_names_from_features, label_boxes, shape_boxes

        names = [layer.name for layer in self.viewer.layers]
        img_name, ann_name = self.image_box.currentText(), self.annot_box.currentText()
        if img_name not in names or ann_name not in names:
            raise CellClassError("choose an image layer and an annotation (shapes or labels) layer")
        image = np.asarray(self.viewer.layers[img_name].data).copy()
        ann = self.viewer.layers[ann_name]
        column = self.feature_edit.text().strip() or "label"
        if isinstance(ann, Labels):
            boxes, ids = label_boxes(ann.data)
            feats = ann.features
            if column not in feats:
                raise CellClassError(f"labels layer {ann_name!r} has no {column!r} feature")
            if "index" in feats:
                lookup = {int(i): str(c) for i, c in zip(feats["index"], feats[column])}
            else:
                lookup = {i + 1: str(c) for i, c in enumerate(feats[column])}
            classes = [lookup.get(i, "") for i in ids]
        else:
            boxes = shape_boxes(ann.data)
            classes = class_names_from_features(ann.features, len(boxes), column)
        return image, boxes, classes

    def make_job(self):
        """The generator the worker runs (built on the GUI thread; does no work until iterated)."""
        from ..tasks.base import task_function

        task = self.task_box.currentText()
        opts = self.options()
        self._opts = opts
        from ..engine.checkpoint import check_run_folder

        check_run_folder(opts.out, task, resume=opts.resume)  # never replace another task's model
        if self.source_box.currentText() == LAYERS:
            image, boxes, classes = self._layer_data()
            return layers_training_job(task, image, boxes, classes, opts)
        data = self.data_edit.text().strip()
        if not data or not Path(data).exists():
            raise CellClassError(f"dataset folder {data!r} does not exist")
        return task_function(task, "train")(Path(data), opts)

    # ------------------------------------------------------------------ running
    def start(self):
        """Start training in a worker thread; returns the worker (None if the form is invalid)."""
        from napari.qt.threading import create_worker

        from ..engine.device import resolve_device

        if self.running:
            return self.worker
        avoid_triton_llvm_clash()
        self.last_error = None
        self.last_result = None
        self.history = []
        self._draw_curves()
        try:
            job = self.make_job()
            self.device_label.setText(f"device: {resolve_device(self._opts.device).describe()}")
        except Exception as exc:  # bad form input: say it, no traceback dialog
            self._fail(exc)
            return None
        if self._opts.resume:
            self._preload_history(self._opts.out)
        self.worker = create_worker(_drive, job, _start_thread=False)
        self.worker.yielded.connect(self._on_progress)
        self.worker.returned.connect(self._on_done)
        self.worker.errored.connect(self._fail)
        self.worker.finished.connect(self._on_finished)
        self.running = True
        self.train_button.setEnabled(False)
        self.cancel_button.setEnabled(True)
        self.progress.setValue(0)
        self.status.setText(f"training {self.task_box.currentText()} -> {self._opts.out}")
        self._t0 = time.monotonic()
        self._t_frac0: tuple[float, float] | None = None
        self.worker.start()
        return self.worker

    def cancel(self) -> None:
        if self.cancel_token is not None:
            self.cancel_token.cancel()
            self.status.setText("cancelling after the current batch; the best checkpoint so far is kept")

    def _preload_history(self, out: Path | None) -> None:
        try:
            from ..engine.training import load_resume_state

            p = Path(out) / "resume.pt"
            if p.exists():
                self.history = [dict(h) for h in load_resume_state(p).get("history", [])]
                self._draw_curves()
        except Exception:
            pass  # the task itself reports an unreadable resume file

    def _on_progress(self, p: Progress) -> None:
        frac = p.fraction
        now = time.monotonic()
        if frac is not None:
            self.progress.setValue(int(frac * 1000))
            if self._t_frac0 is None:
                self._t_frac0 = (now, frac)
            t_start, f_start = self._t_frac0
            if frac > f_start:
                eta = (now - t_start) * (1 - frac) / (frac - f_start)
                self.eta_label.setText(f"{p.stage}: {100 * frac:.0f}%  elapsed {now - self._t0:.0f} s  ETA {eta:.0f} s")
        else:
            self.eta_label.setText(f"{p.stage}: {p.message}")
        if p.stage == "epoch":
            self.history.append(dict(p.metrics))
            self._draw_curves()
            shown = ", ".join(f"{k}={v:.4g}" for k, v in p.metrics.items() if k not in ("epoch",))
            self.status.setText(f"{p.message}: {shown}")

    def _draw_curves(self) -> None:
        ax, am = self.ax_loss, self.ax_metric
        ax.clear()
        am.clear()
        ep = [h.get("epoch", i + 1) for i, h in enumerate(self.history)]
        losses = [h.get("loss", float("nan")) for h in self.history]
        ax.plot(ep, losses, "o-", color="tab:red", ms=3, label="train loss")
        ax.set_ylabel("loss", fontsize=8)
        keys = sorted({k for h in self.history for k in h if k not in SKIP_METRICS and _is_num(h[k])})
        for k in keys:
            am.plot(ep, [h.get(k, float("nan")) for h in self.history], "o-", ms=3, label=k)
        am.set_ylabel("validation", fontsize=8)
        am.set_xlabel("epoch", fontsize=8)
        for a in (ax, am):
            a.tick_params(labelsize=7)
            a.grid(alpha=0.3)
        if keys:
            am.legend(fontsize=7, loc="best")
        self.figure.tight_layout()
        self.canvas.draw_idle()

    def _on_done(self, result: Any) -> None:
        if isinstance(result, _Failure):
            self._fail(result.exc)
            return
        self.last_result = result
        best = result.get("best_metrics", {}) if isinstance(result, dict) else {}
        shown = ", ".join(f"{k}={v:.4g}" for k, v in best.items() if _is_num(v) and k != "lr")
        self.status.setText(f"done in {result.get('seconds', '?')} s; best: {shown}\ncheckpoint: {result.get('checkpoint')}")
        self.progress.setValue(1000)

    def _fail(self, exc: BaseException) -> None:
        from napari.utils.notifications import show_error

        from ..errors import Cancelled

        if isinstance(exc, Cancelled):
            self.last_error = "cancelled"
            self.status.setText("cancelled; the best checkpoint so far is kept (tick Resume to continue)")
            return
        msg = error_message(exc)
        self.last_error = msg
        self.status.setText(f"error: {msg}")
        show_error(msg)

    def _on_finished(self) -> None:
        self.running = False
        self.train_button.setEnabled(True)
        self.cancel_button.setEnabled(False)


def _is_num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


class _Failure:
    """A failed or cancelled job, handed back as the worker's result (no traceback in the event loop)."""

    def __init__(self, exc: BaseException):
        self.exc = exc


def _drive(job):
    """Re-yield the job's Progress and return its result, or a :class:`_Failure`."""
    try:
        result = yield from job
    except Exception as exc:  # shown to the user in the widget, not re-raised in Qt's loop
        return _Failure(exc)
    return result

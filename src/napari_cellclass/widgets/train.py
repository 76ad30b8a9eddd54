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
    QCheckBox,
    QDoubleSpinBox,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QPushButton,
    QSpinBox,
    QWidget,
)

from .._compat import avoid_triton_llvm_clash
from ..engine.progress import Progress
from ..errors import CellClassError
from ..tasks.history import TrainingHistory, is_number
from ._forms import Choice, DeviceChoice, LayerChoice, PathEdit, add_all, form, scrolling_layout
from ._runner import JobRunner, RunsJobs

TASK_NAMES = ["wbc", "chromosome", "hpa", "detect"]
FOLDER, LAYERS = "folder", "image + annotation layers"


def parse_settings(text: str, task: str | None = None) -> dict[str, Any]:
    """``"loss=focal, schedule=cosine"`` -> typed dict, by the CLI's ``--set`` parser
    (:mod:`napari_cellclass.tasks.options`): with ``task``, a misspelt key names the closest one."""
    from ..tasks.options import parse_settings as parse

    return parse(task or "", "train" if task else "", text)


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


class TrainWidget(RunsJobs, QWidget):
    """Task, data, recipe, device, budget -> training in a worker with live curves."""

    def __init__(self, napari_viewer):
        from napari.layers import Image, Labels, Shapes

        super().__init__()
        self.viewer = napari_viewer
        self.training = TrainingHistory()  # what the run reported (plain class, no Qt): the curves draw it
        self.last_result: dict[str, Any] | None = None

        self.task_box = Choice(choices=TASK_NAMES)
        self.source_box = Choice(choices=[FOLDER, LAYERS])
        self.source_box.changed.connect(self._source_changed)
        self.data_edit = PathEdit("d", "dataset folder")
        self.image_box = LayerChoice(napari_viewer, Image)
        self.annot_box = LayerChoice(napari_viewer, (Shapes, Labels),
                                     tooltip="shapes (one per object) or labels layer; its features name each "
                                             "object's class")
        self.feature_edit = QLineEdit("label")
        self.recipe_edit = PathEdit("r", "optional recipe .yaml/.json", filter="Recipes (*.yaml *.yml *.json)")
        self.settings_edit = QLineEdit()
        self.settings_edit.setPlaceholderText("e.g. loss=focal schedule=cosine early_stopping=5")
        self.device_box = DeviceChoice()
        self.device_label = self.device_box.label
        self.epochs_spin = QSpinBox()
        self.epochs_spin.setRange(0, 10000)
        self.epochs_spin.setSpecialValueText("task default")
        self.batch_spin = QSpinBox()
        self.batch_spin.setRange(0, 4096)
        self.batch_spin.setSpecialValueText("task default")
        self.lr_spin = QDoubleSpinBox()
        self.lr_spin.setDecimals(6)
        self.lr_spin.setRange(0.0, 10.0)
        self.lr_spin.setSingleStep(1e-4)
        self.lr_spin.setSpecialValueText("recipe default")
        self.out_edit = PathEdit("d", "output folder (default runs/<task>-<time>)")
        self.quick_check = QCheckBox("quick (tiny model, smoke test)")
        self.resume_check = QCheckBox("resume from output/resume.pt")

        self.train_button = QPushButton("Train")
        self.train_button.clicked.connect(lambda: self.start())
        self.runner = JobRunner(
            [self.train_button], on_progress=self._on_progress,
            cancelling_text="cancelling after the current batch; the best checkpoint so far is kept",
            cancelled_text="cancelled; the best checkpoint so far is kept (tick Resume to continue)")
        buttons = QHBoxLayout()
        buttons.addWidget(self.train_button)
        buttons.addWidget(self.cancel_button)
        self.eta_label = QLabel("")

        from matplotlib.backends.backend_qtagg import FigureCanvasQTAgg
        from matplotlib.figure import Figure

        self.figure = Figure(figsize=(4, 3.2), dpi=90)
        self.ax_loss = self.figure.add_subplot(211)
        self.ax_metric = self.figure.add_subplot(212)
        self.canvas = FigureCanvasQTAgg(self.figure)
        self.canvas.setMinimumHeight(240)
        self._draw_curves()

        fields = form(("task", self.task_box), ("data from", self.source_box), ("data folder", self.data_edit),
                      ("image layer", self.image_box), ("annotations", self.annot_box),
                      ("class feature", self.feature_edit), ("recipe", self.recipe_edit),
                      ("settings", self.settings_edit), ("device", self.device_box), ("epochs", self.epochs_spin),
                      ("batch size", self.batch_spin), ("learning rate", self.lr_spin), ("output", self.out_edit),
                      (None, self.quick_check), (None, self.resume_check))
        add_all(scrolling_layout(self), [fields, buttons, self.progress, self.eta_label, self.device_label,
                                         self.canvas, self.status])
        self._source_changed(self.source_box.value)

    @property
    def history(self) -> list[dict[str, float]]:
        """Per-epoch metrics of the current run (``self.training.epochs``)."""
        return self.training.epochs

    def _source_changed(self, text: str) -> None:
        layers = text == LAYERS
        self.data_edit.setEnabled(not layers)
        for w in (self.image_box, self.annot_box):
            w.enabled = layers
        self.feature_edit.setEnabled(layers)

    # ------------------------------------------------------------------ options and job
    def options(self):
        """The TaskOptions the form describes (a fresh CancelToken)."""
        from ..tasks.base import TaskOptions

        recipe = self.recipe_edit.text()
        out = self.out_edit.text()
        task = self.task_box.value
        return TaskOptions(
            epochs=self.epochs_spin.value() or None,
            batch_size=self.batch_spin.value() or None,
            lr=self.lr_spin.value() or None,
            device=self.device_box.device,
            out=Path(out) if out else Path("runs") / f"{task}-{time.strftime('%Y%m%d-%H%M%S')}",
            recipe=Path(recipe) if recipe else None,
            quick=self.quick_check.isChecked(),
            resume=self.resume_check.isChecked(),
            extra=parse_settings(self.settings_edit.text(), task),
            cancel=self.runner.new_token(),
        )

    def _layer_data(self) -> tuple[np.ndarray, np.ndarray, list[str]]:
        """Read the chosen layers on the GUI thread (copies) for the worker."""
        from napari.layers import Labels

        from ..io.layers_dataset import class_names_from_features, label_boxes, shape_boxes

        img, ann = self.image_box.layer, self.annot_box.layer
        if img is None or ann is None:
            raise CellClassError("choose an image layer and an annotation (shapes or labels) layer")
        image = np.asarray(img.data).copy()
        ann_name = ann.name
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
        from ..engine.checkpoint import check_run_folder
        from ..tasks.base import task_function

        task = self.task_box.value
        opts = self.options()
        self._opts = opts
        check_run_folder(opts.out, task, resume=opts.resume)  # never replace another task's model
        if self.source_box.value == LAYERS:
            image, boxes, classes = self._layer_data()
            job = layers_training_job(task, image, boxes, classes, opts)
        else:
            data = self.data_edit.text()
            if not data or not Path(data).exists():
                raise CellClassError(f"dataset folder {data!r} does not exist")
            job = task_function(task, "train")(Path(data), opts)
        if opts.resume:
            self.training.load_resume(opts.out)
            self._draw_curves()
        return job

    # ------------------------------------------------------------------ running
    def start(self, sync: bool = False):
        """Start training in a worker thread; returns the worker (None if the form is invalid)."""
        if self.running:
            return self.worker
        avoid_triton_llvm_clash()
        self.last_result = None
        self.training.clear()
        self._draw_curves()
        self.device_box.show_device()
        return self.runner.start(self.make_job, self._on_done, sync=sync,
                                 busy_text=f"training {self.task_box.value}...")

    def _on_progress(self, p: Progress) -> None:
        epoch_done = self.training.add(p)
        self.eta_label.setText(self.training.eta_text(p))
        if epoch_done:
            self._draw_curves()
            self.status.setText(f"{p.message}: {self.training.last_text()}")

    def _draw_curves(self) -> None:
        ax, am = self.ax_loss, self.ax_metric
        ax.clear()
        am.clear()
        ep = self.training.epoch_numbers()
        ax.plot(ep, self.training.losses(), "o-", color="tab:red", ms=3, label="train loss")
        ax.set_ylabel("loss", fontsize=8)
        keys = self.training.metric_names()
        for k in keys:
            am.plot(ep, self.training.metric(k), "o-", ms=3, label=k)
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
        self.last_result = result
        best = result.get("best_metrics", {}) if isinstance(result, dict) else {}
        shown = ", ".join(f"{k}={v:.4g}" for k, v in best.items() if is_number(v) and k != "lr")
        self.status.setText(f"done in {result.get('seconds', '?')} s; best: {shown}\ncheckpoint: "
                            f"{result.get('checkpoint')}")

"""Train a classifier or detector from the viewer, with live loss/metric curves.

Thin: collects task, data (a folder, or the open image + annotation layers,
exported to a temporary dataset by :mod:`napari_cellclass.io.layers_dataset`),
recipe, device, epochs and a time budget into :class:`TaskOptions`; runs the task's
``train`` job through the :class:`JobRunner`; plots every stage-"epoch" Progress;
Cancel sets the CancelToken (the best checkpoint so far survives).

Where runs go is shown and can be changed: a runs folder beside the data
(``<data>/../cellclass-runs``), else the user's data directory, never the folder
napari was started from; each run gets a new numbered folder (``wbc-001``,
``wbc-002``...), so no run replaces an earlier one.  Resume continues the latest
run of the task there.  Estimate times a few batches before committing to a run
("about 40 s per epoch, ~3 min in all"); the run itself refines it as it goes.
"""
from __future__ import annotations

import os
import re
import shutil
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from qtpy.QtWidgets import (
    QCheckBox,
    QDoubleSpinBox,
    QHBoxLayout,
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
from ._runner import JobRunner, RunsJobs, wrapping_label

TASK_NAMES = ["wbc", "chromosome", "hpa", "detect"]
FOLDER, LAYERS = "folder", "image + annotation layers"
DEFAULT_EPOCHS = 5  # a first run that ends in minutes on a laptop CPU; more once the estimate says so
DEFAULT_BUDGET_MIN = 10  # the time budget offered: training stops there, the best checkpoint kept
RUNS_NAME = "cellclass-runs"
PROBE_BATCHES = 4  # Estimate times this many batches (the first is warm-up and not counted)


def user_runs_folder() -> Path:
    """``<user data dir>/napari-cellclass/runs`` (platformdirs), for data that has no folder of its own."""
    try:
        from platformdirs import user_data_dir

        return Path(user_data_dir("napari-cellclass", appauthor=False)) / "runs"
    except ImportError:  # platformdirs is a dependency; this only guards a broken install
        return Path.home() / ".napari-cellclass" / "runs"


def _writable(folder: Path) -> bool:
    """Can ``folder`` be created (or written) - judged by its nearest existing parent."""
    p = folder
    while not p.exists() and p != p.parent:
        p = p.parent
    return p.is_dir() and os.access(p, os.W_OK)


def default_runs_folder(data: str | Path | None) -> Path:
    """Beside the data (``<data>/../cellclass-runs``) when that can be written, else the user's
    data directory; never the current working directory (a relative data path is resolved)."""
    if data:
        d = Path(data).expanduser().resolve()
        candidate = d.parent / RUNS_NAME  # a folder: its sibling; an image file: beside it
        if _writable(candidate):
            return candidate
    return user_runs_folder()


_RUN_RE = re.compile(r"^(?P<task>[a-z_]+)-(?P<n>\d{3,})$")


def numbered_runs(base: Path, task: str) -> list[tuple[int, Path]]:
    """The ``<task>-NNN`` run folders in ``base``, oldest first."""
    if not base.is_dir():
        return []
    runs = []
    for p in base.iterdir():
        m = _RUN_RE.match(p.name)
        if m and m["task"] == task and p.is_dir():
            runs.append((int(m["n"]), p))
    return sorted(runs)


def next_run_folder(base: str | Path, task: str) -> Path:
    """Create and return a new ``<base>/<task>-NNN`` (one past the highest there): never an earlier run."""
    base = Path(base).expanduser()
    base.mkdir(parents=True, exist_ok=True)
    runs = numbered_runs(base, task)
    n = runs[-1][0] + 1 if runs else 1
    while True:
        folder = base / f"{task}-{n:03d}"
        try:
            folder.mkdir()  # not exist_ok: a folder made meanwhile (another viewer) is skipped
            return folder
        except FileExistsError:
            n += 1


def latest_run(base: str | Path, task: str) -> Path | None:
    """The newest ``<task>-NNN`` run in ``base`` that can be resumed (has ``resume.pt``)."""
    for _, folder in reversed(numbered_runs(Path(base).expanduser(), task)):
        if (folder / "resume.pt").is_file():
            return folder
    return None


def estimate_text(seconds_per_batch: float, batches_per_epoch: int, epochs: int,
                  budget_s: float | None = None, *, measured_epochs: int = 0) -> str:
    """"about 40 s per epoch (12 batches), ~3.3 min for 5 epochs" and what the budget does to it.

    ``measured_epochs`` > 0: ``seconds_per_batch * batches_per_epoch`` is a measured epoch
    (validation included), said so."""
    per_epoch = seconds_per_batch * batches_per_epoch
    total = per_epoch * epochs
    how = (f"measured over {measured_epochs} epoch(s)" if measured_epochs else
           f"{batches_per_epoch} batch{'es' if batches_per_epoch != 1 else ''} of {seconds_per_batch:.2f} s, "
           "validation not counted")
    text = f"about {per_epoch:.0f} s per epoch ({how}), ~{total / 60:.1f} min for {epochs} epoch{'s' if epochs != 1 else ''}"
    if budget_s and total > budget_s:
        fits = int(budget_s // per_epoch) if per_epoch > 0 else epochs
        text += f"; the time budget ({budget_s / 60:.0f} min) stops it after about {fits} epoch(s)"
    return text


class BatchClock:
    """Seconds per training batch, from the ``train`` reports' step numbers and arrival times.

    Works on throttled reports too (each carries its step); the first report's batch is
    warm-up (first-call setup) and only starts the clock.
    """

    def __init__(self, clock=time.monotonic):
        self._clock = clock
        self._first: tuple[float, int] | None = None
        self._last: tuple[float, int] | None = None
        self.batches_per_epoch: int | None = None
        self.epochs: int | None = None
        self._epochs_done: list[float] = []  # when each epoch report came

    def add(self, p: Progress) -> None:
        if p.stage == "epoch":
            m = re.search(r"epoch (\d+)/(\d+)", p.message or "")
            if m and self.epochs is None:
                self.epochs = int(m[2])
            if self._first is not None:
                self._epochs_done.append(self._clock())
            else:  # no batch report got through the throttle: the clock starts at this epoch's end
                self._first = (self._clock(), p.step)
            return
        if p.stage != "train":
            return
        now = self._clock()
        m = re.search(r"epoch (\d+)/(\d+)", p.message or "")
        if m and p.total and self.batches_per_epoch is None:
            start, self.epochs = int(m[1]) - 1, int(m[2])
            left = max(1, self.epochs - start)
            self.batches_per_epoch = max(1, round(p.total / left))
        if self._first is None:
            self._first = (now, p.step)
        self._last = (now, p.step)

    @property
    def seconds_per_batch(self) -> float | None:
        if self._first is None or self._last is None or self._last[1] <= self._first[1]:
            return None
        return (self._last[0] - self._first[0]) / (self._last[1] - self._first[1])

    def text(self, budget_s: float | None = None) -> str:
        """The estimate: from whole epochs once one has ended (validation included), else from batches."""
        if not self.epochs:
            return ""
        if self._epochs_done and self._first is not None:
            n = len(self._epochs_done)
            per_epoch = (self._epochs_done[-1] - self._first[0]) / n
            return estimate_text(per_epoch, 1, self.epochs, budget_s, measured_epochs=n)
        spb = self.seconds_per_batch
        if spb is None or not self.batches_per_epoch:
            return ""
        return estimate_text(spb, self.batches_per_epoch, self.epochs, budget_s)


def probe_job(train_job, folder: Path, batches: int = PROBE_BATCHES):
    """Run ``train_job`` for a few batches, time them, stop it and remove its ``folder``.

    Returns ``(seconds per batch, batches per epoch, epochs)``; the first batch (warm-up)
    is not counted.  Nothing of the probe is kept.
    """
    times: list[float] = []
    clock = BatchClock()
    last = None
    epochs_seen = 0
    try:
        for p in train_job:
            if p.stage == "train":
                clock.add(p)
                now = time.monotonic()
                if last is not None:
                    times.append(now - last)
                last = now
                yield Progress(len(times), batches - 1, "estimate", f"timing batch {len(times) + 1}")
                if len(times) >= batches - 1:
                    break
            elif p.stage == "epoch":  # validation is not a batch: the next batch's clock starts here
                last = time.monotonic() if last is not None else None
                epochs_seen += 1
                if times or epochs_seen >= 2:  # a one-batch epoch: the 2nd epoch's batch is timed
                    break
            else:
                yield p
    finally:
        train_job.close()
        shutil.rmtree(folder, ignore_errors=True)
    if not times:
        raise CellClassError("the estimate saw no timed training batch (the dataset has only one batch?)")
    return statistics.median(times), clock.batches_per_epoch or 1, clock.epochs or 1


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
        self.epochs_spin.setValue(DEFAULT_EPOCHS)
        self.budget_spin = QSpinBox()
        self.budget_spin.setRange(0, 100000)
        self.budget_spin.setSuffix(" min")
        self.budget_spin.setSpecialValueText("none")
        self.budget_spin.setValue(DEFAULT_BUDGET_MIN)
        self.budget_spin.setToolTip("training stops after this many minutes; the best checkpoint so far is kept")
        self.batch_spin = QSpinBox()
        self.batch_spin.setRange(0, 4096)
        self.batch_spin.setSpecialValueText("task default")
        self.lr_spin = QDoubleSpinBox()
        self.lr_spin.setDecimals(6)
        self.lr_spin.setRange(0.0, 10.0)
        self.lr_spin.setSingleStep(1e-4)
        self.lr_spin.setSpecialValueText("recipe default")
        self.runs_edit = PathEdit("d", "folder for the runs")
        self.runs_edit.tooltip = ("each run gets a new numbered folder here (wbc-001, wbc-002...); "
                                  "default: beside the data, else your user data folder")
        self.out_edit = self.runs_edit  # name kept for scripts
        self._auto_runs = ""  # the runs folder last filled in for the user (replaced while they keep it)
        self.run_label = wrapping_label()
        self.quick_check = QCheckBox("quick (tiny model, smoke test)")
        self.resume_check = QCheckBox("resume the latest run")
        self.estimate_label = wrapping_label()
        self.clock = BatchClock()
        self.last_estimate: tuple[float, int, int] | None = None

        self.train_button = QPushButton("Train")
        self.train_button.clicked.connect(lambda: self.start())
        self.estimate_button = QPushButton("Estimate time")
        self.estimate_button.setToolTip("time a few training batches first (nothing is kept)")
        self.estimate_button.clicked.connect(lambda: self.estimate())
        self.runner = JobRunner(
            [self.train_button, self.estimate_button], on_progress=self._on_progress,
            cancelling_text="cancelling after the current batch; the best checkpoint so far is kept",
            cancelled_text="cancelled; the best checkpoint so far is kept (tick Resume to continue)")
        buttons = QHBoxLayout()
        buttons.addWidget(self.estimate_button)
        buttons.addWidget(self.train_button)
        buttons.addWidget(self.cancel_button)
        self.eta_label = wrapping_label()  # long stage texts wrap instead of widening the dock

        from matplotlib.backends.backend_qtagg import FigureCanvasQTAgg
        from matplotlib.figure import Figure

        self.figure = Figure(figsize=(4, 3.2), dpi=90)
        self.ax_loss = self.figure.add_subplot(211)
        self.ax_metric = self.figure.add_subplot(212)
        self.canvas = FigureCanvasQTAgg(self.figure)
        # a fixed height: labels above that gain a line move the plot instead of resizing it, and
        # a resized canvas redraws every curve and label (GUI-thread CPU taken from the run)
        self.canvas.setFixedHeight(260)
        self._draw_curves()

        fields = form(("task", self.task_box), ("data from", self.source_box), ("data folder", self.data_edit),
                      ("image layer", self.image_box), ("annotations", self.annot_box),
                      ("class feature", self.feature_edit), ("recipe", self.recipe_edit),
                      ("settings", self.settings_edit), ("device", self.device_box), ("epochs", self.epochs_spin),
                      ("time budget", self.budget_spin), ("batch size", self.batch_spin),
                      ("learning rate", self.lr_spin), ("runs folder", self.runs_edit), (None, self.run_label),
                      (None, self.quick_check), (None, self.resume_check))
        add_all(scrolling_layout(self), [fields, buttons, self.estimate_label, self.progress, self.eta_label,
                                         self.device_label, self.canvas, self.status])
        self.data_edit.changed.connect(self._update_runs_folder)
        self.runs_edit.changed.connect(self._show_next_run)
        self.task_box.changed.connect(self._show_next_run)
        self.image_box.changed.connect(self._update_runs_folder)
        self.resume_check.toggled.connect(self._show_next_run)
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
        self._update_runs_folder()

    # ------------------------------------------------------------------ where runs go
    def _data_location(self) -> Path | None:
        """The data the runs belong beside: the folder, or the image layer's file."""
        if self.source_box.value == LAYERS:
            layer = self.image_box.layer
            path = getattr(getattr(layer, "source", None), "path", None) if layer is not None else None
            return Path(path) if path else None
        text = self.data_edit.text()
        return Path(text) if text else None

    def _update_runs_folder(self, *_: Any) -> None:
        """Fill in the default runs folder for this data, unless the user chose one."""
        current = self.runs_edit.text()
        if not current or current == self._auto_runs:
            self._auto_runs = str(default_runs_folder(self._data_location()))
            self.runs_edit.setText(self._auto_runs)
        self._show_next_run()

    def runs_folder(self) -> Path:
        text = self.runs_edit.text()
        return Path(text).expanduser().resolve() if text else default_runs_folder(self._data_location())

    def _show_next_run(self, *_: Any) -> None:
        task, base = self.task_box.value, self.runs_folder()
        if self.resume_check.isChecked():
            run = latest_run(base, task)
            self.run_label.setText(f"continues {run}" if run else f"no {task} run to resume in {base}")
            return
        runs = numbered_runs(base, task)
        n = runs[-1][0] + 1 if runs else 1
        self.run_label.setText(f"this run: {base / f'{task}-{n:03d}'} (new folder; earlier runs are kept)")

    # ------------------------------------------------------------------ options and job
    @property
    def budget_s(self) -> float | None:
        """The time budget in seconds (None: none); a ``time_budget_s`` in settings wins."""
        return self.budget_spin.value() * 60.0 or None

    def options(self, out: Path | None = None):
        """The TaskOptions the form describes (a fresh CancelToken); ``out`` is the run's folder."""
        from ..tasks.base import TaskOptions

        recipe = self.recipe_edit.text()
        task = self.task_box.value
        extra = parse_settings(self.settings_edit.text(), task)
        if self.budget_s and "time_budget_s" not in extra:
            extra["time_budget_s"] = self.budget_s
        return TaskOptions(
            epochs=self.epochs_spin.value() or None,
            batch_size=self.batch_spin.value() or None,
            lr=self.lr_spin.value() or None,
            device=self.device_box.device,
            out=out,
            recipe=Path(recipe) if recipe else None,
            quick=self.quick_check.isChecked(),
            resume=self.resume_check.isChecked(),
            extra=extra,
            cancel=self.runner.new_token(),
        )

    def _run_folder(self) -> Path:
        """Resume: the latest run of the task; else a new numbered folder (created now)."""
        task, base = self.task_box.value, self.runs_folder()
        if self.resume_check.isChecked():
            run = latest_run(base, task)
            if run is None:
                raise CellClassError(f"no {task} run to resume in {base} (no {task}-NNN folder with resume.pt)")
            return run
        if not _writable(base):
            raise CellClassError(f"cannot write the runs folder {base}; choose another one")
        return next_run_folder(base, task)

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

    def _training_job(self, opts):
        from ..engine.checkpoint import check_run_folder
        from ..tasks.base import task_function

        task = self.task_box.value
        check_run_folder(opts.out, task, resume=opts.resume)  # never replace another task's model
        if self.source_box.value == LAYERS:
            image, boxes, classes = self._layer_data()
            return layers_training_job(task, image, boxes, classes, opts)
        data = self.data_edit.text()
        if not data or not Path(data).exists():
            raise CellClassError(f"dataset folder {data!r} does not exist")
        return task_function(task, "train")(Path(data), opts)

    def _check_data(self) -> None:
        """Refuse bad input before a run folder is made."""
        if self.source_box.value != LAYERS:
            data = self.data_edit.text()
            if not data or not Path(data).exists():
                raise CellClassError(f"dataset folder {data!r} does not exist")
        parse_settings(self.settings_edit.text(), self.task_box.value)

    def make_job(self):
        """The generator the worker runs (built on the GUI thread; does no work until iterated)."""
        self._check_data()
        out = self._run_folder()
        try:
            opts = self.options(out)
            self._opts = opts
            job = self._training_job(opts)
        except Exception:
            if not self.resume_check.isChecked() and not any(out.iterdir()):
                out.rmdir()  # the numbered folder this start made, still empty: not a run
            raise
        self._show_next_run()
        if opts.resume:
            self.training.load_resume(opts.out)
            self._draw_curves()
        return job

    # ------------------------------------------------------------------ running
    def estimate(self, sync: bool = False):
        """Time a few batches of the run the form describes, in a throw-away folder; show the estimate."""
        if self.running:
            return self.worker
        avoid_triton_llvm_clash()

        def job():
            self._check_data()
            folder = Path(tempfile.mkdtemp(prefix="cellclass-estimate-"))
            try:
                opts = self.options(folder)
                opts.resume = False
                opts.extra.pop("time_budget_s", None)
                train = self._training_job(opts)
            except Exception:
                shutil.rmtree(folder, ignore_errors=True)
                raise
            return probe_job(train, folder)

        return self.runner.start(job, self._estimated, sync=sync, busy_text="estimating the epoch time...")

    def _estimated(self, result: tuple[float, int, int]) -> None:
        self.last_estimate = result
        spb, per_epoch, epochs = result
        text = estimate_text(spb, per_epoch, epochs, self.budget_s)
        self.estimate_label.setText(text)
        self.status.setText(f"estimate: {text}")

    def start(self, sync: bool = False):
        """Start training in a worker thread; returns the worker (None if the form is invalid)."""
        if self.running:
            return self.worker
        avoid_triton_llvm_clash()
        self.last_result = None
        self.clock = BatchClock()
        if self.training.epochs:  # clear the last run's curves; empty ones are not drawn again
            self.training.clear()
            self._draw_curves()
        self.training.clear()
        self.device_box.show_device()
        return self.runner.start(self.make_job, self._on_done, sync=sync,
                                 busy_text=f"training {self.task_box.value}...")

    def _on_progress(self, p: Progress) -> None:
        if p.stage == "estimate":
            return
        epoch_done = self.training.add(p)
        self.clock.add(p)
        estimate = self.clock.text(self.budget_s)
        if estimate:
            self.estimate_label.setText(estimate)
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
        # a fixed layout: tight_layout measures every label (a full text layout) at each redraw,
        # which in the viewer took as long as a tiny run's epoch
        self.figure.subplots_adjust(left=0.16, right=0.97, top=0.96, bottom=0.13, hspace=0.3)
        self.canvas.draw_idle()

    def _on_done(self, result: Any) -> None:
        self.last_result = result
        best = result.get("best_metrics", {}) if isinstance(result, dict) else {}
        shown = ", ".join(f"{k}={v:.4g}" for k, v in best.items() if is_number(v) and k != "lr")
        self.status.setText(f"done in {result.get('seconds', '?')} s; best: {shown}\ncheckpoint: "
                            f"{result.get('checkpoint')}")

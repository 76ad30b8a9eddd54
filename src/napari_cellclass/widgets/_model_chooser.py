"""The one model field every widget uses: built-ins for the task first, then "Browse...".

The combo box lists the task's built-in models (best first, so the default is the
best one); it is editable, so a checkpoint path can also be typed or pasted, and
"Browse..." adds a file.  Below it one line says what the chosen model is (the
card's summary, or a checkpoint's header), warns when it was trained only on
generated data, and, when no built-in exists for the task, where to learn to
train one.  ``value`` resolves the choice through :func:`napari_cellclass.zoo.loaded.model_file`
(the name -> file step of ``load_model``: sha256-checked; URL models fetched once), so
widgets pass on a plain path.
"""
from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from qtpy.QtCore import Signal
from qtpy.QtWidgets import (
    QComboBox,
    QFileDialog,
    QHBoxLayout,
    QLabel,
    QPushButton,
    QSizePolicy,
    QVBoxLayout,
    QWidget,
)

from .. import zoo
from ..errors import CellClassError

NONE_TEXT = ""
TRAINING_DOC = "docs/training.md"
HPA_SECTION = "Training an HPA model on the public Kaggle data"


def _docs_link() -> str:
    """A clickable link to the training docs when this is a source checkout, else their name."""
    from ..zoo.docs import default_docs_path

    page = default_docs_path()
    target = page.with_name("training.md") if page is not None else None
    if target is not None and target.is_file():
        return f'<a href="{target.as_uri()}#training-an-hpa-model-on-the-public-kaggle-data">{TRAINING_DOC}</a>'
    return TRAINING_DOC


def no_builtin_text(task_label: str) -> str:
    """What the chooser says when no built-in model exists for its task."""
    if task_label == "hpa":
        return (f"No built-in HPA model ships with napari-cellclass (no labelled real HPA images were available "
                f"to train one). Train one from the public Kaggle HPA data: see '{HPA_SECTION}' in "
                f"{_docs_link()}, then Browse... to its model.safetensors.")
    return (f"No built-in {task_label} model ships with this version; train one (see {_docs_link()}) "
            "and Browse... to its model.safetensors.")


class ModelChooser(QWidget):
    """Combo box of built-in models for ``task`` (default: the best) + Browse... + a summary line.

    ``task`` is a task name (``"wbc"``, ``"hpa"``, ``"detect"``, ``"chromosome"``,
    ``"karyotype"``), several names, or None for any classifier.  ``optional``
    adds an empty first entry (value None), for fields a job can do without;
    ``check_task=False`` accepts checkpoints of any task (the job's loader checks them).
    """

    changed = Signal()

    def __init__(self, task: str | Iterable[str] | None, parent: QWidget | None = None, *,
                 optional: bool = False, check_task: bool = True,
                 placeholder: str = "built-in model or checkpoint (.safetensors)",
                 auto: tuple[str, str] | None = None):
        super().__init__(parent)
        # (entry text, summary): a first entry, the default, whose value is None: the job picks the
        # built-in itself from the data (the karyotype widget: by the spread's banding)
        self.auto = auto
        self.check_task = check_task  # False: list the task's built-ins but accept any browsed checkpoint
        if task is None:
            self.tasks: tuple[str, ...] | None = None
        elif isinstance(task, str):
            self.tasks = (task,)
        else:
            self.tasks = tuple(task)
        self.optional = optional
        self.combo = QComboBox()
        self.combo.setEditable(True)
        self.combo.setInsertPolicy(QComboBox.NoInsert)
        self.combo.lineEdit().setPlaceholderText(placeholder)
        self.combo.setMinimumContentsLength(12)  # the combo takes the room left; the button keeps its text
        self.browse_button = QPushButton("Browse...")
        self.browse_button.setSizePolicy(QSizePolicy.Policy.Fixed, QSizePolicy.Policy.Fixed)
        self.browse_button.setMinimumWidth(self.browse_button.sizeHint().width())
        self.browse_button.clicked.connect(self.browse)
        self.summary = QLabel("")
        self.summary.setWordWrap(True)
        self.summary.setOpenExternalLinks(True)
        self.summary.setStyleSheet("font-size: 9pt")

        row = QHBoxLayout()
        row.setContentsMargins(0, 0, 0, 0)
        row.addWidget(self.combo, 1)
        row.addWidget(self.browse_button)
        lay = QVBoxLayout(self)
        lay.setContentsMargins(0, 0, 0, 0)
        lay.addLayout(row)
        lay.addWidget(self.summary)

        self._cards: dict[str, dict] = {}
        self.refresh()
        self.combo.currentTextChanged.connect(self._on_text)
        self._on_text(self.combo.currentText())

    # ------------------------------------------------------------------ contents
    def builtin_cards(self) -> list[dict]:
        """Cards for this chooser's task(s), best first (classifiers only when task is None)."""
        try:
            if self.tasks is None:
                return [c for c in zoo.list_models() if c["task"] != "detect"]
            return [c for t in self.tasks for c in zoo.list_models(t)]
        except CellClassError as exc:  # a broken model folder must not break the widget
            self.summary.setText(f"built-in models unavailable: {exc}")
            return []

    def refresh(self) -> None:
        """Re-read the built-ins (keeps a typed/browsed path)."""
        current = self.combo.currentText().strip() or None
        cards = self.builtin_cards()
        self._cards = {c["name"]: c for c in cards}
        self.combo.blockSignals(True)
        self.combo.clear()
        if self.optional:
            self.combo.addItem(NONE_TEXT)
        if self.auto:
            self.combo.addItem(self.auto[0])
        for c in cards:
            self.combo.addItem(c["name"])
            self.combo.setItemData(self.combo.count() - 1, c.get("one_line", ""), 3)  # 3 = ToolTipRole
        if current:
            self.setText(current)
        elif cards and not self.optional:
            self.combo.setCurrentIndex(0)  # the best built-in
        else:
            self.combo.setEditText("")
        self.combo.blockSignals(False)

    # ------------------------------------------------------------------ value
    def text(self) -> str:
        """What is chosen: a built-in name, a path, or ``""``."""
        return self.combo.currentText().strip()

    def setText(self, spec: str | Path | None) -> None:
        """Choose a built-in by name or a checkpoint by path (as typed or browsed)."""
        text = "" if spec is None else str(spec)
        i = self.combo.findText(text)
        if i >= 0:
            self.combo.setCurrentIndex(i)
            self.combo.setEditText(text)
        else:
            self.combo.setEditText(text)
        self._on_text(text)

    @property
    def is_builtin(self) -> bool:
        return self.text() in self._cards

    @property
    def is_auto(self) -> bool:
        return bool(self.auto) and self.text() == self.auto[0]

    @property
    def value(self) -> Path | None:
        """The chosen model as a verified local checkpoint path (None when nothing is chosen).

        Raises a CellClassError naming the problem (unknown name, missing file,
        model for another task, hash mismatch, URL model offline).
        """
        text = self.text()
        if not text or (self.auto and text == self.auto[0]):
            return None
        task = self.tasks[0] if self.check_task and self.tasks is not None and len(self.tasks) == 1 else None
        from ..zoo.loaded import model_file  # the one name -> file step (load_model uses it too)

        return model_file(text, task=task)

    # ------------------------------------------------------------------ UI
    def browse(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "Model checkpoint", "", "Checkpoints (*.safetensors)")
        if path:
            self.setText(path)

    def _task_label(self) -> str:
        return "/".join(self.tasks) if self.tasks else "classifier"

    def _on_text(self, text: str) -> None:
        self.summary.setText(self.describe(text.strip()))
        self.changed.emit()

    def describe(self, text: str) -> str:
        """The summary line for a choice (no hashing, no download: cheap enough per keystroke)."""
        if self.auto and text == self.auto[0]:
            return self.auto[1]
        if text in self._cards:
            c = self._cards[text]
            warn = zoo.SYNTHETIC_WARNING if (c.get("trained_on") or {}).get("synthetic") else ""
            return " ".join(s for s in (c.get("one_line", ""), warn) if s)
        if not text:
            if self._cards or self.optional:
                return ""
            return no_builtin_text(self._task_label())
        path = Path(text).expanduser()
        if not path.is_file():
            return "no such file, and not a built-in model" if text else ""
        try:
            from ..engine.checkpoint import read_meta

            meta = read_meta(path)
        except CellClassError as exc:
            return f"not a usable checkpoint: {exc.problem}"
        line = (f"{meta.task} {meta.arch}, {len(meta.class_names)} classes; trained on {meta.trained_on}")
        want = zoo.accepted_tasks(self.tasks[0]) if self.tasks is not None and len(self.tasks) == 1 else None
        if self.check_task and want is not None and meta.task not in want:
            line += f" (a {meta.task!r} model: this field needs {' or '.join(repr(t) for t in want)})"
        warn = zoo.synthetic_warning(meta.trained_on)
        return f"{line}. {warn}" if warn else line

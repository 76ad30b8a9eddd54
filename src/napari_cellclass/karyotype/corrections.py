"""A karyotype under correction: cut, merge, delete, reclass, turn, undo (no Qt).

:class:`KaryotypeSession` holds one spread's labels and everything the analyst
changed, and turns them into a result (pairing, ISCN summary, karyogram).  The
widget only forwards clicks to it; scripts and tests drive it the same way.

* Label ids are stable: an edit never renumbers the chromosomes it did not touch,
  so per-label classifier results stay cached and only changed objects are
  classified again (``last_classified`` lists them after :meth:`update`).
* Undo restores the labels from a patch of the edited box (not a copy of the
  whole image) plus the small per-label state (probabilities, the user's classes
  and turns), so 50 steps on a 4000 px spread cost little memory.
* :meth:`KaryotypeSession.update_job` is the same update as a generator job
  (progress, cancel between stages), so the widget runs it off the GUI thread.
* Merging objects that do not touch is refused (:class:`NotTouchingError`)
  unless forced: two chromosomes far apart are rarely one broken chromosome.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
from scipy import ndimage as ndi

from ..engine.progress import CancelToken, Job, Progress, check_cancel, run_sync
from ..errors import InputError
from .assign import CLASS_NAMES, N_CLASSES, REJECT, assign_classes
from .iscn import iscn_summary
from .karyogram import Karyogram, Orientation, chromosome_table, render_karyogram

Classifier = Callable[[np.ndarray, np.ndarray, list[int]], np.ndarray]


def _classify(fn: Classifier, image: np.ndarray, labels: np.ndarray, ids: list[int],
              cancel: CancelToken | None) -> np.ndarray:
    """Call a classifier, handing it the cancel token when it takes one (Cancel then stops it
    between batches instead of after the whole model step)."""
    import inspect

    try:
        takes_cancel = "cancel" in inspect.signature(fn).parameters
    except (TypeError, ValueError):
        takes_cancel = False
    return fn(image, labels, ids, cancel=cancel) if takes_cancel else fn(image, labels, ids)
"""(image, labels, label ids) -> (len(ids), 24) class probabilities
(:func:`napari_cellclass.tasks.karyotype.model_classifier` makes one from a model)."""


class NotTouchingError(InputError):
    """``merge`` of objects that do not touch; ``ids`` are two of them, ``gap`` the pixels between."""

    def __init__(self, a: int, b: int, gap: int):
        self.ids, self.gap = (int(a), int(b)), int(gap)
        super().__init__(f"chromosomes {a} and {b} do not touch (a gap of {gap} px between them); "
                         f"merge({a}, {b}, force=True) joins them anyway")


@dataclass
class _Step:
    name: str
    box: tuple[slice, slice] | None  # where the labels changed
    patch: np.ndarray | None  # the labels there before
    probs: dict[int, np.ndarray]
    fixed: dict[int, int]
    orientation: dict[int, Orientation]
    next_id: int


class KaryotypeSession:
    """One spread being corrected.

    Parameters
    ----------
    image : the spread (2D gray or RGB).
    labels : int label image (0 = background); copied.
    probs : {label id: (24,) probabilities} already known (e.g. from the first run).
    classify : called by :meth:`update` for labels without probabilities; when None
        they get a uniform row (the karyogram still draws, the pairing shrugs).
    fixed : {label id: class index or -1} chosen by the user.
    straighten : lay bent chromosomes out straight in the karyogram (False: the crops as cut).
    """

    def __init__(self, image: np.ndarray, labels: np.ndarray, probs: dict[int, np.ndarray] | None = None,
                 classify: Classifier | None = None, *, fixed: dict[int, int] | None = None,
                 low_confidence: float = 0.5, pairing: bool = True, max_history: int = 50,
                 row_height: int = 140, straighten: bool = True):
        image = np.asarray(image)
        labels = np.asarray(labels)
        if labels.shape != image.shape[:2] and labels.shape != image.shape[-2:]:
            raise InputError(f"labels shape {labels.shape} does not match the image {image.shape[:2]}")
        self.image = image
        self.labels = labels.astype(np.int32, copy=True)
        self.probs: dict[int, np.ndarray] = {int(k): np.asarray(v, np.float64) for k, v in (probs or {}).items()}
        self.fixed: dict[int, int] = {int(k): int(v) for k, v in (fixed or {}).items()}
        self.orientation: dict[int, Orientation] = {}
        self.classify = classify
        self.low_confidence = low_confidence
        self.pairing = pairing
        self.max_history = max_history
        self.row_height = row_height
        self.history: list[_Step] = []
        self.last_classified: list[int] = []
        self.result: dict[str, Any] | None = None
        self.karyogram: Karyogram | None = None
        self.selected: int | None = None
        self._next_id = int(self.labels.max()) + 1 if self.labels.size else 1
        self.straighten = bool(straighten)
        self._crop_caches: dict[bool, dict] = {True: {}, False: {}}  # straightened and plain crops

    # ------------------------------------------------------------------ state
    @property
    def ids(self) -> list[int]:
        """Label ids present, ascending."""
        counts = np.bincount(self.labels.ravel())
        return [int(i) for i in np.nonzero(counts)[0] if i > 0]

    def _check_id(self, lid: int) -> int:
        lid = int(lid)
        if lid <= 0 or not (self.labels == lid).any():
            raise InputError(f"there is no chromosome with label {lid}")
        return lid

    def _push(self, name: str, box: tuple[slice, slice] | None = None) -> None:
        patch = self.labels[box].copy() if box is not None else None
        self.history.append(_Step(name, box, patch, dict(self.probs), dict(self.fixed),
                                  {k: replace(v) for k, v in self.orientation.items()}, self._next_id))
        del self.history[:-self.max_history]

    def _forget(self, ids) -> None:
        """Changed objects: their cached probabilities, classes, turns and crops no longer hold."""
        for lid in ids:
            lid = int(lid)
            self.probs.pop(lid, None)
            self.fixed.pop(lid, None)
            self.orientation.pop(lid, None)
            self._drop_crops(lid)

    def _drop_crops(self, lid: int) -> None:
        for cache in self._crop_caches.values():
            cache.pop(int(lid), None)

    def _box(self, mask: np.ndarray) -> tuple[slice, slice]:
        sl = ndi.find_objects(mask.astype(np.uint8))
        if not sl or sl[0] is None:
            raise InputError("nothing to change there")
        return sl[0]

    # ------------------------------------------------------------------ segmentation edits
    def cut(self, points: Sequence[Sequence[float]], label: int | None = None) -> list[int]:
        """Cut the chromosome(s) the polyline crosses into pieces; returns the new label ids.

        ``points`` are (row, col) image coordinates of a line or path drawn across
        a chromosome, from background to background.  A chromosome the line does
        not cross completely is left alone; if none is cut an InputError says so.
        """
        from skimage.draw import line as draw_line

        pts = np.asarray(points, dtype=float).reshape(-1, 2)
        if len(pts) < 2:
            raise InputError("a cut needs a line of at least two points")
        H, W = self.labels.shape
        rr_all, cc_all = [], []
        for (r0, c0), (r1, c1) in zip(pts[:-1], pts[1:]):
            rr, cc = draw_line(int(round(r0)), int(round(c0)), int(round(r1)), int(round(c1)))
            rr_all.append(rr)
            cc_all.append(cc)
        rr, cc = np.concatenate(rr_all), np.concatenate(cc_all)
        inside = (rr >= 0) & (rr < H) & (cc >= 0) & (cc < W)
        rr, cc = rr[inside], cc[inside]
        hit = set(np.unique(self.labels[rr, cc]).tolist()) - {0}
        if label is not None:
            hit &= {int(label)}
        if not hit:
            raise InputError("the cut line does not cross any chromosome")
        box = self._box(np.isin(self.labels, list(hit)))
        self._push("cut", box)
        line = np.zeros(self.labels.shape, bool)
        line[rr, cc] = True
        new_ids: list[int] = []
        sub = self.labels[box]
        cut_line = line[box]
        for lid in sorted(hit):
            region = sub == lid
            pieces, k = ndi.label(region & ~cut_line)  # 4-connected: an 8-connected line separates
            sizes = np.bincount(pieces.ravel(), minlength=k + 1)[1:]
            big = [j + 1 for j in np.argsort(-sizes) if sizes[j] >= max(4, 0.02 * region.sum())]
            if len(big) < 2:
                continue
            # every pixel of the object (line and crumbs too) joins its nearest big piece
            seeds = np.zeros(region.shape, np.int32)
            for rank, j in enumerate(big):
                seeds[pieces == j] = rank + 1
            _, (iy, ix) = ndi.distance_transform_edt(seeds == 0, return_indices=True)
            nearest = seeds[iy, ix]
            for rank in range(1, len(big)):
                sub[region & (nearest == rank + 1)] = self._next_id
                new_ids.append(self._next_id)
                self._next_id += 1
            self._forget([lid])
        if not new_ids:
            self.history.pop()
            raise InputError("the cut line does not cross a chromosome from side to side: "
                             "draw it from background, across the chromosome, to background")
        return new_ids

    def merge(self, a: int, b: int, *more: int, force: bool = False) -> int:
        """Join labels into the first one (e.g. a chromosome broken at a pale centromere).

        Objects must touch (8-connected) unless ``force``: otherwise a
        :class:`NotTouchingError` names two of them and the gap between.
        """
        ids = [self._check_id(x) for x in (a, b, *more)]
        if len(set(ids)) < 2:
            raise InputError("choose two different chromosomes to merge")
        if not force:
            apart = self.gap(*ids)
            if apart is not None:
                raise NotTouchingError(*apart)
        box = self._box(np.isin(self.labels, ids))
        self._push("merge", box)
        sub = self.labels[box]
        sub[np.isin(sub, ids[1:])] = ids[0]
        self._forget(ids)
        return ids[0]

    def gap(self, *ids: int) -> tuple[int, int, int] | None:
        """Why :meth:`merge` would refuse ``ids``: None when they form one connected piece, else
        (a, b, pixels): the closest pair across the split (``a`` in the piece holding the first
        id) and the background pixels between them."""
        ids = [self._check_id(x) for x in ids]
        box = self._box(np.isin(self.labels, ids))
        sub = self.labels[box]
        pieces, n = ndi.label(np.isin(sub, ids), structure=np.ones((3, 3), bool))
        if n <= 1:
            return None
        first = pieces == pieces[sub == ids[0]][0]
        dist = ndi.distance_transform_edt(~first)  # to the nearest pixel of the first piece
        k = int(np.argmin(np.where(~first & (pieces > 0), dist, np.inf)))
        near = int(sub.flat[k])  # the object outside the first piece closest to it
        to_near = ndi.distance_transform_edt(sub != near)
        here = min((i for i in ids if first[sub == i].any()), key=lambda i: float(to_near[sub == i].min()))
        return here, near, max(1, int(round(float(dist.flat[k]) - 1)))

    def delete(self, *ids: int) -> None:
        """Remove objects (debris, a nucleus) from the karyotype."""
        ids = [self._check_id(x) for x in ids]
        if not ids:
            raise InputError("choose a chromosome to delete")
        box = self._box(np.isin(self.labels, ids))
        self._push("delete", box)
        sub = self.labels[box]
        sub[np.isin(sub, ids)] = 0
        self._forget(ids)

    def apply_labels(self, labels: np.ndarray) -> set[int]:
        """Take hand-painted labels; returns the ids whose pixels changed (to be re-classified)."""
        labels = np.asarray(labels)
        if labels.shape != self.labels.shape:
            raise InputError(f"edited labels have shape {labels.shape}, expected {self.labels.shape}")
        diff = labels != self.labels
        if not diff.any():
            return set()
        box = self._box(diff)
        changed = set(np.unique(labels[box][diff[box]]).tolist()) | set(
            np.unique(self.labels[box][diff[box]]).tolist())
        changed.discard(0)
        self._push("paint", box)
        self.labels[box] = labels[box]
        self._next_id = max(self._next_id, int(labels.max()) + 1)
        self._forget(changed)
        return changed

    # ------------------------------------------------------------------ class and display edits
    def set_class(self, lid: int, cls: int | str | None) -> None:
        """The user's class for one chromosome (a name, an index, "?"/-1 = not a chromosome, None = model's)."""
        lid = self._check_id(lid)
        if isinstance(cls, str):
            if cls not in CLASS_NAMES and cls != "?":
                raise InputError(f"unknown chromosome class {cls!r}; use one of {', '.join(CLASS_NAMES)} or '?'")
            cls = CLASS_NAMES.index(cls) if cls in CLASS_NAMES else REJECT
        self._push("class")
        if cls is None:
            self.fixed.pop(lid, None)
        else:
            if not REJECT <= int(cls) < N_CLASSES:
                raise InputError(f"class index must be -1..{N_CLASSES - 1}, got {cls}")
            self.fixed[lid] = int(cls)

    def move(self, lid: int, cell: str) -> None:
        """Drag-and-drop in the karyogram: put the chromosome in another class's cell ("?" = unplaced)."""
        self.set_class(lid, cell)

    def rotate(self, lid: int, degrees: float = 180.0) -> None:
        """Turn a chromosome in the karyogram (counter-clockwise), on top of the automatic turn."""
        lid = self._check_id(lid)
        self._push("rotate")
        o = replace(self.orientation.get(lid, Orientation()))
        o.user_rotation = float((o.user_rotation + degrees) % 360)
        self.orientation[lid] = o

    def mirror(self, lid: int) -> None:
        """Mirror a chromosome left-right in the karyogram."""
        lid = self._check_id(lid)
        self._push("mirror")
        o = replace(self.orientation.get(lid, Orientation()))
        o.user_mirror = not o.user_mirror
        self.orientation[lid] = o

    def undo(self) -> str | None:
        """Revert the last edit; returns its name, or None when there is nothing to undo."""
        if not self.history:
            return None
        step = self.history.pop()
        if step.box is not None:
            changed = set(np.unique(self.labels[step.box]).tolist()) | set(np.unique(step.patch).tolist())
            self.labels[step.box] = step.patch
            for lid in changed:
                self._drop_crops(lid)
        self.probs, self.fixed, self.orientation, self._next_id = (
            step.probs, step.fixed, step.orientation, step.next_id)
        return step.name

    # ------------------------------------------------------------------ result
    def update(self, title: str | None = None) -> dict[str, Any]:
        """Classify what is new, pair, summarise and draw; returns the result dict."""
        return run_sync(self.update_job(title))

    def update_job(self, title: str | None = None, cancel: CancelToken | None = None) -> Job[dict[str, Any]]:
        """:meth:`update` as a job: yields progress per stage (classify, pair, karyogram) and stops
        with :class:`~napari_cellclass.errors.Cancelled` between them when ``cancel`` is set.

        A cancelled update leaves the labels and the per-label state as they were before it
        (only probabilities already computed are kept); the caller may :meth:`undo` the edit.
        """
        counts = np.bincount(self.labels.ravel())
        ids = [int(i) for i in np.nonzero(counts)[0] if i > 0]
        todo = [i for i in ids if i not in self.probs and self.fixed.get(i) != REJECT]
        check_cancel(cancel)
        if todo:
            yield Progress(0, 3, "classify", f"classifying {len(todo)} changed object(s)")
            if self.classify is not None:
                new = np.asarray(_classify(self.classify, self.image, self.labels, todo, cancel),
                                 np.float64).reshape(len(todo), -1)
            else:
                new = np.full((len(todo), N_CLASSES), 1.0 / N_CLASSES)
            check_cancel(cancel)
            for lid, row in zip(todo, new):
                self.probs[lid] = row
        self.last_classified = list(todo)
        yield Progress(1, 3, "pair", "pairing")
        uniform = np.full(N_CLASSES, 1.0 / N_CLASSES)
        probs = np.array([self.probs.get(i, uniform) for i in ids]).reshape(len(ids), N_CLASSES)
        sizes = counts[ids].astype(float) if ids else np.zeros(0)
        rejected = [r for r, lid in enumerate(ids) if self.fixed.get(lid) == REJECT]
        rows = [r for r in range(len(ids)) if r not in set(rejected)]
        fixed_rows = {rows.index(r): self.fixed[ids[r]] for r in rows if ids[r] in self.fixed}
        classes = np.full(len(ids), REJECT, int)
        conf = np.zeros(len(ids))
        flagged = np.zeros(len(ids), bool)
        reasons = ["removed by the user (not a chromosome)"] * len(ids)
        slots = ["manual"] * len(ids)
        sex = "XX"
        if rows:
            if self.pairing:
                a = assign_classes(probs[rows], sizes=sizes[rows], fixed=fixed_rows,
                                   low_confidence=self.low_confidence)
            else:
                from .assign import manual_assignment

                cls = probs[rows].argmax(1)
                for r, c in fixed_rows.items():
                    cls[r] = c
                a = manual_assignment(probs[rows], cls, self.low_confidence)
                for r in fixed_rows:
                    a.slot[r], a.confidence[r], a.flagged[r], a.reasons[r] = "manual", 1.0, False, ""
            classes[rows], conf[rows], flagged[rows] = a.classes, a.confidence, a.flagged
            for k, r in enumerate(rows):
                reasons[r], slots[r] = a.reasons[k], a.slot[k]
            sex = a.sex
        summary = iscn_summary(classes, flagged)
        if title is None:
            title = summary.headline
        check_cancel(cancel)
        yield Progress(2, 3, "karyogram", "drawing the karyogram" + (" (straightening bent chromosomes)"
                                                                     if self.straighten else ""))
        # no selection frame in the image: it is what PNG and PDF exports take (the widget frames a copy)
        self.karyogram = render_karyogram(self.image, self.labels, classes, ids=ids, flagged=flagged,
                                          orientation=self.orientation, title=title,
                                          cache=self._crop_caches[self.straighten], row_height=self.row_height,
                                          straighten=self.straighten)
        boxes = np.zeros((len(ids), 4), int)
        slices = ndi.find_objects(self.labels)
        for r, lid in enumerate(ids):
            sl = slices[lid - 1]
            boxes[r] = (sl[0].start, sl[1].start, sl[0].stop, sl[1].stop)
        self.result = {
            "labels": self.labels,
            "ids": np.asarray(ids, int),
            "boxes": boxes,
            "probabilities": probs,
            "classes": classes,
            "class_names": [CLASS_NAMES[c] if c >= 0 else "reject" for c in classes],
            "confidence": conf,
            "flagged": flagged,
            "reasons": reasons,
            "slots": slots,
            "sex_template": sex,
            "summary": summary.text,
            "headline": summary.headline,
            "confident": summary.confident,
            "n_flagged": summary.n_flagged,
            "iscn_valid": summary.valid,
            "count": summary.count,
            "abnormal": summary.abnormal,
            "findings": summary.findings,
            "table": chromosome_table(self.labels, classes, conf, flagged, reasons, ids=ids),
            "fixed": dict(self.fixed),
            "karyogram": self.karyogram.image,
            "classified": len(todo),
            "orientation": {lid: self.karyogram.orientation.get(lid) for lid in ids},
            "straightened": self.straighten,
        }
        yield Progress(3, 3, "karyogram", summary.headline)
        return self.result

    @classmethod
    def from_result(cls, image: np.ndarray, result: dict[str, Any], classify: Classifier | None = None,
                    **kw: Any) -> KaryotypeSession:
        """Start correcting the output of :func:`napari_cellclass.tasks.karyotype.karyotype`."""
        labels = np.asarray(result["labels"])
        if "ids" in result:  # a session's own result: ids and fixed are by label id
            ids = [int(i) for i in result["ids"]]
            fixed = {int(k): int(v) for k, v in (result.get("fixed") or {}).items()}
        else:  # the pipeline's: row r is label r + 1, fixed by row
            ids = list(range(1, len(result["probabilities"]) + 1))
            fixed = {int(r) + 1: int(c) for r, c in (result.get("fixed") or {}).items()}
        probs = {i: np.asarray(p) for i, p in zip(ids, result["probabilities"])}
        return cls(image, labels, probs, classify, fixed=fixed, **kw)

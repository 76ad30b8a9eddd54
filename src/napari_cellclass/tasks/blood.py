"""Blood smears end to end: detect the cells, classify only the white ones, count, report.

:func:`analyse_smear` is the one action behind the "Analyse smear" button, the
API (:func:`napari_cellclass.api.analyse_smear`) and folder mode
(``cellclass predict wbc FOLDER --model NAME``, :func:`analyse_folder`):

1. refuse images that cannot be a stained bright-field smear (gray, fluorescence);
2. detect red cells, white cells and platelets (a ``detect`` model);
3. classify only the white-cell boxes (a ``wbc`` model) on fixed-scale crops;
4. count: red cells, platelets, white cells and the white-cell differential.

Zero detections is a normal result ("0 objects above score 0.42"), never an
error.  :func:`write_report_pdf` writes the per-smear PDF (counts, differential,
a gallery page, model versions, date); :func:`export_class_folders` writes
reviewed white-cell crops as class folders that ``cellclass train wbc`` reads.
No Qt here.
"""
from __future__ import annotations

import csv
import datetime as _dt
import hashlib
import json
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ..engine import csvsafe
from ..engine.progress import CancelToken, Job, Progress, check_cancel
from ..errors import InputError
from ..io import wbc_dataset as D
from ..zoo.loaded import LoadedModel, load_model

WBC_NAMES = {"WBC", "WHITE", "WHITE BLOOD CELL", "WHITE_BLOOD_CELL", "LEUKOCYTE", "LEUCOCYTE"}
RBC_NAMES = {"RBC", "RED", "RED BLOOD CELL", "RED_BLOOD_CELL", "ERYTHROCYTE"}
PLATELET_NAMES = {"PLATELETS", "PLATELET", "PLT", "THROMBOCYTE"}
# extra review classes the classifier never predicts: a reviewer may still file a cell there
REVIEW_EXTRA = ["BASOPHIL", "OTHER"]
GALLERY_SIZE = 96  # px of one gallery tile
#: :func:`cell_size` of the training smears, for detectors whose checkpoints predate the
#: ``training.cell_size`` field: the built-in learnt BCCD (median 42.6 px, 5-95 %: 40-57, 25 smears)
KNOWN_CELL_SIZE = {"bccd-blood-cells-centernet": 42.6}
MAG_TOLERANCE = 1.25  # the detector trained with +-20 % zoom: smears within this factor are left as they are
#: How Analyse smear turns a detector's peaks into counted cells, for checkpoints that do not carry
#: their own (``training.smear_operating_point``).  The built-in's was chosen on its 62 held-out smears
#: by ``benchmarks/blood_operating_point.py`` (docs/blood.md): 180-degree-rotation TTA fused by weighted
#: box fusion, red cells and platelets at the score where the red-cell count error per smear is least,
#: white cells at a lower score so that none is missed (recall at its maximum, with a safety margin).
KNOWN_OPERATING_POINT = {"bccd-blood-cells-centernet": {
    "flips": ["none", "hv"], "fuse_iou": 0.55, "score_threshold": 0.34, "wbc_threshold": 0.15,
    "chosen_on": "the detector's 62 held-out BCCD smears (benchmarks/blood_operating_point.py)"}}
FLIPS = ("none", "h", "v", "hv")
N_CANDIDATES = 3  # white-cell candidates offered for review when no white cell passes its threshold
#: working bytes per pixel of a smear analysis (RGB copies, float64 resizing at another magnification)
SMEAR_WORK_BYTES = 48
CANDIDATE_FLOOR = 0.02  # detector score below which a peak is not worth a reviewer's look


def is_wbc(label: str) -> bool:
    return str(label).strip().upper() in WBC_NAMES or str(label).strip().upper() in D.WBC_CLASSES + D.OPTIONAL_CLASSES


def count_kind(label: str) -> str:
    """The count a detector class goes to: "RBC", "WBC", "Platelets" or the class itself."""
    u = str(label).strip().upper()
    if u in RBC_NAMES:
        return "RBC"
    if is_wbc(u):
        return "WBC"
    if u in PLATELET_NAMES:
        return "Platelets"
    return str(label)


def model_info(model: LoadedModel) -> dict[str, Any]:
    """Name, version and checksum of a loaded model, for reports (built-in card when there is one)."""
    from .. import zoo

    meta, path, spec = model.meta, model.path, model.source
    info: dict[str, Any] = {"task": meta.task, "arch": meta.arch, "trained_on": meta.trained_on,
                            "package_version": meta.version}
    p = Path(path)
    if not zoo.is_builtin(spec) and p.parent.resolve() == zoo.zoo_dir().resolve() and zoo.is_builtin(p.stem):
        spec = p.stem  # a built-in reached through its resolved path
    if zoo.is_builtin(spec):
        c = zoo.card(str(spec))
        info.update({"name": c["name"], "builtin": True, "sha256": c.get("sha256", "")[:12],
                     "date": c.get("date") or c.get("created", ""), "card_version": c.get("card_version")})
    else:
        h = hashlib.sha256()
        with open(path, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
        info.update({"name": Path(path).name, "builtin": False, "sha256": h.hexdigest()[:12], "path": str(path)})
    return info


class SmearModels:
    """A detector and a white-cell classifier, loaded once (folder mode reuses them per smear).

    Each may be a built-in name, a checkpoint path or a :class:`LoadedModel`; ``None``
    means the best built-in for the task.  The detector is loaded on first use, so
    smears whose boxes come from annotation files never need one.
    """

    def __init__(self, detector: Any = None, classifier: Any = None, device: str | None = None):
        from .. import zoo

        self.device = device
        self._det_spec = detector if detector not in (None, "") else zoo.default_model("detect")
        cls_spec = classifier if classifier not in (None, "") else zoo.default_model("wbc")
        if cls_spec is None:
            raise InputError("no white-cell classifier: name one (a 'wbc' model; see `cellclass models`)")
        self.classifier = load_model(cls_spec, task="wbc", device=device, in_channels=3)
        self.info: dict[str, Any] = {"classifier": model_info(self.classifier)}
        self._detector: LoadedModel | None = None

    @property
    def detector(self) -> LoadedModel:
        if self._detector is None:
            if self._det_spec is None:
                raise InputError("no blood-cell detector: name one (a 'detect' model; see `cellclass models`)")
            self._detector = load_model(self._det_spec, task="detect", device=self.device)
            self.info["detector"] = model_info(self._detector)
        return self._detector

    @property
    def class_names(self) -> list[str]:
        return list(self.classifier.classes)

    @property
    def reference_cell_size(self) -> float | None:
        """The detector's training cell size (:func:`cell_size`), None when unknown (no normalisation)."""
        meta = self.detector.meta
        size = (getattr(meta, "training", None) or {}).get("cell_size")
        if size:
            return float(size)
        spec = str(self.detector.source)  # a built-in's name, or its file in the zoo folder (what the widget passes)
        return KNOWN_CELL_SIZE.get(spec, KNOWN_CELL_SIZE.get(Path(spec).stem) if spec.endswith(".safetensors") else None)

    @property
    def operating_point(self) -> dict[str, Any]:
        """Flips, fusion IoU and the score thresholds Analyse smear uses (:func:`operating_point`)."""
        return operating_point(self.detector.meta, self.detector.source)

    @property
    def score_threshold(self) -> float:
        """The score threshold for red cells and platelets (and white cells without their own)."""
        return float(self.operating_point["score_threshold"])

    @property
    def wbc_threshold(self) -> float:
        """The white cells' own score threshold (lower: a missed white cell costs more than a false one)."""
        return float(self.operating_point["wbc_threshold"])


def operating_point(meta: Any, spec: Any = "") -> dict[str, Any]:
    """A detector's smear operating point: flips, fusion IoU, score thresholds (other cells, white cells).

    The checkpoint's own (``training.smear_operating_point``), else the built-in's known one
    (:data:`KNOWN_OPERATING_POINT`, by name or by its file in the zoo folder), else the
    detector's single validated threshold for every class and one pass.
    """
    from .. import zoo
    from .detect import model_score_threshold

    thr = model_score_threshold(meta)
    op: dict[str, Any] = {"flips": ["none"], "fuse_iou": None, "score_threshold": thr, "wbc_threshold": thr,
                          "chosen_on": "the detector's validated score threshold"}
    own = (getattr(meta, "training", None) or {}).get("smear_operating_point")
    if not own:
        spec = str(spec or "")
        own = KNOWN_OPERATING_POINT.get(spec)
        p = Path(spec)
        if own is None and p.suffix == ".safetensors" and p.parent.resolve() == zoo.zoo_dir().resolve():
            own = KNOWN_OPERATING_POINT.get(p.stem)
    if own:
        op.update({k: v for k, v in own.items() if v is not None})
    op["flips"] = [f for f in op["flips"] if f in FLIPS] or ["none"]
    return op


def cell_size(rgb: np.ndarray) -> float:
    """Typical cell radius (px) of a smear by granulometry: the disk radius whose opening removes half the stain.

    Opening by a disk removes every object narrower than it, touching cells
    included, so unlike blob areas this is not fooled by the clumps of a dense
    smear.  It follows magnification linearly (one BCCD smear at 0.5x-3x: 25.7,
    36.2, 50.7, 72.4, 103, 145 px) and varies little between smears of one source.
    Computed on a copy of about 160 px, so it costs milliseconds.
    """
    from scipy import ndimage as ndi
    from skimage.filters import threshold_otsu

    g = np.asarray(rgb[..., 1] if rgb.ndim == 3 else rgb, dtype=np.float32)
    f = max(1, int(round(min(g.shape) / 160)))
    small = ndi.uniform_filter(g, f)[::f, ::f] if f > 1 else g
    if float(small.max() - small.min()) < 1e-6:
        return float("nan")
    fg = ndi.binary_fill_holes(small < threshold_otsu(small))  # stained cells are darker in green
    total = int(fg.sum())
    if total == 0:
        return float("nan")
    kept = [1.0]
    for r in range(1, max(2, min(small.shape) // 2)):
        kept.append(float(_open_disk(fg, r).sum()) / total)
        if kept[-1] < 0.5:
            break
    if kept[-1] >= 0.5:
        return float("nan")
    r = len(kept) - 1  # first radius that removed half: interpolate between r-1 and r
    frac = (kept[r - 1] - 0.5) / max(kept[r - 1] - kept[r], 1e-9)
    return float((r - 1 + frac) * f)


def _open_disk(fg: np.ndarray, r: int) -> np.ndarray:
    """``ndi.binary_opening(fg, structure=skimage.morphology.disk(r))`` by two distance transforms.

    The same pixels, but O(pixels) per radius instead of O(pixels x r**2): on a noise
    image no radius removes half the "stain", and the disk loop ran ~2 minutes.
    """
    from scipy import ndimage as ndi

    pad = np.pad(fg, 1)  # outside the image is background, as binary_opening's border_value=0
    eroded = ndi.distance_transform_edt(pad) > r
    if not eroded.any():
        return np.zeros_like(fg)
    return (ndi.distance_transform_edt(~eroded) <= r)[1:-1, 1:-1]


def magnification(rgb: np.ndarray, reference: float | None) -> float:
    """How many times larger this smear's cells are than the detector's training cells (1.0 within tolerance)."""
    if not reference:
        return 1.0
    size = cell_size(rgb)
    if not np.isfinite(size) or size <= 0:
        return 1.0
    ratio = size / float(reference)
    return 1.0 if 1 / MAG_TOLERANCE <= ratio <= MAG_TOLERANCE else ratio


#: folder-wide COCO files looked for beside smears (Roboflow's export name, the plain one)
FOLDER_COCO_NAMES = ("_annotations.coco.json", "annotations.json")
_COCO_CACHE: dict[tuple[str, int, int], list[Any]] = {}


def _per_image_sidecars(path: Path) -> list[Path]:
    folders = [path.parent, path.parent.parent / "Annotations", path.parent.parent / "annotations"]
    return [f / f"{path.stem}{suffix}" for f in folders for suffix in (".xml", ".json")]


def _coco_items(json_path: Path, image_root: Path) -> list[Any] | None:
    """The images of a COCO file (read once per version of the file), or None when it is other JSON."""
    from ..io.annotations import read_coco

    st = json_path.stat()
    key = (str(json_path.resolve()), st.st_mtime_ns, st.st_size)
    if key not in _COCO_CACHE:
        try:
            items = read_coco(json_path, image_root=image_root)
        except InputError as exc:
            if exc.problem.startswith("not a COCO file"):
                return None  # a JSON of another kind (metadata): not an annotation
            raise
        if len(_COCO_CACHE) > 64:
            _COCO_CACHE.clear()
        _COCO_CACHE[key] = items
    return _COCO_CACHE[key]


def _coco_entry(items: list[Any], path: Path, alone_ok: bool) -> Any:
    for item in items:
        if item.image_path is not None and Path(item.image_path).name == path.name:
            return item
    return items[0] if alone_ok and len(items) == 1 else None


def find_smear_sidecar(path: Path) -> Path | None:
    """The annotation file of a smear, or None: ``<stem>.xml`` (Pascal VOC) or ``<stem>.json``
    (COCO) beside it or in ``../Annotations``/``../annotations``, else a folder-wide COCO file
    beside it (``_annotations.coco.json``, ``annotations.json``) that lists the image."""
    path = Path(path)
    for cand in _per_image_sidecars(path):
        if cand.is_file():
            return cand
    for name in FOLDER_COCO_NAMES:
        cand = path.parent / name
        if cand.is_file():
            try:
                items = _coco_items(cand, path.parent)
            except InputError:
                return cand  # damaged: the smear is refused naming it (sidecar_annotation)
            if items is not None and _coco_entry(items, path, alone_ok=False) is not None:
                return cand
    return None


def sidecar_annotation(path: Path):
    """The VOC/COCO annotation of a smear (see :func:`find_smear_sidecar`), or None.

    A sidecar replaces detection, so one that would silently count nothing is refused
    (InputError naming the file): labels other than red cells, white cells (or a white-cell
    type) and platelets, or no object at all.
    """
    from ..io.annotations import read_voc

    path = Path(path)
    sidecar = find_smear_sidecar(path)
    if sidecar is None:
        return None
    if sidecar.suffix.lower() == ".xml":
        ann = read_voc(sidecar)
    else:
        items = _coco_items(sidecar, path.parent)
        ann = None if items is None else _coco_entry(items, path, alone_ok=sidecar.name not in FOLDER_COCO_NAMES)
        if ann is None:
            if items is None:
                return None
            raise InputError(f"its COCO file {sidecar.name} has no entry for {path.name}", sidecar)
    unknown = sorted({str(lab) for lab in ann.labels if count_kind(lab) not in ("RBC", "WBC", "Platelets")})
    if unknown:
        shown = ", ".join(repr(u) for u in unknown[:8]) + (f" and {len(unknown) - 8} more" if len(unknown) > 8 else "")
        raise InputError(f"its annotation file {sidecar.name} has labels other than RBC, WBC (or a white-cell "
                         f"type) and Platelets: {shown}; rename them, or pass --set boxes=detector to detect "
                         "the cells instead", sidecar)
    if len(ann) == 0:
        raise InputError(f"its annotation file {sidecar.name} lists no cells"
                         + (f" ({ann.notes[0]})" if ann.notes else "")
                         + "; fix it, or pass --set boxes=detector to detect the cells instead", sidecar)
    return ann


def _flip(a: np.ndarray, flip: str) -> np.ndarray:
    if "h" in flip:
        a = a[:, ::-1]
    if "v" in flip:
        a = a[::-1]
    return np.ascontiguousarray(a)


def _unflip_boxes(boxes: np.ndarray, flip: str, shape: Sequence[int]) -> np.ndarray:
    """Boxes (y0, x0, y1, x1) found on a flipped image, back in the image's own pixels."""
    b = np.asarray(boxes, dtype=np.float64).reshape(-1, 4).copy()
    h, w = shape[:2]
    if "h" in flip:
        b[:, [1, 3]] = w - b[:, [3, 1]]
    if "v" in flip:
        b[:, [0, 2]] = h - b[:, [2, 0]]
    return b


def _iou_one(b: np.ndarray, others: np.ndarray) -> np.ndarray:
    y0 = np.maximum(b[0], others[:, 0]); x0 = np.maximum(b[1], others[:, 1])  # noqa: E702
    y1 = np.minimum(b[2], others[:, 2]); x1 = np.minimum(b[3], others[:, 3])  # noqa: E702
    inter = np.clip(y1 - y0, 0, None) * np.clip(x1 - x0, 0, None)
    union = (b[2] - b[0]) * (b[3] - b[1]) + (others[:, 2] - others[:, 0]) * (others[:, 3] - others[:, 1]) - inter
    return inter / np.maximum(union, 1e-9)


def fuse_passes(passes: Sequence[tuple[np.ndarray, Sequence[str], np.ndarray]], iou: float = 0.55
                ) -> tuple[np.ndarray, list[str], np.ndarray]:
    """Weighted box fusion of several TTA passes (boxes y0, x0, y1, x1; labels; scores), per class.

    Boxes of one class overlapping a fused box by more than ``iou`` join it; the fused box is their
    score-weighted mean and its score the sum of its best ``len(passes)`` scores over the number of
    passes, so a cell seen in every pass keeps its score and one seen in one pass only loses some.
    Unlike NMS this never drops a cell because a neighbour overlaps it in one pass only.
    """
    n = max(1, len(passes))
    boxes = np.concatenate([np.asarray(p[0], dtype=np.float64).reshape(-1, 4) for p in passes]) if passes else \
        np.zeros((0, 4))
    labels = np.array([str(v) for p in passes for v in p[1]], dtype=object)
    scores = np.concatenate([np.asarray(p[2], dtype=np.float64).reshape(-1) for p in passes]) if passes else \
        np.zeros(0)
    out_b, out_l, out_s = [], [], []
    for lab in dict.fromkeys(labels.tolist()):
        m = np.nonzero(labels == lab)[0]
        m = m[np.argsort(-scores[m], kind="stable")]
        fused = np.zeros((0, 4))
        members: list[list[int]] = []
        for j in m:
            if len(fused):
                ov = _iou_one(boxes[j], fused)
                c = int(ov.argmax())
                if ov[c] > iou:
                    members[c].append(j)
                    w = scores[members[c]]
                    fused[c] = (boxes[members[c]] * w[:, None]).sum(0) / max(w.sum(), 1e-12)
                    continue
            members.append([j])
            fused = np.vstack([fused, boxes[j][None]])
        out_b.append(fused)
        out_l += [lab] * len(members)
        out_s += [float(np.sort(scores[c])[::-1][:n].sum() / n) for c in members]
    if not out_b:
        return np.zeros((0, 4)), [], np.zeros(0)
    b, s = np.concatenate(out_b), np.asarray(out_s)
    order = np.argsort(-s, kind="stable")
    return b[order], [out_l[i] for i in order], s[order]


def detect_cells(image: np.ndarray, models: SmearModels, *, score_threshold: float, wbc_threshold: float,
                 nms_iou: float = 0.5, flips: Sequence[str] = ("none",), fuse_iou: float | None = None,
                 device: str | None = None, cancel: CancelToken | None = None) -> Job[dict[str, Any]]:
    """The detector's cells at the smear operating point: kept cells and white-cell candidates.

    Each flip of ``flips`` is one detector pass; several are fused (:func:`fuse_passes`).
    White cells are kept at ``wbc_threshold``, every other class at ``score_threshold``.
    The white-cell peaks below their threshold (down to :data:`CANDIDATE_FLOOR`), best first,
    come back as ``candidates``: when no white cell passes, they are the ones to review.
    """
    from . import detect as det_task

    flips = [f for f in flips if f in FLIPS] or ["none"]
    floor = min(float(score_threshold), float(wbc_threshold), CANDIDATE_FLOOR)
    passes, device_text = [], ""
    for flip in flips:
        r = yield from det_task.detect(_flip(image, flip), models.detector, device=device, score_threshold=floor,
                                       nms_iou=1.0 if len(flips) > 1 else nms_iou, cancel=cancel)
        passes.append((_unflip_boxes(r["boxes"], flip, image.shape), list(r["labels"]), np.asarray(r["scores"])))
        device_text = r["device"]
    if len(passes) > 1:
        boxes, labels, scores = fuse_passes(passes, float(fuse_iou or nms_iou))
    else:
        boxes, labels, scores = passes[0]
    white = np.array([is_wbc(lab) for lab in labels], dtype=bool)
    scores = np.asarray(scores, dtype=np.float64)
    keep = np.where(white, scores >= wbc_threshold, scores >= score_threshold)
    cand = np.nonzero(white & ~keep & (scores >= CANDIDATE_FLOOR))[0]
    cand = cand[np.argsort(-scores[cand], kind="stable")]
    k = np.nonzero(keep)[0]
    return {"boxes": np.asarray(boxes, dtype=np.float64).reshape(-1, 4)[k], "labels": [labels[i] for i in k],
            "scores": scores[k], "device": device_text,
            "candidates": {"boxes": np.asarray(boxes, dtype=np.float64).reshape(-1, 4)[cand],
                           "scores": scores[cand]}}


def analyse_smear(image: Any, detector: str | Path | None = None, classifier: str | Path | None = None, *,
                  device: str | None = None, score_threshold: float | None = None, nms_iou: float = 0.5,
                  cancel: CancelToken | None = None, models: SmearModels | None = None,
                  annotation: Any = None, normalise_magnification: bool = True,
                  wbc_threshold: float | None = None, tta: bool | None = None) -> Job[dict[str, Any]]:
    """Detect, classify the white cells, count.  Models default to the built-ins.

    A smear imaged at another magnification than the detector's training smears
    (:func:`magnification` outside +-25 %) is resized so its cells have the training
    size, both models run on that copy, and boxes come back in the image's own
    pixels (``magnification`` in the result says by how much; 1.0 = untouched).

    Scores: ``score_threshold`` keeps red cells and platelets, ``wbc_threshold`` white
    cells; None takes the detector's operating point (:attr:`SmearModels.operating_point`),
    where white cells have a lower threshold so that none is missed.  A ``score_threshold``
    given without ``wbc_threshold`` applies to every class.  ``tta`` None uses
    the operating point's flips, False one pass.  A smear where no white cell passes
    says so and offers the best white-cell ``candidates`` below the threshold for review.

    Returns per object ``boxes`` (y0, x0, y1, x1), ``labels`` (detector class),
    ``scores``, ``wbc_class``/``wbc_score`` (white cells only; "" / NaN otherwise),
    plus ``wbc_index``, ``probabilities`` (white cells x classes), ``class_names``,
    ``counts`` ({"RBC", "WBC", "Platelets"}), ``differential``, ``message``,
    ``candidates`` (boxes, scores, wbc_class, wbc_score; not counted),
    ``models`` (names, versions, checksums), ``seconds`` and ``device``.
    ``annotation`` (an :class:`~napari_cellclass.io.annotations.AnnotatedImage`)
    replaces detection by its boxes (score 1): counting and classifying annotated smears.
    """
    from . import wbc as wbc_task

    t0 = time.monotonic()
    raw = image if isinstance(image, np.ndarray) else np.asarray(getattr(image, "data", image))
    rgb = D.require_stained_rgb(raw, "Analyse smear")
    work, mag = rgb, 1.0  # the image the models see, and how much larger than that the user's image is
    if models is None:
        yield Progress(0, None, "load", "loading the detector and the white-cell classifier")
        models = SmearModels(detector, classifier, device)
    check_cancel(cancel)
    flips: list[str] = ["none"]
    no_candidates = {"boxes": np.zeros((0, 4)), "scores": np.zeros(0)}
    if annotation is not None:
        thr = wthr = 1.0
        det = {"labels": list(annotation.labels), "boxes": np.asarray(annotation.boxes).reshape(-1, 4)[:, [1, 0, 3, 2]],
               "scores": np.ones(len(annotation.labels)), "device": models.classifier.policy.describe(),
               "candidates": no_candidates}
        models.info.setdefault("detector", {"name": "annotation file", "arch": "", "sha256": "", "trained_on": "",
                                            "package_version": ""})
    else:
        op = models.operating_point
        thr = float(op["score_threshold"]) if score_threshold is None else float(score_threshold)
        if wbc_threshold is not None:
            wthr = float(wbc_threshold)
        elif score_threshold is None:
            wthr = float(op["wbc_threshold"])
        else:  # one threshold given (API, CLI --set score_threshold): it is for every class, as it always was
            wthr = thr
        flips = list(op["flips"]) if tta is not False else ["none"]
        mag = magnification(rgb, models.reference_cell_size) if normalise_magnification else 1.0
        if mag != 1.0:
            from skimage.transform import rescale

            from ..budget import check_whole_image

            # tiny "cells" (noise, a gray field) would blow the image up many times: bounded by the memory budget
            check_whole_image(rgb.shape[0] / mag, rgb.shape[1] / mag, None, SMEAR_WORK_BYTES,
                              f"resizing it {1 / mag:.1f}x (cells {mag:.2f}x the detector's training size)",
                              hint="is this a blood smear? if so, image it nearer the detector's magnification")
            yield Progress(0, None, "load", f"cells are {mag:.2f}x the detector's training size: resizing")
            work = np.clip(rescale(rgb, 1 / mag, order=1, channel_axis=-1, anti_aliasing=mag > 1,
                                   preserve_range=True), 0, 255).round().astype(np.uint8)
        det = yield from detect_cells(work, models, score_threshold=thr, wbc_threshold=wthr, nms_iou=nms_iou,
                                      flips=flips, fuse_iou=op.get("fuse_iou"), device=device, cancel=cancel)
    t1 = time.monotonic()
    labels = list(det["labels"])
    boxes = np.asarray(det["boxes"], dtype=np.float64).reshape(-1, 4)
    wbc_idx = [i for i, lab in enumerate(labels) if is_wbc(lab)]
    names = models.class_names
    probs = np.zeros((0, len(names)), np.float32)
    cand_boxes = np.asarray(det["candidates"]["boxes"], dtype=np.float64).reshape(-1, 4)[:N_CANDIDATES]
    cand_scores = np.asarray(det["candidates"]["scores"], dtype=np.float64)[:N_CANDIDATES]
    if wbc_idx:
        cand_boxes, cand_scores = cand_boxes[:0], cand_scores[:0]  # candidates only where no white cell passed
    to_classify = np.concatenate([boxes[wbc_idx], cand_boxes])
    cand_probs = np.zeros((0, len(names)), np.float32)
    if len(to_classify):
        what = f"{len(wbc_idx)} white cell(s)" if wbc_idx else f"{len(cand_boxes)} white-cell candidate(s)"
        yield Progress(0, None, "classify", f"classifying {what}")
        cls = yield from wbc_task.classify(work, models.classifier, cells=to_classify, device=device,
                                           cancel=cancel)
        allp = np.asarray(cls["probabilities"], dtype=np.float32).reshape(-1, len(names))
        probs, cand_probs = allp[:len(wbc_idx)], allp[len(wbc_idx):]
    if mag != 1.0:  # back to the user's pixels
        lim = [rgb.shape[0], rgb.shape[1], rgb.shape[0], rgb.shape[1]]
        boxes = np.clip(boxes * mag, 0, lim)
        cand_boxes = np.clip(cand_boxes * mag, 0, lim)
    t2 = time.monotonic()
    wbc_class = [""] * len(labels)
    wbc_score = np.full(len(labels), np.nan)
    for k, i in enumerate(wbc_idx):
        wbc_class[i] = names[int(probs[k].argmax())]
        wbc_score[i] = float(probs[k].max())
    kinds = [count_kind(lab) for lab in labels]
    counts = {"RBC": kinds.count("RBC"), "WBC": kinds.count("WBC"), "Platelets": kinds.count("Platelets")}
    for k in kinds:
        if k not in counts:
            counts[k] = kinds.count(k)
    diff = wbc_task.differential_count([wbc_class[i] for i in wbc_idx], names)
    found = ("annotated object(s)" if annotation is not None else
             f"object(s) above score {thr:.2f}" + (f" (white cells {wthr:.2f})" if wthr != thr else ""))
    message = (f"{len(labels)} {found}: {counts['RBC']} red cell(s), {counts['WBC']} white cell(s), "
               f"{counts['Platelets']} platelet(s)")
    if annotation is None and not wbc_idx:
        message += (f"; no white cell above score {wthr:.2f}: the {len(cand_scores)} best white-cell candidate(s) "
                    f"(score {', '.join(f'{v:.2f}' for v in cand_scores)}) are offered for review"
                    if len(cand_scores) else f"; no white cell found, not even a candidate above {CANDIDATE_FLOOR}")
    if len(flips) > 1:
        message += f" ({len(flips)}-pass flip TTA)"
    if mag != 1.0:
        message += f" (cells {mag:.2f}x the detector's training size: analysed resized to it)"
    candidates = {"boxes": cand_boxes, "scores": cand_scores,
                  "wbc_class": [names[int(p.argmax())] for p in cand_probs],
                  "wbc_score": np.array([float(p.max()) for p in cand_probs]), "probabilities": cand_probs}
    return {
        "boxes": boxes, "labels": labels, "scores": np.asarray(det["scores"], dtype=np.float64),
        "wbc_class": wbc_class, "wbc_score": wbc_score, "wbc_index": wbc_idx, "probabilities": probs,
        "class_names": names, "counts": counts, "differential": diff, "score_threshold": thr,
        "wbc_threshold": wthr, "tta_passes": len(flips), "candidates": candidates,
        "message": message, "models": dict(models.info), "device": det["device"],
        "boxes_from": "annotations" if annotation is not None else "detector", "magnification": round(mag, 3),
        "seconds": {"detect": round(t1 - t0, 3), "classify": round(t2 - t1, 3), "total": round(t2 - t0, 3)},
        "image_shape": list(rgb.shape),
    }


# ----------------------------------------------------------------------------- results as tables

def reviewer_name() -> str:
    """Who is reviewing, when the widget's reviewer field is empty: the operating-system user."""
    import getpass

    try:
        return getpass.getuser() or "unknown"
    except Exception:  # no user database (containers): say so rather than guess
        return "unknown"


def review_time() -> str:
    """Now, as an ISO 8601 time with the UTC offset (what the reports print)."""
    return _dt.datetime.now().astimezone().isoformat(timespec="seconds")


def _at(values: Sequence[str] | None, i: int) -> str:
    return "" if values is None or i >= len(values) or values[i] is None else str(values[i])


def cells_table(res: dict[str, Any], reviewed: Sequence[str] | None = None,
                reviewed_by: Sequence[str] | None = None, reviewed_at: Sequence[str] | None = None
                ) -> list[dict[str, Any]]:
    """One row per detected object (all classes), with the white-cell class and any review.

    ``wbc_class``/``wbc_score`` are always the model's; with a review, ``reviewed_class``
    is the reviewer's, ``corrected`` says whether it differs, and ``reviewed_by``/``reviewed_at``
    who changed it and when.  White-cell candidates offered for review (a smear where no white
    cell passed its threshold) follow as rows labelled ``WBC candidate``: not counted.
    """
    rows = []
    names = res["class_names"]
    prob_of = {i: p for i, p in zip(res["wbc_index"], res["probabilities"])}
    for i, (b, lab, s) in enumerate(zip(res["boxes"], res["labels"], res["scores"])):
        row = {"object": i, "label": lab, "score": round(float(s), 4),
               "y0": round(float(b[0]), 1), "x0": round(float(b[1]), 1),
               "y1": round(float(b[2]), 1), "x1": round(float(b[3]), 1),
               "wbc_class": res["wbc_class"][i],
               "wbc_score": "" if not np.isfinite(res["wbc_score"][i]) else round(float(res["wbc_score"][i]), 4)}
        if reviewed is not None:
            row["reviewed_class"] = reviewed[i]
            corrected = bool(reviewed[i]) and reviewed[i] != res["wbc_class"][i]
            row["corrected"] = corrected
            row["reviewed_by"] = _at(reviewed_by, i) if corrected else ""
            row["reviewed_at"] = _at(reviewed_at, i) if corrected else ""
        for n, j in zip(names, range(len(names))):
            row[f"p_{n}"] = round(float(prob_of[i][j]), 4) if i in prob_of else ""
        rows.append(row)
    cand = res.get("candidates") or {}
    for k, (b, s) in enumerate(zip(np.asarray(cand.get("boxes", np.zeros((0, 4)))).reshape(-1, 4),
                                   cand.get("scores", []))):
        p = np.asarray(cand["probabilities"])[k] if len(cand.get("probabilities", [])) > k else None
        row = {"object": len(res["labels"]) + k, "label": "WBC candidate", "score": round(float(s), 4),
               "y0": round(float(b[0]), 1), "x0": round(float(b[1]), 1),
               "y1": round(float(b[2]), 1), "x1": round(float(b[3]), 1),
               "wbc_class": cand["wbc_class"][k] if p is not None else "",
               "wbc_score": round(float(p.max()), 4) if p is not None else ""}
        if reviewed is not None:
            row.update({"reviewed_class": "", "corrected": False, "reviewed_by": "", "reviewed_at": ""})
        for j, n in enumerate(names):
            row[f"p_{n}"] = round(float(p[j]), 4) if p is not None else ""
        rows.append(row)
    return rows


def corrections(res: dict[str, Any], reviewed: Sequence[str] | None, reviewed_by: Sequence[str] | None = None,
                reviewed_at: Sequence[str] | None = None) -> list[dict[str, Any]]:
    """The white cells a reviewer moved: object, reviewer's class, model's class and score, who, when."""
    if reviewed is None:
        return []
    out = []
    for i in res["wbc_index"]:
        if reviewed[i] and reviewed[i] != res["wbc_class"][i]:
            s = res["wbc_score"][i]
            out.append({"object": i, "reviewed_class": reviewed[i], "model_class": res["wbc_class"][i],
                        "model_score": float(s) if np.isfinite(s) else float("nan"),
                        "by": _at(reviewed_by, i), "at": _at(reviewed_at, i)})
    return out


def differential_rows(res: dict[str, Any], reviewed: Sequence[str] | None = None) -> tuple[dict, list[dict]]:
    """(differential, rows of class/count/percent) from the model or the reviewed classes."""
    from .wbc import differential_count

    classes = [(reviewed[i] if reviewed is not None else res["wbc_class"][i]) for i in res["wbc_index"]]
    names = list(res["class_names"]) + [c for c in REVIEW_EXTRA if c in classes and c not in res["class_names"]]
    diff = differential_count(classes, names)
    return diff, diff["rows"]


def write_differential_csv(path: Path, res: dict[str, Any], reviewed: Sequence[str] | None = None,
                           reviewed_by: Sequence[str] | None = None, reviewed_at: Sequence[str] | None = None) -> Path:
    """class,count,percent for the white cells, then the red-cell and platelet counts.

    After a review, one ``REVIEWED`` row per corrected cell follows: the count column holds
    the object number, the third says ``<reviewer's class> was <model's class> (model score
    s) by <who> at <when>``, so the differential never hides what a person changed.
    """
    from ..engine.atomic import atomic_path

    diff, rows = differential_rows(res, reviewed)
    changed = corrections(res, reviewed, reviewed_by, reviewed_at)
    with atomic_path(path) as tmp:
        with open(tmp, "w", newline="") as fh:
            w = csvsafe.writer(fh)
            w.writerow(["class", "count", "percent"])
            for r in rows:
                w.writerow([r["class"], r["count"], f"{r['percent']:.1f}"])
            w.writerow(["TOTAL_WBC", diff["total"], "100.0" if diff["total"] else "0.0"])
            w.writerow(["RBC", res["counts"].get("RBC", 0), ""])
            w.writerow(["Platelets", res["counts"].get("Platelets", 0), ""])
            for c in changed:
                w.writerow(["REVIEWED", c["object"], f"{c['reviewed_class']} was {c['model_class']} (model score "
                            f"{c['model_score']:.2f}) by {c['by'] or 'unknown'} at {c['at'] or 'unknown'}"])
    return Path(path)


def write_cells_csv(path: Path, res: dict[str, Any], reviewed: Sequence[str] | None = None,
                    reviewed_by: Sequence[str] | None = None, reviewed_at: Sequence[str] | None = None) -> Path:
    """Every object (:func:`cells_table`) as CSV: the model's class and score, and any review."""
    from ..engine.atomic import atomic_path

    rows = cells_table(res, reviewed, reviewed_by, reviewed_at)
    fields = list(rows[0]) if rows else ["object", "label", "score", "y0", "x0", "y1", "x1", "wbc_class",
                                         "wbc_score"] + [f"p_{n}" for n in res["class_names"]]
    with atomic_path(path) as tmp:
        with open(tmp, "w", newline="") as fh:
            w = csvsafe.DictWriter(fh, fieldnames=fields)
            w.writeheader()
            w.writerows(rows)
    return Path(path)


# ----------------------------------------------------------------------------- gallery crops

def gallery_crop(image: np.ndarray, box_yx: Sequence[float], size: int = GALLERY_SIZE, window: float | None = None
                 ) -> np.ndarray:
    """A square view of one cell for the gallery: a fixed window (so sizes compare) or the box with context."""
    if window is None:
        y0, x0, y1, x1 = (float(v) for v in box_yx)
        window = max(y1 - y0, x1 - x0) * 1.2
    return D.crop_fixed(image, D.box_centre(box_yx), window, size)


def export_class_folders(out: str | Path, image: np.ndarray, boxes: np.ndarray, classes: Sequence[str],
                         stem: str = "cell", window: float = D.FIXED_WINDOW * D.MARGIN) -> dict[str, int]:
    """Write each white cell as ``out/<CLASS>/<stem>_<k>.png`` at the image's own pixel scale.

    The crops are ``window`` source pixels wide (wide enough for rotation augmentation),
    so ``cellclass train wbc OUT --set crop=fixed`` fine-tunes on them at the scale the
    built-in classifier sees.  Existing files are never overwritten: a new name is picked.
    """
    from PIL import Image

    out = Path(out)
    rgb = D.as_rgb(image)
    counts: dict[str, int] = {}
    s = int(round(window))
    for k, (b, c) in enumerate(zip(boxes, classes)):
        if not c:
            continue
        folder = out / str(c).upper()
        folder.mkdir(parents=True, exist_ok=True)
        crop = D.crop_fixed(rgb, D.box_centre(b), window, s)
        path = folder / f"{stem}_{k}.png"
        n = 1
        while path.exists():
            path = folder / f"{stem}_{k}_{n}.png"
            n += 1
        Image.fromarray(crop).save(path)
        counts[str(c).upper()] = counts.get(str(c).upper(), 0) + 1
    return counts


# ----------------------------------------------------------------------------- PDF report

CLASS_COLOURS = {"NEUTROPHIL": "#1f77b4", "EOSINOPHIL": "#ff7f0e", "LYMPHOCYTE": "#2ca02c", "MONOCYTE": "#9467bd",
                 "BASOPHIL": "#8c564b", "OTHER": "#7f7f7f", "RBC": "#d62728", "Platelets": "#e377c2",
                 "WBC": "#17becf"}


def write_report_pdf(path: str | Path, image: np.ndarray, res: dict[str, Any], *, title: str = "",
                     reviewed: Sequence[str] | None = None, source: str = "",
                     reviewed_by: Sequence[str] | None = None, reviewed_at: Sequence[str] | None = None) -> Path:
    """A per-smear PDF: the smear with boxes, counts, differential (table and bars), the
    white-cell gallery by class, model names/versions/checksums, date.  Written atomically.

    After a review the reviewer's class is the one counted and shown, each corrected cell
    also says what the model had called it ("was MONOCYTE", with the model's score), and
    the review section lists who changed which cell and when.
    """
    import textwrap

    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.backends.backend_pdf import PdfPages
    from matplotlib.figure import Figure
    from matplotlib.patches import Rectangle

    from ..engine.atomic import atomic_path

    rgb = D.as_rgb(image)
    diff, rows = differential_rows(res, reviewed)
    classes = [(reviewed[i] if reviewed is not None else res["wbc_class"][i]) for i in range(len(res["labels"]))]
    changed = corrections(res, reviewed, reviewed_by, reviewed_at)
    n_corrected = len(changed)
    model_class = {c["object"]: c["model_class"] for c in changed}
    date = _dt.datetime.now().strftime("%Y-%m-%d %H:%M")
    path = Path(path)
    with atomic_path(path) as tmp:
        with PdfPages(tmp) as pdf:
            fig = Figure(figsize=(8.27, 11.69))  # A4 portrait
            fig.text(0.06, 0.965, f"Blood smear report: {title or source or 'smear'}", fontsize=14, weight="bold")
            fig.text(0.06, 0.945, f"{date}  ·  napari-cellclass  ·  research use only, not a diagnosis",
                     fontsize=8, color="#555555")
            ax = fig.add_axes([0.06, 0.55, 0.88, 0.38])
            ax.imshow(rgb)
            for i, (b, lab) in enumerate(zip(res["boxes"], res["labels"])):
                kind = count_kind(lab)
                col = CLASS_COLOURS.get(classes[i] if kind == "WBC" else kind, "#ffff00")
                ax.add_patch(Rectangle((b[1], b[0]), b[3] - b[1], b[2] - b[0], fill=False, lw=1.6 if kind == "WBC"
                                       else 0.6, ec=col))
                if kind == "WBC":
                    text = classes[i][:4] + (f"* (was {model_class[i][:4]})" if i in model_class else "")
                    ax.text(b[1] + 2, b[0] + 12, text, color="white", fontsize=6,
                            bbox={"facecolor": col, "alpha": 0.8, "pad": 1, "lw": 0})
            cand = res.get("candidates") or {}
            for b, sc in zip(np.asarray(cand.get("boxes", np.zeros((0, 4)))).reshape(-1, 4), cand.get("scores", [])):
                ax.add_patch(Rectangle((b[1], b[0]), b[3] - b[1], b[2] - b[0], fill=False, lw=1.4, ls="--",
                                       ec="#ff9900"))
                ax.text(b[1] + 2, b[2] - 4, f"candidate {sc:.2f}", color="black", fontsize=6,
                        bbox={"facecolor": "#ff9900", "alpha": 0.8, "pad": 1, "lw": 0})
            ax.set_axis_off()
            c = res["counts"]
            lines = [f"Red cells: {c.get('RBC', 0)}    White cells: {c.get('WBC', 0)}    "
                     f"Platelets: {c.get('Platelets', 0)}    (detector score >= {res['score_threshold']:.2f}"
                     + (f", white cells >= {res['wbc_threshold']:.2f})" if res.get("wbc_threshold", res[
                         "score_threshold"]) != res["score_threshold"] else ")")]
            n_cand = len(cand.get("scores", []))
            if not res["wbc_index"] and res.get("boxes_from", "detector") == "detector":
                lines.append(f"No white cell found above the threshold: {n_cand} candidate(s) drawn dashed, to review"
                             if n_cand else "No white cell found, and no candidate to review")
            if n_corrected or reviewed is not None:
                who = sorted({c["by"] for c in changed if c["by"]})
                lines.append(f"Reviewed: {n_corrected} white cell(s) reclassified"
                             + (f" by {', '.join(who)}" if who else "") + " (counts are the reviewer's; page 2 lists"
                             " each change)" * bool(n_corrected))
            fig.text(0.06, 0.52, "\n".join(lines), fontsize=9, va="top")
            tab = fig.add_axes([0.06, 0.30, 0.40, 0.18])
            tab.set_axis_off()
            cell_text = [[r["class"], str(r["count"]), f"{r['percent']:.1f}"] for r in rows]
            cell_text.append(["total", str(diff["total"]), "100.0" if diff["total"] else "0.0"])
            t = tab.table(cellText=cell_text, colLabels=["white-cell class", "count", "%"], loc="upper left")
            t.auto_set_font_size(False)
            t.set_fontsize(8)
            bars = fig.add_axes([0.56, 0.32, 0.38, 0.15])
            bars.bar(range(len(rows)), [r["percent"] for r in rows],
                     color=[CLASS_COLOURS.get(r["class"], "#999999") for r in rows])
            bars.set_xticks(range(len(rows)))
            bars.set_xticklabels([r["class"][:4] for r in rows], fontsize=7)
            bars.set_ylabel("% of white cells", fontsize=7)
            bars.tick_params(labelsize=7)
            bars.set_ylim(0, 100)
            m = res["models"]
            info = []
            width = 118  # monospace characters that fit the page at 6.5 pt: lines break between words
            for role in ("detector", "classifier"):
                d = m.get(role, {})
                info += textwrap.wrap(f"{role}: {d.get('name', '?')} ({d.get('arch', '')}; sha256 "
                                      f"{d.get('sha256', '')}; package {d.get('package_version', '')})", width,
                                      subsequent_indent="    ", break_on_hyphens=False)
                if d.get("trained_on"):
                    info += textwrap.wrap(f"trained on {d['trained_on']}", width, initial_indent="    ",
                                          subsequent_indent="    ", max_lines=3, placeholder=" ...",
                                          break_on_hyphens=False)
            info.append(f"device: {res.get('device', '')};  time: {res['seconds']['total']:.2f} s")
            if source:
                info += textwrap.wrap(f"image: {source}", width, subsequent_indent="    ", break_long_words=True)
            fig.text(0.06, 0.27, "\n".join(info), fontsize=6.5, va="top", family="monospace")
            pdf.savefig(fig)
            _gallery_page(pdf, rgb, res, classes, Figure, changed)
    return path


def _gallery_page(pdf: Any, rgb: np.ndarray, res: dict[str, Any], classes: list[str], Figure: Any,
                  changed: Sequence[dict[str, Any]] = ()) -> None:
    """White cells by class, least confident first (the ones to check first); the review's changes on top."""
    idx = list(res["wbc_index"])
    aspect = 8.27 / 11.69  # A4 portrait: a square tile w wide is w * aspect tall (figure fractions)

    def new_page(title: str) -> Any:
        f = Figure(figsize=(8.27, 11.69))
        f.text(0.06, 0.965, title, fontsize=13, weight="bold")
        return f

    fig = new_page("White cells by class (least confident first)")
    was = {c["object"]: c for c in changed}
    y = 0.93
    if changed:
        fig.text(0.06, y, f"Review: {len(changed)} change(s); the reviewer's class is counted", fontsize=10,
                 weight="bold")
        y -= 0.02
        for c in changed[:12]:
            fig.text(0.08, y, f"#{c['object']}  {c['reviewed_class']}, was {c['model_class']} (model score "
                              f"{c['model_score']:.2f})  by {c['by'] or 'unknown'}  at {c['at'] or 'unknown'}",
                     fontsize=7.5, family="monospace")
            y -= 0.015
        if len(changed) > 12:
            fig.text(0.08, y, f"... and {len(changed) - 12} more (see the cells CSV)", fontsize=7.5)
            y -= 0.015
        y -= 0.01
    if not idx:
        fig.text(0.06, 0.9, "No white cells were detected on this smear.", fontsize=10)
        pdf.savefig(fig)
        return
    groups: dict[str, list[int]] = {}
    for i in idx:
        groups.setdefault(classes[i], []).append(i)
    per_row, tile = 6, 0.145
    row_h = tile * aspect + 0.025
    for cls in sorted(groups, key=lambda c: -len(groups[c])):
        members = sorted(groups[cls], key=lambda i: float(res["wbc_score"][i]) if np.isfinite(res["wbc_score"][i])
                         else 0.0)
        if y - 0.02 - row_h < 0.03:
            pdf.savefig(fig)
            fig, y = new_page("White cells by class (continued)"), 0.93
        fig.text(0.06, y, f"{cls} ({len(members)})", fontsize=10, weight="bold", color=CLASS_COLOURS.get(cls, "k"))
        y -= 0.015
        for k, i in enumerate(members):
            if k and k % per_row == 0:
                y -= row_h
            if y - row_h < 0.03:
                pdf.savefig(fig)
                fig, y = new_page("White cells by class (continued)"), 0.93
            ax = fig.add_axes([0.06 + (k % per_row) * tile, y - tile * aspect, tile * 0.92, tile * aspect * 0.92])
            ax.imshow(gallery_crop(rgb, res["boxes"][i], size=160))
            ax.set_axis_off()
            score = res["wbc_score"][i]
            model = f"model {score:.2f}" if np.isfinite(score) else ""
            if i in was:
                model = f"was {was[i]['model_class'][:4].title()}, {model}"
            ax.set_title(f"#{i} {model}".strip(), fontsize=6, pad=2, color="#b00000" if i in was else "black")
        y -= row_h + 0.01
    pdf.savefig(fig)


# ----------------------------------------------------------------------------- folder mode

def image_files(inputs: Sequence[str | Path]) -> list[Path]:
    """The image files of the given files and folders (recursively; macOS '._' shadows skipped), sorted."""
    files: list[Path] = []
    for p in map(Path, inputs):
        if p.is_dir():
            files += sorted(f for f in p.rglob("*") if f.suffix.lower() in D.IMAGE_SUFFIXES and f.is_file()
                            and not f.name.startswith("._"))
        elif p.is_file():
            files.append(p)
        else:
            raise InputError("input does not exist", p)
    if not files:
        raise InputError(f"no images found in {', '.join(map(str, inputs))}")
    return files


def analyse_folder(inputs: Sequence[str | Path], out: str | Path, detector: str | Path | None = None,
                   classifier: str | Path | None = None, *, device: str | None = None,
                   score_threshold: float | None = None, report: bool = True, cancel: CancelToken | None = None,
                   boxes: str = "detector", wbc_threshold: float | None = None,
                   tta: bool | None = None) -> Job[dict[str, Any]]:
    """Analyse every smear of folders/files: per smear ``<stem>_differential.csv``,
    ``<stem>_cells.csv`` and ``<stem>_report.pdf``; across smears ``summary.csv`` and
    ``summary.json``.  A smear that cannot be read or is refused (gray, fluorescence)
    is listed in the summary with its reason and the others go on.  Cancel stops
    between smears; every file written is complete.

    ``boxes="detector"`` detects every smear; ``"auto"`` uses a smear's Pascal VOC or COCO
    annotation file when it has one (:func:`find_smear_sidecar`) and the detector
    otherwise; ``"sidecar"`` requires the annotation files.  A sidecar with labels other
    than RBC/WBC/Platelets, or with no object, refuses its smear naming the file.
    The summary's ``cells`` lists every classified white cell (for ``predictions.csv``).
    """
    if boxes not in ("detector", "auto", "sidecar"):
        raise InputError(f"boxes must be detector, auto or sidecar, got {boxes!r}")
    from ..engine.atomic import atomic_path

    files = image_files(inputs)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    yield Progress(0, len(files), "load", "loading the detector and the white-cell classifier")
    models = SmearModels(detector, classifier, device)
    names = models.class_names
    rows, problems, cells = [], [], []
    t0 = time.monotonic()
    used_stems: set[str] = set()
    for k, f in enumerate(files):
        check_cancel(cancel)
        stem = f.stem
        n = 1
        while stem in used_stems:  # same name in two folders: keep both
            stem = f"{f.stem}_{n}"
            n += 1
        used_stems.add(stem)
        try:
            from ..io.limits import check_work

            check_work(f, SMEAR_WORK_BYTES)  # over the memory budget: refused from its header, nothing decoded
            img = D.read_rgb(f)
            ann = sidecar_annotation(f) if boxes in ("auto", "sidecar") else None
            if ann is None and boxes == "sidecar":
                raise InputError("no annotation file (<stem>.xml or <stem>.json beside it or in ../Annotations, "
                                 "or a folder-wide _annotations.coco.json / annotations.json listing it)", f)
            res = yield from analyse_smear(img, device=device, score_threshold=score_threshold, cancel=cancel,
                                           models=models, annotation=ann, wbc_threshold=wbc_threshold, tta=tta)
        except InputError as exc:
            problems.append({"image": str(f), "problem": exc.problem})
            rows.append({"image": str(f), "status": f"refused: {exc.problem}"})
            yield Progress(k + 1, len(files), "analyse", f"{f.name}: refused")
            continue
        write_differential_csv(out / f"{stem}_differential.csv", res)
        write_cells_csv(out / f"{stem}_cells.csv", res)
        if report:
            write_report_pdf(out / f"{stem}_report.pdf", img, res, title=f.name, source=str(f))
        row: dict[str, Any] = {"image": str(f), "status": "ok", "RBC": res["counts"]["RBC"],
                               "WBC": res["counts"]["WBC"], "Platelets": res["counts"]["Platelets"]}
        for r in res["differential"]["rows"]:
            row[r["class"]] = r["count"]
            row[f"{r['class']}_percent"] = r["percent"]
        row["seconds"] = res["seconds"]["total"]
        row["boxes_from"] = res["boxes_from"]
        rows.append(row)
        for k_cell, i in enumerate(res["wbc_index"]):
            b = res["boxes"][i]
            cell = {"image": str(f), "cell": k_cell, "y0": b[0], "x0": b[1], "y1": b[2], "x1": b[3],
                    "class": res["wbc_class"][i], "score": round(float(res["wbc_score"][i]), 4)}
            cell.update({f"p_{n}": round(float(v), 4) for n, v in zip(names, res["probabilities"][k_cell])})
            cells.append(cell)
        yield Progress(k + 1, len(files), "analyse", f"{f.name}: {res['message']}")
    secs = time.monotonic() - t0
    fields = ["image", "status", "boxes_from", "RBC", "WBC", "Platelets"] + [
        c for n in names for c in (n, f"{n}_percent")] + ["seconds"]
    with atomic_path(out / "summary.csv") as tmp:
        with open(tmp, "w", newline="") as fh:
            w = csvsafe.DictWriter(fh, fieldnames=fields, restval="")
            w.writeheader()
            w.writerows(rows)
    ok = [r for r in rows if r.get("status") == "ok"]
    totals = {key: int(sum(r.get(key, 0) for r in ok)) for key in ["RBC", "WBC", "Platelets"] + names}
    summary = {"smears": len(files), "analysed": len(ok), "refused": problems, "totals": totals,
               "models": models.info, "seconds": round(secs, 1),
               "seconds_per_smear": round(secs / max(len(files), 1), 2), "out": str(out),
               "date": _dt.datetime.now().isoformat(timespec="seconds"),
               "outputs": {"summary_csv": str(out / "summary.csv"), "summary_json": str(out / "summary.json")}}
    with atomic_path(out / "summary.json") as tmp:
        tmp.write_text(json.dumps(summary, indent=2, default=str) + "\n")
    summary["class_names"] = names
    summary["cells"] = cells
    return summary

"""Karyotyping of metaphase spreads: segment -> classify (GRiCoL) -> pair -> karyogram.

``karyotype(image, model_path)`` is the job behind the widget and the API;
``predict`` serves ``cellclass karyotype SPREAD... --model M --out DIR``;
``evaluate`` scores segmentation (and classification when a model is given) on
VOC-annotated spreads such as the Tseng 2023 G-band set; ``demo`` runs the
whole chain on a synthetic spread.
"""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ..engine import csvsafe
from ..engine.progress import CancelToken, Job, Progress, check_cancel
from ..errors import InputError
from ..karyotype.assign import CLASS_NAMES
from ..karyotype.karyogram import save_png, write_csv
from ..karyotype.pipeline import finish_karyotype, spread_crops
from ..karyotype.segment import SegmentOptions, label_boxes, segment_spread, to_gray
from ..zoo.loaded import LoadedModel, load_model

TASK = "karyotype"
SEGMENTERS = ("auto", "threshold", "detector")
# built-in models chosen when the user names none: the classifier by the spread's banding
BUILTIN_CLASSIFIERS = {"G": "gricol-gband-2labs", "Q": "gricol-qband-bioimlab"}
BUILTIN_DETECTOR = "chromdet-tseng"


def banding(image: np.ndarray) -> str:
    """"G" for dark chromosomes on a light field (G-band, brightfield), "Q" for bright on dark."""
    return "G" if float(np.median(to_gray(image))) >= 0.5 else "Q"


def builtin_model(name: str, device: str | None = None) -> LoadedModel | None:
    """The built-in model ``name``, loaded (verified, cached), or None when this install does not have it."""
    from .. import zoo

    return load_model(name, device=device) if zoo.is_builtin(name) else None


def default_classifier(image: np.ndarray, device: str | None = None) -> LoadedModel:
    """The built-in chromosome classifier for this spread's banding."""
    band = banding(image)
    lm = builtin_model(BUILTIN_CLASSIFIERS[band], device)
    if lm is None:
        raise InputError(f"no chromosome classifier was given and the built-in {band}-band model "
                         f"{BUILTIN_CLASSIFIERS[band]!r} is not installed; pass --model (see 'cellclass models')")
    return lm


# ----------------------------------------------------------------------------- segmentation
def segment(image: np.ndarray, segmenter: str = "auto", detector_model: Any = None,
            device: str | None = None, cancel: CancelToken | None = None,
            options: SegmentOptions | None = None) -> Job[np.ndarray]:
    """Label image of the chromosomes, from a trained detector or the classical pipeline.

    ``"auto"`` uses ``detector_model`` or else the built-in chromosome detector, and the
    classical threshold segmenter only where neither exists.
    """
    labels, _ = yield from segment_with_boxes(image, segmenter, detector_model, device, cancel, options)
    return labels


def segment_with_boxes(image: np.ndarray, segmenter: str = "auto", detector_model: Any = None,
                       device: str | None = None, cancel: CancelToken | None = None,
                       options: SegmentOptions | None = None, detector_threshold: float | None = None
                       ) -> Job[tuple[np.ndarray, np.ndarray]]:
    """``(labels, boxes)``: boxes row k-1 for label k, the learned detector's own boxes where it ran."""
    labels, boxes, _, _ = yield from _segment(image, segmenter, detector_model, device, cancel, options,
                                              detector_threshold)
    return labels, boxes


def _segment(image, segmenter, detector_model, device, cancel, options, detector_threshold=None
             ) -> Job[tuple[np.ndarray, np.ndarray, bool, dict[str, Any] | None]]:
    """``(labels, boxes, detected, found)``; ``detected``: the boxes are the learned chromosome
    detector's own, and ``found`` then holds its scores and the loaded detector.  ``detector_threshold``
    overrides the detector's own score threshold (its checkpoint's)."""
    segmenter, det = resolve_segmenter(segmenter, detector_model, device)
    yield Progress(0, 1, "segment", f"segmenting ({segmenter})")
    boxes, found = None, None
    detected = segmenter == "detector" and _is_chromdet(det)
    if segmenter == "threshold":
        labels = segment_spread(image, options)
    elif detected:
        from ..karyotype.detector import detect_chromosomes

        found = yield from detect_chromosomes(image, det, device=device, cancel=cancel,
                                              score_threshold=detector_threshold)
        labels, boxes = found["labels"], found["boxes"]
        found = {"scores": found.get("scores"), "detector": det}
    else:
        labels = yield from _detector_labels(image, det, device, cancel)
    yield Progress(1, 1, "segment", f"{int(labels.max())} objects")
    return labels, (label_boxes(labels) if boxes is None else np.asarray(boxes, float).reshape(-1, 4)), detected, found


def _detector_threshold(opts) -> float | None:
    """``--set detector_threshold=S`` checked by its option's declared type and range (options given
    in Python skip the CLI's check), else None: the detector's own."""
    from .options import PREDICT, coerce, options_for

    return coerce(options_for(TASK, PREDICT)["detector_threshold"], opts.get("detector_threshold"))


def resolve_segmenter(segmenter: str, detector_model: Any, device: str | None = None
                      ) -> tuple[str, LoadedModel | None]:
    """``(segmenter, detector)`` that will actually run: the detector loaded (a built-in name, a path or a
    loaded model), ``auto`` becomes the given or built-in detector, else the threshold segmenter."""
    from ..karyotype.detector import detector_device

    segmenter, source = segmenter_choice(segmenter, detector_model)
    return segmenter, None if source is None else load_model(source, device=detector_device(device))


def segmenter_choice(segmenter: str, detector_model: Any) -> tuple[str, Any]:
    """``(segmenter, detector as given or the built-in's name)`` that will run, without loading anything."""
    from .. import zoo

    if segmenter not in SEGMENTERS:
        raise InputError(f"segmenter must be one of {SEGMENTERS}, got {segmenter!r}")
    if segmenter == "threshold":
        return segmenter, None
    det = None if detector_model is None or str(detector_model) == "" else detector_model
    if segmenter == "auto":
        det = det or (BUILTIN_DETECTOR if zoo.is_builtin(BUILTIN_DETECTOR) else None)
        segmenter = "detector" if det is not None else "threshold"
    return segmenter, det


def _is_chromdet(det: LoadedModel | None) -> bool:
    """True for the karyotype task's own chromosome detector (``cellclass train karyotype``)."""
    if det is None:
        return False
    if det.meta is None:
        return hasattr(det.net, "multiple")
    return det.meta.arch == "chromdet_unet"


def train(data: Path, opts) -> Job[dict[str, Any]]:
    """Train the chromosome detector on VOC-annotated spreads (``cellclass train karyotype SPREADS``)."""
    from ..karyotype.detector import train as train_detector

    return (yield from train_detector(Path(data), opts))


def _detector_labels(image, detector: LoadedModel | None, device, cancel) -> Job[np.ndarray]:
    if detector is None:
        raise InputError("the 'detector' segmenter needs a detector checkpoint (task 'detect')")
    try:
        from .detect import detect
    except ImportError as exc:
        raise InputError(f"the detector segmenter is not available in this version ({exc})") from None
    gray = to_gray(image)
    rgb = np.repeat((gray * 255).astype(np.uint8)[..., None], 3, axis=-1)
    res = yield from detect(rgb, detector, device=device, cancel=cancel)
    labels = res.get("instance_labels")  # Mask R-CNN: one mask per chromosome
    if labels is None:  # boxes only: fill each box with the thresholded stain inside it
        fg = segment_spread(image, SegmentOptions(split=False)) > 0
        labels = np.zeros(gray.shape, np.int32)
        order = np.argsort(-np.asarray(res.get("scores", np.ones(len(res["boxes"])))))
        boxes = np.asarray(res["boxes"]).reshape(-1, 4).round().astype(int)  # y0, x0, y1, x1
        for k, b in enumerate(order, start=1):
            y0, x0, y1, x1 = boxes[b]
            region = labels[y0:y1, x0:x1]
            region[(region == 0) & fg[y0:y1, x0:x1]] = k
    from skimage.segmentation import relabel_sequential

    return relabel_sequential(np.asarray(labels, np.int32))[0].astype(np.int32)


# ----------------------------------------------------------------------------- classification
def classify_labels(image: np.ndarray, labels: np.ndarray, model: Any, ids: list[int] | None = None,
                    device: str | None = None, cancel: CancelToken | None = None,
                    full_model: bool = False, boxes: np.ndarray | None = None) -> Job[np.ndarray]:
    """(len(ids), 24) probabilities for the given label ids (all labels when None).

    ``boxes`` (row k-1 for label k; the learned detector's boxes) adds a second view
    of each chromosome: the raw box crop, neighbours and all, which is what the
    classifiers were trained on (annotated boxes), and the probabilities of both
    views are averaged.  Mask crops alone trim pale tips and score 8 points lower
    after pairing on held-out Tseng spreads (0.651 against 0.731 averaged; box
    crops alone 0.702; the same order on training spreads).
    """
    from ..karyotype.karyogram import chromosome_crop
    from .chromosome import classify_crops
    from .chromosome import load as load_classifier

    model = load_classifier(model, device)  # once: both views run the same loaded model
    n = int(labels.max()) if labels.size else 0
    every = list(range(1, n + 1))
    ids = every if ids is None else list(ids)

    def items_of(which: list[int]) -> list[tuple[np.ndarray, np.ndarray]]:
        crops = spread_crops(image, labels, which)
        return [(c, chromosome_crop(np.zeros(labels.shape, np.float32), labels, i, pad=4)[1])
                for c, i in zip(crops, which)]

    # relative-scale classifiers measure lengths against the whole spread, also when only a few
    # chromosomes (the ones the user edited) are classified again
    probs = yield from classify_crops(items_of(ids), model, device=device, cancel=cancel, full_model=full_model,
                                      context=None if ids == every else items_of(every))
    probs = np.asarray(probs, np.float64).reshape(len(ids), len(CLASS_NAMES))
    if boxes is not None and len(boxes) == n:
        gray8 = np.clip(np.round(to_gray(image) * 255), 0, 255).astype(np.uint8)

        def box_crops(which: list[int]) -> list[np.ndarray]:
            H, W = gray8.shape
            out = []
            for i in which:
                y0, x0, y1, x1 = np.asarray(boxes[i - 1], float)
                y0, x0 = int(np.clip(np.floor(y0), 0, H - 2)), int(np.clip(np.floor(x0), 0, W - 2))
                y1, x1 = int(np.clip(np.ceil(y1), y0 + 2, H)), int(np.clip(np.ceil(x1), x0 + 2, W))
                out.append(gray8[y0:y1, x0:x1])
            return out

        by_box = yield from classify_crops(box_crops(ids), model, device=device, cancel=cancel,
                                           full_model=full_model, context=None if ids == every else box_crops(every))
        probs = (probs + np.asarray(by_box, np.float64).reshape(probs.shape)) / 2
    return probs


def karyotype(image: np.ndarray, model_path: Any = None, device: str | None = None,
              labels: np.ndarray | None = None, segmenter: str = "auto",
              detector_model: Any = None, cancel: CancelToken | None = None,
              known_probs: dict[int, np.ndarray] | None = None, fixed: dict[int, int] | None = None,
              pairing: bool = True, low_confidence: float = 0.5, full_model: bool = False,
              segment_options: SegmentOptions | None = None, reject: bool = True,
              detector_threshold: float | None = None, **kw: Any) -> Job[dict[str, Any]]:
    """Karyotype one spread.

    Parameters
    ----------
    image : 2D gray or RGB spread.
    model_path : chromosome classifier (task "chromosome"): a built-in name, a checkpoint, a
        :class:`~napari_cellclass.zoo.loaded.LoadedModel` or a network; None picks the built-in
        classifier for the spread's banding (G or Q).
    detector_model : the chromosome detector, given the same ways (None: the built-in one).
    segmenter : "auto" (the built-in or given detector, else the threshold segmenter),
        "detector" or "threshold".
    labels : user-edited labels to reuse instead of segmenting.
    known_probs : {label id: (24,) probabilities} from a previous run; only other labels are classified
        (the widget uses this after the user edits the segmentation).
    fixed : {label id: class index} the user set by hand.
    reject : remove what the detector found that the rejection step
        (:mod:`napari_cellclass.karyotype.reject`) is confident is not a chromosome (nuclei,
        debris, stain blobs); they are listed in ``rejected`` for review.  Only for the
        learned detector's own objects, never for labels the user gave.
    detector_threshold : the learned detector's score threshold; None: its own (chosen on its
        training spreads and stored in its checkpoint).  Lower finds more chromosomes and more
        debris.

    Returns a dict with ``labels``, ``probabilities`` (N, 24), ``classes``, ``class_names``,
    ``confidence``, ``flagged``, ``summary`` (ISCN string), ``abnormal``, ``table``, ``karyogram`` and
    ``boxes`` (row k-1 for label k).
    """
    if kw:
        raise InputError(f"unknown karyotype option(s): {', '.join(kw)}")
    t0 = time.monotonic()
    img = np.asarray(image)
    to_gray(img)  # validates the shape early, with a clear message
    if labels is None:
        from ..io.limits import check_informative

        check_informative(img, "the spread image", min_side=32)  # blank or 1x1: an error, not 46 "losses"
        labels, boxes, detected, found = yield from _segment(img, segmenter, detector_model, device, cancel,
                                                             segment_options, detector_threshold)
        if not np.asarray(labels).any():
            raise InputError("no chromosomes were found in this image; is it a metaphase spread?")
    else:
        boxes, detected, found = None, False, None
        labels = np.asarray(labels)
        if labels.shape != img.shape[:2]:
            raise InputError(f"labels shape {labels.shape} does not match the image {img.shape[:2]}")
        labels, known_probs, fixed = _relabel(labels.astype(np.int32), known_probs, fixed)
    check_cancel(cancel)
    if model_path is None:
        model_path = default_classifier(img, device)
    n = int(labels.max()) if labels.size else 0
    present = set(np.unique(labels[labels > 0]).tolist())
    known = {int(k): np.asarray(v, np.float64) for k, v in (known_probs or {}).items() if int(k) in present}
    todo = [i for i in range(1, n + 1) if i not in known and i in present]
    probs = np.full((n, len(CLASS_NAMES)), 1.0 / len(CLASS_NAMES))
    for k, v in known.items():
        probs[k - 1] = v
    if todo:
        yield Progress(0, len(todo), "classify", f"classifying {len(todo)} chromosomes")
        new = yield from classify_labels(img, labels, model_path, todo, device, cancel, full_model,
                                         boxes=boxes if detected else None)
        probs[np.asarray(todo) - 1] = new
    check_cancel(cancel)
    rejected: list[dict[str, Any]] = []
    if reject and detected and found is not None and not known and not fixed:
        from ..karyotype.reject import reject_objects, rejection_model

        rmodel = rejection_model(found["detector"])
        if rmodel is not None and n:
            labels, probs, boxes, rejected = reject_objects(img, labels, np.asarray(boxes, float), found["scores"],
                                                            probs, rmodel)
            n = int(labels.max()) if labels.size else 0
            if rejected:
                yield Progress(0, 1, "pair", f"{len(rejected)} objects set aside as not chromosomes")
    yield Progress(0, 1, "pair", "pairing and building the karyogram")
    rows_fixed = {int(k) - 1: int(v) for k, v in (fixed or {}).items() if 1 <= int(k) <= n}
    result = finish_karyotype(img, labels, probs, fixed=rows_fixed, low_confidence=low_confidence, pairing=pairing)
    # the detector's boxes follow the annotators' convention; the masks' own boxes otherwise
    result["boxes"] = boxes if boxes is not None and len(boxes) == n else label_boxes(labels)
    result["rejected"] = rejected  # objects set aside as nuclei, debris or stain (boxes, for review)
    result["classified"] = len(todo)
    result["seconds"] = round(time.monotonic() - t0, 2)
    yield Progress(1, 1, "pair", result["summary"])
    return result


def _relabel(labels: np.ndarray, known: dict | None, fixed: dict | None):
    """Make label ids 1..N (hand edits leave gaps); carry known probabilities and fixed classes along."""
    ids = np.unique(labels[labels > 0])
    if len(ids) == 0 or (ids[0] == 1 and ids[-1] == len(ids)):
        return labels, known, fixed
    lut = np.zeros(int(labels.max()) + 1, np.int32)
    lut[ids] = np.arange(1, len(ids) + 1, dtype=np.int32)
    old_to_new = {int(o): int(n) for o, n in zip(ids, lut[ids])}
    known = {old_to_new[int(k)]: v for k, v in (known or {}).items() if int(k) in old_to_new}
    fixed = {old_to_new[int(k)]: v for k, v in (fixed or {}).items() if int(k) in old_to_new}
    return lut[labels], known, fixed


def _builtin(name: Any) -> bool:
    from .. import zoo

    return zoo.is_builtin(name)


def model_classifier(model: Any, device: str | None = None):
    """A :data:`~napari_cellclass.karyotype.corrections.Classifier` for a
    :class:`~napari_cellclass.karyotype.corrections.KaryotypeSession`: the chromosome
    classifier ``model`` (a name, a path or a loaded model), loaded once on first use.

    Labels are renumbered 1..N before the call (a session's ids have gaps after
    deletions) so the classifier sees the whole spread as context, as in the
    first run.
    """
    if model is None:
        return None
    from .chromosome import load as load_classifier

    state: dict[str, Any] = {}

    def classify(image: np.ndarray, labels: np.ndarray, ids: list[int],
                 cancel: CancelToken | None = None) -> np.ndarray:
        from ..engine.progress import run_sync

        if "model" not in state:
            state["model"] = load_classifier(model, device)
        present = np.nonzero(np.bincount(labels.ravel()))[0]
        present = present[present > 0]
        lut = np.zeros(int(labels.max()) + 1, np.int32)
        lut[present] = np.arange(1, len(present) + 1, dtype=np.int32)
        compact = lut[labels]
        return run_sync(classify_labels(image, compact, state["model"], [int(lut[i]) for i in ids], device,
                                        cancel=cancel))

    return classify


# ----------------------------------------------------------------------------- CLI: predict
from ..io.spread_reader import annotated_spreads  # noqa: E402,F401  (public here as before)
from ..io.spread_reader import read_spread_image as _read_spread  # noqa: E402
from ..io.spread_reader import spread_truth as _truth  # noqa: E402


def _spread_files(inputs: Sequence[Path]) -> list[Path]:
    from ..io.spread_reader import IMAGE_SUFFIXES

    files: list[Path] = []
    for p in map(Path, inputs):
        if p.is_dir():
            files += sorted(q for q in p.iterdir() if q.suffix.lower() in IMAGE_SUFFIXES)
        else:
            files.append(p)
    if not files:
        raise InputError(f"no spread images in {', '.join(map(str, inputs))}")
    return files


OUTPUT_FILES = {  # key -> file name pattern of one spread's outputs; the summary JSON is written last
    "karyogram_png": "{stem}_karyogram.png",
    "csv": "{stem}_chromosomes.csv",
    "labels_tif": "{stem}_labels.tif",
    "report_pdf": "{stem}_report.pdf",
    "summary_json": "{stem}_summary.json",
}
TABLE = "karyotypes.csv"
TABLE_COLUMNS = ["spread", "status", "summary", "count", "abnormal", "sex_template", "n_flagged", "findings",
                 "classifier", "segmenter", "seconds", "karyogram_png", "report_pdf", "csv", "labels_tif",
                 "summary_json"]
RUN_FILE = "karyotype_run.json"


def write_outputs(result: dict[str, Any], out: Path, stem: str, *, report: bool = False,
                  models: Sequence[dict] = (), case: str = "") -> dict[str, str]:
    """karyogram PNG, per-chromosome CSV, labels TIFF, (PDF report) and summary JSON for one spread.

    Every file is written atomically and the summary JSON last, with ``complete``
    and the list of files: a folder cut off mid-spread never looks done.
    """
    import tifffile

    from ..engine.atomic import atomic_path

    out.mkdir(parents=True, exist_ok=True)
    keys = [k for k in OUTPUT_FILES if report or k != "report_pdf"]
    paths = {k: out / OUTPUT_FILES[k].format(stem=stem) for k in keys}
    save_png(result["karyogram"], paths["karyogram_png"])
    write_csv(result["table"], paths["csv"])
    with atomic_path(paths["labels_tif"]) as tmp:
        tifffile.imwrite(tmp, np.asarray(result["labels"], np.int32), compression="zlib")
    if report:
        from ..karyotype.report import write_report

        write_report(paths["report_pdf"], result, case=case or stem, models=models)
    summary = summary_json(result)
    summary.update(complete=True, files={k: v.name for k, v in paths.items()},
                   models=[dict(m) for m in models], seconds=result.get("seconds"))
    with atomic_path(paths["summary_json"]) as tmp:
        tmp.write_text(json.dumps(summary, indent=2, default=_json_default) + "\n")
    return {k: str(v) for k, v in paths.items()}


def _json_default(o: Any) -> Any:
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    return str(o)


def summary_json(result: dict[str, Any]) -> dict[str, Any]:
    return {
        "summary": result["summary"], "count": int(result["count"]), "abnormal": bool(result["abnormal"]),
        "findings": list(result["findings"]), "sex_template": result["sex_template"],
        "n_flagged": int(np.sum(result["flagged"])),
        "chromosomes": result["table"],
        "not_chromosomes": list(result.get("rejected", [])),  # set aside by the rejection step, for review
    }


def completed_outputs(out: Path, stem: str) -> dict[str, Any] | None:
    """The summary of a spread whose outputs are all there (a previous run finished it), else None."""
    path = out / OUTPUT_FILES["summary_json"].format(stem=stem)
    try:
        summary = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    files = summary.get("files") if isinstance(summary, dict) else None
    if not summary.get("complete") or not isinstance(files, dict):
        return None
    if not all((out / name).is_file() and (out / name).stat().st_size > 0 for name in files.values()):
        return None
    return summary


def _table_row(spread: Path, summary: dict[str, Any] | None, out: Path, stem: str, models: Sequence[dict],
               status: str = "done") -> dict[str, Any]:
    row: dict[str, Any] = {"spread": str(spread), "status": status}
    if summary is not None:
        row.update(summary=summary["summary"], count=summary["count"], abnormal=summary["abnormal"],
                   sex_template=summary.get("sex_template", ""), n_flagged=summary.get("n_flagged", ""),
                   findings="; ".join(summary.get("findings", [])), seconds=summary.get("seconds", ""))
        row.update({k: str(out / name) for k, name in summary.get("files", {}).items()})
    for m in models:
        row["classifier" if m.get("role") == "classifier" else "segmenter"] = m.get("name", "")
    return row


def _write_table(rows: list[dict[str, Any]], path: Path) -> None:
    import csv

    from ..engine.atomic import atomic_path

    with atomic_path(path) as tmp:
        with open(tmp, "w", newline="") as fh:
            w = csvsafe.DictWriter(fh, fieldnames=TABLE_COLUMNS, extrasaction="ignore")
            w.writeheader()
            for r in rows:
                w.writerow({k: r.get(k, "") for k in TABLE_COLUMNS})


def _bind_run(out: Path, settings: dict[str, Any]) -> None:
    """Refuse to resume a folder made with another model or settings (never mix, never overwrite)."""
    from ..engine.atomic import atomic_path

    path = out / RUN_FILE
    if path.is_file():
        try:
            old = json.loads(path.read_text())
        except ValueError:
            old = None
        if old != settings:
            diff = sorted(k for k in set(settings) | set(old or {}) if (old or {}).get(k) != settings.get(k))
            raise InputError(f"{out} holds karyotypes made with other settings ({', '.join(diff)}); "
                             f"choose another --out to keep both", path)
        return
    out.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(settings, indent=2) + "\n")


def predict(model: Path, spreads: list[Path], opts) -> Job[dict[str, Any]]:
    """Karyotype each spread into ``opts.out``: per-spread outputs, a PDF report each, one CSV row each.

    ``OUT/karyotypes.csv`` gets one row per spread, rewritten after each one, so it
    is always complete for what is done.  A re-run on the same folder skips the
    spreads whose outputs are all there (resume); one bad image is a row with
    its error, not the end of the batch.  ``--set report=false`` skips the PDFs.
    """
    from ..karyotype.report import model_info
    from .chromosome import load as load_classifier

    out = Path(opts.out) if opts.out else Path("cellclass-karyotype")
    files = _spread_files(spreads)
    report = bool(opts.get("report", True))
    # each model loaded once for the whole batch; 'auto' resolved here, for the table and the reports
    model = load_classifier(model, opts.device)
    seg_used, detector = resolve_segmenter(opts.get("segmenter", "auto"), opts.get("detector_model"), opts.device)
    seg = seg_used
    models = [model_info(model, "classifier"),
              model_info(detector, "detector") if seg_used == "detector"
              else {"role": "segmenter", "name": "classical threshold segmenter (no model)"}]
    settings = {"model": models[0].get("name"), "model_sha256": models[0].get("sha256", ""),
                "segmenter": seg_used, "detector": models[1].get("name"),
                "pairing": bool(opts.get("pairing", True)), "full_model": bool(opts.get("full_model", False))}
    # recorded only when changed, so a folder made before these options existed still resumes
    detector_threshold = _detector_threshold(opts)
    if detector_threshold is not None:
        settings["detector_threshold"] = detector_threshold
    if not bool(opts.get("reject", True)):
        settings["reject"] = False
    _bind_run(out, settings)
    rows: list[dict[str, Any]] = []
    refused: list[dict[str, str]] = []
    skipped = failed = 0
    first_error: InputError | None = None
    for k, f in enumerate(files):
        check_cancel(opts.cancel)
        stem = f.stem
        done = completed_outputs(out, stem)
        if done is not None:
            skipped += 1
            rows.append(_table_row(f, done, out, stem, models, status="done (earlier run)"))
            continue
        yield Progress(k, len(files), "spreads", f.name)
        try:
            img = _read_spread(f)
            res = yield from karyotype(img, model, device=opts.device, segmenter=seg,
                                       detector_model=detector, cancel=opts.cancel,
                                       pairing=bool(opts.get("pairing", True)),
                                       full_model=bool(opts.get("full_model", False)),
                                       reject=bool(opts.get("reject", True)),
                                       detector_threshold=detector_threshold)
        except InputError as exc:  # this spread is unusable; say why and go on with the others
            failed += 1
            first_error = first_error or exc
            refused.append({"input": str(f), "problem": exc.problem})
            rows.append(_table_row(f, None, out, stem, models, status=f"error: {exc}"))
            _write_table(rows, out / TABLE)
            continue
        write_outputs(res, out, stem, report=report, models=models, case=f.name)
        rows.append(_table_row(f, completed_outputs(out, stem), out, stem, models))
        _write_table(rows, out / TABLE)
    _write_table(rows, out / TABLE)
    if first_error is not None and failed == len(files):  # nothing usable at all: an error, exit 2
        raise first_error if len(files) == 1 else InputError(
            f"none of the {len(files)} spreads could be karyotyped; the first: {first_error}")
    yield Progress(len(files), len(files), "spreads", "done")
    return {"out": str(out), "table": str(out / TABLE), "n_spreads": len(files), "skipped_done": skipped,
            "failed": failed, "spreads": rows, "refused": refused}


# ----------------------------------------------------------------------------- evaluate
def evaluate(model: Path | None, data: Path, opts) -> Job[dict[str, Any]]:
    """Detection recall/precision at IoU 0.5, count accuracy and (with a model) class accuracy.

    ``model`` may be ``none`` (or ``--set segment_only=true``) to score segmentation alone.
    ``--set limit=N`` evaluates the first N spreads; ``--set step=K`` every K-th;
    ``--set split=val`` only the spreads held out by the built-ins' split (by spread, seed 0, 20%).
    """
    from ..karyotype.metrics import match_boxes

    t0 = time.monotonic()
    pairs = annotated_spreads(Path(data))
    if opts.get("split") == "val":  # the spreads the built-in detector and classifier held out
        from ..karyotype.detector import split_spreads

        pairs = split_spreads(pairs, float(opts.get("val_fraction", 0.2)), opts.seed)[1]
    step = int(opts.get("step", 1))
    pairs = pairs[::max(1, step)]
    if opts.get("limit"):
        pairs = pairs[: int(opts.get("limit"))]
    seg_only = bool(opts.get("segment_only", False)) or model is None or str(model).lower() in ("none", "-")
    if not seg_only:
        from .chromosome import load as load_classifier

        if not hasattr(model, "net") and not Path(str(model)).is_file() and not _builtin(model):
            raise InputError("checkpoint does not exist (use 'none' to score segmentation only)", model)
        model = load_classifier(model, opts.device)
    seg = opts.get("segmenter", "auto")
    _, detector = resolve_segmenter(seg, opts.get("detector_model"), opts.device)  # loaded once for all spreads
    detector_threshold = _detector_threshold(opts)
    tp = n_pred = n_true = right_count = 0
    cls_ok = cls_ok_argmax = n_matched_cls = 0
    right_karyo = right_after_review = confident_right = n_confident = n_rejected = 0
    per_spread = []
    for k, (img_path, side) in enumerate(pairs):
        check_cancel(opts.cancel)
        yield Progress(k, len(pairs), "evaluate", img_path.name)
        img = _read_spread(img_path)
        boxes_t, classes_t = _truth(img_path, side)
        if seg_only:
            labels, boxes_p = yield from segment_with_boxes(img, seg, detector, opts.device, opts.cancel,
                                                            detector_threshold=detector_threshold)
            res = None
        else:
            res = yield from karyotype(img, model, device=opts.device, segmenter=seg,
                                       detector_model=detector, cancel=opts.cancel,
                                       reject=bool(opts.get("reject", True)),
                                       detector_threshold=detector_threshold)
            labels, boxes_p = res["labels"], res["boxes"]
            n_rejected += len(res.get("rejected", []))
        matches = match_boxes(boxes_p, boxes_t, 0.5)
        tp += len(matches)
        n_pred += len(boxes_p)
        n_true += len(boxes_t)
        right_count += int(len(boxes_p) == len(boxes_t))
        row = {"spread": img_path.name, "n_true": len(boxes_t), "n_pred": len(boxes_p), "matched": len(matches)}
        if res is not None:
            argmax = res["probabilities"].argmax(1)
            for i, j in matches:
                if classes_t[j] < 0:
                    continue
                n_matched_cls += 1
                cls_ok += int(res["classes"][i] == classes_t[j])
                cls_ok_argmax += int(argmax[i] == classes_t[j])
            from ..karyotype.iscn import iscn_summary, same_karyotype

            truth_text = iscn_summary([c for c in classes_t if c >= 0]).text
            right = same_karyotype(truth_text, res["summary"])  # parsed by the ISCN 2024 parser, order-free
            right_karyo += int(right)
            # "?" marks what the tool was unsure of: right once a reviewer confirms it
            as_if_sure = iscn_summary(res["classes"]).text  # the same classes, every "?" confirmed
            right_after_review += int(right or same_karyotype(truth_text, as_if_sure))
            confident_right += int(right and bool(res.get("confident", False)))
            n_confident += int(bool(res.get("confident", False)))
            row.update(summary=res["summary"], truth=truth_text, n_flagged=int(res.get("n_flagged", 0)))
        per_spread.append(row)
    yield Progress(len(pairs), len(pairs), "evaluate", "done")
    out: dict[str, Any] = {
        "task": TASK, "data": str(data), "n_spreads": len(pairs), "segmenter": seg,
        "iou": 0.5,
        "recall": tp / max(n_true, 1), "precision": tp / max(n_pred, 1),
        "count_accuracy": right_count / max(len(pairs), 1),
        "n_true": n_true, "n_pred": n_pred, "matched": tp,
    }
    if not seg_only:
        out.update({
            "model": str(model.path or model.source),
            "class_accuracy_paired": cls_ok / max(n_matched_cls, 1),
            "class_accuracy_argmax": cls_ok_argmax / max(n_matched_cls, 1),
            "karyotype_string_accuracy": right_karyo / max(len(pairs), 1),
            "karyotype_string_accuracy_if_unsure_confirmed": right_after_review / max(len(pairs), 1),
            "rejected_as_not_chromosomes": n_rejected,
            "confident_share": n_confident / max(len(pairs), 1),  # spreads with nothing flagged
            "confident_string_precision": (confident_right / n_confident) if n_confident else None,
        })
    out["per_spread"] = per_spread
    out["seconds"] = round(time.monotonic() - t0, 1)
    return out


# ----------------------------------------------------------------------------- demo
def _find_demo_model(out: Path) -> Path | None:
    for cand in (out.parent / "chromosome" / "model" / "model.safetensors",
                 out.parent / "chromosome" / "model.safetensors"):
        if cand.is_file():
            return cand
    return None


def demo(out: Path, opts) -> Job[dict[str, Any]]:
    """Synthetic 47,XY,+21 spread -> segment -> tiny GRiCoL -> pairing -> karyogram PNG + CSV."""
    from ..synth.chromosomes import make_spread
    from .base import TaskOptions

    t0 = time.monotonic()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    model = _find_demo_model(out)
    if model is None:
        from . import chromosome

        data = chromosome.synth(out / "data", 4, opts.seed)
        yield Progress(0, None, "demo", "training a tiny chromosome classifier on synthetic crops")
        t_opts = TaskOptions(epochs=4, batch_size=32, lr=2e-3, device=opts.device, arch="gricol",
                             out=out / "model", seed=opts.seed, quick=True, cancel=opts.cancel,
                             extra={"trained_on": "synthetic (napari-cellclass demo)", "val_fraction": 0.2})
        summary = yield from chromosome.train(data, t_opts)
        model = Path(summary["checkpoint"])
    spread = make_spread(seed=opts.seed + 7, karyotype="47,XY,+21", size=(640, 640))
    from PIL import Image

    Image.fromarray(spread["image"]).save(out / "spread.png")
    # a generated spread: the classical segmenter (the built-in detector learnt real G-band spreads)
    res = yield from karyotype(spread["image"], model, device=opts.device, cancel=opts.cancel,
                               segmenter="threshold")
    paths = write_outputs(res, out, "spread")
    from ..karyotype.metrics import match_boxes

    matches = match_boxes(label_boxes(res["labels"]), spread["boxes"], 0.5)
    correct = sum(int(res["classes"][i] == spread["classes"][j]) for i, j in matches)
    return {
        "note": "tiny classifier trained only on synthetic chromosomes; numbers show the pipeline runs",
        "truth": "47,XY,+21", "summary": res["summary"], "count": int(res["count"]),
        # said outright, so a wrong ISCN string is never read as the demo's answer
        "summary_matches_truth": res["summary"] == "47,XY,+21",
        "segmentation_recall": round(len(matches) / len(spread["classes"]), 3),
        "class_accuracy": round(correct / max(len(matches), 1), 3),
        "model": str(model), "karyogram_png": paths["karyogram_png"], "csv": paths["csv"],
        "seconds": round(time.monotonic() - t0, 1),
    }


SYNTH_KARYOTYPES = ("46,XY", "46,XX", "47,XX,+21", "45,X", "47,XY,+18", "46,XY", "46,XX")


def synth(out: Path, n: int, seed: int) -> Path:
    """``cellclass synth karyotype``: spreads (``images/``) with VOC boxes (``annotations/``).

    Karyotypes cycle through normal and abnormal ones so that ``cellclass evaluate
    karyotype`` has counts other than 46 to find; object names are the class names
    (``1``..``22``, ``X``, ``Y``) that the chromosome readers accept.
    """
    import pandas as pd

    from ..io.writers import write_png_atomic, write_shapes_voc
    from ..synth.chromosomes import CHROMOSOME_CLASSES, make_spread

    out = Path(out)
    if n < 1:
        raise InputError("--n must be at least 1")
    (out / "images").mkdir(parents=True, exist_ok=True)
    (out / "annotations").mkdir(parents=True, exist_ok=True)
    for i in range(n):
        karyo = SYNTH_KARYOTYPES[i % len(SYNTH_KARYOTYPES)]
        sp = make_spread(seed=seed * 10_000 + i, karyotype=karyo)
        stem = f"spread_{i:03d}"
        img_path = write_png_atomic(out / "images" / f"{stem}.png", sp["image"])
        rects = [np.array([[y0, x0], [y0, x1], [y1, x1], [y1, x0]], float) for y0, x0, y1, x1 in sp["boxes"]]
        names = [CHROMOSOME_CLASSES[c] for c in sp["classes"]]
        write_shapes_voc(str(out / "annotations" / f"{stem}.xml"), rects, {
            "name": stem, "shape_type": ["rectangle"] * len(rects),
            "features": pd.DataFrame({"label": names}),
            "metadata": {"image_path": str(img_path), "image_shape": list(sp["image"].shape) + [1],
                         "karyotype": karyo},
        })
    (out / "karyotypes.csv").write_text(
        "image,karyotype\n" + "".join(f"spread_{i:03d}.png,{SYNTH_KARYOTYPES[i % len(SYNTH_KARYOTYPES)]}\n"
                                      for i in range(n)))
    return out

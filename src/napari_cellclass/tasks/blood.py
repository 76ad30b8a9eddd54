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
    def score_threshold(self) -> float:
        from .detect import model_score_threshold

        return model_score_threshold(self.detector.meta)


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
    from skimage.morphology import disk

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
        kept.append(float(ndi.binary_opening(fg, structure=disk(r)).sum()) / total)
        if kept[-1] < 0.5:
            break
    if kept[-1] >= 0.5:
        return float("nan")
    r = len(kept) - 1  # first radius that removed half: interpolate between r-1 and r
    frac = (kept[r - 1] - 0.5) / max(kept[r - 1] - kept[r], 1e-9)
    return float((r - 1 + frac) * f)


def magnification(rgb: np.ndarray, reference: float | None) -> float:
    """How many times larger this smear's cells are than the detector's training cells (1.0 within tolerance)."""
    if not reference:
        return 1.0
    size = cell_size(rgb)
    if not np.isfinite(size) or size <= 0:
        return 1.0
    ratio = size / float(reference)
    return 1.0 if 1 / MAG_TOLERANCE <= ratio <= MAG_TOLERANCE else ratio


def sidecar_annotation(path: Path):
    """The Pascal VOC file of an image (``<stem>.xml`` beside it or ``../Annotations/<stem>.xml``), or None."""
    from ..io.annotations import read_voc

    for xml in (path.with_suffix(".xml"), path.parent.parent / "Annotations" / f"{path.stem}.xml"):
        if xml.is_file():
            return read_voc(xml)
    return None


def analyse_smear(image: Any, detector: str | Path | None = None, classifier: str | Path | None = None, *,
                  device: str | None = None, score_threshold: float | None = None, nms_iou: float = 0.5,
                  cancel: CancelToken | None = None, models: SmearModels | None = None,
                  annotation: Any = None, normalise_magnification: bool = True) -> Job[dict[str, Any]]:
    """Detect, classify the white cells, count.  Models default to the built-ins.

    A smear imaged at another magnification than the detector's training smears
    (:func:`magnification` outside +-25 %) is resized so its cells have the training
    size, both models run on that copy, and boxes come back in the image's own
    pixels (``magnification`` in the result says by how much; 1.0 = untouched).

    Returns per object ``boxes`` (y0, x0, y1, x1), ``labels`` (detector class),
    ``scores``, ``wbc_class``/``wbc_score`` (white cells only; "" / NaN otherwise),
    plus ``wbc_index``, ``probabilities`` (white cells x classes), ``class_names``,
    ``counts`` ({"RBC", "WBC", "Platelets"}), ``differential``, ``message``,
    ``models`` (names, versions, checksums), ``seconds`` and ``device``.
    ``annotation`` (an :class:`~napari_cellclass.io.annotations.AnnotatedImage`)
    replaces detection by its boxes (score 1): counting and classifying annotated smears.
    """
    from . import detect as det_task
    from . import wbc as wbc_task

    t0 = time.monotonic()
    raw = image if isinstance(image, np.ndarray) else np.asarray(getattr(image, "data", image))
    rgb = D.require_stained_rgb(raw, "Analyse smear")
    work, mag = rgb, 1.0  # the image the models see, and how much larger than that the user's image is
    if models is None:
        yield Progress(0, None, "load", "loading the detector and the white-cell classifier")
        models = SmearModels(detector, classifier, device)
    check_cancel(cancel)
    if annotation is not None:
        thr = 1.0
        det = {"labels": list(annotation.labels), "boxes": np.asarray(annotation.boxes).reshape(-1, 4)[:, [1, 0, 3, 2]],
               "scores": np.ones(len(annotation.labels)), "device": models.classifier.policy.describe()}
        models.info.setdefault("detector", {"name": "annotation file", "arch": "", "sha256": "", "trained_on": "",
                                            "package_version": ""})
    else:
        thr = models.score_threshold if score_threshold is None else float(score_threshold)
        mag = magnification(rgb, models.reference_cell_size) if normalise_magnification else 1.0
        if mag != 1.0:
            from skimage.transform import rescale

            yield Progress(0, None, "load", f"cells are {mag:.2f}x the detector's training size: resizing")
            work = np.clip(rescale(rgb, 1 / mag, order=1, channel_axis=-1, anti_aliasing=mag > 1,
                                   preserve_range=True), 0, 255).round().astype(np.uint8)
        det = yield from det_task.detect(work, models.detector, device=device, score_threshold=thr,
                                         nms_iou=nms_iou, cancel=cancel)
    t1 = time.monotonic()
    labels = list(det["labels"])
    boxes = np.asarray(det["boxes"], dtype=np.float64).reshape(-1, 4)
    wbc_idx = [i for i, lab in enumerate(labels) if is_wbc(lab)]
    names = models.class_names
    probs = np.zeros((0, len(names)), np.float32)
    if wbc_idx:
        yield Progress(0, None, "classify", f"classifying {len(wbc_idx)} white cell(s)")
        cls = yield from wbc_task.classify(work, models.classifier, cells=boxes[wbc_idx], device=device,
                                           cancel=cancel)
        probs = np.asarray(cls["probabilities"], dtype=np.float32).reshape(-1, len(names))
    if mag != 1.0:  # back to the user's pixels
        boxes = np.clip(boxes * mag, 0, [rgb.shape[0], rgb.shape[1], rgb.shape[0], rgb.shape[1]])
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
    found = "annotated object(s)" if annotation is not None else f"object(s) above score {thr:.2f}"
    message = (f"{len(labels)} {found}: {counts['RBC']} red cell(s), {counts['WBC']} white cell(s), "
               f"{counts['Platelets']} platelet(s)")
    if mag != 1.0:
        message += f" (cells {mag:.2f}x the detector's training size: analysed resized to it)"
    return {
        "boxes": boxes, "labels": labels, "scores": np.asarray(det["scores"], dtype=np.float64),
        "wbc_class": wbc_class, "wbc_score": wbc_score, "wbc_index": wbc_idx, "probabilities": probs,
        "class_names": names, "counts": counts, "differential": diff, "score_threshold": thr,
        "message": message, "models": dict(models.info), "device": det["device"],
        "boxes_from": "annotations" if annotation is not None else "detector", "magnification": round(mag, 3),
        "seconds": {"detect": round(t1 - t0, 3), "classify": round(t2 - t1, 3), "total": round(t2 - t0, 3)},
        "image_shape": list(rgb.shape),
    }


# ----------------------------------------------------------------------------- results as tables

def cells_table(res: dict[str, Any], reviewed: Sequence[str] | None = None) -> list[dict[str, Any]]:
    """One row per detected object (all classes), with the white-cell class and any review."""
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
        for n, j in zip(names, range(len(names))):
            row[f"p_{n}"] = round(float(prob_of[i][j]), 4) if i in prob_of else ""
        rows.append(row)
    return rows


def differential_rows(res: dict[str, Any], reviewed: Sequence[str] | None = None) -> tuple[dict, list[dict]]:
    """(differential, rows of class/count/percent) from the model or the reviewed classes."""
    from .wbc import differential_count

    classes = [(reviewed[i] if reviewed is not None else res["wbc_class"][i]) for i in res["wbc_index"]]
    names = list(res["class_names"]) + [c for c in REVIEW_EXTRA if c in classes and c not in res["class_names"]]
    diff = differential_count(classes, names)
    return diff, diff["rows"]


def write_differential_csv(path: Path, res: dict[str, Any], reviewed: Sequence[str] | None = None) -> Path:
    """class,count,percent for the white cells, then the red-cell and platelet counts."""
    from ..engine.atomic import atomic_path

    diff, rows = differential_rows(res, reviewed)
    with atomic_path(path) as tmp:
        with open(tmp, "w", newline="") as fh:
            w = csvsafe.writer(fh)
            w.writerow(["class", "count", "percent"])
            for r in rows:
                w.writerow([r["class"], r["count"], f"{r['percent']:.1f}"])
            w.writerow(["TOTAL_WBC", diff["total"], "100.0" if diff["total"] else "0.0"])
            w.writerow(["RBC", res["counts"].get("RBC", 0), ""])
            w.writerow(["Platelets", res["counts"].get("Platelets", 0), ""])
    return Path(path)


def write_cells_csv(path: Path, res: dict[str, Any], reviewed: Sequence[str] | None = None) -> Path:
    from ..engine.atomic import atomic_path

    rows = cells_table(res, reviewed)
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
                     reviewed: Sequence[str] | None = None, source: str = "") -> Path:
    """A per-smear PDF: the smear with boxes, counts, differential (table and bars), the
    white-cell gallery by class, model names/versions/checksums, date.  Written atomically."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.backends.backend_pdf import PdfPages
    from matplotlib.figure import Figure
    from matplotlib.patches import Rectangle

    from ..engine.atomic import atomic_path

    rgb = D.as_rgb(image)
    diff, rows = differential_rows(res, reviewed)
    classes = [(reviewed[i] if reviewed is not None else res["wbc_class"][i]) for i in range(len(res["labels"]))]
    n_corrected = 0 if reviewed is None else sum(1 for i in res["wbc_index"] if reviewed[i] != res["wbc_class"][i])
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
                    ax.text(b[1] + 2, b[0] + 12, classes[i][:4], color="white", fontsize=6,
                            bbox={"facecolor": col, "alpha": 0.8, "pad": 1, "lw": 0})
            ax.set_axis_off()
            c = res["counts"]
            lines = [f"Red cells: {c.get('RBC', 0)}    White cells: {c.get('WBC', 0)}    "
                     f"Platelets: {c.get('Platelets', 0)}    (detector score >= {res['score_threshold']:.2f})"]
            if n_corrected or reviewed is not None:
                lines.append(f"Reviewed: {n_corrected} white cell(s) reclassified by the reviewer")
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
            for role in ("detector", "classifier"):
                d = m.get(role, {})
                info.append(f"{role}: {d.get('name', '?')} ({d.get('arch', '')}; sha256 {d.get('sha256', '')}; "
                            f"package {d.get('package_version', '')})")
                if d.get("trained_on"):
                    info.append(f"    trained on {str(d['trained_on'])[:90]}")
            info.append(f"device: {res.get('device', '')};  time: {res['seconds']['total']:.2f} s")
            if source:
                info.append(f"image: {source}")
            fig.text(0.06, 0.27, "\n".join(info), fontsize=6.5, va="top", family="monospace", wrap=True)
            pdf.savefig(fig)
            _gallery_page(pdf, rgb, res, classes, Figure)
    return path


def _gallery_page(pdf: Any, rgb: np.ndarray, res: dict[str, Any], classes: list[str], Figure: Any) -> None:
    """White cells by class, least confident first (the ones to check first)."""
    idx = list(res["wbc_index"])
    aspect = 8.27 / 11.69  # A4 portrait: a square tile w wide is w * aspect tall (figure fractions)

    def new_page(title: str) -> Any:
        f = Figure(figsize=(8.27, 11.69))
        f.text(0.06, 0.965, title, fontsize=13, weight="bold")
        return f

    fig = new_page("White cells by class (least confident first)")
    if not idx:
        fig.text(0.06, 0.9, "No white cells were detected on this smear.", fontsize=10)
        pdf.savefig(fig)
        return
    groups: dict[str, list[int]] = {}
    for i in idx:
        groups.setdefault(classes[i], []).append(i)
    per_row, tile = 6, 0.145
    row_h = tile * aspect + 0.025
    y = 0.93
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
            ax.set_title(f"#{i} {score:.2f}" if np.isfinite(score) else f"#{i}", fontsize=6, pad=2)
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
                   boxes: str = "detector") -> Job[dict[str, Any]]:
    """Analyse every smear of folders/files: per smear ``<stem>_differential.csv``,
    ``<stem>_cells.csv`` and ``<stem>_report.pdf``; across smears ``summary.csv`` and
    ``summary.json``.  A smear that cannot be read or is refused (gray, fluorescence)
    is listed in the summary with its reason and the others go on.  Cancel stops
    between smears; every file written is complete.

    ``boxes="detector"`` detects every smear; ``"auto"`` uses a smear's Pascal VOC
    annotation file when it has one (``<stem>.xml`` or ``../Annotations/<stem>.xml``)
    and the detector otherwise; ``"sidecar"`` requires the annotation files.
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
            img = D.read_rgb(f)
            ann = sidecar_annotation(f) if boxes in ("auto", "sidecar") else None
            if ann is None and boxes == "sidecar":
                raise InputError("no annotation file (<stem>.xml beside it or ../Annotations/<stem>.xml)", f)
            res = yield from analyse_smear(img, device=device, score_threshold=score_threshold, cancel=cancel,
                                           models=models, annotation=ann)
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

"""White-blood-cell datasets: class-per-folder crops and smears with a box table.

Two layouts are read:

* **class-per-folder** (Kaggle "blood cells" layout and ``cellclass synth wbc``):
  ``ROOT/<CLASS>/*.jpeg|jpg|png``, optionally under ``ROOT/TRAIN`` and
  ``ROOT/TEST`` (then ``split="train"|"test"`` picks one).
* **smears with a label table** (BCCD): ``ROOT/wbc_labels.csv`` with columns
  ``image,category,xmin,ymin,xmax,ymax`` and the images in ``ROOT/JPEGImages``
  (or next to the CSV).  Each row is one white cell, cropped square around its
  box with some context.

Every record carries a *group* (its source image) so train/validation splits
never put crops of one image on both sides.  Crops are loaded once into memory
at the training size; augmentation is the seed's only: flips, 90-degree
rotations, transposes (no scaling, no colour changes: nucleus size and stain
are the signal).
"""
from __future__ import annotations

import csv
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from ..classes import WBC_CLASSES, WBC_OPTIONAL_CLASSES
from ..engine.augment import affine_colour_batch, dihedral, dihedral_batch  # noqa: F401  (dihedral: also for TTA)
from ..engine.augment import affine_colour_batch as augment_batch  # noqa: F401  (the old name)
from ..engine.data import SeededBatches
from ..errors import InputError
from .limits import ScanReport, read_image, safe_relative, scan_files, to_uint8

OPTIONAL_CLASSES = WBC_OPTIONAL_CLASSES
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff"}
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
LABEL_TABLE = "wbc_labels.csv"
CONTEXT = 1.15  # square crop side = CONTEXT * longer box side


@dataclass(frozen=True)
class WBCRecord:
    """One white cell: its image, optional box (x0, y0, x1, y1), class name and source group."""

    path: Path
    label: str
    group: str
    box: tuple[float, float, float, float] | None = None


def _kaggle_group(stem: str) -> str:
    """Kaggle's augmented copies are named ``_<k>_<source id>``: group them by source."""
    m = re.fullmatch(r"_?\d+_(\d+)", stem)
    return m.group(1) if m else stem


def _class_dirs(root: Path, report: ScanReport) -> list[Path]:
    """Class folders of ``root``; hidden and ``__MACOSX`` folders are skipped with a note."""
    dirs = []
    for d in sorted(p for p in root.iterdir() if p.is_dir()):
        if d.name.startswith((".", "__MACOSX")):
            report.skip("hidden or macOS archive folder(s)", d)
        else:
            dirs.append(d)
    return dirs


def scan_class_folders(root: Path, report: ScanReport | None = None) -> list[WBCRecord]:
    """Records of ``root/<CLASS>/*``; an empty class folder is an error, junk files are skipped.

    An empty class folder would silently train a model with one class fewer, so it is
    refused with its name.  macOS ``._*`` files, FIFOs and other non-images are skipped
    and counted in ``report`` (see :func:`find_records`).
    """
    report = report if report is not None else ScanReport()
    records = []
    for d in _class_dirs(root, report):
        label = d.name.upper()
        found = scan_files(d, IMAGE_SUFFIXES, report, root=root)
        if not found and label not in WBC_CLASSES + OPTIONAL_CLASSES:
            report.skip("empty folder(s) that are not white-cell classes", d)
        elif not found:
            raise InputError(
                f"class folder {d.name}/ holds no images (*.jpeg, *.jpg, *.png, ...); add images or remove the "
                "folder so the model is not trained without this class", d)
        for f in found:
            records.append(WBCRecord(f, label, f"{label}/{_kaggle_group(f.stem)}"))
    return records


def read_label_table(csv_path: Path, image_dir: Path | None = None) -> list[WBCRecord]:
    """Rows ``image,category,xmin,ymin,xmax,ymax`` -> records grouped by image."""
    image_dir = image_dir or (csv_path.parent / "JPEGImages" if (csv_path.parent / "JPEGImages").is_dir() else csv_path.parent)
    records = []
    with open(csv_path, newline="") as fh:
        reader = csv.DictReader(fh)
        need = {"image", "category", "xmin", "ymin", "xmax", "ymax"}
        if reader.fieldnames is None or not need <= {f.strip() for f in reader.fieldnames}:
            raise InputError(f"label table needs the columns {', '.join(sorted(need))}; found {reader.fieldnames}", csv_path)
        for i, row in enumerate(reader, start=2):
            row = {k.strip(): (v or "").strip() for k, v in row.items() if k}
            cat = row["category"].upper()
            if not cat or "," in cat:  # cells with two labels are ambiguous: skip
                continue
            try:
                box = tuple(float(row[k]) for k in ("xmin", "ymin", "xmax", "ymax"))
            except ValueError:
                raise InputError(f"line {i}: box coordinates are not numbers: {row}", csv_path) from None
            if box[2] <= box[0] or box[3] <= box[1]:
                raise InputError(f"line {i}: empty box {box}", csv_path)
            path = image_dir / safe_relative(row["image"], csv_path, f"line {i}: image name")
            records.append(WBCRecord(path, cat, row["image"], box))
    return records


def find_records(root: str | Path, split: str | None = None) -> list[WBCRecord]:
    """All white-cell records under ``root`` (either layout); ``split`` picks TRAIN/TEST when present.

    Files that cannot be images (macOS ``._*`` files, hidden files, FIFOs) are skipped and
    reported in one warning; ``LAST_SCAN`` keeps the report of the latest scan.
    """
    root = Path(root)
    if not root.exists():
        raise InputError("dataset folder does not exist", root)
    if root.is_file() and root.suffix.lower() == ".csv":
        return read_label_table(root)
    if (root / LABEL_TABLE).is_file():
        return read_label_table(root / LABEL_TABLE)
    report = ScanReport()
    subs = {p.name.upper(): p for p in root.iterdir() if p.is_dir()}
    if "TRAIN" in subs or "TEST" in subs:
        wanted = [split.upper()] if split else [s for s in ("TRAIN", "TEST") if s in subs]
        records = []
        for s in wanted:
            if s not in subs:
                raise InputError(f"no {s} folder in the dataset", root)
            records += [WBCRecord(r.path, r.label, f"{s}/{r.group}", r.box)
                        for r in scan_class_folders(subs[s], report)]
    else:
        records = scan_class_folders(root, report)
    LAST_SCAN.files, LAST_SCAN.skipped = [r.path for r in records], report.skipped
    report.warn(root)
    if not records:
        raise InputError(
            "no white-cell images found: expected <CLASS>/*.jpeg folders (e.g. EOSINOPHIL/, NEUTROPHIL/) "
            f"or a {LABEL_TABLE} table with JPEGImages/", root)
    return records


#: What the latest :func:`find_records` used and skipped (for reports and tests).
LAST_SCAN = ScanReport()


def choose_classes(records: Sequence[WBCRecord], include_basophil: bool = False,
                   class_names: Sequence[str] | None = None) -> tuple[list[str], list[WBCRecord]]:
    """Class list (the four WBC classes + BASOPHIL when asked) and the records that fit it."""
    if class_names is None:
        found = {r.label for r in records}
        allowed = WBC_CLASSES + (OPTIONAL_CLASSES if include_basophil else [])
        class_names = [c for c in allowed if c in found]
        unknown = sorted(found - set(WBC_CLASSES) - set(OPTIONAL_CLASSES))
        if unknown:
            raise InputError(f"unknown white-cell class folder(s)/label(s): {', '.join(unknown)}; "
                             f"expected {', '.join(WBC_CLASSES + OPTIONAL_CLASSES)}")
    if len(class_names) < 2:
        raise InputError(f"need at least two classes to train, found {list(class_names)}")
    kept = [r for r in records if r.label in class_names]
    return list(class_names), kept


def split_by_group(records: Sequence[WBCRecord], val_fraction: float = 0.2, seed: int = 0
                   ) -> tuple[list[WBCRecord], list[WBCRecord]]:
    """Stratified split by source image: all crops of one image land on one side."""
    from .splits import grouped_split

    tr, va = grouped_split([r.group for r in records], val_fraction, seed, strata=[r.label for r in records],
                           group_stratum="first")
    return [records[i] for i in tr], [records[i] for i in va]


def read_rgb(path: Path) -> np.ndarray:
    """(H, W, 3) uint8 from any image file: size checked first, 16-bit/float rescaled knowingly."""
    return as_rgb(read_image(path), path)


def as_rgb(image: np.ndarray, path: Path | None = None) -> np.ndarray:
    """Gray, RGB or RGBA (any bit depth) -> (H, W, 3) uint8, rescaled by :func:`.limits.to_uint8`.

    8-bit data is unchanged; 12/16-bit and float data keep their contrast (never clipped
    to white or black); NaN/Inf are refused.
    """
    img = np.asarray(image)
    if img.ndim == 3 and img.shape[2] == 2:  # gray + alpha
        img = img[..., 0]
    if img.ndim == 2:
        img = np.repeat(img[..., None], 3, axis=2)
    if img.ndim != 3 or img.shape[2] not in (3, 4):
        raise InputError(f"expected a gray or RGB image (H, W[, 3]), got shape {img.shape}", path)
    return np.ascontiguousarray(to_uint8(img[..., :3], path))


def crop_cell(image: np.ndarray, box_yx: Sequence[float] | None, size: int, context: float = CONTEXT) -> np.ndarray:
    """Square crop around ``box_yx`` = (y0, x0, y1, x1) with context, edge-padded, resized to ``size``.

    ``None`` uses the whole image (a crop already), resized without keeping the aspect.
    """
    from PIL import Image

    img = as_rgb(image)
    if box_yx is not None:
        y0, x0, y1, x1 = (float(v) for v in box_yx)
        side = max(y1 - y0, x1 - x0, 2.0) * context
        cy, cx = (y0 + y1) / 2, (x0 + x1) / 2
        top, left = int(round(cy - side / 2)), int(round(cx - side / 2))
        s = int(round(side))
        h, w = img.shape[:2]
        pad = max(0, -top, -left, top + s - h, left + s - w)
        if pad:
            img = np.pad(img, ((pad, pad), (pad, pad), (0, 0)), mode="edge")
            top, left = top + pad, left + pad
        img = img[top : top + s, left : left + s]
    return np.asarray(Image.fromarray(np.ascontiguousarray(img)).resize((size, size), Image.BILINEAR))


def _load(records: Sequence[WBCRecord], side: int, crop, cancel=None) -> np.ndarray:
    """(N, side, side, 3) uint8: ``crop(image, record)`` for each record; each source image is read once."""
    from ..engine.progress import check_cancel

    out = np.empty((len(records), side, side, 3), np.uint8)
    cache: dict[Path, np.ndarray] = {}
    for i, r in enumerate(records):
        if i % 32 == 0:
            check_cancel(cancel)
        if r.path not in cache:
            cache = {r.path: read_rgb(r.path)}
        out[i] = crop(cache[r.path], r)
    return out


def load_crops(records: Sequence[WBCRecord], size: int, cancel=None) -> np.ndarray:
    """(N, size, size, 3) uint8 crops fitted to each record's box (the whole image without one)."""
    def crop(img: np.ndarray, r: WBCRecord) -> np.ndarray:
        return crop_cell(img, None if r.box is None else (r.box[1], r.box[0], r.box[3], r.box[2]), size)

    return _load(records, size, crop, cancel)


def to_tensor(crops: np.ndarray) -> torch.Tensor:
    """uint8 NHWC -> float NCHW normalised with ImageNet statistics."""
    x = torch.from_numpy(np.require(crops, requirements=["C", "W"])).permute(0, 3, 1, 2).float().div_(255.0)
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    return (x - mean) / std


class CropBatches(SeededBatches):
    """Batches of (images, targets) over in-memory crops, reshuffled every epoch (the seed's flips/turns).

    ``balance="sampler"`` draws with probability inversely proportional to the
    class frequency (with replacement), so rare classes (monocytes in BCCD) are
    seen as often as neutrophils; ``"none"`` shuffles plainly.
    """

    def __init__(self, crops: np.ndarray, targets: Sequence[int], batch_size: int, *, augment: bool = True,
                 balance: str = "sampler", seed: int = 0, num_classes: int | None = None):
        self.x = to_tensor(crops)
        self.y = torch.as_tensor(np.asarray(targets), dtype=torch.long)
        self.batch_size, self.augment, self.balance = int(batch_size), augment, balance
        self.gen = torch.Generator().manual_seed(int(seed))
        counts = torch.bincount(self.y, minlength=num_classes or int(self.y.max()) + 1).float()
        self.sample_weights = (1.0 / counts.clamp_min(1))[self.y]
        self.min_batch = 2  # batch norm needs two samples

    def __len__(self) -> int:
        return max(1, (len(self.y) + self.batch_size - 1) // self.batch_size)

    def order(self) -> torch.Tensor:
        n = len(self.y)
        if self.balance == "sampler":
            return torch.multinomial(self.sample_weights, n, replacement=True, generator=self.gen)
        return torch.randperm(n, generator=self.gen)

    def fetch(self, indices: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        idx = torch.as_tensor(indices, dtype=torch.long)
        xb = self.x[idx]
        if self.augment:
            xb = dihedral_batch(xb, self.gen)
        return xb, self.y[idx]


def class_weights(targets: Sequence[int], num_classes: int) -> torch.Tensor:
    """Inverse-frequency loss weights (mean 1), the alternative to the balanced sampler."""
    counts = torch.bincount(torch.as_tensor(np.asarray(targets), dtype=torch.long), minlength=num_classes).float()
    w = 1.0 / counts.clamp_min(1)
    return w / w.mean()


# ----------------------------------------------------------------------------- fixed-scale crops (blood smears)
#
# A white cell's size is part of its class (a lymphocyte is small, a monocyte
# large), so for smears the crop is a window of fixed size in *image pixels*
# around the cell's centre, never stretched to the box.  Training keeps a wider
# margin (``MARGIN``) so that random rotations and shifts never reach past the
# stored pixels.

FIXED_WINDOW = 256  # source pixels of the classifier's view (BCCD: 640x480 at 100x oil)
MARGIN = 1.5  # stored training crops are this much wider than the view


def crop_fixed(image: np.ndarray, centre_yx: Sequence[float], window: float, size: int) -> np.ndarray:
    """A ``window`` x ``window`` pixel square centred on ``centre_yx``, edge-padded, resized to ``size``."""
    from PIL import Image

    img = as_rgb(image)
    cy, cx = (float(v) for v in centre_yx)
    s = max(2, int(round(window)))
    top, left = int(round(cy - s / 2)), int(round(cx - s / 2))
    h, w = img.shape[:2]
    pad = max(0, -top, -left, top + s - h, left + s - w)
    if pad:
        img = np.pad(img, ((pad, pad), (pad, pad), (0, 0)), mode="reflect" if pad < min(h, w) else "edge")
        top, left = top + pad, left + pad
    img = img[top : top + s, left : left + s]
    return np.asarray(Image.fromarray(np.ascontiguousarray(img)).resize((size, size), Image.BILINEAR))


def box_centre(box_yx: Sequence[float]) -> tuple[float, float]:
    y0, x0, y1, x1 = (float(v) for v in box_yx)
    return (y0 + y1) / 2, (x0 + x1) / 2


def load_fixed_crops(records: Sequence[WBCRecord], window: float, size: int, margin: float = 1.0,
                     cancel=None) -> np.ndarray:
    """(N, S, S, 3) uint8 fixed-scale crops around each record's box centre, S = round(size * margin)."""
    s = int(round(size * margin))

    def crop(img: np.ndarray, r: WBCRecord) -> np.ndarray:
        centre = (img.shape[0] / 2, img.shape[1] / 2) if r.box is None else ((r.box[1] + r.box[3]) / 2,
                                                                              (r.box[0] + r.box[2]) / 2)
        return crop_fixed(img, centre, window * margin, s)

    return _load(records, s, crop, cancel)


def normalise(x01: torch.Tensor) -> torch.Tensor:
    """[0, 1] NCHW -> ImageNet-normalised (what :func:`to_tensor` gives for uint8 crops)."""
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    return (x01 - mean) / std


class AugmentedCropBatches(SeededBatches):
    """Batches over wide fixed-scale crops with :func:`augment_batch`; class-balanced by default.

    ``epoch_size`` (default: the number of crops) sets how many samples one epoch
    draws, so a small data set still gives the optimiser enough steps.
    """

    def __init__(self, crops: np.ndarray, targets: Sequence[int], batch_size: int, size: int, *,
                 balance: str = "sampler", seed: int = 0, num_classes: int | None = None,
                 epoch_size: int | None = None, augment: bool = True):
        self.x = torch.from_numpy(np.require(crops, requirements=["C"])).permute(0, 3, 1, 2).contiguous()
        self.y = torch.as_tensor(np.asarray(targets), dtype=torch.long)
        self.size, self.batch_size, self.balance, self.augment = int(size), int(batch_size), balance, augment
        self.gen = torch.Generator().manual_seed(int(seed))
        counts = torch.bincount(self.y, minlength=num_classes or int(self.y.max()) + 1).float()
        self.sample_weights = (1.0 / counts.clamp_min(1))[self.y]
        self.epoch_size = int(epoch_size or len(self.y))

    def __len__(self) -> int:
        return max(1, self.epoch_size // self.batch_size)

    def order(self) -> torch.Tensor:
        n = len(self.y)
        total = len(self) * self.batch_size
        if self.balance == "sampler":
            return torch.multinomial(self.sample_weights, total, replacement=True, generator=self.gen)
        return torch.cat([torch.randperm(n, generator=self.gen) for _ in range(total // n + 1)])[:total]

    def fetch(self, indices: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        idx = torch.as_tensor(indices, dtype=torch.long)
        xb = self.x[idx].float().div_(255.0)
        if self.augment:
            xb = affine_colour_batch(xb, self.size, self.gen)
        else:
            off = (xb.shape[-1] - self.size) // 2
            xb = xb[..., off : off + self.size, off : off + self.size]
        return normalise(xb), self.y[idx]


def require_stained_rgb(image: np.ndarray, what: str = "the blood classifier") -> np.ndarray:
    """The image as (H, W, 3) uint8 if it can be a stained bright-field smear; else an InputError saying why.

    Refused: gray images (one channel, or three equal channels) and dark-background
    images (fluorescence or dark-field: the median pixel is darker than 25% of full
    scale), because the models learned Wright/Giemsa colours on a bright background
    and would answer confidently and wrongly.
    """
    a = np.asarray(image)
    if a.ndim == 2 or (a.ndim == 3 and a.shape[2] == 1):
        raise InputError(f"{what} needs a colour (RGB) bright-field smear, but this image is gray (one channel); "
                         "open the original colour image")
    if a.ndim != 3 or a.shape[2] not in (3, 4):
        raise InputError(f"{what} needs an RGB smear image (H, W, 3), got an array of shape {a.shape}")
    rgb = as_rgb(a)
    step = max(1, int(np.sqrt(rgb.shape[0] * rgb.shape[1] / 250_000)))
    sample = rgb[::step, ::step].astype(np.int16)
    chroma = float(np.mean(np.abs(sample[..., 0] - sample[..., 1]) + np.abs(sample[..., 1] - sample[..., 2])))
    if chroma < 4.0:
        raise InputError(f"{what} needs a stained colour smear, but this image is gray (its red, green and blue "
                         "channels are the same); open the original colour image")
    if float(np.median(sample.mean(axis=2))) < 64.0:
        raise InputError(f"{what} needs a bright-field smear (light background), but this image has a dark "
                         "background, like a fluorescence or dark-field image")
    return rgb

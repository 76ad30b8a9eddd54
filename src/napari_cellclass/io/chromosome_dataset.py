"""Chromosome classification datasets and the one crop preprocessing.

Three layouts are recognised (:func:`scan_dataset`):

* **BioImLab** (Q-band): one folder per cell, files ``<cell> <class><a|b>.bmp``
  where class 23 is X and 24 is Y (``1 23a.bmp``, ``5 24.bmp``).
* **class-per-folder**: folders ``1``..``22``, ``X``, ``Y`` (or ``23``, ``24``) of
  crops; the cell is the file-name prefix before the first ``_`` or space
  (``cell003_7a.png`` -> ``cell003``), so a split by cell keeps homologues together.
  Names ``<patient>-<karyotype>_<i>`` (``97002023-12_0.tiff``) are split by patient:
  karyotypes of one patient are near-duplicates too.  A folder in which every
  inferred cell holds crops of one class only is refused: its names do not say
  the cell, and a split "by cell" would then be a split by class.
* **spreads with VOC boxes** (Tseng et al. 2023): ``annotations/*.xml`` with
  object names ``A1``..``G22``, ``X``, ``Y`` and images in ``images/``; each box
  becomes one crop, the spread is the cell.

Several labs in one training: a text file (``sources.txt``) that lists data set
folders, one per line (relative to the file; ``#`` starts a comment), is a data
set too.  Each folder keeps its own layout and its own split (so the held-out
cells of a folder are the same whether it is trained alone or with others).

:func:`prepare_crop` is the single preprocessing used by training and inference:
polarity to bright-on-dark, background removed, long axis turned vertical (image
moments), padded to the network's aspect ratio and bilinear-resized.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from ..classes import CHROMOSOME_CLASSES, class_index
from ..errors import InputError
from .limits import ScanReport, check_regular_file, read_image, scan_files, to_uint8

IMAGE_SUFFIXES = {".bmp", ".png", ".jpg", ".jpeg", ".tif", ".tiff"}
_BIOIMLAB = re.compile(r"^(?P<cell>\S+)\s+(?P<cls>\d{1,2})(?P<copy>[ab]?)$", re.IGNORECASE)
_FOLDER_NAMES = {str(i) for i in range(1, 25)} | {"X", "Y", "x", "y"}


@dataclass(frozen=True)
class ChromosomeSample:
    """One chromosome crop: where it is, its class index (0..23), its cell and its split group.

    ``cell`` is the unit of scale (one spread or karyotype: lengths are relative to
    its median); ``group`` is the unit of the split (a patient, where the names say
    it; else the cell); ``source`` names the data set folder in a multi-source list.
    """

    path: Path
    label: int
    cell: str
    box: tuple[int, int, int, int] | None = None  # (y0, x0, y1, x1) inside ``path`` for spread crops
    group: str | None = None
    source: str = ""

    @property
    def split_group(self) -> tuple[str, str]:
        return (self.source, self.group if self.group is not None else self.cell)

    @property
    def class_name(self) -> str:
        return CHROMOSOME_CLASSES[self.label]


# ----------------------------------------------------------------------------- scanning
def voc_class(name: str) -> int:
    """Class index for a VOC object name: ``A1``..``G22`` (Denver group + number), ``X``, ``Y``, or ``7``."""
    s = name.strip().upper()
    m = re.fullmatch(r"[A-G]?(\d{1,2})", s)
    if m:
        return class_index(m.group(1))
    if s in ("X", "Y"):
        return class_index(s)
    raise InputError(f"unknown chromosome name {name!r} (expected A1..G22, X or Y)")


def _read_voc(xml_path: Path) -> tuple[str | None, list[tuple[str, tuple[int, int, int, int]]]]:
    """(image filename, [(name, (y0, x0, y1, x1))]) via the plugin's one VOC parser."""
    from .annotations import read_voc

    ann = read_voc(xml_path)
    fname = Path(ann.image_path).name if ann.image_path is not None else None
    objs = [(name, (int(round(y0)), int(round(x0)), int(round(y1)), int(round(x1))))
            for name, (x0, y0, x1, y1) in zip(ann.labels, np.asarray(ann.boxes, float))]
    return fname, objs


def _scan_bioimlab(root: Path, report: ScanReport) -> list[ChromosomeSample]:
    out = []
    for cell_dir in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith((".", "__MACOSX"))):
        for f in scan_files(cell_dir, IMAGE_SUFFIXES, report, root=root):
            m = _BIOIMLAB.match(f.stem)
            if not m:
                continue
            k = int(m.group("cls"))
            if not 1 <= k <= 24:
                raise InputError(f"class {k} is outside 1..24 (23 = X, 24 = Y)", f)
            out.append(ChromosomeSample(f, k - 1, f"{cell_dir.name}"))
    return out


def _cell_of(stem: str) -> str:
    m = re.match(r"^([^_\s]+)[_\s]", stem)
    return m.group(1) if m else stem


_PATIENT_KARYOTYPE = re.compile(r"^(?P<patient>[^-_\s]+)-(?P<karyotype>[^-_\s]+)$")


def _patient_of(cell: str) -> str | None:
    """``97002023-12`` -> ``97002023`` (the patient of a ``<patient>-<karyotype>`` cell)."""
    m = _PATIENT_KARYOTYPE.match(cell)
    return m.group("patient") if m else None


def _refuse_one_class_cells(samples: list[ChromosomeSample], root: Path) -> None:
    """A class-per-folder set whose every cell holds one class: the names do not say the cell."""
    classes: dict[str, set[int]] = {}
    for s in samples:
        classes.setdefault(s.cell, set()).add(s.label)
    if len(classes) >= 2 and len({s.label for s in samples}) >= 2 and all(len(v) == 1 for v in classes.values()):
        example = samples[0].path.name
        raise InputError(
            f"every cell inferred from the file names holds crops of one class only (e.g. {example!r} -> cell "
            f"{samples[0].cell!r}), so a split by cell would be a split by class; name each crop "
            "'<cell>_<anything>.<ext>' (e.g. 'cell003_7a.png', or '<patient>-<karyotype>_<i>.tiff'), "
            "with the same <cell> for all chromosomes of one cell", root)


def _unknown_class_folders(root: Path) -> list[str]:
    return sorted(p.name for p in root.iterdir()
                  if p.is_dir() and p.name not in _FOLDER_NAMES and not p.name.startswith((".", "__MACOSX")))


def _folder_hint(names: list[str]) -> str:
    hints = []
    for n in names:
        m = re.fullmatch(r"(?:chr|chromosome|c)[_ -]?(\d{1,2}|x|y)", n, re.IGNORECASE)
        if m and (m.group(1).upper() in ("X", "Y") or 1 <= int(m.group(1)) <= 24):
            hints.append(f"rename {n}/ to {m.group(1).upper()}/")
    return ("; " + ", ".join(hints[:3])) if hints else ""


def _scan_class_folders(root: Path, report: ScanReport) -> list[ChromosomeSample]:
    """Folders ``1``..``22``, ``X``, ``Y`` (or 23/24); any other folder is an error, never ignored."""
    unknown = _unknown_class_folders(root)
    if unknown:
        raise InputError(
            f"folder(s) {', '.join(n + '/' for n in unknown[:6])} are not chromosome classes (expected 1..22, X, "
            f"Y, or 23 = X and 24 = Y){_folder_hint(unknown)}; move them out of the data set", root)
    out = []
    for d in sorted(p for p in root.iterdir() if p.is_dir() and p.name in _FOLDER_NAMES):
        k = class_index(d.name)
        files = scan_files(d, IMAGE_SUFFIXES, report, root=root)
        if not files:
            report.skip("empty class folder(s)", d)
        for f in files:
            cell = _cell_of(f.stem)
            out.append(ChromosomeSample(f, k, cell, group=_patient_of(cell)))
    if out:
        _refuse_one_class_cells(out, root)
        if len({s.split_group for s in out}) < 2:  # one patient only: split by karyotype instead
            out = [ChromosomeSample(s.path, s.label, s.cell, s.box) for s in out]
    return out


def _scan_spreads(root: Path, report: ScanReport) -> list[ChromosomeSample]:
    ann = root / "annotations" if (root / "annotations").is_dir() else root
    img_dir = root / "images" if (root / "images").is_dir() else ann
    out = []
    for xml in sorted(ann.glob("*.xml")):
        if xml.name.startswith("._"):
            report.skip("macOS '._' metadata file(s)", xml)
            continue
        fname, objs = _read_voc(xml)
        img = None
        for cand in ([img_dir / fname] if fname else []) + [img_dir / (xml.stem + s) for s in (".jpg", ".png", ".bmp", ".tif")]:
            if cand.is_file():
                img = cand
                break
        if img is None:
            raise InputError("no image found for this annotation file", xml)
        for name, box in objs:
            try:
                cls = voc_class(name)
            except InputError as exc:
                raise InputError(f"object {name!r}: {exc.problem}", xml) from None
            out.append(ChromosomeSample(img, cls, xml.stem, box))
    return out


def read_sources(path: str | Path) -> list[Path]:
    """The data set folders a ``sources.txt`` lists (one per line, relative to the file, ``#`` comments)."""
    path = check_regular_file(path, "sources list")
    if path.stat().st_size > 1_000_000:
        raise InputError("a sources list is a short text file (one folder per line); this one is over 1 MB", path)
    folders = []
    for n, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        folder = (path.parent / line) if not Path(line).is_absolute() else Path(line)
        if not folder.is_dir():
            raise InputError(f"line {n}: data set folder {line!r} does not exist", path)
        folders.append(folder)
    if not folders:
        raise InputError("the sources list names no data set folder (one folder per line)", path)
    return folders


def detect_layout(root: str | Path) -> str:
    """"bioimlab", "class_folders", "spreads" or "sources"; raises InputError when none fits."""
    root = Path(root)
    if root.is_file() and root.suffix.lower() == ".txt":
        return "sources"
    if not root.is_dir():
        raise InputError("dataset folder does not exist", root)
    subdirs = [p for p in root.iterdir() if p.is_dir()]
    if any(root.glob("*.xml")) or (root / "annotations").is_dir():
        return "spreads"
    names = {p.name for p in subdirs}
    for d in subdirs:
        if any(_BIOIMLAB.match(f.stem) for f in d.iterdir() if f.suffix.lower() in IMAGE_SUFFIXES):
            return "bioimlab"
    if names & _FOLDER_NAMES:
        return "class_folders"
    unknown = _unknown_class_folders(root)
    found = f"; found folder(s) {', '.join(n + '/' for n in unknown[:6])}{_folder_hint(unknown)}" if unknown else ""
    raise InputError(
        "not a chromosome dataset: expected class folders 1..22/X/Y, BioImLab cell folders "
        f"('<cell> <class><a|b>.bmp') or VOC spreads (annotations/*.xml + images/){found}", root)


def scan_dataset(root: str | Path) -> list[ChromosomeSample]:
    """All chromosome crops under ``root`` (layout detected automatically)."""
    root = Path(root)
    layout = detect_layout(root)
    if layout == "sources":
        samples, skipped = [], {}
        for folder in read_sources(root):
            tag = folder.name
            samples += [ChromosomeSample(s.path, s.label, f"{tag}/{s.cell}", s.box,
                                         None if s.group is None else f"{tag}/{s.group}", tag)
                        for s in scan_dataset(folder)]
            for reason, paths in LAST_SCAN.skipped.items():  # each folder's scan reports its own skips
                skipped.setdefault(reason, []).extend(paths)
        LAST_SCAN.files, LAST_SCAN.skipped = [s.path for s in samples], skipped
        return samples
    report = ScanReport()
    scan = {"bioimlab": _scan_bioimlab, "class_folders": _scan_class_folders, "spreads": _scan_spreads}[layout]
    samples = scan(root, report)
    report.files = [s.path for s in samples]
    LAST_SCAN.files, LAST_SCAN.skipped = report.files, report.skipped
    report.warn(root)
    if not samples:
        raise InputError(f"no chromosome images found ({layout} layout)", root)
    return samples


#: What the latest :func:`scan_dataset` used and skipped (for reports and tests).
LAST_SCAN = ScanReport()


def split_by_cell(samples: Sequence[ChromosomeSample], val_fraction: float = 0.2,
                  seed: int = 0) -> tuple[list[ChromosomeSample], list[ChromosomeSample]]:
    """Train/validation split by cell or patient (never by crop: homologues are near-duplicates).

    Each source of a multi-source list is split on its own, so a folder's held-out
    cells do not move when other folders are added.
    """
    from .splits import grouped_split

    train: list[ChromosomeSample] = []
    val: list[ChromosomeSample] = []
    for source in sorted({s.source for s in samples}):
        part = [s for s in samples if s.source == source]
        groups = [s.group if s.group is not None else s.cell for s in part]
        if len(set(groups)) < 2:
            where = f" in {source}" if source else ""
            raise InputError(f"need at least 2 cells to split by cell{where}, found {len(set(groups))}")
        tr, va = grouped_split(groups, val_fraction, seed)
        train += [part[i] for i in tr]
        val += [part[i] for i in va]
    return train, val


# ----------------------------------------------------------------------------- loading
def _as_gray(a: np.ndarray) -> np.ndarray:
    a = np.asarray(a)
    if a.ndim == 3 and a.shape[-1] in (3, 4):
        a = a[..., :3].astype(np.float32).mean(-1)
    elif a.ndim == 3 and a.shape[0] in (1, 3):
        a = a.astype(np.float32).mean(0)
    if a.ndim != 2:
        raise InputError(f"a chromosome crop must be a 2-D gray (or RGB) image, got shape {a.shape}")
    is_float = np.issubdtype(a.dtype, np.floating)
    a = a.astype(np.float32)
    if a.size and (a.max() > 255 or (is_float and 0 < a.max() <= 1.0)):
        lo, hi = float(a.min()), float(a.max())
        a = (a - lo) / max(hi - lo, 1e-6) * 255.0
    return a


def read_gray8(path: Path) -> np.ndarray:
    """(H, W) uint8 through the shared door: size checked first, 16-bit/float rescaled, RGB to luma."""
    from PIL import Image

    a = read_image(path)
    if a.ndim == 3 and a.shape[-1] in (2, 4):
        a = a[..., :-1]
    if a.ndim == 3 and a.shape[-1] == 1:
        a = a[..., 0]
    a = to_uint8(a, path)
    if a.ndim == 3 and a.shape[-1] == 3:
        a = np.asarray(Image.fromarray(np.ascontiguousarray(a)).convert("L"))  # ITU-R 601 luma, as before
    if a.ndim != 2:
        raise InputError(f"a chromosome image must be 2-D gray or RGB, got shape {a.shape}", path)
    return a


def load_crop(sample: ChromosomeSample, _cache: dict | None = None) -> np.ndarray:
    """The raw gray crop (uint8) of one sample."""
    from PIL import Image

    key = str(sample.path)
    img = _cache.get(key) if _cache is not None else None
    if img is None:
        img = read_gray8(sample.path)
        if _cache is not None and sample.box is not None:
            _cache[key] = img
    if sample.box is not None:
        y0, x0, y1, x1 = sample.box
        H, W = img.shape
        y0, x0, y1, x1 = max(0, y0), max(0, x0), min(H, y1), min(W, x1)
        if y1 <= y0 or x1 <= x0:
            raise InputError(f"box {sample.box} is empty or outside the image", sample.path)
        img = img[y0:y1, x0:x1]
    return img


# ----------------------------------------------------------------------------- preprocessing
def _foreground(x: np.ndarray) -> np.ndarray:
    """Largest bright component (Otsu threshold), holes filled."""
    from scipy import ndimage as ndi
    from skimage.filters import threshold_otsu

    if float(x.max()) <= 0:
        return np.ones(x.shape, bool)
    try:
        t = threshold_otsu(x)
    except ValueError:
        t = 0.0
    m = x > max(t * 0.5, 1e-3)
    lab, n = ndi.label(m)
    if n == 0:
        return np.ones(x.shape, bool)
    if n > 1:
        sizes = ndi.sum(m, lab, index=np.arange(1, n + 1))
        m = lab == (int(np.argmax(sizes)) + 1)
    return ndi.binary_fill_holes(m)


def orient_crop(gray_crop: np.ndarray, mask: np.ndarray | None = None,
                orient: bool = True) -> np.ndarray:
    """Bright-on-dark float crop (0..1), background zeroed, long axis vertical, cut to the chromosome."""
    from scipy import ndimage as ndi
    from skimage.measure import regionprops
    from skimage.transform import rotate

    g = _as_gray(gray_crop)
    if g.size == 0 or min(g.shape) < 2:
        raise InputError(f"chromosome crop is empty or too small: shape {g.shape}")
    if mask is not None:
        mask = np.asarray(mask).astype(bool)
        if mask.shape != g.shape:
            raise InputError(f"mask shape {mask.shape} does not match crop shape {g.shape}")
    border = np.concatenate([g[0], g[-1], g[:, 0], g[:, -1]])
    bg = float(np.median(border))
    if mask is not None and mask.any() and (~mask).any():
        invert = float(g[mask].mean()) < float(np.median(g[~mask]))
        bg = float(np.median(g[~mask]))
    else:
        invert = bg > 0.5 * (float(g.min()) + float(g.max()))
    if invert:
        g, bg = 255.0 - g, 255.0 - bg
    x = np.clip(g - bg, 0, None)
    if mask is None or not mask.any():
        mask = _foreground(x)
    keep = ndi.binary_dilation(mask, iterations=1)
    x = x * keep
    ref = float(np.percentile(x[mask], 99)) if mask.any() else float(x.max())
    x = np.clip(x / max(ref, 1e-6), 0, 1).astype(np.float32)
    if orient and mask.sum() >= 3:
        props = regionprops(mask.astype(np.uint8))
        if props:
            angle = -np.degrees(props[0].orientation)
            if abs(angle) > 1:
                x = rotate(x, angle, resize=True, order=1, mode="constant", cval=0.0).astype(np.float32)
    ys, xs = np.nonzero(x > 0.02)
    if ys.size:
        x = x[ys.min():ys.max() + 1, xs.min():xs.max() + 1]
    return x


def prepare_crop(gray_crop: np.ndarray, mask: np.ndarray | None = None, size: Sequence[int] = (448, 456),
                 pad_to: int | None = None, orient: bool = True) -> np.ndarray:
    """The one preprocessing for training and inference: crop -> float32 (H, W) in 0..1.

    ``gray_crop``: one chromosome (gray or RGB, dark-on-light G-band or
    bright-on-dark Q-band/FISH; polarity is detected).  ``mask`` (optional)
    marks the chromosome, else the largest Otsu component is used.  The long
    axis is turned vertical, the crop is padded (centred) to the aspect ratio of
    ``size`` and bilinear-resized.  ``pad_to`` (pixels, source scale) pads small
    chromosomes to a common canvas height so that their length stays visible
    to the network, as the seed pads crops to 224 px before resizing.
    """
    return canvas_crop(orient_crop(gray_crop, mask, orient), size, pad_to)


def canvas_crop(x: np.ndarray, size: Sequence[int] = (448, 456), pad_to: float | None = None) -> np.ndarray:
    """Second half of :func:`prepare_crop`: an oriented crop centred on its canvas and resized."""
    import torch

    H, W = int(size[0]), int(size[1])
    h, w = x.shape
    ch = max(float(h), w * H / W, float(pad_to or 0))
    cw = ch * W / H
    ch_i, cw_i = int(np.ceil(ch)), int(np.ceil(cw))
    canvas = np.zeros((ch_i, cw_i), np.float32)
    y0, x0 = (ch_i - h) // 2, (cw_i - w) // 2
    canvas[y0:y0 + h, x0:x0 + w] = x[: ch_i - y0, : cw_i - x0]
    t = torch.from_numpy(canvas)[None, None]
    out = torch.nn.functional.interpolate(t, size=(H, W), mode="bilinear", align_corners=False,
                                          antialias=(ch_i > H))
    return out[0, 0].numpy().astype(np.float32)


def estimate_pad_to(crops: Sequence[np.ndarray], quantile: float = 98.0, limit: int = 400) -> int:
    """A canvas height (source pixels) that holds nearly every chromosome: a high quantile of lengths."""
    crops = list(crops)
    step = max(1, len(crops) // limit)
    lengths = [orient_crop(c).shape[0] for c in crops[::step]]
    return int(np.ceil(np.percentile(lengths, quantile))) if lengths else 0

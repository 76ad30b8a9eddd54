"""Kaggle-2018 HPA layout: ``train.csv`` (``Id,Target``) + ``train/<id>_<colour>.png``.

Loading, the split by image id, the seed-000 augmentations (flips, 90-degree
rotations, random crop, colour jitter, noise) and the multi-label metrics
(macro F1, accuracy) with per-class threshold fitting.
"""
from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..classes import HPA_CLASSES
from ..metrics import f1_per_class, multilabel_metrics  # noqa: F401  (re-exported: the one metrics module)
from ..errors import InputError
from .hpa_reader import CHANNELS, EXTENSIONS, read_channel
from .limits import confined, safe_relative

NUM_CLASSES = len(HPA_CLASSES)


@dataclass
class HPAItem:
    set_id: str
    labels: list[int]


def find_csv(data: Path) -> Path:
    data = Path(data)
    if data.is_file() and data.suffix.lower() == ".csv":
        return data
    for name in ("train.csv", "labels.csv"):
        if (data / name).is_file():
            return data / name
    raise InputError("no train.csv (Kaggle HPA layout: Id,Target + train/<id>_<colour>.png) in this folder", data)


def image_folder(data: Path) -> Path:
    data = Path(data)
    root = data.parent if data.is_file() else data
    return root / "train" if (root / "train").is_dir() else root


def read_labels(csv_path: Path) -> list[HPAItem]:
    """Rows of ``Id,Target`` (space-separated class ids 0..27)."""
    try:
        text = Path(csv_path).read_text(encoding="utf-8-sig")
    except UnicodeDecodeError:
        raise InputError("label table is not UTF-8 text", csv_path) from None
    except OSError as exc:
        raise InputError(f"label table cannot be read: {exc.strerror or exc}", csv_path) from None
    items = []
    reader = csv.DictReader(text.splitlines())
    if not reader.fieldnames or "Id" not in reader.fieldnames or "Target" not in reader.fieldnames:
        raise InputError(f"expected columns Id,Target; found {reader.fieldnames}", csv_path)
    for line, row in enumerate(reader, start=2):
        try:
            labels = sorted({int(t) for t in str(row["Target"]).split()})
        except ValueError:
            raise InputError(f"line {line}: Target {row['Target']!r} is not space-separated class ids", csv_path) from None
        bad = [t for t in labels if not 0 <= t < NUM_CLASSES]
        if bad:
            raise InputError(f"line {line}: class id(s) {bad} outside 0..{NUM_CLASSES - 1}", csv_path)
        set_id = str(row["Id"]).strip()
        try:  # an Id names files inside the data set: not '../../outside', not an absolute path
            safe_relative(set_id, csv_path, f"line {line}: Id")
        except InputError as exc:
            raise InputError(exc.problem, csv_path) from None
        items.append(HPAItem(set_id, labels))
    if not items:
        raise InputError("label table has no rows", csv_path)
    return items


def channel_path(folder: Path, set_id: str, colour: str) -> Path | None:
    """The one file of a channel; two formats of it (``a_red.png``, ``a_red.jpg``) are refused."""
    safe_relative(set_id, folder, "image Id")
    found = [p for ext in EXTENSIONS if (p := folder / f"{set_id}_{colour}{ext}").is_file()]
    for p in found:  # a link inside the data set that leads out of it is refused, never read
        confined(p, folder, f"channel file of image {set_id!r}")
    if len(found) > 1:
        raise InputError(f"image {set_id!r}: the {colour} channel exists as "
                         + " and ".join(p.name for p in found) + "; keep one format per image", folder)
    return found[0] if found else None


def load_set(folder: Path, set_id: str) -> np.ndarray:
    """(4, H, W) RGBY array for one id; a missing channel is an error naming it."""
    chans = []
    for c in CHANNELS:
        p = channel_path(folder, set_id, c)
        if p is None:
            raise InputError(f"image {set_id!r}: channel file {set_id}_{c}.<png|tif|jpg> is missing", folder)
        chans.append(read_channel(p, c))
    shapes = {a.shape for a in chans}
    if len(shapes) != 1:
        raise InputError(f"image {set_id!r}: channels differ in size {sorted(shapes)}", folder)
    return np.stack(chans)


def to_unit_float(img: np.ndarray) -> np.ndarray:
    """Scale by the dtype's range (8- and 16-bit alike) to float32 in [0, 1]."""
    img = np.asarray(img)
    if np.issubdtype(img.dtype, np.integer):
        return img.astype(np.float32) / float(np.iinfo(img.dtype).max)
    img = img.astype(np.float32)
    return img / img.max() if img.size and img.max() > 1.0 else img


def resize(x: np.ndarray | torch.Tensor, size: int) -> torch.Tensor:
    """(C, H, W) -> (C, size, size) float tensor (area interpolation when shrinking)."""
    t = torch.as_tensor(np.ascontiguousarray(x) if isinstance(x, np.ndarray) else x).float()
    if t.shape[-2:] == (size, size):
        return t
    mode = "area" if t.shape[-1] > size else "bilinear"
    kw = {} if mode == "area" else {"align_corners": False}
    return torch.nn.functional.interpolate(t[None], size=(size, size), mode=mode, **kw)[0]


def split_by_id(items: list[HPAItem], val_fraction: float = 0.2, seed: int = 0) -> tuple[list[HPAItem], list[HPAItem]]:
    """Random split on image ids (one id never lands in both)."""
    from .splits import grouped_split

    tr, va = grouped_split([it.set_id for it in items], val_fraction, seed)
    return [items[i] for i in tr], [items[i] for i in va]


def augment(x: torch.Tensor, g: torch.Generator, *, crop: float = 0.85, jitter: float = 0.2, noise: float = 0.02) -> torch.Tensor:
    """Seed-000 augmentation of one (C, S, S) image in [0, 1]: flips, 90-degree turns,
    random crop (resized back), per-channel brightness/contrast jitter, Gaussian noise."""
    size = x.shape[-1]
    if torch.rand(1, generator=g) < 0.5:
        x = x.flip(-1)
    if torch.rand(1, generator=g) < 0.5:
        x = x.flip(-2)
    x = torch.rot90(x, int(torch.randint(0, 4, (1,), generator=g)), dims=(-2, -1))
    if crop < 1.0 and torch.rand(1, generator=g) < 0.5:
        side = int(size * (crop + (1 - crop) * float(torch.rand(1, generator=g))))
        y0 = int(torch.randint(0, size - side + 1, (1,), generator=g))
        x0 = int(torch.randint(0, size - side + 1, (1,), generator=g))
        x = resize(x[:, y0:y0 + side, x0:x0 + side], size)
    if jitter:
        gain = 1 + (torch.rand(x.shape[0], 1, 1, generator=g) * 2 - 1) * jitter
        bias = (torch.rand(x.shape[0], 1, 1, generator=g) * 2 - 1) * jitter * 0.1
        x = x * gain + bias
    if noise:
        x = x + torch.randn(x.shape, generator=g) * noise
    return x.clamp(0, 1)


class HPADataset(torch.utils.data.Dataset):
    """Items -> (normalized (4, S, S) tensor, 28-hot target); images cached in memory at size S."""

    def __init__(self, folder: Path, items: list[HPAItem], size: int, *, mean: list[float], std: list[float],
                 train: bool = False, seed: int = 0, images: np.ndarray | None = None):
        self.folder, self.items, self.size, self.train = Path(folder), items, int(size), train
        self.mean = torch.tensor(mean, dtype=torch.float32)[:, None, None]
        self.std = torch.tensor(std, dtype=torch.float32)[:, None, None]
        self.g = torch.Generator().manual_seed(seed)
        self._cache: dict[int, torch.Tensor] = {}
        self._images = images

    def __len__(self) -> int:
        return len(self.items)

    def unit_image(self, i: int) -> torch.Tensor:
        if i not in self._cache:
            raw = self._images[i] if self._images is not None else load_set(self.folder, self.items[i].set_id)
            self._cache[i] = resize(to_unit_float(raw), self.size)
        return self._cache[i]

    def target(self, i: int) -> torch.Tensor:
        t = torch.zeros(NUM_CLASSES)
        t[self.items[i].labels] = 1
        return t

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.unit_image(i)
        if self.train:
            x = augment(x, self.g)
        return (x - self.mean) / self.std, self.target(i)

    def targets(self) -> np.ndarray:
        return np.stack([self.target(i).numpy() for i in range(len(self))])


def channel_stats(ds: HPADataset, n: int = 64) -> tuple[list[float], list[float]]:
    """Per-channel mean/std over up to ``n`` images (unit scale)."""
    idx = np.linspace(0, len(ds) - 1, min(n, len(ds))).astype(int)
    xs = torch.stack([ds.unit_image(int(i)) for i in idx])
    mean = xs.mean(dim=(0, 2, 3))
    std = xs.std(dim=(0, 2, 3)).clamp_min(1e-3)
    return [float(v) for v in mean], [float(v) for v in std]


# ---------------------------------------------------------------------------- metrics

def fit_thresholds(truth: np.ndarray, probs: np.ndarray, grid: np.ndarray | None = None, default: float = 0.5) -> list[float]:
    """F1-optimal threshold per class on validation data (``default`` where a class has no positives)."""
    grid = np.round(np.arange(0.05, 0.96, 0.05), 2) if grid is None else grid
    truth = truth.astype(bool)
    table = np.stack([np.nan_to_num(f1_per_class(truth, probs >= t)) for t in grid])  # (thresholds, classes)
    out = []
    for c in range(probs.shape[1]):
        if not truth[:, c].any():
            out.append(default)
            continue
        scores = list(table[:, c])
        best = max(scores)
        ties = [t for t, s in zip(grid, scores) if s >= best - 1e-12]
        out.append(float(min(ties, key=lambda t: abs(t - default))))
    return out

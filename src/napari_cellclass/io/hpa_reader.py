"""Human Protein Atlas channel sets: ``<id>_red|green|blue|yellow.<png|tif|tiff|jpg>``.

One field of view is four grayscale files.  Dropping any one of them (or a folder
of sets) opens all four as image layers with the HPA colours and additive
blending.  HPA website JPEGs are RGB-tinted (the red file keeps its signal in R,
the yellow file in R and G); :func:`read_channel` reduces them to one channel.
Files that are not part of an HPA set are declined (the reader returns ``None``)
so other readers get them.
"""
from __future__ import annotations

import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from ..errors import InputError

CHANNELS = ("red", "green", "blue", "yellow")
CHANNEL_ROLES = {
    "red": "microtubules",
    "green": "protein",
    "blue": "nucleus",
    "yellow": "endoplasmic reticulum",
}
COLORMAPS = {"red": "red", "green": "green", "blue": "blue", "yellow": "yellow"}
EXTENSIONS = (".png", ".tif", ".tiff", ".jpg", ".jpeg")
#: Sets one viewer open may read (a folder of a whole HPA download would be thousands of layers).
MAX_SETS_PER_OPEN = 16
_NAME_RE = re.compile(r"^(?P<id>.+)_(?P<colour>red|green|blue|yellow)\.(?P<ext>png|tif|tiff|jpg|jpeg)$", re.IGNORECASE)


@dataclass
class HPASet:
    """One field of view: its id and the file of each channel that exists."""

    set_id: str
    paths: dict[str, Path] = field(default_factory=dict)
    #: colours with several files of different formats (``a_red.png`` and ``a_red.jpg``);
    #: ``paths`` holds the first of them, and :func:`read_set` refuses the set
    ambiguous: dict[str, list[Path]] = field(default_factory=dict)

    @property
    def missing(self) -> list[str]:
        return [c for c in CHANNELS if c not in self.paths]


def parse_name(path: str | Path) -> tuple[str, str] | None:
    """``(set_id, colour)`` for an HPA channel file name, else None."""
    m = _NAME_RE.match(Path(path).name)
    if m is None:
        return None
    return m.group("id"), m.group("colour").lower()


def find_set(path: str | Path) -> HPASet | None:
    """The set a single channel file belongs to (its siblings found by name), or None.

    Siblings with the opened file's own extension win: opening ``a_red.png`` next to
    ``a_red.jpg`` reads the PNG set.  A colour that exists only in other extensions,
    more than one of them, is ambiguous and refused.
    """
    path = Path(path)
    parsed = parse_name(path)
    if parsed is None:
        return None
    set_id, colour = parsed
    ext = path.suffix.lower()
    by_colour: dict[str, list[Path]] = {}
    for sib in sorted(path.parent.glob(f"{glob_escape(set_id)}_*")):
        p = parse_name(sib)
        if p is not None and p[0] == set_id and sib.is_file() and not sib.name.startswith("._"):
            by_colour.setdefault(p[1], []).append(sib)
    s = HPASet(set_id)
    for c, files in by_colour.items():
        same = [f for f in files if f.suffix.lower() == ext]
        if c == colour:
            s.paths[c] = path
        elif same:
            s.paths[c] = same[0]
        elif len({f.suffix.lower() for f in files}) == 1:
            s.paths[c] = files[0]
        else:
            s.paths[c] = files[0]
            s.ambiguous[c] = files
    s.paths.setdefault(colour, path)
    return s


def glob_escape(text: str) -> str:
    """Escape glob metacharacters in a set id."""
    return re.sub(r"([\[\]*?])", r"[\1]", text)


def find_sets(folder: str | Path) -> list[HPASet]:
    """All sets in a folder (non-recursive), sorted by id.

    A colour present in two formats (``a_red.png`` and ``a_red.jpg``) is recorded in
    ``HPASet.ambiguous`` and refused when the set is read, never resolved by guessing.
    """
    sets: dict[str, HPASet] = {}
    for f in sorted(Path(folder).iterdir()):
        p = parse_name(f) if not f.name.startswith("._") and f.is_file() else None
        if p is None:
            continue
        s = sets.setdefault(p[0], HPASet(p[0]))
        if p[1] in s.ambiguous:
            s.ambiguous[p[1]].append(f)
        elif p[1] in s.paths:
            s.ambiguous[p[1]] = [s.paths[p[1]], f]
        else:
            s.paths[p[1]] = f
    return [sets[k] for k in sorted(sets)]


def _imread(path: Path) -> np.ndarray:
    """Through the shared door (:mod:`.limits`): size checked before decoding, bit depth kept."""
    from .limits import read_image

    return read_image(path)


def reduce_to_channel(img: np.ndarray, colour: str, path: Path | None = None) -> np.ndarray:
    """One 2-D channel from a gray or RGB(A)-tinted HPA file.

    Gray stays as is.  For an RGB file the signal of ``colour`` is taken from its
    own colour plane(s): red -> R, green -> G, blue -> B, yellow -> mean of R, G.
    An RGB file whose planes are equal (gray saved as RGB) gives that plane.
    """
    img = np.asarray(img)
    if img.ndim == 2:
        return img
    if img.ndim == 3 and img.shape[-1] in (3, 4):
        rgb = img[..., :3]
        if np.array_equal(rgb[..., 0], rgb[..., 1]) and np.array_equal(rgb[..., 1], rgb[..., 2]):
            return rgb[..., 0]
        if colour == "yellow":
            out = (rgb[..., 0].astype(np.float32) + rgb[..., 1].astype(np.float32)) / 2
            return np.round(out).astype(img.dtype)
        return rgb[..., {"red": 0, "green": 1, "blue": 2}[colour]]
    if img.ndim == 3 and img.shape[0] == 1:
        return img[0]
    raise InputError(f"expected a 2-D grayscale or RGB image for the {colour} channel, got shape {img.shape}", path)


def read_channel(path: str | Path, colour: str | None = None) -> np.ndarray:
    """Read one channel file as a 2-D array (8- or 16-bit kept)."""
    path = Path(path)
    if colour is None:
        parsed = parse_name(path)
        colour = parsed[1] if parsed else "red"
    return reduce_to_channel(_imread(path), colour, path)


def read_set(s: HPASet, *, warn: bool = True, work: float | None = None) -> tuple[dict[str, np.ndarray], list[str]]:
    """Read every present channel; return ``(arrays by colour, missing colours)``.

    All present channels must have the same shape.  Missing channels are named
    in a warning (``warn=True``).  A colour found in two formats is an error.
    The set's channels together are held to the memory budget from their headers
    (four 16000 px channels pass one by one, not together); ``work`` (bytes per
    pixel of the analysis to follow) adds the whole-image bound.
    """
    check_unambiguous(s)
    check_set_budget(s, work)
    arrays = {c: read_channel(s.paths[c], c) for c in CHANNELS if c in s.paths}
    shapes = {c: a.shape for c, a in arrays.items()}
    if len(set(shapes.values())) > 1:
        raise InputError(
            f"HPA set {s.set_id!r}: channels differ in size: "
            + ", ".join(f"{c} {shp}" for c, shp in shapes.items()),
            next(iter(s.paths.values())).parent,
        )
    missing = s.missing
    if missing and warn:
        warnings.warn(
            f"HPA set {s.set_id!r} is missing channel(s): "
            + ", ".join(f"{c} ({CHANNEL_ROLES[c]})" for c in missing)
            + "; a 4-channel model cannot run on it",
            UserWarning,
            stacklevel=2,
        )
    return arrays, missing


def check_set_budget(s: HPASet, work: float | None = None) -> None:
    """Refuse a set whose channels, decoded together (or analysed whole), would pass the memory budget."""
    from ..budget import check_whole_image
    from .limits import check_decoded, probe

    infos = [(s.paths[c], probe(s.paths[c])) for c in CHANNELS if c in s.paths]
    if not infos:
        return
    first, info = infos[0]
    h, w = info.shape[0], info.shape[1]
    values = sum(int(np.prod(i.shape)) * int(np.dtype(i.dtype).itemsize) for _, i in infos)
    check_decoded(h, w, values, 1, first)
    if work is not None:
        check_whole_image(h, w, first, work, f"analysing the {len(infos)}-channel set whole")


def check_unambiguous(s: HPASet) -> None:
    """Refuse a set where one colour exists in several formats (which one is meant?)."""
    if s.ambiguous:
        c, files = next(iter(s.ambiguous.items()))
        raise InputError(
            f"HPA set {s.set_id!r}: the {c} channel exists as "
            + " and ".join(f.name for f in files)
            + "; keep one format per set (or open one of the files to pick its format)",
            files[0].parent)


def stack_channels(arrays: dict[str, np.ndarray], set_id: str = "") -> np.ndarray:
    """(4, H, W) array in RGBY order; refuses with a clear message when one is missing."""
    missing = [c for c in CHANNELS if c not in arrays or arrays[c] is None]
    if missing:
        raise InputError(
            f"the HPA model needs all four channels (red, green, blue, yellow); "
            f"{'set ' + repr(set_id) + ' ' if set_id else ''}lacks: {', '.join(missing)}"
        )
    return np.stack([np.asarray(arrays[c]) for c in CHANNELS])


def layer_data(s: HPASet, arrays: dict[str, np.ndarray]) -> list[tuple[Any, dict[str, Any], str]]:
    """napari layer-data tuples: one image layer per present channel."""
    meta_common = {
        "hpa_set_id": s.set_id,
        "hpa_paths": {c: str(p) for c, p in s.paths.items()},
        "hpa_missing": s.missing,
    }
    out = []
    for c in CHANNELS:
        if c not in arrays:
            continue
        a = arrays[c]
        lo, hi = float(a.min()), float(a.max())
        if hi <= lo:
            hi = lo + 1.0
        kwargs = {
            "name": f"{s.set_id} {c} ({CHANNEL_ROLES[c]})",
            "colormap": COLORMAPS[c],
            "blending": "additive",
            "contrast_limits": [lo, hi],
            "metadata": {**meta_common, "hpa_channel": c, "hpa_role": CHANNEL_ROLES[c], "path": str(s.paths[c])},
        }
        out.append((a, kwargs, "image"))
    return out


def read_hpa(path: str | Path | list) -> list[tuple[Any, dict[str, Any], str]]:
    """Layers for one channel file, a list of files, or a folder of sets."""
    paths = [Path(p) for p in path] if isinstance(path, (list, tuple)) else [Path(path)]
    sets: dict[str, HPASet] = {}
    for p in paths:
        found = find_sets(p) if p.is_dir() else [s for s in [find_set(p)] if s is not None]
        for s in found:
            sets.setdefault(str(next(iter(s.paths.values())).parent / s.set_id), s)
    if not sets:
        raise InputError("no HPA channel files (<id>_red|green|blue|yellow.<png|tif|jpg>) found", paths[0])
    if len(sets) > MAX_SETS_PER_OPEN:
        raise InputError(f"holds {len(sets)} HPA sets; the viewer opens at most {MAX_SETS_PER_OPEN} at once "
                         "(4 layers each): open one channel file of a set, or classify the folder with "
                         "`cellclass predict hpa`", paths[0])
    layers: list = []
    for s in sets.values():
        arrays, _ = read_set(s)
        layers.extend(layer_data(s, arrays))
    return layers


def _claims(path: Path) -> bool:
    if path.is_dir():
        try:
            return bool(find_sets(path))
        except OSError:
            return False
    return parse_name(path) is not None and path.suffix.lower() in EXTENSIONS


# ----------------------------------------------------------------------------- napari's "remember this choice"
PLUGIN = "napari-cellclass"
#: Extensions our readers claim only by name (HPA channels): napari's reader dialog remembers a
#: choice for the whole extension (``*.jpg``), which would send every smear or spread JPEG to us.
NAME_ONLY_EXTENSIONS = (".png", ".jpg", ".jpeg")


def narrow_preferences(prefs: dict[str, str]) -> dict[str, str]:
    """napari reader preferences with ours made to fit what we read.

    ``"*.jpg": "napari-cellclass"`` (what ticking "remember" in napari's reader dialog
    stores after choosing our HPA reader for ``x_red.jpg``) becomes one entry per HPA
    channel pattern (``*_red.jpg`` ... ``*_yellow.jpg``): napari matches a preference by
    pattern before asking the plugin, and a plugin whose patterns do not match the file
    is "not found", so the whole-extension entry broke every other JPEG.  A value naming
    one of our reader commands (``napari-cellclass.read_hpa``) becomes the plugin name,
    which is what napari looks preferences up by.  Other entries are kept as they are.
    """
    out: dict[str, str] = {}
    for pattern, reader in prefs.items():
        ours = reader == PLUGIN or str(reader).startswith(PLUGIN + ".")
        if not ours:
            out[pattern] = reader
            continue
        ext = pattern[1:].lower() if pattern.startswith("*.") else None
        if ext in NAME_ONLY_EXTENSIONS and not any(ch in pattern[1:] for ch in "*?["):
            for colour in CHANNELS:
                out.setdefault(f"*_{colour}{ext}", PLUGIN)
        else:
            out[pattern] = PLUGIN
    return out


_WATCHING: list[bool] = []


def watch_reader_preferences() -> None:
    """Inside napari: narrow our reader preferences now and whenever they change (see
    :func:`narrow_preferences`).  Does nothing when napari is not running (no import of napari)."""
    import sys

    if _WATCHING or "napari" not in sys.modules:
        return
    try:
        from napari.settings import get_settings

        plugins = get_settings().plugins
    except Exception:  # noqa: BLE001 - no settings (headless tools): nothing to fix
        return

    def fix(*_):
        current = dict(plugins.extension2reader)
        narrowed = narrow_preferences(current)
        if narrowed != current:
            plugins.extension2reader = narrowed

    plugins.events.extension2reader.connect(fix)
    _WATCHING.append(True)
    fix()


def get_reader(path: str | Path | list) -> Callable[[Any], list] | None:
    """npe2 reader: a function for HPA channel files/folders, None for anything else."""
    watch_reader_preferences()
    paths = path if isinstance(path, (list, tuple)) else [path]
    if not paths or not all(_claims(Path(p)) for p in paths):
        return None
    return read_hpa


def rgb_merge(red: np.ndarray, green: np.ndarray, blue: np.ndarray, yellow: np.ndarray | None = None) -> np.ndarray:
    """Seed-002 RGB merge: yellow split half into red, half into green; (H, W, 3) float32 in [0, 1].

    Each channel is scaled to [0, 1] by its dtype range (floats by their max).
    """
    def unit(a: np.ndarray) -> np.ndarray:
        a = np.asarray(a)
        if np.issubdtype(a.dtype, np.integer):
            return a.astype(np.float32) / float(np.iinfo(a.dtype).max)
        a = a.astype(np.float32)
        m = float(a.max()) if a.size else 0.0
        return a / m if m > 1.0 else a

    r, g, b = unit(red), unit(green), unit(blue)
    if not (r.shape == g.shape == b.shape) or r.ndim != 2:
        raise InputError(f"red, green and blue must be 2-D images of one size, got {r.shape}, {g.shape}, {b.shape}")
    if yellow is not None:
        y = unit(yellow)
        if y.shape != r.shape:
            raise InputError(f"yellow has shape {y.shape}, the others {r.shape}")
        r = r + 0.5 * y
        g = g + 0.5 * y
    return np.clip(np.stack([r, g, b], axis=-1), 0.0, 1.0)


watch_reader_preferences()  # imported inside napari (a reader or widget of ours): fix preferences from now on

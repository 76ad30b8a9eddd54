"""Images larger than memory: read a region at a time from OME-Zarr, Zarr or TIFF.

A 20k x 20k RGBY field is 1.6 GB of 8-bit pixels, more as floats; the plugin's
ordinary readers refuse it (io/limits pixel budget).  This module opens such
files without decoding them, reads any window on demand (only the chunks or
TIFF tiles it touches), and lays out overlapping tiles whose *cores* partition
the image, so a job that processes one window at a time needs memory for one
window whatever the image size (:mod:`napari_cellclass.tasks.tiled`).

Formats: OME-Zarr (NGFF 0.4/0.5: the full-resolution level of the first
multiscale), a plain Zarr array, and TIFF read through ``tifffile``'s zarr view
(tiled TIFFs read tile by tile; striped ones strip by strip).  A file whose
storage unit (chunk, strip) is itself too large to hold is refused with advice
to convert it.  Small PNG/JPEG/TIFF images fall back to an in-memory array.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np

from ..errors import InputError

#: Images with more pixels (rows x columns) than this are processed tile by tile by default.
LARGE_PIXELS = 64 * 2**20
ZARR_SUFFIXES = (".zarr", ".ome.zarr")
TIFF_SUFFIXES = (".tif", ".tiff", ".ome.tif", ".ome.tiff", ".btf", ".tf8")
CHANNEL_NAMES = ("c", "ch", "channel", "s")


# ----------------------------------------------------------------------------- the lazy image

@dataclass
class LazyImage:
    """A 2-D image with optional channels, read a window at a time.

    ``array`` is anything sliceable (a zarr array, a numpy array) in ``axes``
    order, where ``axes`` names each dimension: ``y``, ``x``, ``c`` (channels) and
    singleton others (``t``, ``z``) that are dropped.
    """

    path: Path
    array: Any
    axes: str

    def __post_init__(self) -> None:
        if "y" not in self.axes or "x" not in self.axes:
            raise InputError(f"cannot find the image rows and columns (axes {self.axes!r})", self.path)
        for ax, n in zip(self.axes, self.array.shape):
            if ax not in "yxc" and n != 1:
                raise InputError(f"a {n}-long '{ax}' axis: one 2-D image (with channels) per file is expected; "
                                 "choose one plane first", self.path)

    @property
    def height(self) -> int:
        return int(self.array.shape[self.axes.index("y")])

    @property
    def width(self) -> int:
        return int(self.array.shape[self.axes.index("x")])

    @property
    def channels(self) -> int:
        return int(self.array.shape[self.axes.index("c")]) if "c" in self.axes else 1

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(self.array.dtype)

    @property
    def chunk_values(self) -> int:
        """Values in one storage unit (what one window read must decode at least)."""
        chunks = getattr(self.array, "chunks", None)
        return int(math.prod(chunks)) if chunks else 0

    def region(self, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
        """Pixels ``[y0:y1, x0:x1]`` as (h, w), or (h, w, C) with C > 1, read from storage now."""
        multi = self.channels > 1
        index = []
        for ax in self.axes:
            index.append(slice(y0, y1) if ax == "y" else slice(x0, x1) if ax == "x" else
                         slice(None) if ax == "c" and multi else 0)
        block = np.asarray(self.array[tuple(index)])
        kept = [ax for ax in self.axes if ax in "yx" or (ax == "c" and multi)]
        order = [kept.index("y"), kept.index("x")] + ([kept.index("c")] if "c" in kept else [])
        return np.transpose(block, order)

    def intensity_max(self, samples: int = 16) -> float:
        """The largest value in a few windows spread over the image (to scale 12/16-bit data once)."""
        hi = 0.0
        side = int(max(64, min(1024, math.sqrt(LARGE_PIXELS / max(samples, 1)))))
        k = max(1, int(round(math.sqrt(samples))))
        for i in range(k):
            for j in range(k):
                y = int((self.height - side) * (i + 0.5) / k) if self.height > side else 0
                x = int((self.width - side) * (j + 0.5) / k) if self.width > side else 0
                hi = max(hi, float(np.max(self.region(y, min(self.height, y + side), x, min(self.width, x + side)))))
        return hi


def open_lazy(path: str | Path, *, max_chunk_values: int | None = None, for_work: bool = True) -> LazyImage:
    """Open an OME-Zarr / Zarr / TIFF (lazily) or another image (in memory, within the pixel budget).

    ``for_work`` (default): the image is to be processed tile by tile; one over the work budget
    (:func:`napari_cellclass.budget.max_tiled_pixels`) is refused before its first tile.
    Viewing (``for_work=False``: napari reads only the chunks on screen) has no such bound.
    """
    from . import limits

    p = Path(path)
    if not p.exists():
        raise InputError("image does not exist", p)
    budget = max_chunk_values or limits.max_pixels()
    if _is_zarr(p):
        img = _open_zarr(p)
    elif p.suffix.lower() in TIFF_SUFFIXES or limits._is_tiff_magic(p):
        img = _open_tiff(p)
    else:
        arr = limits.read_image(p)
        axes = "yx" if arr.ndim == 2 else "yxc"
        return LazyImage(p, arr, axes)
    if for_work:
        check_tile_work(img.height, img.width, p)
    if img.chunk_values > budget:
        raise InputError(
            f"the file stores its pixels in pieces of {img.chunk_values:,} values, too large to read a window at a "
            f"time; convert it to a tiled TIFF or OME-Zarr (e.g. tifffile.imwrite(..., tile=(512, 512)))", p)
    return img


def _is_zarr(p: Path) -> bool:
    return p.is_dir() and (p.name.lower().endswith(ZARR_SUFFIXES) or any(
        (p / f).exists() for f in (".zarray", ".zgroup", "zarr.json")))


def _open_zarr(p: Path) -> LazyImage:
    import zarr

    try:
        node = zarr.open(str(p), mode="r")
    except Exception as exc:
        raise InputError(f"not a readable Zarr ({str(exc)[:160]})", p) from None
    axes = None
    if isinstance(node, zarr.Group):
        attrs = dict(node.attrs)
        ms = attrs.get("multiscales") or attrs.get("ome", {}).get("multiscales")
        if not ms:
            arrays = sorted(name for name, _ in node.arrays())
            if not arrays:
                raise InputError("Zarr group holds no image array", p)
            node = node[arrays[0]]
        else:
            first = ms[0]
            axes = "".join(_axis_name(a) for a in first.get("axes", []))
            node = node[first["datasets"][0]["path"]]
    if axes is None or len(axes) != len(node.shape):
        axes = guess_axes(node.shape)
    return LazyImage(p, node, axes)


def _axis_name(a: Any) -> str:
    name = (a.get("name") if isinstance(a, dict) else str(a)).lower()
    return "c" if name in CHANNEL_NAMES else name[:1]


def _open_tiff(p: Path) -> LazyImage:
    import tifffile
    import zarr

    from .limits import check_tiff_storage

    try:
        with tifffile.TiffFile(p) as tif:
            series = tif.series[0]
            axes = "".join("c" if a in "CS" else a.lower() for a in series.axes)
            for page in series.pages[:64]:  # strips sharing one block: refused before any is decoded
                if page is not None and hasattr(page, "dataoffsets"):
                    check_tiff_storage(page, p)
        store = tifffile.imread(p, aszarr=True, series=0, level=0)
        arr = zarr.open(store, mode="r")
    except InputError:
        raise
    except Exception as exc:  # tifffile raises many types for damaged files
        raise InputError(f"not a readable TIFF ({str(exc)[:160]})", p) from None
    if len(axes) != len(arr.shape):
        axes = guess_axes(arr.shape)
    return LazyImage(p, arr, axes)


def check_tile_work(height: int, width: int, path: str | Path | None = None) -> None:
    """Refuse an image whose tile-by-tile run would pass the work budget (its tile count, from its size)."""
    from ..budget import ENV_MAX_TILED_PIXELS, max_tiled_pixels, too_large

    if int(height) * int(width) > max_tiled_pixels():
        raise too_large(height, width, "to process tile by tile",
                        f"the work budget of {max_tiled_pixels() / 1e6:,.0f} M px ({ENV_MAX_TILED_PIXELS})", path,
                        "crop the region of interest, or raise the budget if the run time is wanted")


def guess_axes(shape: Sequence[int]) -> str:
    """Axes of an array without metadata: (Y, X), (Y, X, C<=4) or (C<=4, Y, X), leading singletons dropped."""
    dims = list(shape)
    lead = ""
    while len(dims) > 3 and dims[0] == 1:
        dims.pop(0)
        lead += "t" if "t" not in lead else "z"
    if len(dims) == 2:
        return lead + "yx"
    if len(dims) == 3:
        return lead + ("yxc" if dims[2] <= 4 and dims[0] > 4 else "cyx")
    raise InputError(f"cannot tell the axes of an array of shape {tuple(shape)}")


class StackedChannels:
    """Several single-channel lazy images (HPA ``<id>_red/green/blue/yellow``) as one (Y, X, C) image."""

    def __init__(self, images: Sequence[LazyImage]):
        self.images = list(images)
        h, w = self.images[0].height, self.images[0].width
        for im in self.images[1:]:
            if (im.height, im.width) != (h, w):
                raise InputError(f"channel images differ in size ({im.height}x{im.width} vs {h}x{w})", im.path)
        self.shape = (h, w, len(self.images))
        self.dtype = self.images[0].dtype
        self.chunks = None

    def __getitem__(self, index):
        ys, xs, _ = index
        planes = []
        for im in self.images:
            r = im.region(ys.start, ys.stop, xs.start, xs.stop)
            planes.append(r if r.ndim == 2 else r[..., 0])
        return np.stack(planes, axis=-1)


def open_hpa_lazy(path: str | Path, for_work: bool = True) -> LazyImage:
    """An HPA field as (Y, X, 4) RGBY: one 4-channel file, or the four ``<id>_<colour>`` channel files."""
    from .hpa_reader import find_set

    p = Path(path)
    s = find_set(p) if p.is_file() else None
    if s is not None and len(s.paths) >= 3:
        order = [c for c in ("red", "green", "blue", "yellow") if c in s.paths]
        stack = StackedChannels([open_lazy(s.paths[c], for_work=for_work) for c in order])
        img = LazyImage(p, stack, "yxc")
    else:
        img = open_lazy(p, for_work=for_work)
    if img.channels not in (3, 4):
        raise InputError(f"an HPA field needs 4 channels (RGBY), this image has {img.channels}", p)
    return img


# ----------------------------------------------------------------------------- how large

def declared_pixels(path: str | Path) -> int | None:
    """Rows x columns an image declares, read from its header (None when it is not an image we know)."""
    p = Path(path)
    try:
        if _is_zarr(p) or p.suffix.lower() in TIFF_SUFFIXES:
            img = open_lazy(p, max_chunk_values=2**62, for_work=False)
            return img.height * img.width
        from . import limits

        info = limits.probe(p)
        return int(info.shape[0]) * int(info.shape[1])
    except InputError:
        return None


def is_large(path: str | Path, threshold: int | None = None) -> bool:
    """True for an image to process tile by tile: a Zarr, or more than ``LARGE_PIXELS`` pixels."""
    p = Path(path)
    if _is_zarr(p):
        return True
    n = declared_pixels(p) if p.suffix.lower() in TIFF_SUFFIXES else None
    return n is not None and n > (threshold or LARGE_PIXELS)


# ----------------------------------------------------------------------------- tiles

@dataclass(frozen=True)
class Tile:
    """A window to read (``y0:y1, x0:x1``) and its core (``cy0:cy1, cx0:cx1``): cores partition the image.

    An object belongs to the tile whose core holds its centre, so each object is
    reported once although windows overlap.
    """

    y0: int
    y1: int
    x0: int
    x1: int
    cy0: int
    cy1: int
    cx0: int
    cx1: int

    def owns(self, y: float, x: float) -> bool:
        """True when the image point (y, x) lies in this tile's core."""
        return self.cy0 <= y < self.cy1 and self.cx0 <= x < self.cx1


def tile_grid(height: int, width: int, tile: int, overlap: int) -> list[Tile]:
    """Cores of ``tile`` x ``tile`` pixels, each read with ``overlap`` pixels of context on every side."""
    if tile < 1 or overlap < 0:
        raise InputError(f"tile must be >= 1 and overlap >= 0 (got {tile}, {overlap})")
    tiles = []
    for cy in range(0, height, tile):
        for cx in range(0, width, tile):
            cy1, cx1 = min(height, cy + tile), min(width, cx + tile)
            tiles.append(Tile(max(0, cy - overlap), min(height, cy1 + overlap), max(0, cx - overlap),
                              min(width, cx1 + overlap), cy, cy1, cx, cx1))
    return tiles


# ----------------------------------------------------------------------------- writing large images (tests, benchmarks)

def write_tiled_tiff(path: str | Path, height: int, width: int, channels: int, dtype: Any,
                     block: Callable[[int, int, int, int], np.ndarray], tile: int = 512) -> Path:
    """Write a tiled, zlib-compressed TIFF one tile at a time; ``block(y0, y1, x0, x1)`` gives (h, w[, C])."""
    import tifffile

    shape = (height, width) if channels == 1 else (height, width, channels)

    def tiles() -> Iterator[np.ndarray]:
        for y in range(0, height, tile):
            for x in range(0, width, tile):
                b = np.zeros((tile, tile) + shape[2:], dtype)
                data = block(y, min(height, y + tile), x, min(width, x + tile))
                b[: data.shape[0], : data.shape[1]] = data
                yield b

    tifffile.imwrite(path, tiles(), shape=shape, dtype=dtype, tile=(tile, tile), compression="zlib",
                     photometric="rgb" if channels in (3, 4) else "minisblack",
                     planarconfig="contig" if channels > 1 else None,
                     extrasamples=[0] if channels == 4 else None)
    return Path(path)


def write_ome_zarr(path: str | Path, height: int, width: int, channels: int, dtype: Any,
                   block: Callable[[int, int, int, int], np.ndarray], chunk: int = 512) -> Path:
    """Write a one-level OME-Zarr (NGFF 0.4, axes c, y, x) one chunk row at a time."""
    import zarr

    root = zarr.open_group(str(path), mode="w", zarr_format=2)
    arr = root.create_array("0", shape=(channels, height, width), chunks=(channels, chunk, chunk), dtype=dtype)
    for y in range(0, height, chunk):
        y1 = min(height, y + chunk)
        for x in range(0, width, chunk):
            x1 = min(width, x + chunk)
            b = block(y, y1, x, x1)
            arr[:, y:y1, x:x1] = np.moveaxis(b, -1, 0) if b.ndim == 3 else b[None]
    root.attrs["multiscales"] = [{
        "version": "0.4", "name": Path(path).name,
        "axes": [{"name": "c", "type": "channel"}, {"name": "y", "type": "space"}, {"name": "x", "type": "space"}],
        "datasets": [{"path": "0", "coordinateTransformations": [{"type": "scale", "scale": [1.0, 1.0, 1.0]}]}],
    }]
    return Path(path)


def create_labels(path: str | Path, height: int, width: int, chunk: int = 1024) -> Any:
    """An on-disk int32 label image (Zarr) to paint objects into tile by tile."""
    import zarr

    return zarr.open_array(str(path), mode="w", shape=(height, width), chunks=(chunk, chunk), dtype="int32",
                           fill_value=0, zarr_format=2)


def as_dask(path: str | Path) -> Any:
    """The image as a lazy dask array in (Y, X[, C]) order, e.g. for a napari layer."""
    import dask.array as da

    img = open_lazy(path, for_work=False)
    arr = da.from_array(img.array, chunks=getattr(img.array, "chunks", None) or "auto")
    multi = img.channels > 1
    keep = tuple(slice(None) if ax in "yx" or (ax == "c" and multi) else 0 for ax in img.axes)
    arr = arr[keep]
    kept = [ax for ax in img.axes if ax in "yx" or (ax == "c" and multi)]
    order = [kept.index("y"), kept.index("x")] + ([kept.index("c")] if "c" in kept else [])
    return arr.transpose(order)


def describe(img: LazyImage) -> dict[str, Any]:
    return json.loads(json.dumps({"path": str(img.path), "height": img.height, "width": img.width,
                                  "channels": img.channels, "dtype": str(img.dtype), "axes": img.axes,
                                  "chunk_values": img.chunk_values}))

"""The door every external file comes through: sizes checked before anything is decoded.

One place decides what the plugin is willing to read, so a 200-byte file that
declares a 60000x60000 image, a FIFO named ``x.png`` or a macOS ``._x.png`` metadata
file is handled the same way by every reader:

* :func:`read_image` is the plugin's one image reader: ``imageio.v3`` (its pillow plugin)
  for PNG/JPEG/BMP/GIF..., ``tifffile`` for TIFF.  It reads the header first and refuses
  an image whose *declared* size, all pages and channels counted, is over the pixel
  budget (:func:`max_pixels`, ``CELLCLASS_MAX_PIXELS``).  Multi-page TIFFs/GIFs are
  refused (one image per file) instead of silently using page 1.  The bit depth is
  kept (8-, 16-bit, float); :func:`to_uint8` rescales it knowingly when 8 bits are
  needed.
* :func:`safe_relative` refuses file names in annotations that leave the data set
  (absolute paths, ``..``).
* :func:`scan_files` lists a folder's image files and reports what it skipped and why.
* :func:`check_informative` refuses an image with nothing in it (blank, a single value,
  too small) before a model runs on it.

Every refusal is an :class:`~napari_cellclass.errors.InputError` naming the file.
"""
from __future__ import annotations

import math
import os
import stat
import warnings
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Iterable, Sequence

import numpy as np

from ..budget import DEFAULT_MAX_PIXELS, ENV_MAX_PIXELS, max_pixels  # noqa: F401  (the one budget, re-exported)
from ..errors import InputError

#: Class-count bound for checkpoints and data sets (more is a corrupt or hostile file).
MAX_CLASSES = 100_000
#: Largest side of a network input, in pixels.
MAX_INPUT_SIDE = 65_536
TIFF_SUFFIXES = (".tif", ".tiff")
_APPLEDOUBLE = "._"


def check_pixels(shape: Sequence[int], path: str | Path | None = None, what: str = "image") -> int:
    """Refuse ``shape`` (any dims: pages, rows, columns, channels) when it is over the budget.

    Returns the number of values.  Negative or absurd dimensions are refused too.
    """
    dims = [int(s) for s in shape]
    if any(s < 0 for s in dims):
        raise InputError(f"{what} declares a negative size {tuple(dims)}", path)
    n = math.prod(dims)
    budget = max_pixels()
    if n > budget:
        raise InputError(
            f"too large: {what} declares {' x '.join(str(s) for s in dims)} = {n:,} values, over the pixel budget of "
            f"{budget:,}; if the file is genuine, raise the budget with {ENV_MAX_PIXELS}=<number> "
            f"(see docs/io.md)", path)
    return n


# ----------------------------------------------------------------------------- files

def is_appledouble(path: str | Path) -> bool:
    """macOS ``._name`` resource-fork files copied from a Mac volume (not images)."""
    return Path(path).name.startswith(_APPLEDOUBLE)


def check_regular_file(path: str | Path, what: str = "image file") -> Path:
    """A readable regular file, else InputError (missing, folder, FIFO/device, empty)."""
    p = Path(path)
    try:
        st = os.stat(p)
    except FileNotFoundError:
        raise InputError(f"{what} does not exist", p) from None
    except OSError as exc:
        raise InputError(f"{what} cannot be accessed: {exc.strerror or exc}", p) from None
    if stat.S_ISDIR(st.st_mode):
        raise InputError(f"expected an {what}, got a folder", p)
    if not stat.S_ISREG(st.st_mode):
        raise InputError(f"not a regular file (a FIFO, socket or device); refusing to read it as an {what}", p)
    if st.st_size == 0:
        raise InputError(f"{what} is empty (0 bytes)", p)
    return p


def _regular(p: Path) -> bool:
    try:
        return stat.S_ISREG(os.stat(p).st_mode)
    except OSError:
        return False


@dataclass
class ScanReport:
    """Files a scan used and what it skipped, by reason (reported, never silent)."""

    files: list[Path] = field(default_factory=list)
    skipped: dict[str, list[Path]] = field(default_factory=dict)

    def skip(self, reason: str, path: Path) -> None:
        self.skipped.setdefault(reason, []).append(path)

    @property
    def n_skipped(self) -> int:
        return sum(len(v) for v in self.skipped.values())

    def summary(self) -> str:
        """One line: ``skipped 3 file(s): 2 macOS '._' metadata files (e.g. ._a.png), ...``."""
        if not self.skipped:
            return ""
        parts = [f"{len(v)} {reason} (e.g. {v[0].name})" for reason, v in sorted(self.skipped.items())]
        return f"skipped {self.n_skipped} file(s): " + "; ".join(parts)

    def merge(self, other: "ScanReport") -> "ScanReport":
        self.files += other.files
        for k, v in other.skipped.items():
            self.skipped.setdefault(k, []).extend(v)
        return self

    def warn(self, where: str | Path | None = None) -> None:
        if self.skipped:
            warnings.warn(f"{where}: {self.summary()}" if where is not None else self.summary(),
                          UserWarning, stacklevel=3)


SKIP_APPLEDOUBLE = "macOS '._' metadata file(s)"
SKIP_SPECIAL = "not a regular file (FIFO, socket, device or broken link)"
SKIP_HIDDEN = "hidden file(s)"


def scan_files(folder: str | Path, suffixes: Iterable[str], report: ScanReport | None = None,
               root: str | Path | None = None) -> list[Path]:
    """Image files (by suffix) directly in ``folder``, sorted; junk is skipped with a reason in ``report``.

    Skipped: macOS ``._*`` files, other hidden files, FIFOs/sockets/devices and broken
    links (opening a FIFO would hang).  Files with other suffixes are not images and are
    ignored without a note.  Empty files are kept: reading one is an error naming it.
    With ``root`` (the data set), a file whose real path lies outside it is an InputError.
    """
    report = report if report is not None else ScanReport()
    wanted = {s.lower() for s in suffixes}
    files: list[Path] = []
    for f in sorted(Path(folder).iterdir()):
        if f.suffix.lower() not in wanted:
            continue
        if is_appledouble(f):
            report.skip(SKIP_APPLEDOUBLE, f)
        elif f.name.startswith("."):
            report.skip(SKIP_HIDDEN, f)
        elif not _regular(f):
            if not f.is_dir():
                report.skip(SKIP_SPECIAL, f)
        else:
            if root is not None:  # a link (or a linked folder) leading out of the data set: refused, never read
                confined(f, root, "image file")
            files.append(f)
    report.files += files
    return files


def safe_relative(name: str, source: str | Path | None, what: str = "image file name") -> PurePosixPath:
    """A file name from an annotation as a relative path that stays inside the data set.

    Absolute paths (POSIX or Windows), drive letters, ``~`` and ``..`` components are
    refused: an annotation must not make the plugin read files outside its folder.
    """
    text = str(name).strip()
    if not text or "\x00" in text:
        raise InputError(f"{what} {name!r} is empty or not a file name", source)
    win = PureWindowsPath(text)
    posix = PurePosixPath(text.replace("\\", "/"))
    if posix.is_absolute() or win.is_absolute() or win.drive or text.startswith("~"):
        raise InputError(f"{what} {text!r} is an absolute path; annotations may only name files inside "
                         "the data set folder", source)
    if any(part == ".." for part in posix.parts):
        raise InputError(f"{what} {text!r} points outside the data set folder ('..' is not allowed)", source)
    return PurePosixPath(*[p for p in posix.parts if p not in ("", ".")]) if posix.parts else posix


# ----------------------------------------------------------------------------- images

@dataclass(frozen=True)
class ImageInfo:
    """What an image file declares in its header (nothing decoded yet)."""

    shape: tuple[int, ...]  # (rows, cols[, channels]) of one page
    dtype: str
    pages: int = 1
    mode: str = ""  # PIL mode of a non-TIFF image (decides the conversion on decoding)


def probe(path: str | Path) -> ImageInfo:
    """Read only the header: size, channels, sample type and page count."""
    p = check_regular_file(path)
    if p.suffix.lower() in TIFF_SUFFIXES or _is_tiff_magic(p):
        return _probe_tiff(p)
    return _probe_pil(p)


def _is_tiff_magic(p: Path) -> bool:
    try:
        with open(p, "rb") as fh:
            head = fh.read(4)
    except OSError:
        return False
    return head in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")


def _probe_tiff(p: Path) -> ImageInfo:
    import tifffile

    try:
        with tifffile.TiffFile(p) as tif:
            pages = [pg for pg in tif.pages if not getattr(pg, "is_reduced", False)]
            if not pages:
                raise InputError("TIFF holds no image", p)
            first = pages[0]
            shape = tuple(int(s) for s in first.shape)
            dtype = str(first.dtype) if first.dtype is not None else "unknown"
            # every page counts towards the budget, whatever its own size
            total = sum(math.prod(int(s) for s in pg.shape) for pg in pages)
            for pg in pages if total <= max_pixels() else ():  # over the pixel budget: refused below anyway
                check_tiff_storage(pg, p)
    except InputError:
        raise
    except Exception as exc:  # tifffile raises many types for damaged headers
        raise InputError(f"not a readable TIFF ({_short(exc)})", p) from None
    if dtype == "unknown":
        raise InputError("TIFF sample format is not supported", p)
    if total <= max_pixels():
        check_decoded(shape[0], shape[1] if len(shape) > 1 else 1, total, np.dtype(dtype).itemsize, p)
    if total > max_pixels():
        check_pixels((len(pages), *shape) if len(pages) > 1 else shape, p,
                     what=f"TIFF ({len(pages)} page(s))")
    return ImageInfo(shape, dtype, len(pages))


_PIL_DTYPES = {"1": "bool", "L": "uint8", "P": "uint8", "RGB": "uint8", "RGBA": "uint8", "LA": "uint8",
               "CMYK": "uint8", "YCbCr": "uint8", "I;16": "uint16", "I;16B": "uint16", "I;16L": "uint16",
               "I": "int32", "F": "float32", "PA": "uint8", "RGBX": "uint8", "La": "uint8", "RGBa": "uint8"}


def _probe_pil(p: Path) -> ImageInfo:
    """Header of a non-TIFF image, read by PIL lazily: no pixel is decoded.

    PIL's own bomb limit is off here (our budget decides, with a "too large" line):
    imageio hides PIL's DecompressionBombError behind "an unknown error occurred while
    initializing plugin pillow", and its metadata call decodes the whole image (251 MiB and
    3 s for a 250 KB PNG of 16000 x 16000).  The size is checked before frames are counted.
    """
    from PIL import Image

    old = Image.MAX_IMAGE_PIXELS
    try:
        Image.MAX_IMAGE_PIXELS = None
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with Image.open(p) as im:
                w, h = (int(v) for v in im.size)
                mode, fmt, info = str(im.mode), str(im.format or ""), dict(im.info)
                try:
                    bands = len(Image.new(mode, (1, 1)).getbands())
                except Exception:
                    bands = len(im.getbands())
                check_pixels((h, w) if bands == 1 else (h, w, bands), p, what="image")
                frames = int(getattr(im, "n_frames", 1) or 1)
    except InputError:
        raise
    except (OSError, ValueError, SyntaxError, KeyError, TypeError, EOFError) as exc:
        if "cannot identify" in str(exc) or isinstance(exc, Image.UnidentifiedImageError):
            raise InputError(_unreadable_reason(p), p) from None
        raise InputError(f"cannot read image ({_short(exc)})", p) from None
    except Exception as exc:
        raise InputError(f"cannot read image ({_short(exc)})", p) from None
    finally:
        Image.MAX_IMAGE_PIXELS = old
    if mode == "P" and "transparency" in info:
        mode = "PA"  # a palette with a transparent entry decodes to RGBA
    if frames > 1 and (p.suffix.lower() in (".jpg", ".jpeg", ".mpo") or fmt == "MPO"
                       or any(str(k).startswith("mp") for k in info)):
        frames = 1  # camera JPEGs (MPO): the primary image plus previews, one picture
    shape = (h, w) if bands == 1 else (h, w, bands)
    check_pixels((frames, *shape) if frames > 1 else shape, p,
                 what="image" if frames == 1 else f"image ({frames} frames)")
    check_decoded(h, w, h * w * bands * frames, np.dtype(_PIL_DTYPES.get(mode, "uint8")).itemsize, p)
    return ImageInfo(shape, _PIL_DTYPES.get(mode, "uint8"), frames, mode)


# ----------------------------------------------------------------------------- the memory budget

def check_decoded(height: int, width: int, values: int, itemsize: int, path: str | Path | None = None) -> None:
    """Refuse an image whose decoded ``values`` (held twice: the decoder's array and our copy) pass the budget."""
    from ..budget import describe_budget, image_bytes, too_large

    need = 2 * int(values) * max(int(itemsize), 1)
    if need > image_bytes():
        raise too_large(height, width, f"would need about {need / 2**30:.1f} GiB to decode",
                        f"the memory budget of {describe_budget()}", path,
                        "convert it to a tiled TIFF or OME-Zarr to open it a window at a time")


def check_work(path: str | Path, bytes_per_pixel: float, what: str = "analysing it whole") -> ImageInfo:
    """The header of ``path``, after refusing an image too large for a whole-image analysis (nothing decoded)."""
    from ..budget import check_whole_image

    info = probe(path)
    check_whole_image(info.shape[0], info.shape[1], path, bytes_per_pixel, what)
    return info


#: Decoded bytes a TIFF may claim per stored byte.  Deflate tops out near 1032:1 and LZW near 1400:1
#: on constant data; a file past this stores far less than it declares (a decompression bomb).
MAX_TIFF_RATIO = 5000


def check_tiff_storage(page, path: str | Path | None = None) -> None:
    """Refuse a TIFF page whose strips/tiles cannot hold what it declares, before decoding any of it.

    A 60 KB file can declare 60000 x 60000 pixels in 7,500 strips that all point at one
    compressed block: each strip then decodes to megabytes and the whole to 3.6 GB, in
    minutes.  Refused: blocks shared by several strips, and a declared size more than
    :data:`MAX_TIFF_RATIO` times the bytes stored.  Empty (0-byte) blocks of sparse files are
    left to the pixel budget.
    """
    offsets = tuple(getattr(page, "dataoffsets", ()) or ())
    counts = tuple(getattr(page, "databytecounts", ()) or ())
    if not offsets or len(offsets) != len(counts):
        return
    stored = {int(o): int(c) for o, c in zip(offsets, counts) if int(c) > 0}  # one block per offset
    used = sum(1 for c in counts if int(c) > 0)
    h, w = int(getattr(page, "imagelength", 0) or 0), int(getattr(page, "imagewidth", 0) or 0)
    if len(stored) < used:
        raise InputError(f"too large: {w} x {h} px declared in {len(counts):,} strips/tiles of which "
                         f"{used - len(stored):,} re-use another's compressed data (a decompression bomb); "
                         "refused before decoding", path)
    declared = math.prod(int(s) for s in page.shape) * max(int(np.dtype(page.dtype).itemsize), 1)
    data = sum(stored.values())
    if data and declared > MAX_TIFF_RATIO * data:
        raise InputError(f"too large: {w} x {h} px ({declared / 2**20:,.0f} MiB decoded) declared in "
                         f"{data:,} bytes of pixel data, more than {MAX_TIFF_RATIO}:1 (a decompression bomb); "
                         "refused before decoding", path)


class _pil_limit:
    """Let PIL open what our budget allows (PIL's own limit is lower), restoring it after."""

    def __enter__(self):
        from PIL import Image

        self._old = Image.MAX_IMAGE_PIXELS
        budget = max_pixels()
        if self._old is not None and budget > self._old:
            Image.MAX_IMAGE_PIXELS = budget
        return self

    def __exit__(self, *exc):
        from PIL import Image

        Image.MAX_IMAGE_PIXELS = self._old
        return False


def _short(exc: BaseException, n: int = 160) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return text[:n]


def _unreadable_reason(p: Path) -> str:
    if is_appledouble(p):
        return "a macOS '._' metadata file, not an image (safe to delete)"
    return "not a readable image (unknown or damaged format)"


def read_image(path: str | Path, *, allow_pages: bool = False, work: float | None = None) -> np.ndarray:
    """Decode one image file after checking its header; the sample type is kept.

    Returns ``(H, W)`` or ``(H, W, C)`` (``(P, H, W[, C])`` when ``allow_pages`` and the
    file has several pages).  A file with several pages is refused unless
    ``allow_pages``: silently using page 1 of a stack gives wrong answers.  Float images
    must be finite.  Palette images come back as RGB(A), 1-bit as 0/255 uint8.
    ``work``: working bytes per pixel of the whole-image analysis that follows; an image
    that would take it over the memory budget is refused from its header
    (:func:`napari_cellclass.budget.check_whole_image`).  Decoding alone is always held to it.
    """
    p = Path(path)
    info = probe(p)
    if work is not None:
        from ..budget import check_whole_image

        check_whole_image(info.shape[0], info.shape[1], p, work)
    if info.pages > 1 and not allow_pages:
        raise InputError(f"file holds {info.pages} pages/frames (a stack); one image per file is expected "
                         "(save the plane you want as its own file)", p)
    if p.suffix.lower() in TIFF_SUFFIXES or _is_tiff_magic(p):
        arr = _decode_tiff(p, info, allow_pages)
    else:
        arr = _decode_pil(p, info, allow_pages)
    if arr.size == 0 or arr.ndim < 2:
        raise InputError(f"image has no pixels (shape {arr.shape})", p)
    if arr.dtype.kind == "f" and not np.all(np.isfinite(arr)):
        raise InputError("image holds NaN or infinite values", p)
    if arr.dtype.kind == "c":
        raise InputError("image holds complex numbers", p)
    return arr


def _decode_tiff(p: Path, info: ImageInfo, allow_pages: bool) -> np.ndarray:
    import tifffile

    try:
        with tifffile.TiffFile(p) as tif:
            if info.pages > 1 and allow_pages:
                arr = np.stack([pg.asarray() for pg in tif.pages if not getattr(pg, "is_reduced", False)])
            else:
                page = tif.pages.first
                arr = page.asarray()
                if int(getattr(page, "planarconfig", 1)) == 2 and arr.ndim == 3:
                    arr = np.moveaxis(arr, 0, -1)  # planar (samples first): channels last like every reader
    except Exception as exc:
        raise InputError(f"TIFF pixel data could not be read (truncated or corrupt): {_short(exc)}", p) from None
    arr = np.asarray(arr)
    if arr.dtype == bool:
        arr = arr.astype(np.uint8) * 255
    return arr


#: PIL modes decoded as another mode (imageio.v3 ``mode=``): colour spaces to RGB, 1-bit to 0/255
_DECODE_MODE = {"CMYK": "RGB", "YCbCr": "RGB", "RGBX": "RGB", "RGBa": "RGB", "La": "RGB", "LAB": "RGB",
                "HSV": "RGB", "1": "L", "PA": "RGBA"}


def _decode_pil(p: Path, info: ImageInfo, allow_pages: bool) -> np.ndarray:
    """Pixels of a non-TIFF image through imageio.v3 (pillow plugin), after :func:`probe`."""
    import imageio.v3 as iio
    from PIL import Image

    mode = "RGB" if info.mode == "P" else _DECODE_MODE.get(info.mode)
    index = ... if (info.pages > 1 and allow_pages) else 0
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with _pil_limit():
                arr = iio.imread(p, plugin="pillow", index=index, mode=mode)
    except Image.DecompressionBombError as exc:
        raise InputError(f"image declares implausibly large dimensions ({_short(exc)})", p) from None
    except Exception as exc:
        raise InputError(f"image data could not be read (truncated or corrupt): {_short(exc)}", p) from None
    arr = np.array(arr)  # a writable copy
    if arr.dtype == bool:
        arr = arr.astype(np.uint8) * 255
    if info.mode.startswith("I;16"):
        arr = arr.astype(np.uint16, copy=False)
    return arr


# ----------------------------------------------------------------------------- values

def effective_bits(arr: np.ndarray) -> int:
    """Bit depth an unsigned image actually uses: 8, 10, 12, 14, 16 or 32 (from its maximum)."""
    top = int(arr.max()) if arr.size else 0
    for bits in (8, 10, 12, 14, 16, 32):
        if top < (1 << bits):
            return bits
    return 64


def to_uint8(arr: np.ndarray, path: str | Path | None = None) -> np.ndarray:
    """Rescale any image to uint8 *knowingly* (never by clipping).

    * uint8 is returned unchanged; bool becomes 0/255;
    * other non-negative values are divided by the full range of the bit depth they use
      (8, 10, 12, 14 or 16 bits, from the maximum): 12-bit camera data in a 16-bit file
      keeps its contrast instead of saturating, and 0..255 floats stay as they are;
    * floats in [0, 1] are multiplied by 255;
    * data with negative values is stretched from its minimum to its maximum.
    NaN or infinite values are refused.
    """
    a = np.asarray(arr)
    if a.dtype == np.uint8:
        return a
    if a.dtype == bool:
        return a.astype(np.uint8) * 255
    if a.dtype.kind not in "iuf":
        raise InputError(f"image values of type {a.dtype} cannot be shown as an image", path)
    if a.size == 0:
        return a.astype(np.uint8)
    if a.dtype.kind == "f" and not np.all(np.isfinite(a)):
        raise InputError("image holds NaN or infinite values", path)
    lo, hi = float(a.min()), float(a.max())
    f = a.astype(np.float64)
    if lo < 0:
        return np.round((f - lo) / max(hi - lo, 1e-12) * 255.0).clip(0, 255).astype(np.uint8)
    if a.dtype.kind == "f" and hi <= 1.0:
        return np.round(f * 255.0).clip(0, 255).astype(np.uint8)
    full = float((1 << effective_bits(np.asarray([math.ceil(hi)]))) - 1)
    return np.round(f * (255.0 / full)).clip(0, 255).astype(np.uint8)


def check_finite(arr, what: str = "image", path: str | Path | None = None) -> None:
    """NaN or Inf in an input or an output is an error, never a number."""
    a = np.asarray(arr)
    if a.dtype.kind in "fc" and a.size and not np.all(np.isfinite(a)):
        raise InputError(f"{what} holds NaN or infinite values", path)


def check_informative(image, what: str = "image", path: str | Path | None = None, min_side: int = 8) -> None:
    """Refuse an image a model cannot say anything about: too small, or one flat value.

    A blank field, a 1x1 image or an all-black export must be an error before a model
    runs, not a result (46 "missing" chromosomes, a confident class for a gray field).
    """
    a = np.asarray(image)
    check_finite(a, what, path)
    if a.ndim < 2 or min(a.shape[:2]) < min_side:
        raise InputError(f"{what} is too small to analyse (shape {a.shape}; at least {min_side}x{min_side} "
                         "pixels are needed)", path)
    if a.dtype.kind not in "biuf":
        raise InputError(f"{what} values of type {a.dtype} are not an image", path)
    lo, hi = float(a.min()), float(a.max())  # in the image's own type: no full-size copy
    spread = hi - lo
    scale = max(abs(lo), abs(hi), 1.0) if a.dtype.kind == "f" else float(
        np.iinfo(a.dtype).max if a.dtype.kind in "iu" else 1)
    if spread <= 1e-3 * scale or float(_sample(a).astype(np.float64).std()) < 1e-3 * scale:
        raise InputError(f"{what} is blank (a uniform field with no structure); nothing to analyse", path)



def _sample(a: np.ndarray, n: int = 1 << 20) -> np.ndarray:
    """A strided view of about ``n`` pixels (all of a small image): statistics without a full-size copy."""
    if a.ndim < 2 or a.shape[0] * a.shape[1] <= n:
        return a
    step = int(math.ceil(math.sqrt(a.shape[0] * a.shape[1] / n)))
    return a[::step, ::step]


def is_uniform(image) -> bool:
    """One flat value (within 1e-3 of the value range): nothing in it to learn from or analyse."""
    a = np.asarray(image)
    if a.size == 0:
        return True
    if a.dtype.kind not in "biuf":
        return False
    lo, hi = float(a.min()), float(a.max())  # in the image's own type: no full-size copy
    scale = max(abs(lo), abs(hi), 1.0) if a.dtype.kind == "f" else float(
        np.iinfo(a.dtype).max if a.dtype.kind in "iu" else 1)
    return hi - lo <= 1e-3 * scale


def check_training_signal(images, source: str | Path | None = None, what: str = "training image") -> None:
    """Refuse training data without signal before training starts: every (sampled) image uniform.

    ``images`` is an iterable of arrays (each one image or crop); it is read until one
    image with structure is found, so a normal data set costs one image.
    """
    n = 0
    for img in images:
        n += 1
        if not is_uniform(img):
            return
    if n:
        raise InputError(f"every {what} ({n} checked) is blank (one uniform value); there is nothing to learn "
                         "from. Check the export (all-black images?) before training", source)


def json_guarded(path: str | Path, fn, what: str = "COCO file"):
    """``fn()`` (a JSON reading step), with numbers and nesting no parser should meet as one line naming the file.

    A 400-digit integer overflows ``float``; JSON nested 100,000 deep exhausts the recursion
    limit; neither may surface as a raw ``OverflowError``/``RecursionError``.
    """
    try:
        return fn()
    except RecursionError:
        raise InputError(f"JSON is nested too deeply to be a {what}", path) from None
    except OverflowError as exc:
        raise InputError(f"a number in the JSON is too large to be a coordinate or id ({exc})", path) from None
    except MemoryError:
        raise InputError("JSON is too large to read within the memory budget", path) from None


def confined(path: str | Path, root: str | Path, what: str = "file") -> Path:
    """``path`` if it (after following links) lies inside ``root``; otherwise an InputError naming it.

    A data set's own entries (CSV Ids, file names, links) must not make the plugin open files
    elsewhere: ``../../outside``, an absolute Id, or a symbolic link to ``/etc/passwd``.
    """
    p = Path(path)
    try:
        real, base = p.resolve(), Path(root).resolve()
    except (OSError, RuntimeError) as exc:  # a link loop
        raise InputError(f"{what} cannot be resolved ({exc})", p) from None
    if real != base and base not in real.parents:
        raise InputError(f"{what} lies outside the data set folder {Path(root)} (a link or '..' leads to "
                         f"{real}); only files inside the data set are read", p)
    return p

"""Generated hostile cases for every class of issue 24 that is closed (item 9).

Each case either gives a correct result (checked against an expectation computed here,
independently of the code under test) or a :class:`CellClassError` in one line naming the
input (its file name, the option, or the folder): never a raw exception, a traceback, a
library's advice text, or a silent wrong answer.  Every case also stays under a memory
bound: the growth of the process's peak resident memory (``VmHWM``, reset per case via
``/proc/self/clear_refs`` where Linux allows; else Python allocations via tracemalloc).

Classes: corrupt, truncated and oversized image headers (PNG, TIFF, JPEG); blank,
constant and tiny images; NaN/inf in float images; traversal names in HPA ``train.csv``
Ids, VOC ``<filename>`` and COCO ``file_name``; YAML aliases and tags in recipes; CSV
formula cells; option values out of range; non-finite and huge box coordinates; COCO
structure bombs (huge integers, deep nesting); JSON output with NaN; smear sidecars with
unknown labels; poisoned torch-hub caches; results that would be replaced without
``--overwrite``; kills during a folder swap; a few command-line exit codes (in-process).

Library functions are called in-process (no subprocesses), so the ~2,000 cases run in
well under a minute; ``MIN_CASES`` is checked once every generated test of the module ran.
"""
from __future__ import annotations

import csv
import io
import json
import math
import os
import struct
import tracemalloc
import warnings
import zlib
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from napari_cellclass.errors import CellClassError

#: A full run of this module must try at least this many cases (issue 24, item 9).
MIN_CASES = 1500
#: Growth of peak memory allowed for one case (the inputs are small; a bomb shows up here).
MEM_BOUND_MB = 384
CASES: dict[str, int] = {}
BAD: list[str] = []


def fuzz(n: int):
    """Generate only (no shrinking, fixed seed): a failure is recorded with its case, not minimised."""
    return settings(max_examples=n, deadline=None, derandomize=True, database=None,
                    phases=[Phase.explicit, Phase.generate],
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                           HealthCheck.function_scoped_fixture])


# ----------------------------------------------------------------------------- the check

def _status_kb(key: str) -> int | None:
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith(key):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def _reset_peak() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")  # resets VmHWM to the current RSS (Linux >= 4.0)
        return True
    except OSError:
        return False


def check(cls: str, label: str, fn: Callable[[], Any], names: list[str], *,
          expect_error: bool | None = None) -> Any:
    """Run one case: a result, or a one-line CellClassError naming one of ``names``.

    ``expect_error`` True/False: the case must (not) be refused; None: either is correct.
    Records a description of anything else in ``BAD``; returns the result (None if refused).
    """
    CASES[cls] = CASES.get(cls, 0) + 1
    rss = _status_kb("VmRSS") if _reset_peak() else None
    tracing = rss is None
    if tracing:
        tracemalloc.start()
    result, error = None, None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            result = fn()
    except CellClassError as exc:
        error = exc
    except Exception as exc:  # noqa: BLE001 - what this suite hunts for
        BAD.append(f"{cls}/{label}: raw {type(exc).__name__}: {str(exc)[:160]}")
        return None
    finally:
        if tracing:
            peak_mb = tracemalloc.get_traced_memory()[1] / 2**20
            tracemalloc.stop()
        else:
            hwm = _status_kb("VmHWM")
            peak_mb = (hwm - rss) / 1024 if hwm is not None and rss is not None else 0.0
        if peak_mb > MEM_BOUND_MB:
            BAD.append(f"{cls}/{label}: peak memory grew by {peak_mb:.0f} MB (bound {MEM_BOUND_MB} MB)")
    if error is not None:
        text = str(error)
        if "\n" in text.strip() or "Traceback" in text or "weights_only" in text:
            BAD.append(f"{cls}/{label}: not one clean line: {text[:200]!r}")
        elif not any(n and n in text for n in names):
            BAD.append(f"{cls}/{label}: message names none of {names}: {text[:200]}")
        if expect_error is False:
            BAD.append(f"{cls}/{label}: refused a valid input: {text[:200]}")
        return None
    if expect_error is True:
        BAD.append(f"{cls}/{label}: accepted, should be refused (result {str(result)[:120]})")
    return result


def wrong(cls: str, label: str, why: str) -> None:
    """A result that is not the correct one."""
    BAD.append(f"{cls}/{label}: wrong result: {why}")


def no_new_bad(fn: Callable[[], None]) -> None:
    start = len(BAD)
    fn()
    new = BAD[start:]
    assert not new, f"{len(new)} generated case(s) failed:\n" + "\n".join(sorted(set(new))[:15])


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("hostile-generated")


_COUNTER = [0]


def fresh(work: Path, name: str) -> Path:
    """A new folder per case (hypothesis reuses the module's fixture)."""
    _COUNTER[0] += 1
    d = work / f"c{_COUNTER[0]}"
    d.mkdir()
    return d / name if name else d


# ----------------------------------------------------------------------------- builders

def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def png_bytes(width: int, height: int, colour: int, rows: bytes | None) -> bytes:
    """A PNG declaring ``width`` x ``height`` (8-bit gray or RGB) with the given raw rows (may be short)."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, colour, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", zlib.compress(rows or b""))
            + _chunk(b"IEND", b""))


def tiff_bytes(width: int, height: int, data: bytes, dtype_code: int = 1, bits: int = 8) -> bytes:
    """A little-endian one-strip TIFF declaring ``width`` x ``height`` (data may be short)."""
    entries = [(256, 4, 1, width), (257, 4, 1, height), (258, 3, 1, bits), (259, 3, 1, 1), (262, 3, 1, 1),
               (273, 4, 1, 0), (277, 3, 1, 1), (278, 4, 1, height), (279, 4, 1, len(data)), (339, 3, 1, dtype_code)]
    ifd_offset = 8
    ifd_size = 2 + 12 * len(entries) + 4
    data_offset = ifd_offset + ifd_size
    out = b"II*\x00" + struct.pack("<I", ifd_offset) + struct.pack("<H", len(entries))
    for tag, typ, count, value in entries:
        if tag == 273:
            value = data_offset
        if typ == 3:
            out += struct.pack("<HHIHH", tag, typ, count, value, 0)
        else:
            out += struct.pack("<HHII", tag, typ, count, value)
    return out + struct.pack("<I", 0) + data


def voc_text(filename: str, objects: list[tuple[str, tuple]], size: tuple[Any, Any] | None = (64, 48)) -> str:
    objs = "".join(f"<object><name>{n}</name><bndbox><xmin>{b[0]}</xmin><ymin>{b[1]}</ymin><xmax>{b[2]}</xmax>"
                   f"<ymax>{b[3]}</ymax></bndbox></object>" for n, b in objects)
    sz = "" if size is None else f"<size><width>{size[0]}</width><height>{size[1]}</height><depth>3</depth></size>"
    return f"<annotation><filename>{filename}</filename>{sz}{objs}</annotation>"


# ============================================================================= images

HEADER_KINDS = ["png-declared", "png-truncated", "png-bitflip", "tiff-declared", "tiff-truncated", "jpeg-cut"]
#: Declared sizes: small (decoded whole) or over the pixel budget (refused from the header).  The band
#: between 16 Mpx and the budget is the memory-budget work of issue 24 item 1 (benchmarks there).
SIDE = st.one_of(st.integers(1, 300), st.integers(17_000, 2**31 - 1))


@fuzz(200)
@given(kind=st.sampled_from(HEADER_KINDS), w=SIDE, h=SIDE, colour=st.sampled_from([0, 2]),
       cut=st.floats(0, 1), flips=st.lists(st.integers(0, 10**6), max_size=4), seed=st.integers(0, 2**16))
def _fuzz_image_headers(work, kind, w, h, colour, cut, flips, seed):
    from napari_cellclass.budget import max_pixels
    from napari_cellclass.io.limits import read_image

    rng = np.random.default_rng(seed)
    small = w * h <= 16_000_000
    chans = 3 if colour == 2 else 1
    if kind.startswith("png"):
        p = fresh(work, "img.png")
        raw = b""
        if small:
            pixels = rng.integers(0, 255, (h, w * chans), dtype=np.uint8) if w * h <= 90_000 else None
            raw = b"".join(b"\x00" + pixels[r].tobytes() for r in range(h)) if pixels is not None else b""
        data = png_bytes(w, h, colour, raw)
        if kind == "png-truncated":
            data = data[: max(8, int(len(data) * cut))]
        elif kind == "png-bitflip":
            b = bytearray(data)
            for f in flips:
                b[16 + f % max(1, len(b) - 16)] ^= 1 << (f % 8)
            data = bytes(b)
    elif kind.startswith("tiff"):
        p = fresh(work, "img.tif")
        n = w * h if small and w * h <= 90_000 else 64
        data = tiff_bytes(w, h, rng.integers(0, 255, n, dtype=np.uint8).tobytes())
        if kind == "tiff-truncated":
            data = data[: max(8, int(len(data) * cut))]
    else:
        from PIL import Image

        p = fresh(work, "img.jpg")
        buf = io.BytesIO()
        Image.fromarray(rng.integers(0, 255, (min(h, 64), min(w, 64), 3), dtype=np.uint8)).save(buf, "JPEG")
        data = buf.getvalue()[: max(4, int(len(buf.getvalue()) * cut))]
    p.write_bytes(data)
    over = w * h * chans > max_pixels()
    arr = check("image-header", f"{kind} {w}x{h}", lambda: read_image(p), [p.name],
                expect_error=True if over and kind.endswith("declared") else None)
    if arr is not None:
        if arr.ndim < 2 or arr.size == 0:
            wrong("image-header", kind, f"shape {arr.shape}")
        elif kind in ("png-declared", "tiff-declared") and tuple(arr.shape[:2]) != (h, w):
            wrong("image-header", kind, f"declared {h}x{w}, decoded {arr.shape}")


BLANK_KINDS = ["constant", "tiny", "noise", "nan", "inf", "near-constant", "one-pixel-off"]


@fuzz(200)
@given(kind=st.sampled_from(BLANK_KINDS), dtype=st.sampled_from(["uint8", "uint16", "float32", "float64"]),
       h=st.integers(1, 96), w=st.integers(1, 96), rgb=st.booleans(), value=st.floats(0, 1), seed=st.integers(0, 999))
def _fuzz_blank_tiny_nonfinite(work, kind, dtype, h, w, rgb, value, seed):
    from napari_cellclass.io.limits import check_informative

    rng = np.random.default_rng(seed)
    shape = (h, w, 3) if rgb else (h, w)
    top = 1.0 if dtype.startswith("float") else float(np.iinfo(dtype).max)
    if kind == "tiny":
        shape = (int(rng.integers(1, 8)), w, 3) if rgb else (int(rng.integers(1, 8)), w)
    if kind == "noise" or kind == "tiny":
        arr = (rng.random(shape) * top).astype(dtype)
        if arr.max() == arr.min():  # a 1x1 noise image is constant: it is blank too
            kind = "constant" if kind == "noise" else kind
    else:
        arr = np.full(shape, value * top).astype(dtype)
    if kind == "near-constant":
        arr = arr.astype(np.float64)
        arr.flat[rng.integers(0, arr.size)] += 1e-5 * top  # below every visible difference
        arr = arr.astype(dtype)
    elif kind == "one-pixel-off" and min(h, w) >= 8:
        arr = arr.astype(np.float64)
        arr.flat[rng.integers(0, arr.size)] = (value + 0.5) % 1.0 * top
        arr = arr.astype(dtype)
    elif kind in ("nan", "inf"):
        if not dtype.startswith("float"):
            dtype = "float32"
        arr = (rng.random(shape) * top).astype(dtype)
        arr.flat[rng.integers(0, arr.size)] = np.nan if kind == "nan" else -np.inf
    p = fresh(work, "field.png")
    small = min(arr.shape[:2]) < 8
    flat = arr.astype(np.float64)
    finite = bool(np.all(np.isfinite(flat)))
    uniform = finite and float(flat.max() - flat.min()) <= 1e-3 * max(top, float(np.abs(flat).max()) if
                                                                       dtype.startswith("float") else top)
    must_refuse = small or not finite or uniform or kind in ("constant", "near-constant")
    if kind == "one-pixel-off":
        must_refuse = None  # one bright pixel: refusing it as near-blank or analysing it are both fine
    if kind == "noise" and min(arr.shape[:2]) >= 8 and arr.size >= 64:
        must_refuse = False
    check("blank-tiny-nan", f"{kind} {arr.dtype} {arr.shape}", lambda: check_informative(arr, "image", p),
          [p.name], expect_error=must_refuse)


@fuzz(90)
@given(kind=st.sampled_from(["nan", "inf", "-inf", "finite"]), h=st.integers(8, 40), w=st.integers(8, 40),
       where=st.integers(0, 10**6), bits=st.sampled_from([32, 64]))
def _fuzz_float_tiff_nonfinite(work, kind, h, w, where, bits):
    import tifffile

    from napari_cellclass.io.limits import read_image

    arr = np.linspace(0, 1, h * w).reshape(h, w).astype(np.float32 if bits == 32 else np.float64)
    if kind != "finite":
        arr.flat[where % arr.size] = {"nan": np.nan, "inf": np.inf, "-inf": -np.inf}[kind]
    p = fresh(work, "float.tif")
    tifffile.imwrite(p, arr)
    out = check("nan-inf", f"{kind} {bits}", lambda: read_image(p), [p.name], expect_error=kind != "finite")
    if out is not None and not np.array_equal(out, arr):
        wrong("nan-inf", kind, "values changed")


# ============================================================================= names leaving the data set

TRAVERSAL = st.one_of(
    st.sampled_from(["../outside", "../../etc/passwd", "/etc/passwd", "C:\\Windows\\x", "\\\\server\\share\\x",
                     "~/x", "a/../../x", "./../x", "a\\..\\..\\x", "..", "", " ", "a\x00b", "D:x", "/", "....//x"]),
    st.builds(lambda parts, sep, lead: lead + sep.join(parts),
              st.lists(st.sampled_from(["..", ".", "a", "img", "x y", "é", "....", "~"]), min_size=1, max_size=5),
              st.sampled_from(["/", "\\"]), st.sampled_from(["", "/", "\\", "~", "C:"])),
    st.text(alphabet="./\\~:a", min_size=0, max_size=12),
)


def _leaves(name: str) -> bool:
    """Independent expectation: does ``name`` leave the folder (absolute, drive, ~, or a '..' part)?"""
    text = name.strip()
    norm = text.replace("\\", "/")
    return (norm.startswith("/") or text.startswith("~") or (len(text) > 1 and text[0].isascii() and text[0].isalpha()
                                                                and text[1] == ":")
            or ".." in norm.split("/"))


def _inside(p: Path | None, root: Path) -> bool:
    if p is None:
        return True
    a, b = os.path.normpath(os.path.abspath(p)), os.path.normpath(os.path.abspath(root))
    return a == b or a.startswith(b + os.sep)


@fuzz(130)
@given(name=TRAVERSAL, fmt=st.sampled_from(["voc", "coco", "hpa"]))
def _fuzz_traversal_names(work, name, fmt):
    from napari_cellclass.io.annotations import read_coco, read_voc
    from napari_cellclass.io.hpa_dataset import read_labels

    root = fresh(work, "")
    if fmt == "voc":
        p = root / "a.xml"
        esc = name.replace("&", "&amp;").replace("<", "&lt;").replace("\x00", "")
        p.write_text(voc_text(esc, [("RBC", (1, 1, 9, 9))]), encoding="utf-8")
        ann = check("traversal", f"voc {name!r}", lambda: read_voc(p), [p.name],
                    expect_error=True if _leaves(esc) and esc.strip() else None)
        if ann is not None and not _inside(ann.image_path, root):
            wrong("traversal", f"voc {name!r}", f"image path {ann.image_path} outside {root}")
    elif fmt == "coco":
        p = root / "c.json"
        p.write_text(json.dumps({"images": [{"id": 1, "file_name": name, "width": 64, "height": 48}],
                                 "annotations": [], "categories": []}))
        items = check("traversal", f"coco {name!r}", lambda: read_coco(p), [p.name],
                      expect_error=True if _leaves(name) else None)
        for it in items or []:
            if not _inside(it.image_path, root):
                wrong("traversal", f"coco {name!r}", f"image path {it.image_path} outside {root}")
    else:
        p = root / "train.csv"
        with open(p, "w", newline="", encoding="utf-8") as fh:
            csv.writer(fh).writerows([["Id", "Target"], [name, "0"]])
        items = check("traversal", f"hpa {name!r}", lambda: read_labels(p), [p.name],
                      expect_error=True if _leaves(name) or not name.strip() else None)
        for it in items or []:
            if _leaves(it.set_id):
                wrong("traversal", f"hpa {name!r}", f"Id {it.set_id!r} kept")


# ============================================================================= recipes

RECIPE_KEYS = ["lr", "epochs", "batch_size", "optimizer", "schedule", "weight_decay", "nonsense", "grad_clip"]


@fuzz(130)
@given(kind=st.sampled_from(["alias", "merge", "tag", "deep", "plain", "bomb", "not-mapping", "binary"]),
       key=st.sampled_from(RECIPE_KEYS), value=st.one_of(st.integers(-5, 10**6), st.floats(allow_nan=True),
                                                          st.text(max_size=8), st.booleans()),
       depth=st.integers(1, 60))
def _fuzz_recipe_yaml(work, kind, key, value, depth):
    from napari_cellclass.recipes.config import Recipe

    p = fresh(work, "recipe.yaml")
    v = json.dumps(value)
    if kind == "alias":
        text = f"base: &a {v}\n{key}: *a\n"
    elif kind == "merge":
        text = f"defaults: &d {{lr: 0.1}}\n<<: *d\n{key}: {v}\n"
    elif kind == "tag":
        text = f"{key}: !!python/object/apply:os.system ['echo hi']\n"
    elif kind == "deep":
        text = f"{key}: " + "[" * depth + "1" + "]" * depth + "\n"
    elif kind == "bomb":
        text = "a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
            f"{c}: &{c} [*{p_}, *{p_}, *{p_}, *{p_}, *{p_}, *{p_}, *{p_}, *{p_}, *{p_}]\n"
            for p_, c in zip("abcdefgh", "bcdefghi"))
    elif kind == "not-mapping":
        text = f"- {v}\n- {v}\n"
    elif kind == "binary":
        text = "\x00\xff" + v
    else:
        text = f"{key}: {v}\n"
    p.write_bytes(text.encode("utf-8", "surrogatepass") if kind != "binary" else b"\x00\xff\xfe" + v.encode())
    refuse = True if kind in ("alias", "merge", "tag", "bomb", "not-mapping", "binary") else None
    check("recipe-yaml", f"{kind} {key}={v[:20]}", lambda: Recipe.from_file(p), [p.name], expect_error=refuse)


# ============================================================================= CSV formula cells

CELL = st.one_of(st.text(max_size=12), st.sampled_from(["=1+1", "+cmd|' /C calc'!A0", "-2+3", "@SUM(A1)", "\t=x",
                                                         "\r=x", "=HYPERLINK(\"http://x\")", "-1.5", "+3", "1e5",
                                                         "-inf", "nan", "'=x", "'", "=", "-", "@"]),
                 st.floats(allow_nan=True), st.integers())


@fuzz(200)
@given(cells=st.lists(CELL, min_size=1, max_size=6))
def _fuzz_csv_formula_cells(work, cells):
    from napari_cellclass.engine import csvsafe

    def run():
        buf = io.StringIO()
        w = csvsafe.writer(buf)
        w.writerow(cells)
        return next(csv.reader(io.StringIO(buf.getvalue())))

    row = check("csv-formula", repr(cells)[:60], run, ["csv"], expect_error=False)
    if row is None:
        return
    for orig, got in zip(cells, row):
        if got.startswith(("=", "+", "-", "@", "\t", "\r")):
            try:
                float(got)
            except ValueError:
                wrong("csv-formula", repr(orig), f"written as a formula {got!r}")
        back = csvsafe.unescape_cell(got)
        if isinstance(orig, str) and back != orig and not orig.startswith("'"):
            wrong("csv-formula", repr(orig), f"did not read back: {back!r}")


# ============================================================================= option values

def _option_cases():
    from napari_cellclass.tasks.options import options_for

    out = []
    for task in ("wbc", "hpa", "detect", "chromosome", "karyotype"):
        for command in ("train", "evaluate", "predict"):
            table = options_for(task, command) or {}
            out += [(task, command, o.name, o.type, o.range, o.choices) for o in table.values()]
    return out


OPTION_VALUES = st.one_of(st.sampled_from(["0", "-1", "1.5", "-0.1", "1e308", "inf", "-inf", "nan", "100000", "",
                                           "0,0,0", "abc", "true", "1e-320", "9" * 400, "0x10", "1_000"]),
                          st.floats(allow_nan=True, allow_infinity=True).map(repr),
                          st.integers(-10**12, 10**12).map(str))


@fuzz(180)
@given(pick=st.integers(0, 10**6), value=OPTION_VALUES)
def _fuzz_option_values(work, pick, value):
    from napari_cellclass.tasks.options import _parse_range, parse_settings

    cases = _option_cases()
    task, command, name, type_, spec, choices = cases[pick % len(cases)]
    got = check("options", f"{task} {command} {name}={value[:20]}",
                lambda: parse_settings(task, command, [f"{name}={value}"]), [name])
    if got is None:
        return
    v = got.get(name)
    for x in (v if isinstance(v, (list, tuple)) else [v]):
        if isinstance(x, float) and not math.isfinite(x):
            wrong("options", f"{task} {name}={value}", f"non-finite value {x!r} accepted")
        if spec and isinstance(x, (int, float)) and not isinstance(x, bool):
            lo, hi, lo_in, hi_in = _parse_range(spec)
            if (lo is not None and (x < lo or (x == lo and not lo_in))) or (
                    hi is not None and (x > hi or (x == hi and not hi_in))):
                wrong("options", f"{task} {name}={value}", f"{x!r} outside {spec} accepted")
        if choices and isinstance(x, str) and x not in choices:
            wrong("options", f"{task} {name}={value}", f"{x!r} not one of {choices}")


# ============================================================================= coordinates

COORD = st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.integers(-10**6, 10**6),
                  st.sampled_from(["1e300", "-1e300", "nan", "inf", "", "abc", "1e-300", "9" * 400, "0x1f"]))


@fuzz(170)
@given(box=st.lists(COORD, min_size=4, max_size=4), fmt=st.sampled_from(["voc", "voc-nosize", "coco"]),
       size=st.sampled_from([(64, 48), (1, 1), (0, 0), ("nan", 5), (10**7, 10**7)]))
def _fuzz_nonfinite_coordinates(work, box, fmt, size):
    from napari_cellclass.io.annotations import read_coco, read_voc

    root = fresh(work, "")
    if fmt.startswith("voc"):
        p = root / "a.xml"
        p.write_text(voc_text("a.png", [("RBC", tuple(box))], None if fmt == "voc-nosize" else size))
        got = check("coordinates", f"{fmt} {box} {size}", lambda: read_voc(p), [p.name])
        items = [got] if got is not None else []
    else:
        p = root / "c.json"
        def num(v):
            if isinstance(v, str):
                try:
                    return float(v) if not v.startswith("9" * 50) else int(v)
                except ValueError:
                    return v
            return v
        doc = {"images": [{"id": 1, "file_name": "a.png", "width": num(size[0]), "height": num(size[1])}],
               "annotations": [{"id": 1, "image_id": 1, "category_id": 1,
                                "bbox": [num(v) for v in box]}], "categories": [{"id": 1, "name": "RBC"}]}
        p.write_text(json.dumps(doc, allow_nan=True))
        items = check("coordinates", f"coco {box} {size}", lambda: read_coco(p), [p.name]) or []
    for it in items:
        b = np.asarray(it.boxes, dtype=np.float64)
        if b.size and not np.all(np.isfinite(b)):
            wrong("coordinates", f"{fmt} {box}", f"non-finite box kept {b.tolist()}")
        if b.size and np.any(b[:, 2] <= b[:, 0]) | np.any(b[:, 3] <= b[:, 1]):
            wrong("coordinates", f"{fmt} {box}", f"empty or inverted box kept {b.tolist()}")
        if b.size and it.width and it.height and (b[:, [0, 2]].max() > it.width or b[:, [1, 3]].max() > it.height
                                                  or b.min() < 0):
            wrong("coordinates", f"{fmt} {box}", f"box outside the declared {it.width}x{it.height}: {b.tolist()}")


@fuzz(40)
@given(kind=st.sampled_from(["big-int", "deep-list", "deep-dict", "big-id", "huge-float-string"]),
       n=st.integers(50, 200_000))
def _fuzz_coco_structure(work, kind, n):
    from napari_cellclass.io.annotations import read_coco

    p = fresh(work, "c.json")
    if kind == "big-int":
        text = '{"images": [{"id": 1, "file_name": "a.png", "width": ' + "9" * min(n, 5000) + ', "height": 5}], ' \
               '"annotations": [], "categories": []}'
    elif kind == "big-id":
        text = '{"images": [{"id": ' + "7" * min(n, 5000) + ', "file_name": "a.png"}], "annotations": [], ' \
               '"categories": []}'
    elif kind == "deep-list":
        text = '{"images": ' + "[" * n + "]" * n + ', "annotations": []}'
    elif kind == "deep-dict":
        text = '{"images": [], "annotations": [' + '{"a":' * min(n, 50_000) + "1" + "}" * min(n, 50_000) + "]}"
    else:
        text = '{"images": [{"id": 1, "file_name": "a.png", "width": 1e999, "height": -1e999}], ' \
               '"annotations": [], "categories": []}'
    p.write_text(text)
    check("coco-structure", f"{kind} {n}", lambda: read_coco(p), [p.name])


# ============================================================================= JSON out

JSONISH = st.recursive(st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.integers(), st.text(max_size=4),
                                 st.none(), st.booleans()),
                       lambda kids: st.one_of(st.lists(kids, max_size=4), st.dictionaries(st.text(max_size=4), kids,
                                                                                          max_size=4)),
                       max_leaves=12)


@fuzz(90)
@given(obj=JSONISH)
def _fuzz_json_is_always_valid(work, obj):
    from napari_cellclass import cli

    p = fresh(work, "metrics.json")

    def run():
        import contextlib

        with contextlib.redirect_stdout(io.StringIO()) as out:
            cli._print_json({"m": obj}, p)
        return out.getvalue()

    printed = check("json-out", repr(obj)[:60], run, [p.name], expect_error=False)
    if printed is None:
        return
    for text in (printed, p.read_text()):
        try:
            json.loads(text, parse_constant=lambda c: (_ for _ in ()).throw(ValueError(c)))
        except ValueError as exc:
            wrong("json-out", repr(obj)[:60], f"not strict JSON: {exc}")


# ============================================================================= sidecars beside smears

LABELS = st.sampled_from(["RBC", "WBC", "Platelets", "red blood cell", "NEUTROPHIL", "lymphocyte", "platelet",
                          "cell", "blob", "artifact", "WCB", "R B C", "=cmd()", "é", "plt", "thrombocyte", "x" * 40])


@fuzz(100)
@given(labels=st.lists(LABELS, min_size=0, max_size=6), fmt=st.sampled_from(["voc", "coco", "folder-coco"]))
def _fuzz_smear_sidecar_labels(work, labels, fmt):
    from PIL import Image

    from napari_cellclass.tasks import blood

    root = fresh(work, "")
    img = root / "s.png"
    Image.fromarray(np.full((48, 64, 3), 200, np.uint8)).save(img)
    boxes = [(1 + 6 * i, 1, 5 + 6 * i, 9) for i in range(len(labels))]
    if fmt == "voc":
        side = root / "s.xml"
        side.write_text(voc_text("s.png", list(zip([lab.replace("&", "&amp;") for lab in labels], boxes))))
    else:
        side = root / ("s.json" if fmt == "coco" else "_annotations.coco.json")
        cats = sorted(set(labels))
        side.write_text(json.dumps({
            "images": [{"id": 1, "file_name": "s.png", "width": 64, "height": 48}],
            "annotations": [{"id": i + 1, "image_id": 1, "category_id": cats.index(lab) + 1,
                             "bbox": [b[0], b[1], b[2] - b[0], b[3] - b[1]]}
                            for i, (lab, b) in enumerate(zip(labels, boxes))],
            "categories": [{"id": i + 1, "name": c} for i, c in enumerate(cats)]}))
    known = {"RBC", "RED BLOOD CELL", "WBC", "PLATELETS", "NEUTROPHIL", "LYMPHOCYTE", "PLATELET", "PLT", "THROMBOCYTE"}
    unknown = [lab for lab in labels if lab.strip().upper() not in known]
    ann = check("sidecar-labels", f"{fmt} {labels}", lambda: blood.sidecar_annotation(img), [side.name],
                expect_error=bool(unknown) or not labels)
    if ann is not None and sorted(ann.labels) != sorted(labels):
        wrong("sidecar-labels", f"{fmt} {labels}", f"labels read {ann.labels}")


# ============================================================================= poisoned caches

@fuzz(50)
@given(kind=st.sampled_from(["random", "truncated", "pickle-global", "list", "empty", "text"]),
       n=st.integers(0, 4000), seed=st.integers(0, 999))
def _fuzz_poisoned_torch_hub_cache(work, kind, n, seed):
    import pickle
    import types

    import torch

    from napari_cellclass.models.pretrained import read_cached_weights

    p = fresh(work, "resnet99-abc123.pth")
    rng = np.random.default_rng(seed)
    if kind == "random":
        p.write_bytes(rng.integers(0, 256, n, dtype=np.uint8).tobytes())
    elif kind == "truncated":
        buf = io.BytesIO()
        torch.save({"w": torch.zeros(32, 32)}, buf)
        p.write_bytes(buf.getvalue()[: n % len(buf.getvalue())])
    elif kind == "pickle-global":
        p.write_bytes(pickle.dumps({"w": os.getcwd}, protocol=2))  # a function reference: code, not tensors
    elif kind == "list":
        torch.save([torch.zeros(2)] * 3, p)
    elif kind == "empty":
        p.write_bytes(b"")
    else:
        p.write_text("<html>proxy login page</html>")
    weights = types.SimpleNamespace(url="https://example.org/resnet99-abc123.pth")
    check("poisoned-cache", f"{kind} {n}", lambda: read_cached_weights(p, weights), [p.name], expect_error=True)


# ============================================================================= no silent replacement

ENTRY = st.sampled_from(["predictions.csv", "summary.json", ".DS_Store", ".hidden.tmp", "notes.txt", "sub/", ".git/",
                         "cells.zarr/", "x_report.pdf"])


@fuzz(90)
@given(entries=st.lists(ENTRY, max_size=4, unique=True), overwrite=st.booleans(), as_file=st.booleans())
def _fuzz_predict_out_refusals(work, entries, overwrite, as_file):
    from napari_cellclass.engine.atomic import check_no_earlier_results

    out = fresh(work, "out")
    if as_file and not entries:
        out.write_text("mine")
        check("overwrite", "out is a file", lambda: check_no_earlier_results(out, overwrite=overwrite), [out.name],
              expect_error=True)
        return
    out.mkdir()
    for e in entries:
        (out / e.rstrip("/")).mkdir() if e.endswith("/") else (out / e).write_text("earlier")
    visible = sorted(e.rstrip("/") for e in entries if not e.startswith("."))
    before = sorted(p.name for p in out.iterdir())
    check("overwrite", f"{entries} overwrite={overwrite}", lambda: check_no_earlier_results(out, overwrite=overwrite),
          visible[:1] or [out.name], expect_error=bool(visible) and not overwrite)
    if sorted(p.name for p in out.iterdir()) != before:
        wrong("overwrite", str(entries), "the check changed the folder")


@fuzz(100)
@given(have=st.lists(st.sampled_from(["model.safetensors", "best.safetensors", "resume.pt", "log.txt", "junk"]),
                     max_size=3, unique=True),
       overwrite=st.booleans(), resume=st.booleans(), task_of_model=st.sampled_from(["wbc", "hpa", "junk"]))
def _fuzz_train_run_folder_refusals(work, have, overwrite, resume, task_of_model):
    from napari_cellclass.engine.run import check_no_earlier_run

    run = fresh(work, "run")
    run.mkdir()
    for name in have:
        if name.endswith(".safetensors") and task_of_model != "junk":
            from napari_cellclass.engine.checkpoint import CheckpointMeta, save_checkpoint

            save_checkpoint(run / name, {"w": __import__("torch").zeros(1)},
                            CheckpointMeta(task=task_of_model, arch="tiny_cnn", class_names=["a", "b"], in_channels=3,
                                           input_size=[16, 16]))
        else:
            (run / name).write_bytes(b"earlier")
    guarded = [n for n in sorted(have) if n.endswith(".safetensors")] + (["resume.pt"] if "resume.pt" in have else [])
    refuse = bool(guarded) and not overwrite and not resume
    check("overwrite", f"train {have} o={overwrite} r={resume}",
          lambda: check_no_earlier_run(run, "wbc", resume=resume, overwrite=overwrite), guarded[:1] or ["run"],
          expect_error=refuse)


@fuzz(70)
@given(before=st.lists(st.sampled_from(["a.csv", "b.json", "c.csv"]), max_size=3, unique=True),
       writes=st.lists(st.sampled_from(["a.csv", "b.json", "c.csv", "d.csv"]), min_size=1, max_size=5),
       enabled=st.booleans())
def _fuzz_keep_earlier_results(work, before, writes, enabled):
    from napari_cellclass.engine.atomic import atomic_path, keep_earlier_results

    out = fresh(work, "out")
    out.mkdir()
    for n in before:
        (out / n).write_text("earlier")
    with keep_earlier_results(out, enabled=enabled):
        for k, n in enumerate(writes):
            def write(n=n, k=k):
                with atomic_path(out / n) as tmp:
                    tmp.write_text(f"new{k}")
            check("overwrite", f"write {n} before={before} enabled={enabled}", write, [n],
                  expect_error=enabled and n in before)
    for n in before:
        text = (out / n).read_text()
        if enabled and text != "earlier":
            wrong("overwrite", n, "an earlier result was replaced")
    if sorted(p.name for p in out.iterdir()) != sorted(set(before) | set(writes) if not enabled else
                                                         set(before) | (set(writes) - set(before))):
        wrong("overwrite", str(writes), f"left {sorted(p.name for p in out.iterdir())}")


# ============================================================================= folder swaps

@fuzz(24)
@given(kill_at=st.integers(1, 40), exchange=st.booleans())
def _fuzz_folder_swap_kill(work, kill_at, exchange):
    import shutil

    from napari_cellclass.engine import atomic
    from napari_cellclass.io.layer_reader import get_reader
    from napari_cellclass.io.writers import write_labels_zarr

    class Killed(BaseException):
        pass

    target = fresh(work, "cells.zarr")
    write_labels_zarr(str(target), np.full((4, 5), 1, np.uint8), {})
    steps = {"n": 0}
    saved = {(m, n): getattr(m, n) for m, n in ((os, "replace"), (os, "rename"), (shutil, "rmtree"),
                                                 (os, "unlink"), (os, "mkdir"))}
    saved_fn = list(atomic._EXCHANGE_FN)

    def wrap(fn):
        def inner(*a, **k):
            steps["n"] += 1
            if steps["n"] >= kill_at:  # the process is gone: this and every later step never happen
                raise Killed()
            return fn(*a, **k)
        return inner

    def case():
        if not exchange:
            atomic._EXCHANGE_FN[:] = [None]
        for (m, n), fn in saved.items():
            setattr(m, n, wrap(fn))
        try:
            write_labels_zarr(str(target), np.full((4, 5), 2, np.uint8), {})
        except Killed:
            pass
        finally:
            for (m, n), fn in saved.items():
                setattr(m, n, fn)
            atomic._EXCHANGE_FN[:] = saved_fn
        reader = get_reader(str(target))  # any reader restores an interrupted swap first
        if reader is None:
            raise AssertionError("target missing after a kill")
        return int(np.asarray(reader(str(target))[0][0]).max())

    got = check("folder-swap", f"kill at {kill_at} exchange={exchange}", case, [target.name], expect_error=False)
    if got not in (1, 2):
        wrong("folder-swap", f"kill at {kill_at}", f"read {got}")
    left = [p.name for p in target.parent.iterdir() if p.name != target.name]
    if left:
        wrong("folder-swap", f"kill at {kill_at}", f"debris after the next open: {left}")


# ============================================================================= command line

CLI_CASES = [
    (["--epochs", "0"], "epochs"), (["--batch-size", "0"], "batch-size"), (["--size", "100000"], "size"),
    (["--seed", "-1"], "seed"), (["--set", "val_fraction=1.5"], "val_fraction"),
    (["--set", "val_fraction=-0.1"], "val_fraction"), (["--set", "time_budget_s=-1"], "time_budget_s"),
    (["--set", "width=100000"], "width"), (["--set", "lr=nan"], "lr"), (["--lr", "inf"], "lr"),
]


def _plain_cli_exit_codes(work):
    import contextlib

    from napari_cellclass import cli

    for argv, name in CLI_CASES:
        err = io.StringIO()
        data = fresh(work, "")
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            code = check("cli", " ".join(argv), lambda: cli.main(["train", "wbc", str(data), "--out",
                                                                   str(data / "run"), "--quiet", *argv]), [name])
        lines = [ln for ln in err.getvalue().splitlines() if ln.strip()]
        if code != 2 or len(lines) != 1 or name not in lines[0] or (data / "run").exists():
            wrong("cli", " ".join(argv), f"exit {code}, stderr {lines}")
    import torch

    from napari_cellclass.engine.checkpoint import CheckpointMeta, save_checkpoint

    out = fresh(work, "out")
    out.mkdir()
    (out / "predictions.csv").write_text("earlier\n")
    model = save_checkpoint(out.parent / "m.safetensors", {"w": torch.zeros(1)},
                            CheckpointMeta(task="hpa", arch="tiny_cnn", class_names=["a", "b"], in_channels=4,
                                           input_size=[16, 16]))
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        code = check("cli", "predict into a used --out", lambda: cli.main(
            ["predict", "hpa", str(model), str(out), "--out", str(out), "--quiet"]), ["predictions.csv"])
    lines = [ln for ln in err.getvalue().splitlines() if ln.strip()]
    if code == 0 or len(lines) != 1 or (out / "predictions.csv").read_text() != "earlier\n":
        wrong("cli", "predict into a used --out", f"exit {code}, stderr {lines}")


# ============================================================================= the tests

GENERATED = {
    "test_image_headers": _fuzz_image_headers,
    "test_blank_tiny_nonfinite_images": _fuzz_blank_tiny_nonfinite,
    "test_float_tiff_nan_inf": _fuzz_float_tiff_nonfinite,
    "test_traversal_names": _fuzz_traversal_names,
    "test_recipe_yaml": _fuzz_recipe_yaml,
    "test_csv_formula_cells": _fuzz_csv_formula_cells,
    "test_option_values": _fuzz_option_values,
    "test_nonfinite_coordinates": _fuzz_nonfinite_coordinates,
    "test_coco_structure": _fuzz_coco_structure,
    "test_json_is_always_valid": _fuzz_json_is_always_valid,
    "test_smear_sidecar_labels": _fuzz_smear_sidecar_labels,
    "test_poisoned_torch_hub_cache": _fuzz_poisoned_torch_hub_cache,
    "test_predict_out_refusals": _fuzz_predict_out_refusals,
    "test_train_run_folder_refusals": _fuzz_train_run_folder_refusals,
    "test_keep_earlier_results": _fuzz_keep_earlier_results,
    "test_folder_swap_kill": _fuzz_folder_swap_kill,
    "test_cli_exit_codes": _plain_cli_exit_codes,
}
DONE: set[str] = set()


@pytest.fixture(autouse=True)
def _count(request):
    yield
    spec = getattr(request.node, "callspec", None)
    DONE.add(spec.params.get("name", request.node.name) if spec is not None else request.node.name)
    if DONE >= set(GENERATED) and not DONE & {"reported"}:  # the whole generated suite ran: check its size
        DONE.add("reported")
        total = sum(CASES.values())
        print(f"\n[test_hostile_generated] {total} cases: " + ", ".join(f"{k} {v}" for k, v in sorted(CASES.items())))
        assert total >= MIN_CASES, f"only {total} generated cases ran; at least {MIN_CASES} are required"


@pytest.mark.parametrize("name", list(GENERATED))
def test_generated(name, work):
    no_new_bad(lambda: GENERATED[name](work))


def test_the_check_itself_catches_raw_errors_long_messages_and_memory(monkeypatch):
    """The harness can fail: a raw exception, a two-line message, a message naming nothing, a memory bomb."""
    from napari_cellclass.errors import InputError

    import sys

    monkeypatch.setattr(sys.modules[__name__], "MEM_BOUND_MB", 32)
    start = len(BAD)

    def bomb():
        a = np.ones(80 << 17)  # 80 MB, every page touched
        return float(a.sum())

    check("self", "raw", lambda: int("x"), ["f"])
    check("self", "two lines", lambda: (_ for _ in ()).throw(InputError("bad\n  in line 2", "f.png")), ["f.png"])
    check("self", "names nothing", lambda: (_ for _ in ()).throw(InputError("bad")), ["f.png"])
    check("self", "bomb", bomb, ["f"])
    check("self", "accepted", lambda: 1, ["f"], expect_error=True)
    got = BAD[start:]
    del BAD[start:]
    CASES.pop("self")  # not a generated case
    assert [g.split(":")[0] for g in got] == ["self/raw", "self/two lines", "self/names nothing", "self/bomb",
                                              "self/accepted"], got

"""Untrusted bioimage.io packages: check the archive before anything inflates it, and remember consent.

A package is a zip (or a folder) holding an ``rdf.yaml``.  Before ``bioimageio.spec``
sees it, :func:`check_package`

* tells a non-package apart in one line (a PyTorch ``.pt`` is also a zip; a pickle is
  never opened; a safetensors checkpoint is pointed to the model field);
* reads the zip's central directory only: member count, names (no absolute paths, no
  ``..``), declared sizes per member and in total, and the compression ratio, so a
  small zip that would inflate to gigabytes is refused before one byte is inflated
  (Python's zip reader never yields more than the declared size, so the declared size
  bounds memory);
* reads ``rdf.yaml`` (at most :data:`MAX_RDF_BYTES`) and refuses YAML aliases, anchors
  and explicit tags, which is what lets a 500-byte file expand to gigabytes ("billion
  laughs") or build arbitrary objects;
* refuses weights, architecture files and attachments that point outside the package
  (URLs, absolute paths, ``..``): a package given as a file is run from its own content.

Consent to run a package's own Python code (a state-dict architecture from its source
file, a custom processing step, a callable from an installed module other than ours) is
kept per package sha256 in a small JSON file: ``$CELLCLASS_TRUST_FILE`` or
``trusted_packages.json`` in the user config folder.  No Qt here.
"""
from __future__ import annotations

import hashlib
import json
import os
import zipfile
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from ..errors import InputError

__all__ = ["PackageInfo", "check_package", "safe_yaml", "trust_file", "is_trusted", "remember", "forget",
           "MAX_RDF_BYTES", "MAX_MEMBER_BYTES", "MAX_TOTAL_BYTES", "MAX_MEMBERS", "MAX_RATIO"]

RDF_NAMES = ("rdf.yaml", "bioimageio.yaml")
MAX_RDF_BYTES = 1 << 20  # an rdf.yaml of real models is a few kB
MAX_MEMBER_BYTES = 1 << 30  # one file of a package (weights of the largest HPA model: ~0.3 GB)
MAX_TOTAL_BYTES = 2 << 30  # default; the stated memory budget (napari_cellclass.budget) decides
MAX_MEMBERS = 1000
MAX_RATIO = 200  # inflated/compressed; weights compress ~1.1x, text ~5-20x
RATIO_FLOOR = 1 << 20  # members below 1 MiB inflated are not ratio-checked
MAX_YAML_EVENTS = 200_000
MAX_YAML_DEPTH = 64
TRUST_ENV = "CELLCLASS_TRUST_FILE"


@dataclass
class PackageInfo:
    """A package that passed the checks: where it is, its sha256 and its parsed rdf."""

    path: Path
    kind: str  # "zip" or "folder"
    rdf_name: str
    sha256: str
    rdf: dict[str, Any] = field(repr=False)

    @property
    def rdf_path(self) -> Path:
        """What ``bioimageio.spec.load_description`` is given: the zip, or the folder's rdf.yaml."""
        return self.path if self.kind == "zip" else self.path / self.rdf_name


# ----------------------------------------------------------------------------- sniffing
def _sniff_file(path: Path, head: bytes) -> None:
    """Refuse, in one line, files that are clearly not a bioimage.io package."""
    if head[:1] == b"\x80":  # pickle protocol 2 and later
        raise InputError("this is a Python pickle, not a bioimage.io package (pickles are never opened: "
                         "they can run code); give the package's .zip or its rdf.yaml", path)
    if len(head) >= 9 and head[8:9] == b"{" and int.from_bytes(head[:8], "little") < (100 << 20):
        raise InputError("this is a safetensors checkpoint, not a bioimage.io package; use it as the model "
                         "directly (no import needed)", path)
    raise InputError("not a bioimage.io package: expected a .zip holding rdf.yaml, an rdf.yaml, or a folder "
                     "holding one", path)


def _zip_rdf_name(names: list[str], path: Path) -> str:
    for n in RDF_NAMES:
        if n in names:
            return n
    ends = [n for n in names if n.endswith(".bioimageio.yaml") and "/" not in n]
    if ends:
        return ends[0]
    if any(n.endswith("data.pkl") for n in names):
        raise InputError("this is a PyTorch checkpoint (.pt/.pth), not a bioimage.io package: it has no "
                         "rdf.yaml; a bare checkpoint is never unpickled", path)
    raise InputError("this zip is not a bioimage.io package: it has no rdf.yaml at its top level", path)


def _check_member_name(name: str, path: Path) -> None:
    p = PurePosixPath(name.replace("\\", "/"))
    if name.startswith(("/", "\\")) or ".." in p.parts or (len(name) > 1 and name[1] == ":"):
        raise InputError(f"the package holds a file named {name!r} that points outside the package; refused", path)


def _check_zip(path: Path) -> tuple[zipfile.ZipFile, str]:
    try:
        zf = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError, ValueError) as exc:
        raise InputError(f"not a readable zip archive ({exc})", path) from None
    from ..budget import memory_budget

    total_cap = memory_budget()  # one input's stated peak-memory budget (CELLCLASS_MEMORY_BUDGET)
    member_cap = min(MAX_MEMBER_BYTES, total_cap)
    infos = zf.infolist()
    if len(infos) > MAX_MEMBERS:
        zf.close()
        raise InputError(f"the package holds {len(infos)} files (at most {MAX_MEMBERS}); refused", path)
    total = 0
    for info in infos:
        _check_member_name(info.filename, path)
        size = int(info.file_size)
        if size > member_cap:
            zf.close()
            raise InputError(f"the package's {info.filename!r} would inflate to {size / 2**30:.2f} GiB "
                             f"(at most {member_cap / 2**30:.2f} GiB per file); refused before inflating", path)
        if size > RATIO_FLOOR and size > MAX_RATIO * max(int(info.compress_size), 1):
            zf.close()
            raise InputError(f"the package's {info.filename!r} inflates {size / max(info.compress_size, 1):.0f}-fold "
                             f"({info.compress_size} -> {size} bytes): a zip bomb; refused before inflating", path)
        total += size
    if total > total_cap:
        zf.close()
        raise InputError(f"the package would inflate to {total / 2**30:.2f} GiB, over the memory budget of "
                         f"{total_cap / 2**30:.2f} GiB (CELLCLASS_MEMORY_BUDGET); refused before inflating", path)
    names = [i.filename for i in infos]
    try:
        rdf = _zip_rdf_name(names, path)
    except InputError:
        zf.close()
        raise
    if zf.getinfo(rdf).file_size > MAX_RDF_BYTES:
        zf.close()
        raise InputError(f"the package's {rdf} declares {zf.getinfo(rdf).file_size} bytes (at most "
                         f"{MAX_RDF_BYTES}); refused before inflating", path)
    return zf, rdf


# ----------------------------------------------------------------------------- YAML
def safe_yaml(text: str, where: Any = None) -> dict[str, Any]:
    """Parse an rdf.yaml refusing aliases, anchors and tags (and absurd nesting) before building anything."""
    import yaml

    try:
        depth = n = 0
        for ev in yaml.parse(text, Loader=yaml.SafeLoader):
            n += 1
            if n > MAX_YAML_EVENTS:
                raise InputError(f"rdf.yaml has more than {MAX_YAML_EVENTS} YAML nodes; refused", where)
            if isinstance(ev, yaml.AliasEvent) or getattr(ev, "anchor", None):
                raise InputError("rdf.yaml uses YAML anchors/aliases (&/*), which can expand a small file to "
                                 "gigabytes; bioimage.io files do not need them; refused", where)
            tag = getattr(ev, "tag", None)
            if tag is not None and not isinstance(ev, (yaml.DocumentStartEvent,)):
                raise InputError(f"rdf.yaml uses the explicit YAML tag {tag!r}; refused (plain data only)", where)
            if isinstance(ev, (yaml.MappingStartEvent, yaml.SequenceStartEvent)):
                depth += 1
                if depth > MAX_YAML_DEPTH:
                    raise InputError(f"rdf.yaml nests deeper than {MAX_YAML_DEPTH} levels; refused", where)
            elif isinstance(ev, (yaml.MappingEndEvent, yaml.SequenceEndEvent)):
                depth -= 1
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise InputError(f"rdf.yaml is not valid YAML ({first})", where) from None
    if not isinstance(data, dict):
        raise InputError("rdf.yaml does not describe a resource (not a mapping)", where)
    return data


# ----------------------------------------------------------------------------- references
def _local_refs(rdf: dict[str, Any]) -> list[str]:
    """File references of the parts that are loaded or run: weights, architecture, attachments, dependencies."""
    refs: list[str] = []
    for w in (rdf.get("weights") or {}).values():
        if not isinstance(w, dict):
            continue
        for key in ("source", "dependencies"):
            v = w.get(key)
            if isinstance(v, str):
                refs.append(v.split(":", 1)[1] if v.startswith(("conda:", "pip:")) else v)
            elif isinstance(v, dict) and isinstance(v.get("source"), str):
                refs.append(v["source"])
        arch = w.get("architecture")
        if isinstance(arch, str) and ":" in arch and (".py" in arch or "/" in arch):
            refs.append(arch.rsplit(":", 1)[0])  # 0.4: "file.py:Callable" (an installed module has no .py)
        elif isinstance(arch, dict) and isinstance(arch.get("source"), str):
            refs.append(arch["source"])
    att = rdf.get("attachments")
    files = att.get("files") if isinstance(att, dict) else att
    for f in files or []:
        refs.append(f if isinstance(f, str) else (f.get("source") if isinstance(f, dict) else ""))
    return [r for r in refs if r]


def _check_refs(rdf: dict[str, Any], path: Path) -> None:
    for ref in _local_refs(rdf):
        low = ref.lower()
        if "://" in low or low.startswith(("//", "/", "\\")) or (len(ref) > 1 and ref[1] == ":"):
            raise InputError(f"the package refers to {ref!r} outside itself; a package given as a file must hold "
                             "its weights and code; refused", path)
        if ".." in PurePosixPath(ref.replace("\\", "/")).parts:
            raise InputError(f"the package refers to {ref!r}, outside its folder; refused", path)


# ----------------------------------------------------------------------------- the check
def _sha256_file(path: Path) -> str:
    from ._fetch import sha256_of

    return sha256_of(path)


def _sha256_folder(folder: Path, rdf_name: str, rdf: dict[str, Any]) -> str:
    """A folder package's identity: its rdf.yaml and every file it refers to."""
    h = hashlib.sha256()
    for rel in [rdf_name] + sorted(set(_local_refs(rdf))):
        p = folder / rel
        h.update(rel.encode() + b"\0")
        if p.is_file():
            h.update(_sha256_file(p).encode())
    return h.hexdigest()


def check_package(path: str | Path) -> PackageInfo:
    """The checks above; a :class:`PackageInfo` or an InputError naming the one problem."""
    path = Path(path).expanduser()
    if not path.exists():
        raise InputError("no such bioimage.io package", path)
    if path.is_dir():
        names = [n for n in RDF_NAMES if (path / n).is_file()] or sorted(
            p.name for p in path.glob("*.bioimageio.yaml"))
        if not names:
            raise InputError("this folder is not a bioimage.io package: it holds no rdf.yaml", path)
        return _check_yaml_file(path / names[0], kind="folder")
    with open(path, "rb") as fh:
        head = fh.read(16)
    if head[:4] == b"PK\x03\x04" or head[:4] == b"PK\x05\x06":
        zf, rdf_name = _check_zip(path)
        with zf:
            with zf.open(rdf_name) as fh:
                raw = fh.read(MAX_RDF_BYTES + 1)
        if len(raw) > MAX_RDF_BYTES:
            raise InputError(f"the package's {rdf_name} is larger than {MAX_RDF_BYTES} bytes; refused", path)
        rdf = safe_yaml(_decode(raw, path), path)
        _check_refs(rdf, path)
        return PackageInfo(path=path, kind="zip", rdf_name=rdf_name, sha256=_sha256_file(path), rdf=rdf)
    if path.suffix.lower() in (".yaml", ".yml"):
        return _check_yaml_file(path, kind="folder")
    _sniff_file(path, head)
    raise AssertionError("unreachable")  # _sniff_file always raises


def _decode(raw: bytes, path: Path) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise InputError("rdf.yaml is not UTF-8 text", path) from None


def _check_yaml_file(rdf_path: Path, kind: str) -> PackageInfo:
    size = rdf_path.stat().st_size
    if size > MAX_RDF_BYTES:
        raise InputError(f"rdf.yaml is {size} bytes (at most {MAX_RDF_BYTES}); refused", rdf_path)
    rdf = safe_yaml(_decode(rdf_path.read_bytes(), rdf_path), rdf_path)
    _check_refs(rdf, rdf_path)
    folder = rdf_path.parent
    return PackageInfo(path=folder, kind=kind, rdf_name=rdf_path.name,
                       sha256=_sha256_folder(folder, rdf_path.name, rdf), rdf=rdf)


# ----------------------------------------------------------------------------- consent
def trust_file() -> Path:
    """``$CELLCLASS_TRUST_FILE``, else ``trusted_packages.json`` in the user config folder."""
    env = os.environ.get(TRUST_ENV, "").strip()
    if env:
        return Path(env).expanduser()
    import platformdirs

    return Path(platformdirs.user_config_dir("napari-cellclass")) / "trusted_packages.json"


def _read_store() -> dict[str, Any]:
    p = trust_file()
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except (OSError, ValueError):
        return {}  # an unreadable store trusts nothing; the next consent rewrites it
    return data if isinstance(data, dict) else {}


def is_trusted(sha256: str) -> bool:
    """Whether the user has consented to run this package's code before."""
    return str(sha256).lower() in _read_store()


def remember(sha256: str, name: str) -> Path:
    """Record consent for this exact package (by content hash); returns the store's path."""
    from datetime import datetime, timezone

    from ..engine.atomic import atomic_path

    data = _read_store()
    data[str(sha256).lower()] = {"name": str(name)[:200], "trusted_at": datetime.now(timezone.utc).isoformat()}
    p = trust_file()
    p.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(p) as tmp:
        tmp.write_text(json.dumps(data, indent=1, sort_keys=True), encoding="utf-8")
    return p


def forget(sha256: str) -> None:
    """Withdraw consent for one package."""
    from ..engine.atomic import atomic_path

    data = _read_store()
    if data.pop(str(sha256).lower(), None) is not None:
        with atomic_path(trust_file()) as tmp:
            tmp.write_text(json.dumps(data, indent=1, sort_keys=True), encoding="utf-8")

"""sha256 checks (cached per process) and the one-time download of URL-registered weights.

Downloads go through pooch: the file is written to a temporary name in the cache
folder and moved into place only when its sha256 matches, so an interrupted or
corrupt download never leaves a file that looks complete.
"""
from __future__ import annotations

import hashlib
import shutil
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

from ..errors import InputError

# (resolved path, mtime_ns, size) -> sha256; a file is hashed once per process per version
_VERIFIED: dict[tuple[str, int, int], str] = {}


def sha256_of(path: Path) -> str:
    path = Path(path)
    st = path.stat()
    key = (str(path.resolve()), st.st_mtime_ns, st.st_size)
    if key not in _VERIFIED:
        h = hashlib.sha256()
        with open(path, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
        _VERIFIED[key] = h.hexdigest()
    return _VERIFIED[key]


def verify(path: Path, expected: str, what: str = "model") -> None:
    """InputError when ``path``'s sha256 is not ``expected`` (corrupt, truncated or replaced)."""
    actual = sha256_of(path)
    if actual != str(expected).lower():
        raise InputError(
            f"{what}: sha256 mismatch (file {actual[:12]}..., card {str(expected)[:12]}...); "
            "the weights are corrupt or were replaced; reinstall napari-cellclass or delete the file to refetch",
            path,
        )


def cached_name(c: dict[str, Any]) -> str:
    """Cache file name: the model name plus a hash prefix, so a new version never reuses an old file."""
    return f"{c['name']}-{str(c['sha256'])[:12]}.safetensors"


def _file_downloader(url: str, output_file: Any, pooch: Any) -> None:
    """pooch downloader for ``file://`` URLs (local mirrors, shared drives, tests)."""
    src = Path(unquote(urlparse(url).path))
    if not src.is_file():
        raise FileNotFoundError(f"no such file: {src}")
    if hasattr(output_file, "write"):
        with open(src, "rb") as fh:
            shutil.copyfileobj(fh, output_file)
    else:
        shutil.copyfile(src, output_file)


def fetch(c: dict[str, Any], cache: Path, *, fname: str | None = None) -> Path:
    """Local path of a URL-registered model: from the cache, else downloaded once and verified.

    ``fname`` names the cached file (bioimage.io packages); an empty ``sha256`` (a package
    whose hash is recorded on first download by the caller) downloads without a check.
    """
    name, url, sha = c["name"], c.get("url"), str(c.get("sha256") or "").lower()
    if not url:
        raise InputError(f"built-in model {name!r} has neither a weights file nor a url in its card")
    target = Path(cache) / (fname or cached_name(c))
    if target.is_file() and sha:
        try:
            verify(target, sha, what=f"cached model {name!r}")
            return target
        except InputError:
            target.unlink()  # a damaged cache entry is ours to replace
    import pooch

    downloader = _file_downloader if urlparse(url).scheme == "file" else None
    try:
        Path(cache).mkdir(parents=True, exist_ok=True)
        got = pooch.retrieve(url, known_hash=f"sha256:{sha}" if sha else None, fname=target.name, path=str(cache),
                             downloader=downloader, progressbar=False)
    except Exception as exc:  # offline, HTTP error, hash mismatch, unwritable cache: one clear message
        for stray in Path(cache).glob(target.name + "*"):
            if stray != target:
                stray.unlink(missing_ok=True)
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise InputError(
            f"built-in model {name!r} is not in the cache and could not be fetched from {url} "
            f"into {target} ({reason}); connect to the network once, or download the file yourself "
            f"and place it at that path"
        ) from None
    return Path(got)

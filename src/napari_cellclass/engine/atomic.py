"""Atomic file writes: write beside the target, fsync, then rename into place.

A crash, a cancel or a full disk leaves either the old file or the new one, never
half of either.  Used by checkpoints and by every writer.

Crash consistency beyond one write:

* temporaries are named ``.NAME.<pid>-<random>.tmp``; a temporary whose writer is no
  longer running (or that is older than a day) is removed the next time ``NAME`` is
  written or read (:func:`clean_stale`), so a ``kill -9`` does not leave a disk full
  of half-written OME-Zarr folders;
* a folder swap that was interrupted between its two renames (only ``.NAME.old``
  left) is rolled back, and one interrupted after them has its backup removed
  (:func:`recover`);
* a full disk or a read-only folder is an :class:`~napari_cellclass.errors.OutputError`
  that names the target, never the hidden temporary.

Permissions: ``mkstemp``/``mkdtemp`` create private temporaries (0600/0700).  Before the
rename the result gets the mode a plain ``open()``/``mkdir()`` would give it: the mode of
the file it replaces, else 0666/0777 less the user's umask (0644/0755 under umask 022),
so colleagues on a shared server can read results, checkpoints and OME-Zarr folders.
"""
from __future__ import annotations

import errno
import os
import re
import shutil
import stat
import tempfile
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from ..errors import CellClassError, OutputError

#: A temporary older than this is stale even if a process with its pid exists (pid reuse).
STALE_AFTER_S = 24 * 3600
_TMP_RE = re.compile(r"^\.(?P<name>.+)\.(?:(?P<pid>\d+)-)?[^.]*\.tmp$")
_FULL = (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC), errno.EFBIG)
_DENIED = (errno.EACCES, errno.EPERM, errno.EROFS)
_ACTIVE: set[str] = set()  # temporaries this process is writing right now (never stale)
_FULL_TEXT = ("no space left", "storagefull", "code: 28", "basic_ios::clear", "file write failed",
              "failed writing file", "unexpected pos", "disk quota")


_UMASK_LOCK = threading.Lock()


def current_umask() -> int:
    """The process umask, read without changing it where the OS allows (Linux /proc)."""
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    with _UMASK_LOCK:  # elsewhere: set and restore at once (os.umask has no getter)
        old = os.umask(0o022)
        os.umask(old)
    return old


def public_mode(target: Path, *, directory: bool) -> int:
    """Mode a plain open()/mkdir() would give ``target``: the replaced file's mode, else by umask."""
    try:
        st = os.stat(target)
        if stat.S_ISDIR(st.st_mode) == directory:
            return stat.S_IMODE(st.st_mode)
    except OSError:
        pass
    return (0o777 if directory else 0o666) & ~current_umask()


def _backup_of(target: Path) -> Path:
    return target.parent / f".{target.name}.old"


def _pid_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    except OSError:
        return False
    return True


def _remove(p: Path) -> None:
    if p.is_dir() and not p.is_symlink():
        shutil.rmtree(p, ignore_errors=True)
    else:
        try:
            p.unlink()
        except FileNotFoundError:
            pass


def clean_stale(target: str | Path) -> list[Path]:
    """Remove temporaries of ``target`` left by writers that died; returns what was removed.

    A temporary is stale when its writer's pid is not running, or when it is older
    than :data:`STALE_AFTER_S`.  Temporaries of live writers (another process saving
    the same file right now) are left alone.
    """
    target = Path(target)
    removed: list[Path] = []
    try:
        entries = list(target.parent.glob(f".{_glob_escape(target.name)}.*.tmp"))
    except OSError:
        return removed
    now = time.time()
    for p in entries:
        m = _TMP_RE.match(p.name)
        if m is None or m.group("name") != target.name:
            continue
        try:
            age = now - p.lstat().st_mtime
        except OSError:
            continue
        pid = int(m.group("pid")) if m.group("pid") else None
        if pid == os.getpid():
            if str(p) in _ACTIVE:
                continue  # this process is writing it right now (another thread)
        elif pid is not None and _pid_alive(pid) and age < STALE_AFTER_S:
            continue
        if pid is None and age < 3600:
            continue  # an old-style name without pid: only when clearly abandoned
        _remove(p)
        removed.append(p)
    return removed


def recover(target: str | Path) -> str | None:
    """Finish or undo an interrupted folder swap of ``target``; clean stale temporaries.

    Returns "restored" (only the backup was left: it becomes the target again),
    "completed" (the new target was in place: the leftover backup is removed) or None.
    Called by :func:`atomic_path` and by the readers before they open ``target``.
    """
    target = Path(target)
    outcome = None
    backup = _backup_of(target)
    try:
        if backup.exists() or backup.is_symlink():
            if not target.exists():
                os.replace(backup, target)
                outcome = "restored"
            else:
                _remove(backup)
                outcome = "completed"
    except OSError:
        outcome = None  # read-only media: leave things as they are
    clean_stale(target)
    return outcome


def _glob_escape(text: str) -> str:
    return re.sub(r"([\[\]*?])", r"[\1]", text)


def output_error(exc: BaseException, target: Path) -> CellClassError | None:
    """An OutputError naming ``target`` for disk-full/permission failures, else None."""
    if isinstance(exc, CellClassError):
        return None
    code = getattr(exc, "errno", None)
    text = str(exc).lower()
    if code in _FULL or (isinstance(exc, (RuntimeError, OSError)) and any(t in text for t in _FULL_TEXT)) \
            or type(exc).__name__ == "SafetensorError" and any(t in text for t in _FULL_TEXT):
        return OutputError("could not be written: the disk is full (or over quota); free some space and "
                           "run again; the previous version, if any, is unchanged", target)
    if code in _DENIED or isinstance(exc, PermissionError):
        reason = "the file system is read-only" if code == errno.EROFS else "permission denied"
        return OutputError(f"could not be written: {reason} in {target.parent}; choose another output "
                           "folder", target)
    return None


@contextmanager
def atomic_path(target: str | Path, *, directory: bool = False) -> Iterator[Path]:
    """Yield a temporary path next to ``target``; on success move it over ``target``.

    On any exception the temporary is removed and ``target`` is untouched.  With
    ``directory=True`` the temporary is a fresh folder (for OME-Zarr); an existing
    target folder is swapped out only after the new one is complete.  Disk-full and
    permission failures become :class:`OutputError` naming ``target``.
    """
    target = Path(target)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        recover(target)
        prefix = f".{target.name}.{os.getpid()}-"
        if directory:
            tmp = Path(tempfile.mkdtemp(prefix=prefix, suffix=".tmp", dir=target.parent))
        else:
            fd, name = tempfile.mkstemp(prefix=prefix, suffix=".tmp", dir=target.parent)
            os.close(fd)
            tmp = Path(name)
    except BaseException as exc:
        err = output_error(exc, target)
        if err is not None:
            raise err from None
        raise
    _ACTIVE.add(str(tmp))
    try:
        yield tmp
        mode = public_mode(target, directory=directory)
        if not directory:
            with open(tmp, "rb+") as fh:
                os.fsync(fh.fileno())
            os.chmod(tmp, mode)
            os.replace(tmp, target)
        else:
            os.chmod(tmp, mode)
            backup = None
            if target.exists():
                backup = _backup_of(target)
                if backup.exists():
                    _remove(backup)
                os.replace(target, backup)
            try:
                os.replace(tmp, target)
            except BaseException:
                if backup is not None:
                    os.replace(backup, target)
                raise
            if backup is not None:
                _remove(backup)
    except BaseException as exc:
        _remove_hard(tmp)
        err = output_error(exc, target)
        if err is not None:
            raise err from None
        raise
    finally:
        _ACTIVE.discard(str(tmp))


def _remove_hard(tmp: Path, tries: int = 5) -> None:
    """Remove a failed write's temporary, retrying: a writer's background threads (zarr's
    asynchronous chunk writes) may still be adding files while the first removal runs."""
    for _ in range(tries):
        if not (tmp.exists() or tmp.is_symlink()):
            return
        _remove(tmp)
        if tmp.exists():
            time.sleep(0.05)

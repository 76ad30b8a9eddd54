"""Atomic file writes: write beside the target, fsync, then rename into place.

A crash, a cancel or a full disk leaves either the old file or the new one, never
half of either.  Used by checkpoints and by every writer.

Crash consistency beyond one write:

* temporaries are named ``.NAME.<pid>-<random>.tmp``; a temporary whose writer is no
  longer running (or that is older than a day) is removed the next time ``NAME`` is
  written or read (:func:`clean_stale`), so a ``kill -9`` does not leave a disk full
  of half-written OME-Zarr folders;
* a folder swap keeps ``NAME`` on disk at every instant: on Linux the new folder and
  the old one trade places in one atomic step (``renameat2(RENAME_EXCHANGE)``,
  :func:`exchange`), so another program opening ``NAME`` meanwhile sees the old or the
  new version, never nothing.  Where the OS or file system offers no exchange (macOS,
  Windows, NFS) the swap takes two renames, ``NAME -> .NAME.old`` then the new folder
  to ``NAME``; a kill between them leaves only ``.NAME.old``, and any reader of the
  folder restores it first (:func:`recover`: if ``NAME`` is absent and ``.NAME.old``
  exists, rename it back; if both exist, the swap finished and the backup is removed).
  The plugin's readers and writers do this; another tool should do the same;
* a full disk or a read-only folder is an :class:`~napari_cellclass.errors.OutputError`
  that names the target, never the hidden temporary.

Permissions: ``mkstemp``/``mkdtemp`` create private temporaries (0600/0700).  Before the
rename the result gets the mode a plain ``open()``/``mkdir()`` would give it: the mode of
the file it replaces, else 0666/0777 less the user's umask (0644/0755 under umask 022),
so colleagues on a shared server can read results, checkpoints and OME-Zarr folders.
"""
from __future__ import annotations

import ctypes
import errno
import os
import platform
import re
import shutil
import stat
import sys
import tempfile
import threading
import time
from contextlib import contextmanager
from contextvars import ContextVar
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


#: renameat2(2) flag: swap the two names atomically (Linux >= 3.15; ext4, xfs, btrfs, tmpfs, overlayfs)
RENAME_EXCHANGE = 2
_AT_FDCWD = -100
#: the renameat2 system call number where libc has no wrapper (glibc < 2.28, musl < 1.2)
_SYS_RENAMEAT2 = {"x86_64": 316, "amd64": 316, "aarch64": 276, "arm64": 276, "riscv64": 276,
                  "ppc64le": 357, "ppc64": 357, "s390x": 347, "i686": 353, "i386": 353, "armv7l": 382}
_EXCHANGE_FN: list = []  # [callable or None], looked up once
#: errors meaning "this OS/file system cannot exchange": the caller falls back to two renames
_NO_EXCHANGE = {errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP, getattr(errno, "ENOTSUP", errno.EOPNOTSUPP),
                errno.EXDEV, errno.EPERM}


def _exchange_fn():
    if _EXCHANGE_FN:
        return _EXCHANGE_FN[0]
    fn = None
    if sys.platform.startswith("linux"):
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            wrapper = getattr(libc, "renameat2", None)
            if wrapper is not None:
                wrapper.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
                wrapper.restype = ctypes.c_int

                def fn(a: bytes, b: bytes) -> int:
                    return wrapper(_AT_FDCWD, a, _AT_FDCWD, b, RENAME_EXCHANGE)
            elif platform.machine().lower() in _SYS_RENAMEAT2:
                nr = _SYS_RENAMEAT2[platform.machine().lower()]
                syscall = libc.syscall
                syscall.restype = ctypes.c_long

                def fn(a: bytes, b: bytes) -> int:
                    return int(syscall(ctypes.c_long(nr), ctypes.c_int(_AT_FDCWD), ctypes.c_char_p(a),
                                       ctypes.c_int(_AT_FDCWD), ctypes.c_char_p(b), ctypes.c_uint(RENAME_EXCHANGE)))
        except (OSError, AttributeError):
            fn = None
    _EXCHANGE_FN.append(fn)
    return fn


def exchange(a: str | Path, b: str | Path) -> bool:
    """Swap the names ``a`` and ``b`` in one atomic step (both must exist); False where not offered.

    Linux ``renameat2(RENAME_EXCHANGE)`` through libc (or the raw system call).  False
    (nothing changed) on other systems and on file systems that refuse the flag, so the
    caller falls back to two renames plus :func:`recover`.
    """
    fn = _exchange_fn()
    if fn is None:
        return False
    ctypes.set_errno(0)
    if fn(os.fsencode(os.fspath(a)), os.fsencode(os.fspath(b))) == 0:
        return True
    err = ctypes.get_errno()
    if err in _NO_EXCHANGE:
        return False
    raise OSError(err, os.strerror(err), os.fspath(b))


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


class ResultExistsError(OutputError):
    """An earlier result would be replaced and ``--overwrite`` was not given (nothing was replaced)."""


#: (folder, paths written in this scope) while :func:`keep_earlier_results` is active, else None
_KEEP: ContextVar[tuple[Path, set[str]] | None] = ContextVar("cellclass_keep_earlier_results", default=None)


@contextmanager
def keep_earlier_results(folder: str | Path | None, enabled: bool = True) -> Iterator[None]:
    """Within this block :func:`atomic_path` refuses to replace a file or folder under ``folder``
    that existed before the block (an earlier run's result); what the block itself wrote
    may be rewritten (a checkpoint saved at every better epoch).  The command line's backstop
    for "never replace an earlier result unless --overwrite" (docs/cli.md)."""
    if folder is None or not enabled:
        yield
        return
    token = _KEEP.set((Path(os.path.abspath(folder)), set()))
    try:
        yield
    finally:
        _KEEP.reset(token)


def _check_keep(target: Path) -> None:
    keep = _KEEP.get()
    if keep is None:
        return
    folder, written = keep
    full = os.path.abspath(target)
    inside = full.startswith(str(folder).rstrip(os.sep) + os.sep)
    if inside and full not in written and (target.exists() or target.is_symlink()):
        raise ResultExistsError("an earlier result is here and would be replaced; nothing was replaced. "
                                "Pass --overwrite to replace it, or choose another --out", target)


def _note_written(target: Path) -> None:
    keep = _KEEP.get()
    if keep is not None:
        keep[1].add(os.path.abspath(target))


def earlier_results(folder: str | Path) -> list[Path]:
    """The visible entries of ``folder`` (hidden temporaries and dot-files aside), sorted; [] if absent."""
    try:
        return sorted(p for p in Path(folder).iterdir() if not p.name.startswith("."))
    except (FileNotFoundError, NotADirectoryError):
        return []


def check_no_earlier_results(folder: str | Path | None, *, overwrite: bool = False) -> None:
    """``predict``/``karyotype``: refuse an output folder that already holds results, unless ``overwrite``.

    Policy (docs/cli.md): a new or empty ``--out`` (hidden files aside) is written;
    a folder holding anything is refused in one line naming what is there, before any
    work; ``--overwrite`` writes into it, replacing files of the same name only.
    """
    if folder is None:
        return
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise OutputError("--out must be a folder, but a file of that name exists", folder)
    if overwrite:
        return
    found = earlier_results(folder)
    if found:
        names = ", ".join(p.name for p in found[:3]) + (f" and {len(found) - 3} more" if len(found) > 3 else "")
        raise ResultExistsError(f"--out already holds results of an earlier run ({names}); nothing was replaced. "
                                "Pass --overwrite to replace files of the same name, or choose another --out",
                                found[0])


@contextmanager
def atomic_path(target: str | Path, *, directory: bool = False) -> Iterator[Path]:
    """Yield a temporary path next to ``target``; on success move it over ``target``.

    On any exception the temporary is removed and ``target`` is untouched.  With
    ``directory=True`` the temporary is a fresh folder (for OME-Zarr); an existing
    target folder is swapped out only after the new one is complete.  Disk-full and
    permission failures become :class:`OutputError` naming ``target``.
    """
    target = Path(target)
    _check_keep(target)
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
            if (target.exists() or target.is_symlink()) and exchange(tmp, target):
                _remove_hard(tmp)  # the previous version, now under the temporary's name
            elif target.exists():
                backup = _backup_of(target)
                if backup.exists():
                    _remove(backup)
                os.replace(target, backup)
                try:
                    os.replace(tmp, target)
                except BaseException:
                    os.replace(backup, target)
                    raise
                _remove(backup)
            else:
                os.replace(tmp, target)
        _note_written(target)
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

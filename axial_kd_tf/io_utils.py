"""Atomic file-system helpers: write to a temporary path beside the target, then rename.

A crash or a failed export therefore never leaves a half-written file under the final name.
"""

from __future__ import annotations

import contextlib
import errno
import gc
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

from axial_kd_tf.errors import UserError


def _umask() -> int:
    mask = os.umask(0o022)  # reading the umask means setting it; put it straight back
    os.umask(mask)
    return mask


def _tmp_sibling(path: Path, is_dir: bool = False) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    # mkstemp / mkdtemp create 0600 / 0700 (private temporaries); the final file gets what open() would give it.
    if is_dir:
        tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
        os.chmod(tmp, 0o777 & ~_umask())
        return tmp
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    os.chmod(name, 0o666 & ~_umask())
    return Path(name)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, is_dir: bool = False) -> Iterator[Path]:
    """Yield a temporary sibling path; on success rename it onto ``path``, on failure delete it.

    For directories, an existing target is replaced only after the new one is complete.
    """
    final = Path(path)
    tmp = _tmp_sibling(final, is_dir=is_dir)
    if is_dir:
        shutil.rmtree(tmp)  # let the writer create it (SavedModel export insists on a fresh dir)
    try:
        yield tmp
        if is_dir:
            if final.exists():
                old = _tmp_sibling(final, is_dir=True)
                shutil.rmtree(old)
                os.replace(final, old)
                os.replace(tmp, final)
                shutil.rmtree(old, ignore_errors=True)
            else:
                os.replace(tmp, final)
        else:
            os.replace(tmp, final)
    except BaseException:
        if tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
        elif tmp.exists():
            tmp.unlink()
        raise


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike, obj: Any) -> Path:
    return atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=_json_default) + "\n")


def _json_default(obj: Any) -> Any:
    # numpy scalars / arrays without importing numpy at module load
    if hasattr(obj, "tolist"):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def read_user_text(path: str | os.PathLike, what: str) -> str:
    """The UTF-8 text of a file the user named; missing or unreadable is a one-line :class:`UserError` naming
    ``what`` (e.g. ``"variants file 'v.yaml'"``)."""
    try:
        return Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UserError(f"{what} does not exist") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"cannot read {what}: {type(exc).__name__}: {exc}") from None


# ---------------------------------------------------------------------------------- disk space and writability
#: errno values that mean "the disk (or the quota) is full".
DISK_FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})
#: errno values of a location the user named that cannot be written (one line, exit 2, in the CLIs).
UNWRITABLE_ERRNOS = frozenset({errno.EROFS, errno.EACCES, errno.EPERM, errno.ENOTDIR, errno.EISDIR, errno.ENOENT})


class DiskFullError(UserError):
    """Not enough free space to write a file (checked before writing, or ENOSPC while writing)."""


def format_bytes(n: float) -> str:
    """``1.5 GB``, ``12.0 MB``, ``640 KB`` (powers of 1024)."""
    for unit, scale in (("GB", 2**30), ("MB", 2**20)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{max(n, 0) / 2**10:.0f} KB"


def nearest_existing(path: str | os.PathLike) -> Path:
    """``path`` itself or its nearest ancestor that exists."""
    p = Path(os.path.abspath(path))
    while not p.exists() and p != p.parent:
        p = p.parent
    return p


def free_bytes(path: str | os.PathLike) -> Optional[int]:
    """Free bytes on the file system holding ``path`` (or its nearest existing ancestor); None if unknown."""
    try:
        return int(shutil.disk_usage(nearest_existing(path)).free)
    except OSError:
        return None


def is_disk_full(exc: BaseException) -> bool:
    """True for ENOSPC / EDQUOT, also when a library (h5py) only puts them into the message."""
    if isinstance(exc, OSError) and exc.errno in DISK_FULL_ERRNOS:
        return True
    text = str(exc)
    return "No space left on device" in text or "Disk quota exceeded" in text or "errno = 28" in text


def disk_full_error(path: Optional[str | os.PathLike], needed: Optional[int] = None) -> DiskFullError:
    """The one-line error for a full disk at ``path`` (naming the space needed when known)."""
    fix = "free some space (or move the folder) and rerun (train.py with --resume continues a run)"
    if path is None:
        return DiskFullError(f"disk full while writing; {fix}")
    free = free_bytes(Path(path).parent)
    need = f"needs about {format_bytes(needed)}, " if needed else ""
    have = f"{format_bytes(free)} free" if free is not None else "the disk is full"
    return DiskFullError(f"disk full: writing '{path}' {need}{have}; {fix}")


def check_free_space(path: str | os.PathLike, needed: int) -> None:
    """Raise :class:`DiskFullError` unless the file system of ``path`` has ``needed`` bytes (+1 MB) free.

    Checked before a large write, so that a full disk is one line rather than a crash half-way through the file
    (HDF5 was seen to segfault when the disk filled during a checkpoint).
    """
    free = free_bytes(Path(path).parent)
    if free is not None and free < needed + 2**20:
        raise disk_full_error(path, needed)


def _mute_unraisable(_hook_args: Any) -> None:
    """Swallow "Exception ignored in ... __dealloc__" noise of h5py objects closed on a full disk."""


def atomic_write_with(path: str | os.PathLike, write: Callable[[Path], None], suffix: str = "",
                      needed: Optional[int] = None) -> Path:
    """Write a file through ``write(tmp)`` to a temporary sibling, then rename it onto ``path``.

    ``suffix`` ends the temporary name (writers such as ``save_weights`` insist on ``.weights.h5``); ``needed``
    (bytes) is checked against the free space first. A disk-full error while writing becomes one
    :class:`DiskFullError`; the temporary file is removed on any failure, so ``path`` is either the old file or the
    complete new one.
    """
    final = Path(path)
    final.parent.mkdir(parents=True, exist_ok=True)
    if needed:
        check_free_space(final, needed)
    tmp = final.with_name(f".{final.name}.{os.getpid()}-{os.urandom(4).hex()}.tmp{suffix}")
    try:
        write(tmp)
        os.replace(tmp, final)
    except BaseException as exc:
        hook, sys.unraisablehook = sys.unraisablehook, _mute_unraisable
        try:
            gc.collect()  # close writer objects (h5py files) still referencing the temporary file
        finally:
            sys.unraisablehook = hook
        with contextlib.suppress(OSError):
            tmp.unlink()
        if isinstance(exc, Exception) and is_disk_full(exc):
            raise disk_full_error(final, needed) from None
        raise
    return final


def is_temporary(path: Path) -> bool:
    """A temporary sibling left by an interrupted atomic write (``.<name>.<...>.tmp[suffix]``)."""
    return path.name.startswith(".") and ".tmp" in path.name


def check_writable_dir(path: str | os.PathLike, what: str) -> None:
    """Raise a one-line :class:`UserError` unless the folder ``path`` exists or can be created, and can be written.

    Leaves nothing behind: the check creates and removes an empty temporary folder in ``path`` or in its nearest
    existing ancestor (the only test that catches /proc, read-only mounts, root squash and full inode tables alike).
    """
    p = Path(path)
    if p.exists() and not p.is_dir():
        raise UserError(f"{what} '{p}' is a file, not a folder; choose another path")
    anchor = nearest_existing(p)
    if not anchor.is_dir():
        raise UserError(f"cannot create {what} '{p}': '{anchor}' is a file, not a folder")
    try:
        probe = tempfile.mkdtemp(prefix=".write-test-", suffix=".tmp", dir=anchor)
        os.rmdir(probe)
    except OSError as exc:
        verb = "write into" if anchor == Path(os.path.abspath(p)) else "create"
        raise UserError(f"cannot {verb} {what} '{p}': {exc.strerror or exc} ('{anchor}')") from None


def read_json(path: Path) -> Optional[Any]:
    """The JSON content of ``path``; None when it is missing, unreadable or not JSON (a truncated write)."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None

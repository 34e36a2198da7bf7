"""One writer per run directory: ``<run>/.lock`` holds the owner's PID (and host, process start time and command); a
second writer gets a one-line error naming it, and a lock whose process is gone (``kill -9``, power loss) is taken
over with a note. :mod:`axial_kd_tf.rundir` opens run directories under it; ``evaluate.py`` holds it while it
writes into a run.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import sys
import time
from pathlib import Path
from typing import Any, Callable, Optional

from axial_kd_tf.errors import UserError
from axial_kd_tf.io_utils import read_json

Progress = Callable[[str], None]

LOCK_NAME = ".lock"


def _process_start(pid: int) -> Optional[str]:
    """Start time of ``pid`` in clock ticks since boot (``/proc/<pid>/stat`` field 22), to tell a reused PID."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return None if fields[0] == "Z" else fields[19]  # a zombie is as good as dead
    except (OSError, IndexError):
        return None


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    except OSError:
        return False
    return True


def lock_owner(run_dir: Path) -> Optional[dict]:
    """The lock file's content (``pid``, ``host``, ``start``, ``since``, ``command``); None when unlocked."""
    path = Path(run_dir) / LOCK_NAME
    if not path.exists():
        return None
    info = read_json(path)
    return info if isinstance(info, dict) else {}


def owner_alive(info: dict) -> bool:
    """Whether the process that wrote the lock still runs. A lock of another host cannot be checked: alive."""
    try:
        pid = int(info["pid"])
    except (KeyError, TypeError, ValueError):
        return False  # garbage: a lock that cannot name its owner protects nothing
    if info.get("host") not in (None, socket.gethostname()):
        return True
    if not _pid_alive(pid):
        return False
    start = _process_start(pid)
    if start is None:  # Linux: exited or a zombie; without /proc (macOS) trust kill(0)
        return not os.path.isdir("/proc/self")
    return info.get("start") in (None, start)


def _describe_owner(info: dict) -> str:
    parts = [f"process {info.get('pid')}"]
    if info.get("host") not in (None, socket.gethostname()):
        parts.append(f"on host {info['host']}")
    if info.get("since"):
        parts.append(f"since {info['since']}")
    return " ".join(parts)


def check_unlocked(run_dir: Path) -> None:
    """Raise a one-line :class:`UserError` when a live process holds ``run_dir``'s lock."""
    info = lock_owner(run_dir)
    if info is not None and owner_alive(info):
        raise UserError(
            f"run directory '{run_dir}' is in use by {_describe_owner(info)} ({Path(run_dir) / LOCK_NAME}); wait for "
            "it to finish or stop it — two writers would corrupt the run"
            + ("" if info.get("host") in (None, socket.gethostname()) else "; delete the lock file if that host's "
               "process is gone")
        )


class RunLock:
    """Exclusive ownership of a run directory: ``<run>/.lock`` created with ``O_EXCL``, removed on release.

    A lock left by a process that no longer runs (``kill -9``, power loss) is taken over with a note through
    ``progress``; a live owner is a :class:`UserError` naming its PID.
    """

    def __init__(self, run_dir: Path, progress: Progress = print) -> None:
        self.run_dir, self.progress = Path(run_dir), progress
        self.path = self.run_dir / LOCK_NAME
        self.held = False

    def acquire(self) -> "RunLock":
        me = {"pid": os.getpid(), "host": socket.gethostname(), "start": _process_start(os.getpid()),
              "since": time.strftime("%Y-%m-%d %H:%M:%S"), "command": " ".join(sys.argv)[:300]}
        for _ in range(3):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                info = lock_owner(self.run_dir) or {}
                if owner_alive(info):
                    check_unlocked(self.run_dir)  # raises with the owner's description
                # Stale: move it aside (only one taker can rename it), then try O_EXCL again.
                aside = self.path.with_name(f"{LOCK_NAME}.stale-{os.getpid()}")
                try:
                    os.replace(self.path, aside)
                except FileNotFoundError:
                    continue
                aside.unlink(missing_ok=True)
                self.progress(f"note: took over the stale lock of {_describe_owner(info)} in '{self.run_dir}' "
                              "(that process no longer runs)")
                continue
            with os.fdopen(fd, "w") as f:
                json.dump(me, f)
            self.held = True
            return self
        raise UserError(f"cannot lock run directory '{self.run_dir}': another process keeps taking the lock")

    def release(self) -> None:
        if not self.held:
            return
        self.held = False
        info = lock_owner(self.run_dir)
        if info is not None and info.get("pid") == os.getpid():
            with contextlib.suppress(OSError):
                self.path.unlink()

    def __enter__(self) -> "RunLock":
        return self.acquire()

    def __exit__(self, *exc: Any) -> None:
        self.release()

"""Child processes for the protocol runner: disjoint CPU shares and streamed, prefixed output.

``python -m axial_kd_tf.experiments --parallel N`` runs up to N grid points at once, each in its own child process with
an equal, disjoint share of the CPUs this process may use: the child's TensorFlow thread pools are sized by
``TF_NUM_INTRAOP_THREADS``/``TF_NUM_INTEROP_THREADS`` (and ``OMP_NUM_THREADS``), and the worker pins itself to its
CPUs at start-up (:func:`pin_from_env`, before TensorFlow is imported; pinning is skipped where the platform has no
``os.sched_setaffinity``). Small CPU-bound trainings gain from this: on a 2-core machine two single-thread processes
gave about 19 % more throughput than one two-thread process.

``--devices 0,1,2,3`` runs one child per listed GPU at once, each seeing that GPU only (``CUDA_VISIBLE_DEVICES``;
:func:`gpu_slots`), its threads and CPUs left alone.

Each child's output goes, line by line, to its log file and to the console (prefixed with the run's short name when
several run at once); a reader thread per child posts ``(key, return code)`` to a queue when the child ends.
"""

from __future__ import annotations

import os
import queue
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any, Optional, Sequence

from axial_kd_tf.errors import UserError

CPUS_ENV = "AXIAL_KD_CPUS"  # the worker's CPU share, e.g. "0,1"
console_lock = threading.Lock()  # one console line at a time from the runner and its reader threads


def usable_cpus() -> list[int]:
    """The CPUs this process may run on (its affinity mask where the platform has one)."""
    if hasattr(os, "sched_getaffinity"):
        return sorted(os.sched_getaffinity(0))
    return list(range(os.cpu_count() or 1))


def cpu_shares(n: int, cpus: Optional[Sequence[int]] = None) -> list[list[int]]:
    """``n`` equal, disjoint CPU lists from ``cpus`` (default: :func:`usable_cpus`); a remainder stays unused."""
    cpus = list(usable_cpus() if cpus is None else cpus)
    if n < 1:
        raise UserError(f"--parallel must be >= 1, got {n}")
    if n > len(cpus):
        raise UserError(f"--parallel {n} is more than the {len(cpus)} CPU(s) this process may use; each run needs "
                        "at least one CPU of its own")
    size = len(cpus) // n
    return [cpus[k * size:(k + 1) * size] for k in range(n)]


def gpu_slots(text: str, visible: int, parent: Optional[str] = None) -> list[str]:
    """``--devices 0,2``: the ``CUDA_VISIBLE_DEVICES`` value of each child, checked against the ``visible`` GPUs.

    Indices count the GPUs this process sees; where its own ``CUDA_VISIBLE_DEVICES`` (``parent``) narrows them, a
    child gets the physical id it names (index 1 of ``"4,5"`` is ``"5"``).
    """
    try:
        indices = [int(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise UserError(f"--devices must be a comma list of GPU indices such as 0,1,2,3, got '{text}'") from None
    if not indices or len(set(indices)) != len(indices) or min(indices) < 0:
        raise UserError(f"--devices must list distinct GPU indices such as 0,1,2,3, got '{text}'")
    if max(indices) >= visible:
        raise UserError(f"--devices {text}: this process sees {visible} GPU(s)"
                        + (f" (0-{visible - 1})" if visible else "; on a CPU machine use --parallel N"))
    ids = [p.strip() for p in parent.split(",")] if parent else None
    return [ids[i] if ids else str(i) for i in indices]


def child_env(cpus: Optional[Sequence[int]], base: Optional[dict] = None, device: Optional[str] = None) -> dict:
    """The environment of a child with its CPU share: thread-pool sizes and :data:`CPUS_ENV` (unchanged for None);
    with ``device``, the one GPU it sees (``CUDA_VISIBLE_DEVICES``)."""
    env = dict(os.environ if base is None else base)
    if device is not None:
        env["CUDA_VISIBLE_DEVICES"] = str(device)
    if cpus:
        threads = str(len(cpus))
        env.update(TF_NUM_INTRAOP_THREADS=threads, TF_NUM_INTEROP_THREADS=threads, OMP_NUM_THREADS=threads)
        env[CPUS_ENV] = ",".join(str(c) for c in cpus)
    return env


def pin_from_env() -> Optional[list[int]]:
    """Pin this process to the CPUs named in :data:`CPUS_ENV` (worker start-up); returns them, None when unset."""
    text = os.environ.get(CPUS_ENV, "").strip()
    if not text:
        return None
    cpus = [int(c) for c in text.split(",") if c.strip()]
    if hasattr(os, "sched_setaffinity"):
        try:
            os.sched_setaffinity(0, cpus)
        except OSError:
            pass  # e.g. a CPU that went offline: run unpinned rather than not at all
    return cpus


class StreamedProcess:
    """A child process whose output is copied line by line to a log file and the console.

    When the child ends, ``(key, return code)`` is put on ``done``. ``prefix`` (e.g. ``"[unet/distill/fold0-seed1] "``)
    starts every console line, not the log's.
    """

    def __init__(self, key: Any, argv: Sequence[str], env: dict, log: Path, header: str, done: "queue.Queue",
                 prefix: str = "") -> None:
        self.key, self.prefix, self.done = key, prefix, done
        log.parent.mkdir(parents=True, exist_ok=True)
        self.log = open(log, "ab")
        self.log.write((header + "\n").encode())
        self.log.flush()
        with console_lock:
            sys.stdout.flush()
        self.proc = subprocess.Popen(list(argv), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env)
        self.thread = threading.Thread(target=self._pump, name=f"child-{key}", daemon=True)
        self.thread.start()

    def _pump(self) -> None:
        rc: Optional[int] = None
        try:
            assert self.proc.stdout is not None
            for raw in iter(self.proc.stdout.readline, b""):
                self.log.write(raw)
                self.log.flush()
                text = raw.decode("utf-8", errors="replace")
                with console_lock:
                    sys.stdout.write(self.prefix + text if self.prefix else text)
                    sys.stdout.flush()
            rc = self.proc.wait()
        finally:
            self.log.close()
            self.done.put((self.key, rc if rc is not None else self.proc.wait()))

    def stop(self, grace_s: float = 30.0) -> None:
        """After Ctrl-C: give the child (which got SIGINT from the terminal too) time to stop, then make it stop."""
        import signal

        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.proc.send_signal(signal.SIGINT)  # e.g. the runner alone was interrupted
            try:
                self.proc.wait(timeout=grace_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.thread.join(timeout=10)

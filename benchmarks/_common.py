"""Scaffolding shared by the benchmark scripts (``zoo.py``, ``teacher_overhead.py``, ``data_pipeline.py``).

The command-line pieces they have in common (``--set``, ``--out``, the hidden worker flags, ``main``) and writing
the JSON payload + Markdown report. The measurements themselves stay in the scripts.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Callable, Optional

from axial_kd_tf.errors import UserError
from axial_kd_tf.io_utils import atomic_write_json, atomic_write_text

Log = Callable[[str], None]


# ---------------------------------------------------------------------------------------------------- arguments
def add_set_arg(parser: argparse.ArgumentParser, example: str) -> None:
    """``--set KEY=VALUE`` (repeatable, into ``args.overrides``) as in ``train.py``; ``example`` goes in the help."""
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help=f"config override as in train.py, e.g. --set {example} (repeatable)")


def add_out_arg(parser: argparse.ArgumentParser, default: Path) -> None:
    """``--out``: the JSON output; the Markdown table goes next to it (see :func:`write_report`)."""
    parser.add_argument("--out", default=str(default),
                        help="JSON output; the table goes to the same name .md (default: %(default)s)")


def add_worker_args(parser: argparse.ArgumentParser) -> None:
    """The hidden ``--worker SPEC --worker-out RESULT`` flags a script passes to itself to run a fresh worker."""
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--worker-out", help=argparse.SUPPRESS)


# ------------------------------------------------------------------------------------------------------- output
def write_report(out: Path, payload: dict, md: str, wall_s: float, log: Log) -> None:
    """Write ``payload`` to ``out`` (JSON) and ``md`` to ``out`` with ``.md``, atomically; log the report."""
    atomic_write_json(out, payload)
    atomic_write_text(out.with_suffix(".md"), md)
    log("")
    log(md)
    log(f"[done] {out} and {out.with_suffix('.md')} in {wall_s:.0f} s")


# --------------------------------------------------------------------------------------------------------- main
def run_main(args: argparse.Namespace, run_benchmark: Callable[[argparse.Namespace], object],
             worker_main: Optional[Callable[[str, str], int]] = None) -> int:
    """A script's ``main``: the worker when ``--worker`` is given (with ``worker_main``), else ``run_benchmark``.

    A :class:`UserError` prints one line ``error: ...`` to stderr and returns 2, without a traceback.
    """
    if worker_main is not None and args.worker:
        return worker_main(args.worker, args.worker_out)
    try:
        run_benchmark(args)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


# ------------------------------------------------------------------------------------------------------- workers
class WorkerFailed(RuntimeError):
    """A worker process exited non-zero or wrote no result."""


def run_script_worker(script: str | Path, task: dict, label: str, log: Log, prefix: str = "bench_") -> dict:
    """Run ``script --worker TASK --worker-out RESULT`` in a fresh Python process; stream its stdout to ``log``.

    Returns the JSON the worker wrote to RESULT. A fresh process per measurement keeps memory that TensorFlow's
    oneDNN kernels and XLA hold after a model is gone from masking (or inflating) the next measurement.

    Raises:
        WorkerFailed: naming ``label``, the exit code (SIGKILL: most likely out of memory) and the last stderr lines.
    """
    with tempfile.TemporaryDirectory(prefix=prefix) as tmp:
        spec, result, err = Path(tmp) / "task.json", Path(tmp) / "result.json", Path(tmp) / "stderr.txt"
        spec.write_text(json.dumps(task))
        env = dict(os.environ, PYTHONUNBUFFERED="1", TF_CPP_MIN_LOG_LEVEL=os.environ.get("TF_CPP_MIN_LOG_LEVEL", "2"))
        cmd = [sys.executable, str(Path(script).resolve()), "--worker", str(spec), "--worker-out", str(result)]
        with open(err, "w") as err_f:
            proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=err_f, text=True, env=env)
            assert proc.stdout is not None
            for line in proc.stdout:
                log(line.rstrip("\n"))
            code = proc.wait()
        if code != 0 or not result.is_file():
            tail = [ln for ln in err.read_text(errors="replace").splitlines() if ln.strip()][-3:]
            why = "killed by SIGKILL, most likely out of memory" if code == -9 else f"exit code {code}"
            raise WorkerFailed(f"worker for '{label}' failed ({why})" + (f": {' | '.join(tail)}" if tail else ""))
        return json.loads(result.read_text())

"""Scaffolding shared by the benchmark scripts (``zoo.py``, ``teacher_overhead.py``, ``data_pipeline.py``).

The command-line pieces they have in common (``--set``, ``--out``, the hidden worker flags, ``main``) and writing
the JSON payload + Markdown report. The measurements themselves stay in the scripts.
"""

from __future__ import annotations

import argparse
import sys
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

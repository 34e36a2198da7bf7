"""What every command-line tool of the library shares (``train.py``, ``evaluate.py`` and the ``python -m``
commands): a user error prints one line ``error: ...`` and exits with code 2, without a traceback; Ctrl-C exits
with 130; argparse's own errors stay on one line.
"""

from __future__ import annotations

import argparse
import sys
from typing import Callable, Optional, Sequence

from axial_kd_tf.errors import UserError
from axial_kd_tf.io_utils import DISK_FULL_ERRNOS, UNWRITABLE_ERRNOS, disk_full_error, is_disk_full

Main = Callable[[Optional[Sequence[str]]], int]


def guard(main: Optional[Main] = None, *,
          interrupted: str = "rerun the same command with --resume to continue") -> Main | Callable[[Main], Main]:
    """Decorate a ``main(argv) -> int``: a UserError prints ``error: ...`` and returns 2, Ctrl-C prints
    ``interrupted: <interrupted>`` and returns 130. ``@guard`` or ``@guard(interrupted="...")``."""
    if main is None:
        return lambda fn: guard(fn, interrupted=interrupted)

    def wrapped(argv: Optional[Sequence[str]] = None) -> int:
        try:
            return main(argv)
        except UserError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        except OSError as exc:  # a path the user named cannot be written (read-only, full, a file in the way)
            if is_disk_full(exc):
                print(f"error: {disk_full_error(exc.filename)}", file=sys.stderr)
                return 2
            if exc.errno not in UNWRITABLE_ERRNOS | DISK_FULL_ERRNOS or not exc.filename:
                raise
            print(f"error: cannot use '{exc.filename}': {exc.strerror}", file=sys.stderr)
            return 2
        except KeyboardInterrupt:
            print(f"interrupted: {interrupted}", file=sys.stderr)
            return 130

    wrapped.__name__ = main.__name__
    return wrapped


VERBOSE_HELP = "show TensorFlow's start-up and C++ log messages (hidden by default)"


class Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # argparse exits with 2 too; keep it to one line
        print(f"{self.prog}: error: {message}", file=sys.stderr)
        raise SystemExit(2)

"""User-facing errors.

Every problem caused by user input (a config key, a file, a shape) raises :class:`UserError` with a single-line
message naming the offending key or file and the fix. The CLIs catch it, print ``error: <message>`` to stderr and
exit with code 2, without a traceback.
"""

from __future__ import annotations


class UserError(Exception):
    """A one-line, actionable error caused by user input (exit code 2 in the CLIs)."""

    def __init__(self, message: str) -> None:
        # Keep it to one line: CLIs print it verbatim.
        super().__init__(" ".join(str(message).split()))

"""Progress within an epoch, so that a long epoch is never silent.

On a terminal, a Keras-style bar redrawn in place (step, loss terms, elapsed and ETA), cleared before the epoch's own
summary line (:class:`axial_kd_tf.callbacks.EpochProgress`). Otherwise (a log file, a pipe, a notebook cell, a worker
of ``axial_kd_tf.experiments``) one line every ``every`` seconds, so logs stay readable.
"""

from __future__ import annotations

import math
import sys
import time
from typing import Callable, Optional, TextIO

import keras

#: Loss terms shown, in this order, when present in the batch logs.
TERMS = ("loss", "student_ce", "teacher_ce", "distill_loss")
_BAR = 20


def _seconds(s: float) -> str:
    s = max(0, int(round(s)))
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}" if s >= 3600 else f"{s // 60}:{s % 60:02d}" if s >= 60 \
        else f"{s}s"


def _terms(logs: Optional[dict]) -> str:
    out = []
    for key in TERMS:
        if logs and key in logs:
            try:
                value = float(logs[key])
            except (TypeError, ValueError):
                continue
            out.append(f"{key} {value:.4f}")
    return " ".join(out)


class StepProgress(keras.callbacks.Callback):
    """Training (and validation) progress within each epoch.

    ``tty=True``: a bar on ``stream`` redrawn at most every ``redraw`` seconds. ``tty=False``: a line through
    ``progress`` every ``every`` seconds (0: none). ``steps`` / ``val_steps`` are the batches per epoch and per
    validation pass (``val_steps`` may be None: shown without a total). ``clock`` is injectable for tests.
    """

    def __init__(
        self,
        steps: int,
        progress: Callable[[str], None] = print,
        *,
        tty: bool = False,
        every: float = 60.0,
        val_steps: Optional[int] = None,
        stream: Optional[TextIO] = None,
        redraw: float = 0.1,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__()
        self.steps, self.val_steps = int(steps), val_steps
        self.progress, self.tty, self.every, self.redraw = progress, tty, float(every), redraw
        self.stream, self.clock = stream, clock
        self.epoch, self.epochs = 0, 0
        self._t0 = self._last = 0.0
        self._drawn = False

    @classmethod
    def for_console(cls, steps: int, progress: Callable[[str], None] = print, every: float = 60.0,
                    val_steps: Optional[int] = None) -> "StepProgress":
        """A bar when ``progress`` is ``print`` and stdout is a terminal; timed lines through ``progress`` otherwise."""
        try:
            tty = progress is print and sys.stdout.isatty()
        except (AttributeError, ValueError):  # a replaced or closed stdout
            tty = False
        return cls(steps, progress, tty=tty, every=every, val_steps=val_steps)

    # ------------------------------------------------------------------------------------------------ output
    def _out(self) -> TextIO:
        return self.stream or sys.stdout

    def _draw(self, text: str) -> None:
        self._out().write("\r\033[K" + text)
        self._out().flush()
        self._drawn = True

    def _clear(self) -> None:
        if self._drawn:
            self._out().write("\r\033[K")
            self._out().flush()
            self._drawn = False

    def _emit(self, text: str, now: float, final: bool = False) -> None:
        if self.tty:
            if final or now - self._last >= self.redraw:
                self._draw(text)
                self._last = now
        elif self.every > 0 and now - self._last >= self.every:
            self.progress(text)
            self._last = now

    # --------------------------------------------------------------------------------------------- callbacks
    def on_train_begin(self, logs: Optional[dict] = None) -> None:
        self.epochs = int(self.params.get("epochs", 0) or 0)

    def on_epoch_begin(self, epoch: int, logs: Optional[dict] = None) -> None:
        self.epoch = epoch
        self._t0 = self._last = self.clock()
        if self.tty:
            self._draw(self._train_line(0, None, self._t0))

    def on_train_batch_end(self, batch: int, logs: Optional[dict] = None) -> None:
        now = self.clock()
        step = batch + 1
        self._emit(self._train_line(step, logs, now), now, final=step == self.steps)

    def on_test_begin(self, logs: Optional[dict] = None) -> None:
        self._v0 = self.clock()

    def on_test_batch_end(self, batch: int, logs: Optional[dict] = None) -> None:
        now = self.clock()
        total = f"/{self.val_steps}" if self.val_steps else ""
        line = f"epoch {self.epoch + 1}/{self.epochs} validation {batch + 1}{total} | {_seconds(now - self._v0)}"
        self._emit(line, now)

    def on_test_end(self, logs: Optional[dict] = None) -> None:
        self._clear()  # epoch-end callbacks (class warnings, ...) may print before this one's on_epoch_end

    def on_epoch_end(self, epoch: int, logs: Optional[dict] = None) -> None:
        self._clear()  # the epoch's summary line comes next

    def on_train_end(self, logs: Optional[dict] = None) -> None:
        self._clear()

    # ------------------------------------------------------------------------------------------------- lines
    def _train_line(self, step: int, logs: Optional[dict], now: float) -> str:
        elapsed = now - self._t0
        eta = elapsed / step * (self.steps - step) if step else math.nan
        eta_text = _seconds(eta) if math.isfinite(eta) else "-"
        terms = _terms(logs)
        head = f"epoch {self.epoch + 1}/{self.epochs}"
        if self.tty:
            done = min(_BAR, int(_BAR * step / max(self.steps, 1)))
            bar = "━" * done + ("╸" if done < _BAR else "") + " " * max(_BAR - done - 1, 0)
            return f"{head} {step}/{self.steps} {bar} {_seconds(elapsed)} ETA {eta_text}" + (
                f" - {terms}" if terms else "")
        pct = 100.0 * step / max(self.steps, 1)
        return (f"{head} step {step}/{self.steps} ({pct:.0f}%)" + (f" {terms}" if terms else "")
                + f" | {_seconds(elapsed)}, epoch ETA {eta_text}")

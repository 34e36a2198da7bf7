"""Keras callbacks of a training run: checkpoints (best and last), the non-finite guard, the teacher diagnostics,
the class-collapse watch, TensorBoard image panels, the one-line-per-epoch progress and ``history.csv``.

:func:`axial_kd_tf.training.fit` puts them in order (the guard first, the diagnostics before the loggers that read
their logs).
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Callable, Optional

import keras
import numpy as np
import tensorflow as tf

from axial_kd_tf.distill import STUDENT, TEACHER, teacher_head
from axial_kd_tf.errors import UserError
from axial_kd_tf.io_utils import atomic_write_json
from axial_kd_tf.rundir import save_weights_atomic

Progress = Callable[[str], None]
BEST_MONITOR = "val_student_miou"


class ImagePanelCallback(keras.callbacks.Callback):
    """Every ``every`` epochs, write input | ground truth | student | teacher panels to TensorBoard."""

    def __init__(self, log_dir: Path, images: np.ndarray, masks: np.ndarray, class_names: tuple[str, ...],
                 every: int = 1) -> None:
        super().__init__()
        self.images, self.masks, self.class_names, self.every = images, masks, class_names, every
        self.writer = tf.summary.create_file_writer(str(log_dir))

    def on_epoch_end(self, epoch: int, logs: Optional[dict] = None) -> None:
        if (epoch + 1) % self.every and epoch != self.params.get("epochs", 0) - 1:
            return
        from axial_kd_tf.visualize import overlay_panel

        outputs = self.model.predict_on_batch(self.images)
        panels = []
        for i in range(len(self.images)):
            preds = {name: np.argmax(np.asarray(outputs[name][i]), -1) for name in (STUDENT, TEACHER) if name in outputs}
            panels.append(overlay_panel(self.images[i], self.masks[i], preds, self.class_names))
        with self.writer.as_default():
            tf.summary.image("val_panels/input_gt_student_teacher", np.stack(panels), step=epoch,
                             max_outputs=len(panels))
        self.writer.flush()


class BestCheckpoint(keras.callbacks.Callback):
    """Saves ``checkpoints/best.weights.h5`` (atomically) when the validation student mIoU beats ``threshold``, and
    records the epoch and value in ``checkpoints/best.json`` (survives a resume)."""

    def __init__(self, weights: Path, record: Path, threshold: Optional[float] = None) -> None:
        super().__init__()
        self.weights, self.record, self.best = Path(weights), Path(record), threshold

    def on_epoch_end(self, epoch: int, logs: Optional[dict] = None) -> None:
        value = (logs or {}).get(BEST_MONITOR)
        if value is None or not math.isfinite(float(value)):
            return
        if self.best is None or float(value) > self.best:
            save_weights_atomic(self.model, self.weights)
            atomic_write_json(self.record, {"epoch": epoch + 1, "monitor": BEST_MONITOR, "value": float(value)})
            self.best = float(value)


class LastCheckpoint(keras.callbacks.Callback):
    """Saves ``checkpoints/last.weights.h5`` (atomically) at every epoch end."""

    def __init__(self, weights: Path) -> None:
        super().__init__()
        self.weights = Path(weights)

    def on_epoch_end(self, epoch: int, logs: Optional[dict] = None) -> None:
        save_weights_atomic(self.model, self.weights)


class TrainingDiverged(UserError):
    """The training loss (or the validation loss) became NaN or infinite."""


class NonFiniteGuard(keras.callbacks.Callback):
    """Stops training at the first step whose loss is NaN or infinite, with one line naming the step.

    The check runs after every batch (Keras' running mean of the loss turns non-finite with the first bad batch)
    and, for the validation loss, at the epoch end — first in the callback list, so nothing of the bad epoch is
    written: the checkpoints and the backup of the last good epoch stay as they were.
    """

    def __init__(self, learning_rate: float, steps_per_epoch: int) -> None:
        super().__init__()
        self.learning_rate, self.steps_per_epoch = float(learning_rate), int(steps_per_epoch)
        self.epoch = 0

    def on_epoch_begin(self, epoch: int, logs: Optional[dict] = None) -> None:
        self.epoch = epoch

    def on_train_batch_end(self, batch: int, logs: Optional[dict] = None) -> None:
        loss = (logs or {}).get("loss")
        if loss is not None and not math.isfinite(float(loss)):
            step = self.epoch * self.steps_per_epoch + batch + 1
            raise self._error(f"the loss became {float(loss)} at epoch {self.epoch + 1}, step {batch + 1}/"
                              f"{self.steps_per_epoch} (optimizer step {step})")

    def on_epoch_end(self, epoch: int, logs: Optional[dict] = None) -> None:
        for key in ("loss", "val_loss"):
            value = (logs or {}).get(key)
            if value is not None and not math.isfinite(float(value)):
                raise self._error(f"the {'validation ' if key == 'val_loss' else ''}loss became {float(value)} in "
                                  f"epoch {epoch + 1}")

    def _error(self, what: str) -> TrainingDiverged:
        lr = self.learning_rate
        advice = f"lower train.learning_rate (now {lr:g}, try {lr / 10:g})"
        if self.epoch:
            return TrainingDiverged(f"training diverged: {what}; {advice} and rerun with --overwrite or another "
                                    f"--run-dir; the checkpoints and backup of epoch {self.epoch} are kept")
        return TrainingDiverged(f"training diverged: {what}; {advice}; no epoch had finished, so nothing is kept")


class TeacherDiagnostics(keras.callbacks.Callback):
    """Per epoch, into the logs (so ``history.csv`` and TensorBoard get them): the teacher head's ``gate`` and the
    distillation term's share of the student's gradient (``distill_grad_share``, ``distill_grad_cosine``, see
    :meth:`DistillationTrainer.gradient_diagnostics`) on a fixed probe batch of training images.

    Must come before ``CSVLogger`` and ``TensorBoard`` in the callback list: they read the same logs dict.
    """

    def __init__(self, images: np.ndarray, masks: np.ndarray) -> None:
        super().__init__()
        self.images = tf.constant(images)
        self.masks = tf.constant(np.asarray(masks).astype("int32"))

    def on_epoch_end(self, epoch: int, logs: Optional[dict] = None) -> None:
        if logs is None:
            return
        head = teacher_head(self.model.network)
        if head is None:
            return
        if head.residual:
            logs["gate"] = float(np.asarray(keras.ops.convert_to_numpy(head.gate)))  # a MirroredVariable too
        logs.update(self.model.gradient_diagnostics(self.images, self.masks))


class ClassWatch(keras.callbacks.Callback):
    """Warns, as it happens, when a class collapses in an output's validation IoU.

    A class *collapses* when its IoU falls below ``floor`` (1 %) after having reached ``learned`` (10 %), or falls
    below half of its best with a drop of at least ``learned``; it is reported once per fall. The warnings are kept in ``warnings`` (and written to
    ``metrics.json``) so a collapsing class is seen during the run, not after it.
    """

    def __init__(self, class_names: tuple[str, ...], progress: Progress = print, floor: float = 0.01,
                 learned: float = 0.10) -> None:
        super().__init__()
        self.class_names, self.progress, self.floor, self.learned = class_names, progress, floor, learned
        self.best: dict[str, float] = {}
        self.down: set[str] = set()  # classes fallen and not recovered yet
        self.warnings: list[str] = []

    def on_epoch_end(self, epoch: int, logs: Optional[dict] = None) -> None:
        for output in (STUDENT, TEACHER):
            for name in self.class_names:
                key = f"val_{output}_iou_{name}"
                value = (logs or {}).get(key)
                if value is None or math.isnan(float(value)):
                    continue
                value, best = float(value), self.best.get(key, 0.0)
                collapsed = best >= self.learned and (value < self.floor or (value < best / 2
                                                                              and best - value >= self.learned))
                if collapsed and key not in self.down:  # once per fall, not every epoch it stays down
                    line = (f"warning: epoch {epoch + 1}: {output} IoU of class '{name}' fell to {value * 100:.1f} "
                            f"(best {best * 100:.1f})")
                    self.warnings.append(line)
                    self.progress(line)
                    self.down.add(key)
                elif not collapsed:
                    self.down.discard(key)
                self.best[key] = max(best, value)


class EpochProgress(keras.callbacks.Callback):
    """One concise line per epoch: loss terms, student/teacher mIoU (train and val), best so far, elapsed and ETA."""

    def __init__(self, progress: Progress = print) -> None:
        super().__init__()
        self.progress = progress
        self.best = -1.0

    def on_train_begin(self, logs: Optional[dict] = None) -> None:
        self.t0 = time.time()
        self.first_epoch: Optional[int] = None

    def on_epoch_begin(self, epoch: int, logs: Optional[dict] = None) -> None:
        if self.first_epoch is None:  # differs from 0 after a resume
            self.first_epoch = epoch

    def on_epoch_end(self, epoch: int, logs: Optional[dict] = None) -> None:
        logs = logs or {}
        total = self.params.get("epochs", epoch + 1)
        done = epoch + 1 - (self.first_epoch or 0)
        elapsed = time.time() - self.t0
        eta = elapsed / max(done, 1) * (total - epoch - 1)
        val = logs.get(BEST_MONITOR)
        if val is not None and val > self.best:
            self.best = float(val)

        def pct(key: str) -> str:
            return f"{logs[key] * 100:5.1f}" if key in logs else "  -  "

        terms = " ".join(f"{k} {logs[k]:.3f}" for k in ("student_ce", "teacher_ce", "distill_loss") if k in logs)
        teacher = ""
        if "val_argmax_disagreement" in logs:
            teacher = f" | T≠S {logs['val_argmax_disagreement'] * 100:.1f}%"
            teacher += f" gate {logs['gate']:.3f}" if "gate" in logs else ""
            teacher += f" D-grad {logs['distill_grad_share'] * 100:.0f}%" if "distill_grad_share" in logs else ""
        line = (f"epoch {epoch + 1:>3}/{total} loss {logs.get('loss', float('nan')):.3f} ({terms}) | mIoU train "
                f"S {pct('student_miou')} T {pct('teacher_miou')} | val S {pct('val_student_miou')} "
                f"T {pct('val_teacher_miou')}{teacher} | best val S {self.best * 100:5.1f} | {elapsed:4.0f}s, "
                f"ETA {eta:4.0f}s")
        self.progress(line.replace(" T   -  ", ""))


class HistoryCSV(keras.callbacks.CSVLogger):
    """``history.csv`` with epochs numbered from 1, as the console, ``best.json`` and ``metrics.json`` number them
    (Keras' CSVLogger writes the 0-based index)."""

    def on_epoch_end(self, epoch: int, logs: Optional[dict] = None) -> None:
        super().on_epoch_end(epoch + 1, logs)

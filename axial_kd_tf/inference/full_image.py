"""Whole-image inference with a Keras model of any input size (docs/inference.md).

:class:`FullImagePredictor` pads to the network's size multiple and runs it once, tiles the axial teacher over the
student logits when its memory estimate exceeds a budget, and falls back to a sliding window when told to.
"""

from __future__ import annotations

import math
from collections import Counter
from typing import Optional, Sequence

import numpy as np

from axial_kd_tf.errors import UserError
from axial_kd_tf.inference.memory import network_multiple, student_bytes_per_pixel, teacher_memory_mb
from axial_kd_tf.inference.tiling import SlidingWindow, _pair, blend_weights, pad_to

DEFAULT_MAX_TEACHER_MB = 2048.0


class FullImagePredictor:
    """Segment images of any size with a Keras model (two-output distillation model, or a plain network).

    * **Whole-image** where the network allows: the image is reflect-padded at the bottom/right up to the network's
      size multiple (:func:`network_multiple`), the network runs once, and its logits are cropped back. The teacher
      head then runs on the cropped student logits, so it sees exactly the image. An image that needs no padding and
      whose teacher fits the budget goes through ``model(images)`` itself (identical to :class:`KerasPredictor`).
    * **Teacher tiled**: when :func:`teacher_memory_mb` of one image exceeds ``max_teacher_mb``, the student still
      runs whole-image and the teacher head runs on overlapping windows of the student logits (the largest window
      that fits, or ``teacher_window``), blended like :func:`sliding_window`. Batches are split so each teacher call
      fits the budget.
    * **Sliding window**: with ``window`` (forced), or when ``max_student_mb`` is set and
      :func:`student_bytes_per_pixel` says one padded image exceeds it, the whole pipeline above runs on overlapping
      windows blended with ``blend``.

    ``modes`` counts the images per mode used; ``last_mode`` is the mode of the latest call.
    """

    def __init__(
        self,
        model,
        *,
        multiple: Optional[int] = None,
        max_teacher_mb: Optional[float] = DEFAULT_MAX_TEACHER_MB,
        max_student_mb: Optional[float] = None,
        window: Optional[int | Sequence[int]] = None,
        overlap: float = 0.5,
        blend: str = "gaussian",
        teacher_window: Optional[int] = None,
        pad_mode: str = "reflect",
    ) -> None:
        import keras

        from axial_kd_tf.layers.teacher_head import AxialTeacherHead

        for name, value in (("max_teacher_mb", max_teacher_mb), ("max_student_mb", max_student_mb)):
            if value is not None and value <= 0:
                raise UserError(f"{name} must be > 0, got {value}")
        if not 0.0 <= float(overlap) < 1.0:
            raise UserError(f"overlap must be in [0, 1), got {overlap}")
        blend_weights(1, 1, blend)  # validates the name
        self.model = model
        self.network, self.head = model, None
        out = model.output
        if isinstance(out, dict):
            nested = [layer for layer in model.layers if isinstance(layer, keras.Model)]
            heads = [layer for layer in model.layers if isinstance(layer, AxialTeacherHead)]
            ok = "student" in out and len(nested) == 1 and set(out) <= {"student", "teacher"}
            ok = ok and (("teacher" in out) == (len(heads) == 1))
            self.network = nested[0] if ok else None  # None: an unknown structure, run as one block
            self.head = heads[0] if ok and heads else None
        self.multiple = int(multiple) if multiple else network_multiple(self.network or model)
        self.max_teacher_mb = max_teacher_mb
        self.max_student_mb = max_student_mb
        self.window = _pair(window, "window") if window is not None else None
        self.overlap = float(overlap)
        self.blend = blend
        self.teacher_window = int(teacher_window) if teacher_window else None
        self.pad_mode = pad_mode
        self._student_bpp: Optional[float] = None
        self.modes: Counter = Counter()
        self.last_mode = ""

    # --------------------------------------------------------------------------------------------- estimates
    def teacher_mb(self, height: int, width: int, batch: int = 1) -> float:
        return teacher_memory_mb(self.head, height, width, batch) if self.head is not None else 0.0

    def student_mb(self, height: int, width: int, batch: int = 1) -> Optional[float]:
        if self._student_bpp is None:
            self._student_bpp = student_bytes_per_pixel(self.network or self.model, self.multiple) or 0.0
        return self._student_bpp * height * width * batch / 2**20 if self._student_bpp else None

    def teacher_window_for(self, height: int, width: int) -> int:
        """The largest window side (a multiple of the head's pool size) whose teacher estimate fits the budget."""
        p = self.head.pool_size
        smallest = min(max(16, 2 * p), max(height, width))
        side = max(height, width) // p * p
        while side > smallest and self.teacher_mb(min(side, height), min(side, width)) > self.max_teacher_mb:
            side -= p
        return max(side, smallest)

    # --------------------------------------------------------------------------------------------- running
    def __call__(self, images: np.ndarray) -> dict:
        images = np.asarray(images, dtype=np.float32)
        labels: list[str] = []
        if self.window is not None:
            win = SlidingWindow(lambda x: self._whole(x, labels, allow_window=False), self.window, self.overlap,
                                self.blend, pad_mode=self.pad_mode)
            labels.append(win.description + " (forced)")
            out = win(images)
        else:
            out = self._whole(images, labels)
        self.last_mode = " + ".join(dict.fromkeys(labels))
        self.modes[self.last_mode] += len(images)
        return out

    def _whole(self, images: np.ndarray, labels: list, allow_window: bool = True) -> dict:
        n, h, w = images.shape[:3]
        m = self.multiple
        big_h, big_w = -(-h // m) * m, -(-w // m) * m
        student_mb = self.student_mb(big_h, big_w) if self.max_student_mb is not None else None
        if allow_window and student_mb is not None and student_mb > self.max_student_mb:
            side = max(m, int(math.sqrt(self.max_student_mb * 2**20 / self._student_bpp)) // m * m)
            win = SlidingWindow(lambda x: self._whole(x, labels, allow_window=False),
                                (min(side, big_h), min(side, big_w)), self.overlap, self.blend, pad_mode=self.pad_mode)
            labels.append(f"{win.description} (student estimate {student_mb:.3g} MB > {self.max_student_mb:g} MB)")
            return win(images)
        chunk = n
        if student_mb:
            chunk = max(1, min(n, int(self.max_student_mb // student_mb)))
        padded = pad_to(images, big_h, big_w, self.pad_mode)
        padding = (big_h, big_w) != (h, w)
        if allow_window:
            labels.append(f"whole-image (reflect-padded to a multiple of {m})" if padding else "whole-image")
        elif padding:
            labels.append(f"windows reflect-padded to a multiple of {m}")
        teacher_fits = self.head is None or (
            self.teacher_window is None
            and (self.max_teacher_mb is None or self.teacher_mb(h, w) <= self.max_teacher_mb)
        )
        if self.network is None or (not padding and teacher_fits):
            if teacher_fits and self.head is not None and self.max_teacher_mb is not None:
                chunk = max(1, min(chunk, int(self.max_teacher_mb // max(self.teacher_mb(h, w), 1e-9))))
            parts = [_outputs(self.model(padded[i : i + chunk], training=False)) for i in range(0, n, chunk)]
            return {k: np.concatenate([p[k] for p in parts])[:, :h, :w] for k in parts[0]}
        student = np.concatenate([
            np.asarray(self.network(padded[i : i + chunk], training=False), dtype=np.float32)[:, :h, :w]
            for i in range(0, n, chunk)
        ])
        out = {"student": student}
        if self.head is not None:
            out["teacher"] = self._teacher(student, labels)
        return out

    def _run_head(self, logits: np.ndarray) -> dict:
        return {"teacher": np.asarray(self.head(logits, training=False), dtype=np.float32)}

    def _teacher(self, student: np.ndarray, labels: list) -> np.ndarray:
        n, h, w = student.shape[:3]
        budget = self.max_teacher_mb
        if self.teacher_window is None and (budget is None or self.teacher_mb(h, w) <= budget):
            chunk = n if budget is None else max(1, min(n, int(budget // max(self.teacher_mb(h, w), 1e-9))))
            return np.concatenate([self._run_head(student[i : i + chunk])["teacher"] for i in range(0, n, chunk)])
        side = self.teacher_window or self.teacher_window_for(h, w)
        win = (min(side, h), min(side, w))
        per_window = self.teacher_mb(*win)
        crops = None if budget is None else max(1, int(budget // max(per_window, 1e-9)))
        tiles = SlidingWindow(self._run_head, win, self.overlap, self.blend, batch_size=crops, pad_mode=self.pad_mode)
        labels.append(f"teacher tiled ({win[0]}x{win[1]} windows, overlap {self.overlap:g}, {self.blend} blending; "
                      f"teacher estimate {per_window:.3g} MB per window)")
        return tiles(student)["teacher"]


def _outputs(out) -> dict:
    if isinstance(out, dict):
        return {k: np.asarray(v, dtype=np.float32) for k, v in out.items()}
    return {"student": np.asarray(out, dtype=np.float32)}


def full_image_predictor(model, **kwargs) -> FullImagePredictor:
    """:class:`FullImagePredictor` for a Keras model (a run's ``model.keras``, or a plain logits network)."""
    return FullImagePredictor(model, **kwargs)

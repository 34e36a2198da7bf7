"""Evaluation: per-class IoU and mIoU (the paper's metric) for a run or a saved model, tables and overlays.

The confusion matrix is accumulated over every pixel of the split, then turned into IoU (never a mean of per-image
IoUs). A model is anything :func:`load_predictor` can open: a run directory, a ``.keras`` file, a SavedModel folder or
a ``.tflite`` file.

Images of any size (docs/inference.md): :func:`sliding_window` runs any predictor over overlapping windows and blends
their logits (Gaussian or flat weights); :class:`FullImagePredictor` runs a Keras model whole-image (reflect-padded to
its size multiple), tiles the axial teacher over the student logits when its memory estimate
(:func:`estimate_teacher_mb`) exceeds a budget, and falls back to a sliding window when told to. Fixed-size models
(TFLite, a SavedModel with a fixed input) run in a sliding window at their input size.
"""

from __future__ import annotations

import math
import os
import time
from collections import Counter
from pathlib import Path
from typing import Callable, Mapping, Optional, Sequence

import numpy as np

from axial_kd_tf.errors import UserError
from axial_kd_tf.metrics import confusion_matrix_np

Predictor = Callable[[np.ndarray], dict]
OUTPUT_ORDER = ("student", "teacher")


class SavedModelPredictor:
    """A SavedModel written by :func:`axial_kd_tf.export.export_saved_model` (its ``serve`` endpoint)."""

    def __init__(self, path: Path) -> None:
        import tensorflow as tf

        self.module = tf.saved_model.load(str(path))
        self.fn = self.module.signatures.get("serving_default") or next(iter(self.module.signatures.values()))
        spec = list(self.fn.structured_input_signature[1].values())[0]
        self.input_name = list(self.fn.structured_input_signature[1])[0]
        self.input_shape = tuple(spec.shape)

    def __call__(self, images: np.ndarray) -> dict:
        import tensorflow as tf

        outs = [self.fn(**{self.input_name: tf.constant(images[i : i + 1])}) for i in range(len(images))]
        key = "teacher" if "teacher" in outs[0] and len(outs[0]) == 1 else next(iter(outs[0]))
        return {"student" if key != "teacher" else "teacher": np.concatenate([np.asarray(o[key]) for o in outs])}


class TFLitePredictor:
    """A ``.tflite`` file run in the LiteRT interpreter through its signature runner."""

    def __init__(self, path: Path) -> None:
        from axial_kd_tf.export import run_tflite

        self.path, self._run = path, run_tflite
        self.is_teacher = path.stem.startswith("teacher")

    def __call__(self, images: np.ndarray) -> dict:
        return {"teacher" if self.is_teacher else "student": self._run(self.path, images)}


def predictor_channels(predictor: Predictor) -> Optional[int]:
    """The number of image channels a loaded predictor takes (None when it cannot tell)."""
    model = getattr(predictor, "model", None)
    try:
        if model is not None:
            return int(model.inputs[0].shape[-1])
        if isinstance(predictor, SavedModelPredictor):
            return int(predictor.input_shape[-1])
        if isinstance(predictor, TFLitePredictor):
            from ai_edge_litert.interpreter import Interpreter

            return int(Interpreter(model_path=str(predictor.path)).get_input_details()[0]["shape"][-1])
    except (AttributeError, IndexError, TypeError, ValueError):
        pass
    return None


def load_predictor(path: str | os.PathLike) -> tuple[Predictor, Optional[int]]:
    """Open a model file; returns the predictor and its fixed input size (None when any size works)."""
    from axial_kd_tf.training import KerasPredictor, load_run_model

    p = Path(path)
    if not p.exists():
        raise UserError(f"model '{p}' does not exist; pass a run directory, .keras, SavedModel folder or .tflite file")
    try:
        if p.is_dir() and (p / "model.keras").is_file():
            return KerasPredictor(load_run_model(p)), None
        if p.is_dir() and (p / "saved_model.pb").is_file():
            pred = SavedModelPredictor(p)
            return pred, pred.input_shape[1]
        if p.suffix == ".keras":
            from axial_kd_tf.saving import load_model

            return KerasPredictor(load_model(p)), None
        if p.suffix == ".tflite":
            from ai_edge_litert.interpreter import Interpreter

            interp = Interpreter(model_path=str(p))
            shape = interp.get_input_details()[0]["shape"]
            return TFLitePredictor(p), int(shape[1])
    except UserError:
        raise
    except Exception as exc:
        raise UserError(f"cannot load model '{p}': {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}") from None
    raise UserError(f"'{p}' is not a model: expected a run directory, .keras, SavedModel folder or .tflite file")


# ---------------------------------------------------------------------------------------------- sliding window
BLENDS = ("gaussian", "mean")
DEFAULT_MAX_TEACHER_MB = 2048.0


def _pair(value: int | Sequence[int], name: str) -> tuple[int, int]:
    h, w = (value, value) if np.isscalar(value) else tuple(value)
    if int(h) != h or int(w) != w or h < 1 or w < 1:
        raise UserError(f"{name} must be a positive integer (or a pair), got {value!r}")
    return int(h), int(w)


def window_stride(window: int, overlap: float) -> int:
    """``window · (1 − overlap)``, rounded down, at least 1."""
    return max(1, int(math.floor(window * (1.0 - overlap) + 1e-9)))


def window_starts(length: int, window: int, stride: int) -> list[int]:
    """Offsets of the windows along one axis: ``0, stride, 2·stride, …`` and a last window flush with the edge.

    A ``length`` up to ``window`` gives ``[0]`` (the image is padded up to the window first).
    """
    if length <= window:
        return [0]
    starts = list(range(0, length - window + 1, stride))
    if starts[-1] + window < length:
        starts.append(length - window)
    return starts


def blend_weights(height: int, width: int, blend: str = "gaussian", sigma_scale: float = 0.125) -> np.ndarray:
    """The ``[height, width]`` float32 weight given to one window's logits.

    ``gaussian``: a separable Gaussian centred on the window, σ = ``sigma_scale`` · side (nnU-Net's 1/8), peak 1,
    floored at 1e-6 so that every covered pixel has a positive weight. ``mean``: ones (a plain average).
    """
    if blend not in BLENDS:
        raise UserError(f"blend must be one of {', '.join(BLENDS)}, got {blend!r}")
    if blend == "mean":
        return np.ones((height, width), np.float32)

    def axis(n: int) -> np.ndarray:
        sigma = max(sigma_scale * n, 1e-3)
        return np.exp(-0.5 * ((np.arange(n) - (n - 1) / 2.0) / sigma) ** 2)

    w = np.outer(axis(height), axis(width))
    return np.maximum(w / w.max(), 1e-6).astype(np.float32)


def pad_to(images: np.ndarray, height: int, width: int, mode: str = "reflect") -> np.ndarray:
    """Pad ``[N, H, W, ...]`` at the bottom and right up to at least ``height`` × ``width`` (``np.pad`` ``mode``)."""
    h, w = images.shape[1:3]
    ph, pw = max(int(height) - h, 0), max(int(width) - w, 0)
    if not ph and not pw:
        return images
    return np.pad(images, ((0, 0), (0, ph), (0, pw)) + ((0, 0),) * (images.ndim - 3), mode=mode)


class SlidingWindow:
    """Run ``predictor`` over windows of ``window`` (side, or ``(height, width)``) and blend their logits.

    Windows start every ``stride = floor(window · (1 − overlap))`` pixels; the last one per axis is flush with the
    image edge. Each pixel's output is ``Σ_w g_w · logits_w / Σ_w g_w`` over the windows covering it, with ``g`` from
    :func:`blend_weights` (``gaussian`` favours window centres, where the network saw the most context; ``mean`` is
    flat). Images smaller than the window on an axis are reflect-padded up to it and the output is cropped back;
    an image exactly one window large is passed through unchanged. Any ``H`` × ``W`` works.
    ``batch_size`` caps the windows per predictor call (default: the batch's image count, i.e. one window position
    per call). Called on images, returns the predictor's dict (``{"student": …, "teacher": …}``) at the input's size,
    float32.

    ``modes`` counts the images per mode: one window covered the image, or several were blended.
    """

    def __init__(
        self,
        predictor: Predictor,
        window: int | Sequence[int],
        overlap: float = 0.5,
        blend: str = "gaussian",
        batch_size: Optional[int] = None,
        sigma_scale: float = 0.125,
        pad_mode: str = "reflect",
    ) -> None:
        if not 0.0 <= float(overlap) < 1.0:
            raise UserError(f"overlap must be in [0, 1), got {overlap}")
        if batch_size is not None and batch_size < 1:
            raise UserError(f"batch_size must be >= 1, got {batch_size}")
        self.predictor = predictor
        self.window = _pair(window, "window")
        self.overlap = float(overlap)
        self.blend = blend
        self.batch_size = batch_size
        self.pad_mode = pad_mode
        self.stride = (window_stride(self.window[0], self.overlap), window_stride(self.window[1], self.overlap))
        self.weights = blend_weights(*self.window, blend=blend, sigma_scale=sigma_scale)
        self.modes: Counter = Counter()

    @property
    def description(self) -> str:
        wh, ww = self.window
        return f"sliding window {wh}x{ww}, overlap {self.overlap:g}, {self.blend} blending"

    def windows(self, height: int, width: int) -> list[tuple[int, int]]:
        """Top-left corners of the windows on a ``height`` × ``width`` image (after padding up to the window)."""
        (wh, ww), (sh, sw) = self.window, self.stride
        return [(y, x) for y in window_starts(max(height, wh), wh, sh) for x in window_starts(max(width, ww), ww, sw)]

    def __call__(self, images: np.ndarray) -> dict:
        images = np.asarray(images)
        n, h, w = images.shape[:3]
        wh, ww = self.window
        padded = pad_to(images, max(h, wh), max(w, ww), self.pad_mode)
        big_h, big_w = padded.shape[1:3]
        note = "" if (big_h, big_w) == (h, w) else f", reflect-padded to {wh}x{ww}"
        if (big_h, big_w) == (wh, ww):  # one window: the predictor's output as is (no blending round-off)
            self.modes[f"one {wh}x{ww} window{note}"] += n
            return {k: self._checked(k, v, n)[:, :h, :w] for k, v in self.predictor(padded).items()}
        corners = self.windows(h, w)
        crops = [(y, x, i) for y, x in corners for i in range(n)]
        weight_sum = np.zeros((big_h, big_w), np.float32)
        for y, x in corners:
            weight_sum[y : y + wh, x : x + ww] += self.weights
        acc: dict = {}
        chunk = self.batch_size or n
        for c in range(0, len(crops), chunk):
            part = crops[c : c + chunk]
            batch = np.stack([padded[i, y : y + wh, x : x + ww] for y, x, i in part])
            out = self.predictor(np.ascontiguousarray(batch))
            for k, v in out.items():
                v = self._checked(k, v, len(part))
                if k not in acc:
                    acc[k] = np.zeros((n, big_h, big_w, v.shape[-1]), np.float32)
                for j, (y, x, i) in enumerate(part):
                    acc[k][i, y : y + wh, x : x + ww] += v[j] * self.weights[:, :, None]
        self.modes[f"{self.description}{note}"] += n
        return {k: (a[:, :h, :w] / weight_sum[None, :h, :w, None]) for k, a in acc.items()}

    def _checked(self, name: str, value, batch: int) -> np.ndarray:
        v = np.asarray(value, dtype=np.float32)
        if v.ndim != 4 or v.shape[0] != batch or v.shape[1:3] != self.window:
            raise UserError(f"the model returned '{name}' of shape {tuple(v.shape)} for {batch} windows of "
                            f"{self.window[0]}x{self.window[1]}; a sliding window needs same-size outputs")
        return v


sliding_window = SlidingWindow  # the functional spelling: ``sliding_window(predictor, window, ...)(images)``


def tiled(predictor: Predictor, tile: int) -> Predictor:
    """Run a fixed-size predictor over larger images in non-overlapping ``tile``² windows.

    The non-overlapping special case of :func:`sliding_window` (``overlap=0``, ``mean`` blending): the last window per
    axis is flush with the edge and is averaged with its neighbour where they overlap; images smaller than the tile
    are reflect-padded and cropped back.
    """
    return sliding_window(predictor, tile, overlap=0.0, blend="mean")


# ------------------------------------------------------------------------------------------------ memory estimates
def estimate_teacher_mb(
    height: int,
    width: int,
    batch: int = 1,
    *,
    num_heads: int = 1,
    pool_size: int = 1,
    hidden_dim: int = 16,
    key_dim: Optional[int] = None,
    num_classes: int = 5,
    positional_encoding: bool = True,
    bytes_per_float: int = 4,
) -> float:
    """Estimated peak memory (MiB) of one :class:`~axial_kd_tf.layers.AxialTeacherHead` call in inference.

    The head pools to ``h × w = ceil(H/p) × ceil(W/p)``; each axial pass folds the other axis into the batch, so its
    attention tensors are ``[N, heads, L, L]`` with ``N = batch·(other side)``: ``batch·heads·h·w·L`` floats, ``L``
    the attended side. In ``AxialAttention.call`` the content logits, the ``q·r^q`` and ``k·r^k`` terms (transposed
    copies), their sum, the softmax and its transposed copy for the ``r^v`` retrieval are alive together: 6 such
    tensors with positional encoding, 3 without (logits, softmax and its temporary). Add the relative windows
    ``[L, L, d]`` (``r^q``, ``r^k`` and its transpose, ``r^v``) and the full-resolution tensors (input, output,
    upsampled hidden: ``batch·H·W·(2K + hidden)``). The larger pass counts. An estimate, not a measurement: the
    allocator, XLA fusion or a GPU's workspace change the real peak.
    """
    p = max(int(pool_size), 1)
    hp, wp = -(-int(height) // p), -(-int(width) // p)
    heads = max(int(num_heads), 1)
    dk = int(key_dim) if key_dim else max(hidden_dim // heads // 2, 1)
    dv = max(hidden_dim // heads, 1)
    live = 6 if positional_encoding else 3
    passes = []
    for length, other in ((hp, wp), (wp, hp)):
        square = batch * other * heads * length * length
        tables = length * length * (3 * dk + dv) if positional_encoding else 0
        rows = batch * other * length * heads * (4 * dk + 3 * dv)  # q, k, v, qkv and the outputs
        passes.append(live * square + tables + rows)
    full = batch * int(height) * int(width) * (2 * num_classes + hidden_dim) + batch * hp * wp * hidden_dim * 2
    return (max(passes) + full) * bytes_per_float / 2**20


def teacher_memory_mb(head, height: int, width: int, batch: int = 1) -> float:
    """:func:`estimate_teacher_mb` for an :class:`~axial_kd_tf.layers.AxialTeacherHead` (read from its config)."""
    dtype = getattr(getattr(head, "dtype_policy", None), "compute_dtype", "float32")
    return estimate_teacher_mb(
        height, width, batch, num_heads=head.num_heads, pool_size=head.pool_size, hidden_dim=head.hidden_dim,
        key_dim=head.key_dim, num_classes=head.num_classes, positional_encoding=head.use_positional_encoding,
        bytes_per_float=np.dtype(dtype).itemsize if dtype != "bfloat16" else 2,
    )


def _all_layers(model) -> list:
    out = []
    for layer in getattr(model, "layers", []):
        out.append(layer)
        out.extend(_all_layers(layer))
    return out


def _first_output(spec):
    if isinstance(spec, dict):
        spec = next(iter(spec.values()))
    if isinstance(spec, (list, tuple)):
        spec = spec[0]
    return spec


def network_multiple(network, max_multiple: int = 64, default: int = 32) -> int:
    """The multiple the network's input height and width must be (its output stride), for whole-image padding.

    From the zoo's ``InputSizeCheck`` layers when present; otherwise the smallest power of two ``m`` for which a
    symbolic ``m·q`` × ``m·q`` input (``q`` odd, side ≥ 128) gives a same-size output (a U-Net without the check,
    e.g. ``simple_unet``, silently returns a smaller map at other sizes). ``default`` when nothing fits.
    """
    import keras

    checks = [int(layer.multiple) for layer in _all_layers(network) if type(layer).__name__ == "InputSizeCheck"]
    if checks:
        return int(np.lcm.reduce(checks))
    channels = network.inputs[0].shape[-1]
    m = 1
    while m <= max_multiple:
        q = max(3, -(-128 // m))
        q += 1 - q % 2
        side = m * q
        try:
            spec = _first_output(network.compute_output_spec(keras.KerasTensor((1, side, side, channels))))
            if tuple(spec.shape[1:3]) == (side, side):
                return m
        except Exception:  # the size check (or an op) rejects the size
            pass
        m *= 2
    return default


def student_bytes_per_pixel(network, multiple: int = 32) -> Optional[float]:
    """Sum of every layer's output bytes per input pixel (one image), from a symbolic pass; None if unavailable.

    An upper bound of eager inference memory (which frees most activations as it goes; skips stay alive).
    """
    import keras

    try:
        outs = []
        for layer in network.layers:
            if isinstance(layer, keras.layers.InputLayer):
                continue
            try:
                o = layer.output
            except Exception:  # a layer called more than once
                continue
            outs.extend(o if isinstance(o, (list, tuple)) else [o])
        side = multiple * max(1, -(-256 // multiple))
        specs = keras.Model(network.inputs, outs).compute_output_spec(
            keras.KerasTensor((1, side, side, network.inputs[0].shape[-1])))
        total = sum(float(np.prod(s.shape)) * np.dtype(s.dtype if s.dtype != "bfloat16" else "float16").itemsize
                    for s in specs)
        return total / (side * side)
    except Exception:
        return None


# ---------------------------------------------------------------------------------------------- full-image predictor
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


class TimedPredictor:
    """Wraps a predictor: total seconds, images, and the modes used (from the wrapped predictor when it counts them)."""

    def __init__(self, predictor: Predictor, mode: Optional[str] = None) -> None:
        self.predictor, self.mode = predictor, mode
        self.seconds, self.images = 0.0, 0
        self._own: Counter = Counter()

    def __call__(self, images: np.ndarray) -> dict:
        start = time.perf_counter()
        out = self.predictor(images)
        self.seconds += time.perf_counter() - start
        self.images += len(images)
        if self.mode:
            self._own[self.mode] += len(images)
        return out

    @property
    def modes(self) -> Counter:
        inner = getattr(self.predictor, "modes", None)
        return self._own if self.mode or inner is None else inner

    @property
    def seconds_per_image(self) -> float:
        return self.seconds / max(self.images, 1)

    def summary(self) -> dict:
        return {"modes": dict(self.modes), "images": self.images, "seconds": round(self.seconds, 4),
                "seconds_per_image": round(self.seconds_per_image, 5)}


def evaluate_split(
    predictor: Predictor,
    images: np.ndarray,
    masks: np.ndarray,
    num_classes: int,
    batch_size: int = 8,
    ignore_index: Optional[int] = None,
    keep_predictions: int = 0,
) -> dict:
    """Confusion matrices per output over the whole split: ``{"student": cm, "teacher": cm}``.

    With ``keep_predictions > 0`` the first that many argmax maps are returned under ``"_predictions"``.
    """
    cms: dict = {}
    kept: dict = {}
    for start in range(0, len(images), batch_size):
        out = predictor(images[start : start + batch_size])
        y = masks[start : start + batch_size]
        for name, logits in out.items():
            if logits.shape[-1] != num_classes:
                raise UserError(f"the model outputs {logits.shape[-1]} classes but the data has {num_classes}")
            pred = np.argmax(logits, axis=-1)
            cm = confusion_matrix_np(y, pred, num_classes, ignore_index=ignore_index)
            cms[name] = cms.get(name, 0) + cm
            if start < keep_predictions:
                kept.setdefault(name, []).append(pred[: keep_predictions - start])
    ordered = {k: cms[k] for k in OUTPUT_ORDER if k in cms}
    if keep_predictions:
        ordered["_predictions"] = {k: np.concatenate(v)[:keep_predictions] for k, v in kept.items()}
    return ordered


def metrics_payload(cms: Mapping[str, np.ndarray], class_names: Sequence[str], split: str) -> dict:
    from axial_kd_tf.reporting import metrics_dict

    return {
        "split": split,
        "class_names": list(class_names),
        "outputs": {k: metrics_dict(v, class_names) for k, v in cms.items() if not k.startswith("_")},
    }


def table_rows(payload: Mapping) -> dict:
    names = payload["class_names"]
    return {
        k: {"per_class_iou": [v["per_class_iou"][c] for c in names], "miou": v["miou"]}
        for k, v in payload["outputs"].items()
    }

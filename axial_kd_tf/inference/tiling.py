"""Sliding-window inference: run any predictor over overlapping windows of images of any size and blend the logits.

docs/inference.md. Windows start every ``floor(window · (1 − overlap))`` pixels, the last one flush with the edge;
each pixel's output is the ``blend``-weighted mean over the windows covering it.
"""

from __future__ import annotations

import math
from collections import Counter
from typing import Optional, Sequence

import numpy as np

from axial_kd_tf.errors import UserError
from axial_kd_tf.inference.predictors import Predictor

# ---------------------------------------------------------------------------------------------- sliding window
BLENDS = ("gaussian", "mean")


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

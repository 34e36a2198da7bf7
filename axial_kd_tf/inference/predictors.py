"""Predictors: callables ``images → {"student": logits, "teacher": logits?}`` for every kind of saved model.

:func:`load_predictor` opens a run directory, a ``.keras`` file, a SavedModel folder or a ``.tflite`` file
(LiteRT, :mod:`axial_kd_tf.export.litert`); :class:`TimedPredictor` wraps any of them with timing.
"""

from __future__ import annotations

import os
import time
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Optional

import numpy as np

from axial_kd_tf.errors import UserError
from axial_kd_tf.rundir import load_run_model

if TYPE_CHECKING:
    import keras

Predictor = Callable[[np.ndarray], dict]
OUTPUT_ORDER = ("student", "teacher")


class KerasPredictor:
    """Callable images → {"student": logits, "teacher": logits?} for a (two-output or plain) Keras model."""

    def __init__(self, model: "keras.Model") -> None:  # noqa: F821 (Keras is not imported for the LiteRT path)
        self.model = model

    def __call__(self, images: np.ndarray) -> dict:
        out = self.model(images, training=False)
        if isinstance(out, dict):
            return {k: np.asarray(v, dtype=np.float32) for k, v in out.items()}
        return {"student": np.asarray(out, dtype=np.float32)}


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
        from axial_kd_tf.export.litert import run_tflite  # LiteRT only when a .tflite file is opened

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

"""Evaluation: per-class IoU and mIoU (the paper's metric) for a run or a saved model, tables and overlays.

The confusion matrix is accumulated over every pixel of the split, then turned into IoU (never a mean of per-image
IoUs). A model is anything :func:`load_predictor` can open: a run directory, a ``.keras`` file, a SavedModel folder or
a ``.tflite`` file. Fixed-size models (TFLite) are run tile by tile.
"""

from __future__ import annotations

import os
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
            import keras

            import axial_kd_tf.layers  # noqa: F401

            return KerasPredictor(keras.saving.load_model(p, compile=False)), None
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


def tiled(predictor: Predictor, tile: int) -> Predictor:
    """Run a fixed-size predictor over larger images in ``tile``² windows (the last window per axis overlaps)."""

    def starts(length: int) -> list[int]:
        if length < tile:
            raise UserError(f"images of size {length} are smaller than the model's fixed input {tile}")
        s = list(range(0, length - tile + 1, tile))
        return s if s[-1] + tile == length else s + [length - tile]

    def run(images: np.ndarray) -> dict:
        n, h, w = images.shape[:3]
        if h == tile and w == tile:
            return predictor(images)
        out: dict = {}
        for y in starts(h):
            for x in starts(w):
                part = predictor(np.ascontiguousarray(images[:, y : y + tile, x : x + tile]))
                for k, v in part.items():
                    if k not in out:
                        out[k] = np.zeros((n, h, w, v.shape[-1]), np.float32)
                    out[k][:, y : y + tile, x : x + tile] = v
        return out

    return run


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

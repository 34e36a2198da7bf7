"""Evaluation: per-class IoU and mIoU (the paper's metric) of a predictor over a data split.

The confusion matrix is accumulated over every pixel of the split, then turned into IoU (never a mean of per-image
IoUs).
"""

from __future__ import annotations

from typing import Mapping, Optional, Sequence

import numpy as np

from axial_kd_tf.errors import UserError
from axial_kd_tf.inference.predictors import OUTPUT_ORDER, Predictor
from axial_kd_tf.metrics import confusion_matrix_np
from axial_kd_tf.reporting import metrics_dict

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

"""Segmentation metrics: per-class IoU and mIoU from a dataset-level confusion matrix.

As in the paper, IoU is computed from one confusion matrix accumulated over the **whole** evaluation set, never as an
average of per-image or per-batch IoUs (the two differ whenever batches hold different amounts of each class).

Conventions used everywhere in this module:

* The confusion matrix ``cm`` is ``[K, K]`` with **rows = ground truth, columns = prediction**:
  ``cm[t, p]`` counts pixels whose true class is ``t`` and predicted class is ``p``.
* Pixels whose label equals ``ignore_index`` are excluded from the matrix.
* ``IoU_c = cm[c, c] / (sum_p cm[c, p] + sum_t cm[t, c] - cm[c, c])``.
* A class absent from both ground truth and prediction (union 0) has an **undefined** IoU: it is reported as NaN
  (``None`` in JSON, "—" in tables) and excluded from the mIoU, which is the mean over the classes whose IoU is
  defined (``nanmean``). If no class is defined (empty matrix), the mIoU is NaN too. A class that is predicted but
  absent from the ground truth has IoU 0 and *does* count.

:class:`ConfusionMatrixIoU` is the Keras 3 streaming version (graph / XLA / ``tf.distribute`` friendly);
:func:`confusion_matrix_np` and :func:`iou_from_confusion` are the NumPy reference implementations.
"""

from __future__ import annotations

from typing import Any, Sequence

import keras
import numpy as np
from keras import ops

from axial_kd_tf.errors import UserError

__all__ = ["confusion_matrix_np", "iou_from_confusion", "ConfusionMatrixIoU"]


# --------------------------------------------------------------------------------------------------------------------
# NumPy reference
# --------------------------------------------------------------------------------------------------------------------
def confusion_matrix_np(
    y_true: np.ndarray, y_pred: np.ndarray, num_classes: int, ignore_index: int | None = None
) -> np.ndarray:
    """Confusion matrix ``[K, K]`` (int64; rows = true, cols = pred) of two integer label arrays of the same shape.

    Pixels where ``y_true == ignore_index`` are dropped. Any other label outside ``[0, num_classes)`` (in either
    array) raises :class:`UserError`.
    """
    num_classes = _check_num_classes(num_classes)
    t = np.asarray(y_true)
    p = np.asarray(y_pred)
    if t.shape != p.shape:
        raise UserError(f"confusion_matrix_np: y_true shape {t.shape} != y_pred shape {p.shape}")
    for arr, what in ((t, "y_true"), (p, "y_pred")):
        if arr.size and not (np.issubdtype(arr.dtype, np.integer) or np.issubdtype(arr.dtype, np.bool_)):
            if not np.all(np.equal(np.mod(arr, 1), 0)):
                raise UserError(f"confusion_matrix_np: {what} must hold integer labels, got dtype {arr.dtype}")
    t = t.reshape(-1).astype(np.int64)
    p = p.reshape(-1).astype(np.int64)
    if ignore_index is not None:
        keep = t != int(ignore_index)
        t, p = t[keep], p[keep]
    for arr, what in ((t, "y_true"), (p, "y_pred")):
        if arr.size and (arr.min() < 0 or arr.max() >= num_classes):
            bad = arr[(arr < 0) | (arr >= num_classes)][0]
            extra = "" if ignore_index is None or what == "y_pred" else f" other than ignore_index={ignore_index}"
            raise UserError(
                f"confusion_matrix_np: {what} holds label {bad}{extra}, outside [0, {num_classes}); "
                "check num_classes / ignore_index"
            )
    return np.bincount(t * num_classes + p, minlength=num_classes * num_classes).reshape(
        num_classes, num_classes
    ).astype(np.int64)


def iou_from_confusion(cm: np.ndarray) -> tuple[np.ndarray, float]:
    """Per-class IoU (float64 ``[K]``, NaN where the union is 0) and mIoU (nanmean; NaN if every class is NaN)."""
    cm = np.asarray(cm, dtype=np.float64)
    if cm.ndim != 2 or cm.shape[0] != cm.shape[1]:
        raise UserError(f"iou_from_confusion: expected a square [K, K] matrix, got shape {cm.shape}")
    diag = np.diag(cm)
    union = cm.sum(axis=0) + cm.sum(axis=1) - diag
    iou = np.full(diag.shape, np.nan, dtype=np.float64)
    valid = union > 0
    iou[valid] = diag[valid] / union[valid]
    miou = float(iou[valid].mean()) if valid.any() else float("nan")
    return iou, miou


def _check_num_classes(num_classes: Any) -> int:
    try:
        k = int(num_classes)
    except (TypeError, ValueError):
        raise UserError(f"num_classes must be a positive integer, got {num_classes!r}") from None
    if k != num_classes or k < 1:
        raise UserError(f"num_classes must be a positive integer, got {num_classes!r}")
    return k


# --------------------------------------------------------------------------------------------------------------------
# Keras streaming metric
# --------------------------------------------------------------------------------------------------------------------
@keras.saving.register_keras_serializable(package="axial_kd_tf")
class ConfusionMatrixIoU(keras.metrics.Metric):
    """Streaming per-class IoU / mIoU from a confusion matrix accumulated over every ``update_state`` call.

    ``update_state(y_true, y_pred, sample_weight=None)``:
        ``y_true``: int labels ``[B, H, W]`` (or ``[B, H, W, 1]``); ``y_pred``: logits / probabilities
        ``[B, H, W, K]`` (``argmax`` over the last axis is taken inside). Pixels with ``y_true == ignore_index`` are
        skipped; so are any other out-of-range labels (there is no way to raise inside XLA, so validate upstream;
        :func:`confusion_matrix_np` does raise). Optional ``sample_weight`` broadcastable to ``[B, H, W]`` weights
        each pixel's count.

    ``result()`` returns a dict (Keras 3 merges dict results into the training logs)::

        {f"{prefix}miou": mIoU, f"{prefix}iou_{class_names[0]}": IoU_0, ...}

    with NaN for classes absent from both ground truth and prediction, which are excluded from the mIoU (see the module
    docstring). ``class_names`` default to ``class0, class1, ...``.

    The state is one ``[K, K]`` **float64** variable (rows = true, cols = pred). float64 holds integer counts exactly
    up to 2**53 (float32 would stop being exact above 2**24 ≈ 16.8 M pixels per cell, i.e. a few hundred
    full-resolution images); it is supported by Keras 3 ``add_variable`` on the TensorFlow backend, by XLA, and by
    ``tf.distribute`` all-reduce (the metric variable is ``ON_READ`` / ``SUM``, so replicas' matrices are summed
    when read in cross-replica context). :meth:`confusion_matrix` returns it as an int64 NumPy array.
    """

    def __init__(
        self,
        num_classes: int,
        class_names: Sequence[str] | None = None,
        prefix: str = "",
        ignore_index: int | None = None,
        name: str = "confusion_matrix_iou",
        dtype: Any = None,
    ) -> None:
        super().__init__(name=name, dtype=dtype)
        self.num_classes = _check_num_classes(num_classes)
        if class_names is None:
            names = [f"class{c}" for c in range(self.num_classes)]
        else:
            if isinstance(class_names, str):
                raise UserError(
                    f"class_names must be a list of {self.num_classes} names, got the string {class_names!r}"
                )
            names = [str(n) for n in class_names]
            if len(names) != self.num_classes:
                raise UserError(
                    f"class_names has {len(names)} entries but num_classes is {self.num_classes}; "
                    "give one name per class"
                )
            if len(set(names)) != len(names):
                raise UserError(f"class_names must be unique, got {names}")
        self.class_names = names
        self.prefix = str(prefix)
        self.ignore_index = None if ignore_index is None else int(ignore_index)
        k = self.num_classes
        self.cm = self.add_variable(shape=(k, k), initializer="zeros", dtype="float64", name="confusion_matrix")

    # -- state -------------------------------------------------------------------------------------------------------
    def update_state(self, y_true, y_pred, sample_weight=None):
        k = self.num_classes
        y_true = ops.convert_to_tensor(y_true)
        y_pred = ops.convert_to_tensor(y_pred)
        if len(y_true.shape) == len(y_pred.shape) and y_true.shape[-1] == 1:
            y_true = ops.squeeze(y_true, axis=-1)
        if len(y_pred.shape) != len(y_true.shape) + 1:
            raise ValueError(
                f"{self.name}: expected y_true [B, H, W] int labels and y_pred [B, H, W, K] logits, "
                f"got shapes {tuple(y_true.shape)} and {tuple(y_pred.shape)}"
            )
        if y_pred.shape[-1] is not None and y_pred.shape[-1] != k:
            raise ValueError(f"{self.name}: y_pred has {y_pred.shape[-1]} channels but num_classes is {k}")
        t = ops.reshape(ops.cast(y_true, "int32"), (-1,))
        p = ops.reshape(ops.cast(ops.argmax(y_pred, axis=-1), "int32"), (-1,))
        valid = ops.logical_and(t >= 0, t < k)  # also drops ignore_index unless it lies inside [0, K)
        if self.ignore_index is not None:
            valid = ops.logical_and(valid, ops.not_equal(t, self.ignore_index))
        # Invalid pixels go to an extra trash bucket K*K that is dropped afterwards (static shapes: XLA friendly).
        idx = ops.where(valid, t * k + p, k * k)
        if sample_weight is None:
            w = ops.ones_like(idx, dtype="float64")
        else:
            sw = ops.cast(ops.convert_to_tensor(sample_weight), "float64")
            if len(sw.shape) == len(y_true.shape) + 1 and sw.shape[-1] == 1:
                sw = ops.squeeze(sw, axis=-1)
            w = ops.reshape(ops.broadcast_to(sw, ops.shape(y_true)), (-1,))
        counts = ops.segment_sum(w, idx, num_segments=k * k + 1, sorted=False)
        self.cm.assign_add(ops.reshape(counts[: k * k], (k, k)))

    def reset_state(self):
        self.cm.assign(ops.zeros((self.num_classes, self.num_classes), dtype="float64"))

    # -- results -----------------------------------------------------------------------------------------------------
    def _iou(self):
        cm = ops.convert_to_tensor(self.cm)
        diag = ops.diagonal(cm)
        union = ops.sum(cm, axis=0) + ops.sum(cm, axis=1) - diag
        defined = union > 0
        iou = ops.where(defined, diag / ops.where(defined, union, ops.ones_like(union)), float("nan"))
        n_defined = ops.sum(ops.cast(defined, "float64"))
        total = ops.sum(ops.where(defined, iou, ops.zeros_like(iou)))
        miou = ops.where(n_defined > 0, total / ops.maximum(n_defined, 1.0), float("nan"))
        return iou, miou

    def result(self):
        iou, miou = self._iou()
        out = {f"{self.prefix}miou": ops.cast(miou, self.dtype)}
        for c, name in enumerate(self.class_names):
            out[f"{self.prefix}iou_{name}"] = ops.cast(iou[c], self.dtype)
        return out

    def confusion_matrix(self) -> np.ndarray:
        """The accumulated ``[K, K]`` matrix (rows = true, cols = pred) as an int64 NumPy array (eager only)."""
        return np.rint(np.asarray(ops.convert_to_numpy(self.cm), dtype=np.float64)).astype(np.int64)

    def get_config(self) -> dict:
        config = super().get_config()
        config.update(
            num_classes=self.num_classes,
            class_names=list(self.class_names),
            prefix=self.prefix,
            ignore_index=self.ignore_index,
        )
        return config

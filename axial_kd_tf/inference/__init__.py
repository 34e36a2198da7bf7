"""Inference and evaluation: per-class IoU and mIoU (the paper's metric) for a run or a saved model, tables and overlays.

The confusion matrix is accumulated over every pixel of the split, then turned into IoU (never a mean of per-image
IoUs). A model is anything :func:`load_predictor` can open: a run directory, a ``.keras`` file, a SavedModel folder or
a ``.tflite`` file.

Images of any size (docs/inference.md): :func:`sliding_window` runs any predictor over overlapping windows and blends
their logits (Gaussian or flat weights); :class:`FullImagePredictor` runs a Keras model whole-image (reflect-padded to
its size multiple), tiles the axial teacher over the student logits when its memory estimate
(:func:`estimate_teacher_mb`) exceeds a budget, and falls back to a sliding window when told to. Fixed-size models
(TFLite, a SavedModel with a fixed input) run in a sliding window at their input size.
"""

from axial_kd_tf.inference.evaluate import evaluate_split, metrics_payload, table_rows
from axial_kd_tf.inference.full_image import DEFAULT_MAX_TEACHER_MB, FullImagePredictor, full_image_predictor
from axial_kd_tf.inference.memory import (
    estimate_teacher_mb,
    network_multiple,
    student_bytes_per_pixel,
    teacher_memory_mb,
)
from axial_kd_tf.inference.predictors import (
    KerasPredictor,
    Predictor,
    SavedModelPredictor,
    TFLitePredictor,
    TimedPredictor,
    load_predictor,
    predictor_channels,
)
from axial_kd_tf.inference.tiling import (
    BLENDS,
    SlidingWindow,
    blend_weights,
    pad_to,
    sliding_window,
    tiled,
    window_starts,
    window_stride,
)

__all__ = [
    "BLENDS", "DEFAULT_MAX_TEACHER_MB", "FullImagePredictor", "KerasPredictor", "Predictor", "SavedModelPredictor",
    "SlidingWindow", "TFLitePredictor", "TimedPredictor", "blend_weights", "estimate_teacher_mb", "evaluate_split",
    "full_image_predictor", "load_predictor", "metrics_payload", "network_multiple", "pad_to", "predictor_channels",
    "sliding_window", "student_bytes_per_pixel", "table_rows", "teacher_memory_mb", "tiled", "window_starts",
    "window_stride",
]

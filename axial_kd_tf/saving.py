"""Loading ``.keras`` files written by this library in a fresh process.

Keras resolves custom classes through its registry, which is filled when their modules are imported. A model of the
zoo holds layers from ``axial_kd_tf.models.blocks`` (``Resize``, ``InputSizeCheck``, ...) and the distillation
wrapper holds the teacher layers, so both packages must be imported before ``keras.saving.load_model``.
"""

from __future__ import annotations

import os
from pathlib import Path

from axial_kd_tf.errors import UserError


def register_custom_objects() -> None:
    """Import every module that registers serializable classes (layers, zoo blocks, encoders)."""
    import axial_kd_tf.layers  # noqa: F401
    import axial_kd_tf.models  # noqa: F401


def load_model(path: str | os.PathLike) -> "keras.Model":  # noqa: F821
    """``keras.saving.load_model(path, compile=False)`` with the library's classes registered; one-line errors."""
    import keras

    register_custom_objects()
    path = Path(path)
    try:
        return keras.saving.load_model(path, compile=False)
    except Exception as exc:  # corrupt or truncated file, or a class from elsewhere
        first = str(exc).splitlines()[0] if str(exc) else ""
        raise UserError(f"cannot load '{path}': {type(exc).__name__}: {first}") from None

"""Loading ``.keras`` files written by this library in a fresh process.

Keras resolves custom classes through its registry, which is filled when their modules are imported. A model of the
zoo holds layers from ``axial_kd_tf.models.blocks`` (``Resize``, ``InputSizeCheck``, ...) and the distillation
wrapper holds the teacher layers, so both packages must be imported before ``keras.saving.load_model``.
"""

from __future__ import annotations

import os
import zipfile
import zlib
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
    _check_keras_archive(path)
    try:
        return keras.saving.load_model(path, compile=False)
    except Exception as exc:  # corrupt or truncated file, or a class from elsewhere
        first = str(exc).splitlines()[0] if str(exc) else ""
        raise UserError(f"cannot load '{path}': {type(exc).__name__}: {first}") from None


def _check_keras_archive(path: Path) -> None:
    """A ``.keras`` file is a zip archive: a truncated or corrupt one is named as such (Keras says "File not found")."""
    if path.suffix != ".keras" or not path.is_file():
        return  # a folder or another format: Keras words its own error
    why = ""
    try:
        with zipfile.ZipFile(path) as archive:
            bad = archive.testzip()  # reads every member and checks its CRC
            if bad is not None:
                why = f"member '{bad}' is damaged"
    except zipfile.BadZipFile as exc:
        # "File is not a zip file": the zip directory, written last, is missing (a cut-off copy or download)
        why = "no zip directory at its end" if "not a zip file" in str(exc) else str(exc).rstrip(".")
    except (OSError, EOFError, zlib.error, zipfile.LargeZipFile, NotImplementedError) as exc:
        why = f"{type(exc).__name__}: {exc}"
    if why:
        size = path.stat().st_size
        raise UserError(f"cannot load '{path}': the file is truncated or corrupt ({why}; {size:,} bytes); "
                        f"it is not a complete .keras archive: copy or save it again")

"""Keep TensorFlow's and LiteRT's start-up chatter out of the console; ``--verbose`` shows it.

What a plain ``import tensorflow`` prints on this stack (TF 2.21, CPU), and what silences it (measured):

* ``WARNING: All log messages before absl::InitializeLog() ...``, ``I... port.cc] oneDNN custom operations are on``
  and ``I... cudart_stub.cc] Could not find cuda drivers``, twice, during the import: absl logging before it is
  initialised, which ``TF_CPP_MIN_LOG_LEVEL`` does not reach. Only pointing file descriptor 2 elsewhere while the
  module loads silences it (:func:`import_tensorflow`).
* ``E... cuda_platform.cc] failed call to cuInit ... (303)`` (first device query), ``E... util.cc] oneDNN supports
  DT_INT32 only on platforms with AVX-512`` (first int32 op) and ``E... node_def_util.cc] NodeDef mentions attribute
  Truncate`` (TFLite conversion): TensorFlow's own C++ logging, silenced by ``TF_CPP_MIN_LOG_LEVEL=3``.
* ``INFO: Created TensorFlow Lite XNNPACK delegate for CPU.`` (LiteRT's first tensor allocation) and
  ``fully_quantize: 0, inference_type: 6, ...`` (each int8 conversion): LiteRT's own logger and the MLIR quantiser
  ignore every environment variable, so those two calls run inside :func:`native_quiet`.

``TF_ENABLE_ONEDNN_OPTS=0`` would also hide the oneDNN line, but it changes the kernels (speed and round-off), so it is
left alone. A ``TF_CPP_MIN_LOG_LEVEL`` set by the user is kept.
"""

from __future__ import annotations

import contextlib
import os
import sys
from typing import Iterator, Optional

#: The user's own setting, read before this package sets its default.
_USER_LEVEL = os.environ.get("TF_CPP_MIN_LOG_LEVEL")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


#: Set by :func:`configure` so that worker processes (``axial_kd_tf.experiments``) follow the parent's ``--verbose``.
VERBOSE_ENV = "AXIAL_KD_VERBOSE"


def configure(verbose: bool = False) -> None:
    """Before TensorFlow is imported: its C++ log level, 3 (fatal only) by default, 0 (everything) with ``verbose``;
    a level the user set in the environment wins either way."""
    if _USER_LEVEL is None:
        os.environ["TF_CPP_MIN_LOG_LEVEL"] = "0" if verbose else "3"
    os.environ[VERBOSE_ENV] = "1" if verbose else "0"


@contextlib.contextmanager
def stderr_to_devnull() -> Iterator[None]:
    """File descriptor 2 (C and C++ code write there directly) points to /dev/null inside the block."""
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError, AttributeError):  # no real descriptor 2 (an embedding host): nothing to hide
        yield
        return
    try:
        with open(os.devnull, "wb") as null:
            os.dup2(null.fileno(), 2)
        yield
    finally:
        with contextlib.suppress(OSError, ValueError, AttributeError):
            sys.stderr.flush()
        os.dup2(saved, 2)
        os.close(saved)


def native_quiet() -> contextlib.AbstractContextManager:
    """:func:`stderr_to_devnull` around a native call known to chatter (TFLite conversion, LiteRT's first
    allocation), unless ``--verbose`` was given (:data:`VERBOSE_ENV`)."""
    return contextlib.nullcontext() if os.environ.get(VERBOSE_ENV) == "1" else stderr_to_devnull()


def import_tensorflow(verbose: Optional[bool] = None) -> None:
    """Import TensorFlow and Keras once, quietly unless ``verbose`` (see the module docstring); ``None``: as the
    parent process was told (:data:`VERBOSE_ENV`), else quietly.

    A failing import is re-raised after the descriptor is restored, so its traceback is seen.
    """
    if verbose is None:
        verbose = os.environ.get(VERBOSE_ENV) == "1"
    configure(verbose)
    if "tensorflow" in sys.modules or verbose:
        return
    with stderr_to_devnull():
        import keras  # noqa: F401
        import tensorflow  # noqa: F401

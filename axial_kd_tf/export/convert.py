"""Export trained segmentation networks to SavedModel and TFLite (float32 / float16 / int8), and verify them.

Networks take NHWC float32 images and return float32 logits ``[B, H, W, num_classes]`` (several named outputs are
allowed). Spatial dims may be dynamic in Keras; exports use a caller-given fixed ``input_shape = (H, W, C)``:
the SavedModel signature is ``[None, H, W, C]``, the TFLite signature ``[1, H, W, C]``.

Every file is written atomically (:mod:`axial_kd_tf.io_utils`), and :func:`export_network` is all-or-nothing: all
conversions happen in memory first, and files are only renamed onto their final names after every variant has been
written and verified against the Keras model.

Measured pitfalls on this stack (TF 2.21 / Keras 3.15 / ai-edge-litert 2.3), each handled below:

* ``model.export(format="litert")`` silently enables ``SELECT_TF_OPS`` (Flex), so a model with a non-builtin op
  "converts" but needs the TF runtime on device. We drive ``tf.lite.TFLiteConverter`` ourselves, builtins only.
* ``TFLiteConverter.from_concrete_functions`` on a Keras 3 model leaves ``VAR_HANDLE``/``READ_VARIABLE`` ops in
  the flatbuffer (the Keras variables are not frozen) and the interpreter then fails at invoke. Going through a
  Keras ``ExportArchive`` SavedModel and ``from_saved_model`` freezes the weights properly.
* Running the exports (LiteRT interpreter, signature runner, int8 resolver): :mod:`axial_kd_tf.export.litert`.
* A network trained under ``mixed_bfloat16`` computes its convolutions in bfloat16, which has no TFLite builtin
  kernel ("Conv2D ... have no TFLite builtin kernel"). :func:`export_network` therefore always exports a float32 copy
  of the network (:func:`~axial_kd_tf.export.saved_model.float32_copy`: same layers and weights, float32 compute);
  float16 and int8 derive from it.
* Diverged weights export "successfully" and verify as equal (NaN against NaN): non-finite weights or outputs are an
  error, and nothing is written.
"""

from __future__ import annotations

import contextlib
import re
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import keras
import numpy as np
import tensorflow as tf

from axial_kd_tf.errors import UserError
from axial_kd_tf.export.litert import (
    CUSTOM_OP_PREFIX,
    SIGNATURE_KEY,
    TFLiteRunner,
    check_images,
    tflite_op_names,
    tflite_operator_sequence,
)
from axial_kd_tf.export.saved_model import (
    check_finite_weights,
    check_input_shape,
    check_model,
    float32_copy,
    float32_policy,
    keras_outputs,
    needs_float32_copy,
    write_serving_archive,
)
from axial_kd_tf.io_utils import atomic_path
from axial_kd_tf.quiet import native_quiet

VARIANTS = ("float32", "float16", "int8")

_FILE_SUFFIX = {"float32": ".tflite", "float16": "_float16.tflite", "int8": "_int8.tflite"}


class TFLiteConversionError(UserError):
    """The TFLite converter rejected the model (typically: an op without a TFLite builtin kernel)."""


# ----------------------------------------------------------------------------------------------------------------
# validation helpers
# ----------------------------------------------------------------------------------------------------------------


def _check_variant(variant: str) -> str:
    if variant not in VARIANTS:
        raise UserError(f"unknown TFLite variant {variant!r}; valid variants are: {', '.join(VARIANTS)}")
    return variant


# ----------------------------------------------------------------------------------------------------------------
# TFLite conversion
# ----------------------------------------------------------------------------------------------------------------

_MISSING_OP_RE = re.compile(r"'tf\.(\w+)' op is neither a custom op nor a flex op")


def _conversion_error(variant: str, exc: BaseException) -> TFLiteConversionError:
    text = str(exc)
    missing = sorted(set(_MISSING_OP_RE.findall(text)))
    if missing:
        return TFLiteConversionError(
            f"TFLite {variant} conversion failed: op(s) {', '.join(missing)} have no TFLite builtin kernel "
            "(Flex/SELECT_TF_OPS is deliberately disabled so exports run on the plain LiteRT runtime); "
            "replace them in the network"
        )
    first = next((ln.strip() for ln in text.splitlines() if ln.strip()), type(exc).__name__)
    return TFLiteConversionError(f"TFLite {variant} conversion failed: {first[:400]}")


def convert_tflite(
    model: keras.Model,
    input_shape: tuple[int, int, int],
    variant: str = "float32",
    calibration_images: np.ndarray | None = None,
) -> bytes:
    """Convert ``model`` to a TFLite flatbuffer with the fixed signature ``images: [1, H, W, C]``.

    Variants:

    * ``float32``: builtin ops only.
    * ``float16``: float16 weights (``Optimize.DEFAULT`` + ``supported_types=[tf.float16]``), float32 I/O.
    * ``int8``: full-integer quantisation calibrated on ``calibration_images`` (``(N, H, W, C)`` float32,
      required), ``TFLITE_BUILTINS_INT8`` kernels only, int8 input and output tensors.

    A mixed-precision model is converted through its float32 copy (:func:`float32_copy`).

    Raises :class:`UserError` for bad arguments and :class:`TFLiteConversionError` (a ``UserError``) when the
    converter rejects the model, e.g. because an op has no builtin kernel.
    """
    _check_variant(variant)
    shape = check_input_shape(input_shape)
    check_model(model, shape)
    with float32_policy():
        return _convert_tflite(float32_copy(model), shape, variant, calibration_images)


def _convert_tflite(model: keras.Model, shape: tuple[int, int, int], variant: str,
                    calibration_images: np.ndarray | None) -> bytes:
    calib: np.ndarray | None = None
    if variant == "int8":
        if calibration_images is None:
            raise UserError("int8 TFLite export needs calibration_images (N, H, W, C float32 training inputs)")
        calib = check_images(calibration_images, shape, "calibration_images")

    with tempfile.TemporaryDirectory(prefix="axial_kd_tflite_") as tmp:
        sm_dir = Path(tmp) / "saved_model"
        write_serving_archive(model, sm_dir, (1, *shape))
        converter = tf.lite.TFLiteConverter.from_saved_model(str(sm_dir), signature_keys=[SIGNATURE_KEY])
        # Builtins only, never SELECT_TF_OPS: a non-builtin op must fail here, not on the device.
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
        if variant == "float16":
            converter.optimizations = [tf.lite.Optimize.DEFAULT]
            converter.target_spec.supported_types = [tf.float16]
        elif variant == "int8":
            assert calib is not None

            def representative_dataset() -> Iterator[list[np.ndarray]]:
                for image in calib:
                    yield [image[None]]

            converter.optimizations = [tf.lite.Optimize.DEFAULT]
            converter.representative_dataset = representative_dataset
            converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
            converter.inference_input_type = tf.int8
            converter.inference_output_type = tf.int8
        try:
            with native_quiet():  # the quantiser prints "fully_quantize: 0, inference_type: 6, ..." on stderr
                model_bytes = bytes(converter.convert())
        except Exception as exc:  # ConverterError and friends: one actionable line, original chained
            raise _conversion_error(variant, exc) from exc

    custom = [op for op in tflite_op_names(model_bytes) if op.startswith(CUSTOM_OP_PREFIX)]
    if custom:  # belt and braces: the builtins-only op sets should already have refused these
        raise TFLiteConversionError(f"TFLite {variant} model contains non-builtin op(s): {', '.join(custom)}")
    return model_bytes


def verify_tflite(model: keras.Model, tflite_path: Path, images: np.ndarray, latency_repeats: int = 5) -> dict:
    """Compare a TFLite model with the Keras model on ``images`` (held-out inputs) and time it.

    Returns ``{"max_abs_diff", "argmax_agreement", "size_bytes", "mean_latency_ms", "num_verify_images",
    "resolver"}``: the worst max |diff| and the worst per-pixel argmax agreement over all outputs, the file size,
    the mean single-image latency (single-threaded, after one warm-up call, over ``latency_repeats`` calls; this
    includes the signature runner's Python overhead), and the op resolver used.
    """
    runner = TFLiteRunner(tflite_path)
    images = check_images(images, runner.input_shape, "verify images")
    got = runner.run_all(images)
    ref = keras_outputs(model, images)
    if sorted(got) != sorted(ref):
        raise UserError(f"TFLite outputs {sorted(got)} do not match the Keras model outputs {sorted(ref)}")
    max_abs_diff = 0.0
    agreement = 1.0
    for name, expected in ref.items():
        actual = got[name]
        if actual.shape != expected.shape:
            raise UserError(f"TFLite output {name!r} has shape {list(actual.shape)}, Keras {list(expected.shape)}")
        for who, values in (("Keras model", expected), ("TFLite model", actual)):
            if not np.all(np.isfinite(values)):  # NaN == NaN would otherwise "agree" 100 %
                raise UserError(f"export check failed: the {who}'s output {name!r} has NaN or infinite values on the "
                                f"verify images ({Path(tflite_path).name}); nothing was exported")
        max_abs_diff = max(max_abs_diff, float(np.max(np.abs(actual - expected))))
        agreement = min(agreement, float(np.mean(np.argmax(actual, -1) == np.argmax(expected, -1))))

    first = images[:1]
    runner(first)  # warm-up: first invoke allocates / packs weights
    repeats = max(1, int(latency_repeats))
    start = time.perf_counter()
    for _ in range(repeats):
        runner(first)
    latency_ms = (time.perf_counter() - start) * 1000.0 / repeats
    return {
        "max_abs_diff": max_abs_diff,
        "argmax_agreement": agreement,
        "size_bytes": int(Path(tflite_path).stat().st_size),
        "mean_latency_ms": float(latency_ms),
        "num_verify_images": int(len(images)),
        "resolver": runner.resolver,
    }


# ----------------------------------------------------------------------------------------------------------------
# end-to-end export
# ----------------------------------------------------------------------------------------------------------------


def export_network(
    model: keras.Model,
    out_dir: str | Path,
    input_shape: tuple[int, int, int],
    name: str = "student",
    variants: Sequence[str] = ("float32",),
    calibration_images: np.ndarray | None = None,
    verify_images: np.ndarray | None = None,
    saved_model: bool = True,
    progress: Callable[[str], None] | None = print,
) -> dict:
    """Export ``model`` to ``out_dir`` and verify every TFLite variant against the Keras model.

    Writes ``<name>_saved_model/`` (if ``saved_model``), ``<name>.tflite`` (float32), ``<name>_float16.tflite``,
    ``<name>_int8.tflite`` (as requested). All-or-nothing: conversions run in memory first, then every output is
    written to a temporary sibling, verified, and only renamed onto its final name once all succeeded.

    ``verify_images`` should be held-out inputs ``(N, H, W, C)``; if ``None``, 4 seeded uniform [0, 1) images
    are used (reported as ``"verify_source": "synthetic"``), which only checks numerical agreement.

    A mixed-precision network is exported as its float32 copy (:func:`float32_copy`), and verified against it;
    weights or outputs that are NaN or infinite are an error.

    Returns ``{"name", "input_shape", "saved_model": path or None, "variants": {variant: {"path", **verify}},
    "ops": sorted op names of the float32 model, "verify_source", "float32_copy"}``.
    """
    with float32_policy():
        return _export_network(model, out_dir, input_shape, name, variants, calibration_images, verify_images,
                               saved_model, progress)


def _export_network(
    model: keras.Model,
    out_dir: str | Path,
    input_shape: tuple[int, int, int],
    name: str,
    variants: Sequence[str],
    calibration_images: np.ndarray | None,
    verify_images: np.ndarray | None,
    saved_model: bool,
    progress: Callable[[str], None] | None,
) -> dict:
    say = progress or (lambda _msg: None)
    requested = list(dict.fromkeys(variants))  # de-duplicate, keep order
    if not requested and not saved_model:
        raise UserError(f"nothing to export: give at least one variant of {', '.join(VARIANTS)} or saved_model=True")
    for variant in requested:
        _check_variant(variant)
    if not name or any(sep in name for sep in ("/", "\\")) or name.startswith("."):
        raise UserError(f"export name must be a plain file-name stem, got {name!r}")
    shape = check_input_shape(input_shape)
    check_model(model, shape)
    copied = needs_float32_copy(model)
    model = float32_copy(model)  # bf16/fp16 convolutions have no TFLite builtin kernels
    check_finite_weights(model)
    if verify_images is None:
        verify = np.random.default_rng(0).random((4, *shape), dtype=np.float32)
        verify_source = "synthetic"
        say("[export] no verify_images given: verifying on 4 synthetic images (numerical agreement only)")
    else:
        verify = check_images(verify_images, shape, "verify_images")
        verify_source = "provided"
    out = Path(out_dir)

    # 1) Convert everything in memory: a failing conversion must not touch out_dir.
    blobs: dict[str, bytes] = {}
    for variant in requested:
        say(f"[export] converting {name} -> TFLite {variant} at {list(shape)}")
        blobs[variant] = convert_tflite(model, shape, variant, calibration_images)
    ops: list[str] = []
    op_sequence: list[str] = []
    if requested:  # the op list always describes the float32 model (comparable between networks)
        float32_blob = blobs.get("float32") or convert_tflite(model, shape, "float32")
        ops = tflite_op_names(float32_blob)
        op_sequence = tflite_operator_sequence(float32_blob)

    # 2) Write to temporary siblings and verify; ExitStack renames them all on success, deletes them on failure.
    report: dict[str, Any] = {
        "name": name,
        "input_shape": list(shape),
        "saved_model": None,
        "variants": {},
        "ops": ops,
        "op_sequence": op_sequence,
        "verify_source": verify_source,
        "float32_copy": copied,  # a mixed-precision network, exported (and verified) as its float32 copy
    }
    with contextlib.ExitStack() as stack:
        if saved_model:
            sm_final = out / f"{name}_saved_model"
            say(f"[export] writing SavedModel {sm_final}")
            sm_tmp = stack.enter_context(atomic_path(sm_final, is_dir=True))
            write_serving_archive(model, sm_tmp, (None, *shape))
            report["saved_model"] = str(sm_final)
        for variant in requested:
            final = out / f"{name}{_FILE_SUFFIX[variant]}"
            tmp = stack.enter_context(atomic_path(final))
            tmp.write_bytes(blobs[variant])
            result = verify_tflite(model, tmp, verify)
            report["variants"][variant] = {"path": str(final), **result}
            say(
                f"[export] {final.name}: {result['size_bytes']} bytes, max|diff| {result['max_abs_diff']:.3g}, "
                f"argmax agreement {result['argmax_agreement']:.4f}, {result['mean_latency_ms']:.3f} ms/image "
                f"({result['resolver']}, 1 thread)"
            )
    return report

"""The Keras side of an export: input checks, the float32 copy of a mixed-precision network, its named float32
outputs, and the SavedModel (a Keras ``ExportArchive``, from which :mod:`axial_kd_tf.export.convert` makes the
TFLite files: going through it freezes the Keras variables, which ``from_concrete_functions`` leaves as
``VAR_HANDLE`` ops).

A network trained under ``mixed_bfloat16`` computes its convolutions in bfloat16, which has no TFLite builtin kernel,
so exports start from :func:`float32_copy` (same layers and weights, float32 compute).
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import keras
import numpy as np
import tensorflow as tf

from axial_kd_tf.errors import UserError
from axial_kd_tf.export.litert import DEFAULT_OUTPUT_NAME, INPUT_NAME, SIGNATURE_KEY
from axial_kd_tf.io_utils import atomic_path

KERAS_BATCH = 8  # batch size for computing Keras reference outputs


def check_input_shape(input_shape: Sequence[int]) -> tuple[int, int, int]:
    try:
        shape = tuple(int(d) for d in input_shape)
    except (TypeError, ValueError):
        shape = ()
    if len(shape) != 3 or min(shape) < 1:
        raise UserError(f"export input_shape must be three positive ints (H, W, C), got {input_shape!r}")
    return shape  # type: ignore[return-value]


def check_model(model: keras.Model, input_shape: tuple[int, int, int]) -> None:
    """Build an unbuilt model and check that ``input_shape`` fits the model's declared input."""
    try:
        inputs = model.inputs
    except (AttributeError, ValueError):  # unbuilt Sequential / subclassed models
        inputs = None
    if inputs:
        if len(inputs) != 1:
            raise UserError(f"export supports single-input networks only; {model.name!r} has {len(inputs)} inputs")
        declared = tuple(inputs[0].shape)[1:]
        if len(declared) != 3 or any(d is not None and d != s for d, s in zip(declared, input_shape)):
            raise UserError(
                f"export input_shape {list(input_shape)} does not match the input {list(declared)} of "
                f"model {model.name!r} (None = any size)"
            )
    if not model.built:
        model(np.zeros((1, *input_shape), np.float32), training=False)


_FLOAT32_POLICY = {"module": "keras", "class_name": "DTypePolicy", "config": {"name": "float32"},
                   "registered_name": None}


def needs_float32_copy(model: keras.Model) -> bool:
    """True when any layer computes in another dtype than float32 (a mixed-precision network)."""
    for layer in model._flatten_layers(include_self=True, recursive=True):
        policy = getattr(layer, "dtype_policy", None)
        if policy is not None and getattr(policy, "compute_dtype", "float32") not in ("float32", None):
            if str(policy.compute_dtype).startswith(("bfloat16", "float16")):
                return True
    return False


def _float32_config(obj: Any) -> Any:
    """A serialized Keras config with every floating dtype policy replaced by float32."""
    if isinstance(obj, dict):
        if obj.get("class_name") in ("DTypePolicy", "FloatDTypePolicy") and isinstance(obj.get("config"), dict):
            return dict(_FLOAT32_POLICY)
        return {k: (("float32" if v in ("mixed_bfloat16", "mixed_float16", "bfloat16", "float16") else v)
                    if k == "dtype" and isinstance(v, str) else _float32_config(v)) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_float32_config(v) for v in obj]
    return obj


@contextlib.contextmanager
def float32_policy() -> Iterator[None]:
    """Run with the global dtype policy float32 (layers created inside a layer's build follow it)."""
    previous = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy("float32")
    try:
        yield
    finally:
        keras.mixed_precision.set_global_policy(previous)


def float32_copy(model: keras.Model) -> keras.Model:
    """``model`` itself when it computes in float32; otherwise a float32 copy with the same weights.

    Mixed-precision layers keep float32 variables, so the copy is exact up to the compute precision: it is what a
    float32 run with these weights computes. Rebuilt from the model's config (custom layers must be serializable,
    as for ``.keras`` saving).
    """
    if not needs_float32_copy(model):
        return model
    from axial_kd_tf.saving import register_custom_objects

    register_custom_objects()
    config = _float32_config(keras.saving.serialize_keras_object(model))
    with float32_policy():
        try:
            copy = keras.saving.deserialize_keras_object(config)
        except Exception as exc:
            raise UserError(f"cannot rebuild {model.name!r} in float32 for export: {type(exc).__name__}: "
                            f"{str(exc).splitlines()[0] if str(exc) else ''}") from None
    copy.set_weights([np.asarray(keras.ops.convert_to_numpy(w)) for w in model.weights])
    return copy


def check_finite_weights(model: keras.Model) -> None:
    """Refuse to export diverged weights (NaN/Inf): they would convert and verify as "equal" (NaN vs NaN)."""
    bad = total = 0
    for w in model.weights:
        value = np.asarray(keras.ops.convert_to_numpy(w))
        if np.issubdtype(value.dtype, np.floating):
            bad += int(np.size(value) - np.count_nonzero(np.isfinite(value)))
            total += int(np.size(value))
    if bad:
        raise UserError(f"cannot export {model.name!r}: {bad:,} of its {total:,} weights are NaN or infinite (the "
                        "training diverged; retrain with a lower train.learning_rate); nothing was exported")



def named_outputs(model: keras.Model, outputs: Any) -> dict[str, Any]:
    """Normalise a model's outputs to ``{name: tensor}``: single output -> "logits", several -> model's names."""
    if isinstance(outputs, dict):
        return dict(outputs)
    if isinstance(outputs, (list, tuple)):
        if len(outputs) == 1:
            return {DEFAULT_OUTPUT_NAME: outputs[0]}
        names = list(getattr(model, "output_names", None) or [])
        if len(names) != len(outputs) or len(set(names)) != len(names):
            names = [f"output_{i}" for i in range(len(outputs))]
        return dict(zip(names, outputs))
    return {DEFAULT_OUTPUT_NAME: outputs}


def serving_fn(model: keras.Model) -> Callable[[tf.Tensor], dict[str, tf.Tensor]]:
    def serve(images: tf.Tensor) -> dict[str, tf.Tensor]:
        outs = named_outputs(model, model(images, training=False))
        # Mixed-precision networks may emit float16; the exported contract is float32 logits.
        return {k: tf.cast(v, tf.float32) for k, v in outs.items()}

    return serve


def keras_outputs(model: keras.Model, images: np.ndarray) -> dict[str, np.ndarray]:
    """Reference outputs of the Keras model (inference mode), as float32 numpy arrays keyed like the exports."""
    serve = serving_fn(model)
    chunks: dict[str, list[np.ndarray]] = {}
    for start in range(0, len(images), KERAS_BATCH):
        for key, value in serve(tf.constant(images[start : start + KERAS_BATCH])).items():
            chunks.setdefault(key, []).append(np.asarray(value, dtype=np.float32))
    return {k: np.concatenate(v, axis=0) for k, v in chunks.items()}


def write_serving_archive(model: keras.Model, directory: Path, batch_shape: Sequence[int | None]) -> None:
    """Write a SavedModel with one ``serving_default`` signature ``images -> {name: float32}``.

    Uses Keras' ``ExportArchive`` (which tracks Keras 3 variables as TF variables), not a bare ``tf.Module``: a
    plain ``tf.function`` over a Keras 3 model converts to TFLite with unfrozen READ_VARIABLE ops that fail at
    invoke time.
    """
    archive = keras.export.ExportArchive()
    archive.track(model)
    archive.add_endpoint(
        SIGNATURE_KEY,
        serving_fn(model),
        input_signature=[tf.TensorSpec(list(batch_shape), tf.float32, name=INPUT_NAME)],
    )
    archive.write_out(str(directory), verbose=False)


def export_saved_model(model: keras.Model, path: str | Path, input_shape: tuple[int, int, int]) -> Path:
    """Export ``model`` as a TF SavedModel directory at ``path`` (atomic: replaced only when complete).

    The ``serving_default`` signature takes ``images: float32[None, H, W, C]`` and returns a dict of float32
    outputs (``"logits"`` for a single-output model, the model's output names otherwise). Reload with
    ``tf.saved_model.load(path).signatures["serving_default"](images=x)``.
    """
    shape = check_input_shape(input_shape)
    check_model(model, shape)
    final = Path(path)
    with float32_policy(), atomic_path(final, is_dir=True) as tmp:
        write_serving_archive(float32_copy(model), tmp, (None, *shape))
    return final

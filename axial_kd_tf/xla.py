"""Can XLA compile this model's training step here? (``train.jit_compile``)

XLA has no kernel for some ops on some devices: on CPU, ``ResizeNearestNeighborGrad`` (the gradient of TensorFlow's
nearest resize) is one, so a network that upsamples with it cannot train with XLA there (the zoo's decoders did until
issue 10; they now resize with keras.ops, which XLA compiles). :func:`xla_unsupported_ops` asks the XLA bridge to
lower the model's forward and backward pass to HLO without running it (about 2 s for a ResNet-18 U-Net on this CPU),
and :func:`resolve_jit_compile` turns XLA off with a one-line note when that fails.
"""

from __future__ import annotations

import re
from typing import Callable, Optional, Sequence

_NO_KERNEL = re.compile(r"No registered '(\w+)' OpKernel")
_DEVICE = re.compile(r"on (XLA_\w+)")


def xla_unsupported_ops(model, input_shape: Sequence[int]) -> Optional[str]:
    """Why XLA cannot compile ``model``'s training pass on the default device (the op names and the XLA device),
    or None when it can (or when lowering fails for another reason, which the real step will then report).

    ``input_shape`` is one image's ``(H, W, C)``. Nothing runs: no weight, statistic or random state changes.
    """
    import tensorflow as tf

    variables = model.trainable_variables

    @tf.function(jit_compile=True)
    def step(images):
        with tf.GradientTape() as tape:
            outputs = tf.nest.flatten(model(images, training=True))
            loss = tf.add_n([tf.reduce_mean(tf.cast(o, tf.float32)) for o in outputs])
        return tape.gradient(loss, variables)

    images = tf.zeros((1, *[int(d) for d in input_shape]), tf.float32)
    try:
        step.experimental_get_compiler_ir(images)(stage="hlo")
    except Exception as exc:  # the bridge's error types vary (ValueError, InvalidArgumentError, ...)
        message = str(exc)
        if "unsupported operations" not in message and not _NO_KERNEL.search(message):
            return None
        ops = sorted(set(_NO_KERNEL.findall(message))) or ["an op"]
        device = _DEVICE.search(message)
        return f"{', '.join(ops)} on {device.group(1) if device else 'this device'}"
    return None


def resolve_jit_compile(requested: bool, model, input_shape: Sequence[int],
                        progress: Callable[[str], None] = print) -> bool:
    """``requested`` unless XLA cannot compile the model here; then False, with a one-line note through ``progress``."""
    if not requested:
        return False
    why = xla_unsupported_ops(model, input_shape)
    if why is None:
        return True
    progress(f"note: XLA cannot compile {why}; training without XLA (train.jit_compile: false skips this check)")
    return False

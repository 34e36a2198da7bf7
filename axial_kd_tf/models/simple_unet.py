"""A small U-Net (Ronneberger et al., MICCAI 2015) for the quickstart and for tests.

Encoder: ``depth`` stages of two 3×3 conv-BN-ReLU and 2×2 max-pooling, doubling the width from ``base_filters``;
decoder: nearest ×2 upsampling, concatenation with the skip, two 3×3 conv-BN-ReLU; a 1×1 conv head gives logits.
Input height and width must be multiples of ``2**depth``.
"""

from __future__ import annotations

import keras

from axial_kd_tf.errors import UserError
from axial_kd_tf.models.registry import register_architecture


def _conv_block(x: keras.KerasTensor, filters: int, name: str) -> keras.KerasTensor:
    for i in (1, 2):
        x = keras.layers.Conv2D(filters, 3, padding="same", use_bias=False, name=f"{name}_conv{i}")(x)
        # PyTorch's BN defaults (momentum 0.1 = Keras 0.9, eps 1e-5), as in the paper's SMP networks: Keras' 0.99
        # leaves the moving variance dominated by its initial 1.0 after a few hundred steps.
        x = keras.layers.BatchNormalization(momentum=0.9, epsilon=1e-5, name=f"{name}_bn{i}")(x)
        x = keras.layers.ReLU(name=f"{name}_relu{i}")(x)
    return x


@register_architecture("simple_unet")
def build_simple_unet(
    num_classes: int,
    in_channels: int = 1,
    encoder: str | None = None,
    encoder_weights: str | None = None,
    base_filters: int = 16,
    depth: int = 3,
    name: str = "simple_unet",
) -> keras.Model:
    if encoder not in (None, "none"):
        raise UserError(f"model.encoder '{encoder}' is not supported by simple_unet (it has its own encoder); set model.encoder: null")
    if encoder_weights not in (None, "none"):
        raise UserError("model.encoder_weights is not available for simple_unet; set model.encoder_weights: null")
    if depth < 1 or base_filters < 1:
        raise UserError("model.options depth and base_filters must be >= 1")
    inputs = keras.Input((None, None, in_channels), name="image")
    x = inputs
    skips = []
    for d in range(depth):
        x = _conv_block(x, base_filters * 2**d, f"enc{d}")
        skips.append(x)
        x = keras.layers.MaxPooling2D(2, name=f"pool{d}")(x)
    x = _conv_block(x, base_filters * 2**depth, "bottleneck")
    for d in reversed(range(depth)):
        x = keras.layers.UpSampling2D(2, interpolation="nearest", name=f"up{d}")(x)
        x = keras.layers.Concatenate(name=f"cat{d}")([x, skips[d]])
        x = _conv_block(x, base_filters * 2**d, f"dec{d}")
    logits = keras.layers.Conv2D(num_classes, 1, name="logits")(x)
    return keras.Model(inputs, logits, name=name)

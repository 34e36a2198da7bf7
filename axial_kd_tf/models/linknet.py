"""LinkNet (Chaurasia & Culurciello, "LinkNet: Exploiting Encoder Representations for Efficient Semantic
Segmentation", VCIP 2017), as segmentation_models_pytorch 0.6.0 builds it (``decoders/linknet/{model,decoder}.py``).

* One decoder block per encoder stage: 1×1 conv-BN-ReLU ``in → in/4``; ``TransposeX2`` = ``ConvTranspose2d(in/4,
  in/4, kernel 4, stride 2, padding 1)`` *with* bias, BN, ReLU; 1×1 conv-BN-ReLU ``in/4 → out``; then the encoder
  skip is **added**. Channels with resnet34: 512→256→128→64→64→32 (``prefinal_channels=32``; the last block has no
  skip).
* Head: **1×1** conv 32→classes at the input resolution, float32 logits; input sides must be multiples of
  ``2**encoder_depth`` (32).

PyTorch's ``ConvTranspose2d(k=4, s=2, p=1)`` gives exactly 2× the input size; Keras' ``Conv2DTranspose(4, 2,
padding="same")`` crops the same one row/column on each side, so it computes the same function (same kernel taps, no
flip; a PyTorch weight ``[in, out, kh, kw]`` maps to Keras ``[kh, kw, out, in]``). Its initializers are PyTorch's
defaults (SMP's ``initialize`` only touches ``nn.Conv2d``): kaiming-uniform with ``a=√5`` over
``fan_in = out·k·k`` and a bias uniform in ``±1/√fan_in``.

With resnet34 and 5 classes: 21,772,069 trainable parameters (encoder 21,284,672, decoder 487,232, head 165).

Where SMP differs from the paper (followed here): four encoder skips are added instead of the paper's three (SMP's
docstring says so), a fifth block without a skip brings the stride-2 map to full resolution and replaces the
paper's final full-convolution/conv/full-convolution classifier by a 32-channel block and a 1×1 head.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import keras

from axial_kd_tf.errors import UserError
from axial_kd_tf.models import blocks
from axial_kd_tf.models.base import SegmentationModel
from axial_kd_tf.models.registry import register_architecture


def transpose_x2(x: Any, filters: int, use_norm: bool, name: str) -> Any:
    """SMP ``TransposeX2``: ``ConvTranspose2d(k=4, s=2, p=1)`` (bias, PyTorch-default init) → BN → ReLU."""
    fan_in = filters * 4 * 4  # PyTorch computes the fan-in of a transposed conv from weight.size(1) = out channels
    bound = 1.0 / math.sqrt(fan_in)
    x = keras.layers.Conv2DTranspose(
        filters, 4, strides=2, padding="same", use_bias=True,
        kernel_initializer=keras.initializers.VarianceScaling(1.0 / 3.0, "fan_in", "uniform"),
        bias_initializer=keras.initializers.RandomUniform(-bound, bound), name=f"{name}_conv",
    )(x)
    if use_norm:
        x = blocks.batch_norm(f"{name}_bn")(x)
    return keras.layers.ReLU(name=f"{name}_relu")(x)


def linknet_block(x: Any, skip: Any, in_channels: int, out_channels: int, use_norm: bool, name: str) -> Any:
    """SMP Linknet ``DecoderBlock``: 1×1 CBR in→in/4, TransposeX2, 1×1 CBR in/4→out, + skip."""
    mid = in_channels // 4
    x = blocks.conv_bn_relu(x, mid, 1, f"{name}_conv1", use_batchnorm=use_norm)
    x = transpose_x2(x, mid, use_norm, f"{name}_transpose")
    x = blocks.conv_bn_relu(x, out_channels, 1, f"{name}_conv2", use_batchnorm=use_norm)
    if skip is not None:
        x = keras.layers.Add(name=f"{name}_add")([x, skip])
    return x


def linknet_decoder(features: Sequence[Any], channels: Sequence[int], prefinal_channels: int = 32,
                    use_norm: bool = True, name: str = "decoder") -> Any:
    """SMP ``LinknetDecoder`` on ``features`` (``features[i]`` at stride ``2**i``; ``features[0]`` unused)."""
    feats = list(features[1:])[::-1]
    chans = list(channels[1:])[::-1] + [prefinal_channels]
    if any(f is None for f in feats):
        raise UserError("linknet adds an encoder map at every stride 2..2**encoder_depth; this encoder lacks one "
                        "(use unet or fpn with it)")
    x = feats[0]
    for i in range(len(feats)):
        skip = feats[i + 1] if i + 1 < len(feats) else None
        x = linknet_block(x, skip, int(chans[i]), int(chans[i + 1]), use_norm, f"{name}_block{i}")
    return x


@register_architecture("linknet")
def build_linknet(
    num_classes: int,
    in_channels: int = 3,
    encoder: str | None = None,
    encoder_weights: str | None = None,
    encoder_depth: int = 5,
    decoder_use_norm: bool | str = "batchnorm",
    decoder_use_batchnorm: bool | None = None,
) -> keras.Model:
    """LinkNet (Chaurasia & Culurciello, VCIP 2017) in SMP 0.6.0's configuration; see the module docstring.

    Options are SMP's: ``encoder_depth`` (3–5) and ``decoder_use_norm`` (``"batchnorm"``/True or
    ``"identity"``/False; ``decoder_use_batchnorm`` is the older alias). Input height and width must be multiples
    of ``2**encoder_depth``.
    """
    zoo = SegmentationModel("linknet", encoder, encoder_depth)
    if decoder_use_batchnorm is not None:
        decoder_use_norm = decoder_use_batchnorm
    use_norm = blocks.decoder_use_norm(decoder_use_norm, "linknet")
    return zoo.build(lambda f: linknet_decoder(f.maps, f.channels, prefinal_channels=32, use_norm=use_norm),
                     num_classes, in_channels, encoder_weights, head_kernel_size=1)

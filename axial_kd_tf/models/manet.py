"""MA-Net (Fan et al., "MA-Net: A Multi-Scale Attention Network for Liver and Tumor Segmentation", IEEE Access 2020),
as segmentation_models_pytorch 0.6.0 builds it (``decoders/manet/{model,decoder}.py``).

* **PAB** (position-wise attention block) on the deepest encoder map (resnet34: 512 channels at 1/32): 1×1 ``top``
  and ``center`` convs to ``pab_channels=64``, a 3×3 ``bottom`` conv (512→512), the ``HW×HW`` affinity
  ``center·topᵀ`` normalised by one softmax over the *whole* flattened map of each sample (SMP's
  ``softmax(sp_map.view(batch, -1))``, not a per-row softmax), ``affinity·bottom``, a residual add and a 3×3 ``out``
  conv (all convs with bias, no BN).
* **MFAB** (multi-scale fusion attention block) for every stage with a skip: 3×3 CBR (in→in) and 1×1 CBR (in→skip
  channels), ×2 upsampling, squeeze-excitation gates (reduction 16, conv biases) of the upsampled high-level map and
  of the skip, *summed*, gate the high-level map; concatenation with the skip; 2× 3×3 CBR to the stage's channels.
* the last stage (no skip) is a plain decoder block (×2, 2× 3×3 CBR); ``decoder_channels=(256, 128, 64, 32, 16)``.
* head: 3×3 conv 16→classes; input sides must be multiples of 32.

With resnet34 and 5 classes: 31,784,213 trainable parameters (encoder 21,284,672, decoder 10,498,816, head 725).

SMP quirk kept on purpose: after ``affinity·bottom`` (``[B, HW, C]``) SMP calls ``.reshape(B, C, H, W)``, which
*reinterprets* the memory rather than transposing; :class:`PositionAttention` reproduces that exact element order.
"""

from __future__ import annotations

from typing import Any, Sequence

import keras
from keras import ops

from axial_kd_tf.errors import UserError
from axial_kd_tf.models import blocks
from axial_kd_tf.models.base import SegmentationModel
from axial_kd_tf.models.registry import register_architecture


@keras.saving.register_keras_serializable(package="axial_kd_tf")
class PositionAttention(keras.layers.Layer):
    """The weight-free core of SMP's ``PABBlock``: ``[center, top, bottom] → attended`` (NHWC).

    ``center``/``top``: ``[B, H, W, P]``; ``bottom``: ``[B, H, W, C]``. Computes ``A = softmax_{all HW·HW}(center·topᵀ)``
    and ``A·bottom`` (``[B, HW, C]``), then lays the result out as PyTorch's ``reshape(B, C, H, W)`` of that buffer
    does. Tensors stay ≤ 3-D (reshape/transpose/batch-matmul/softmax, all builtin TFLite ops). The softmax runs in
    float32 (also under mixed precision).
    """

    def call(self, inputs: Sequence[Any]) -> Any:
        center, top, bottom = inputs
        height, width = blocks.spatial_size(bottom)  # ints, or tensors in a TensorFlow graph of unknown size
        channels = bottom.shape[-1]
        n = height * width
        q = ops.reshape(center, (-1, n, center.shape[-1]))              # [B, HW, P] (PyTorch x_center)
        k = ops.reshape(top, (-1, n, top.shape[-1]))                    # [B, HW, P] (PyTorch x_top, transposed)
        v = ops.reshape(bottom, (-1, n, channels))                      # [B, HW, C] (PyTorch x_bottom)
        affinity = ops.matmul(q, ops.transpose(k, (0, 2, 1)))           # [B, HW, HW]
        affinity = ops.cast(affinity, "float32")
        affinity = ops.softmax(ops.reshape(affinity, (-1, n * n)), axis=-1)
        affinity = ops.cast(ops.reshape(affinity, (-1, n, n)), v.dtype)
        out = ops.matmul(affinity, v)                                   # [B, HW, C]
        # PyTorch: out.reshape(B, C, H, W) reinterprets the [B, HW, C] buffer as [B, C, HW]; NHWC of that is:
        out = ops.transpose(ops.reshape(out, (-1, channels, n)), (0, 2, 1))
        return ops.reshape(out, (-1, height, width, channels))

    def compute_output_shape(self, input_shapes: Sequence[Sequence]) -> Sequence:
        return tuple(input_shapes[2])


def pab_block(x: Any, in_channels: int, pab_channels: int = 64, name: str = "decoder_center") -> Any:
    """SMP ``PABBlock``: 1×1 top/center convs, 3×3 bottom conv, position attention, residual, 3×3 out conv."""
    top = blocks.conv2d(x, pab_channels, 1, f"{name}_top_conv")
    center = blocks.conv2d(x, pab_channels, 1, f"{name}_center_conv")
    bottom = blocks.conv2d(x, in_channels, 3, f"{name}_bottom_conv")
    attended = PositionAttention(name=f"{name}_attention")([center, top, bottom])
    x = keras.layers.Add(name=f"{name}_add")([x, attended])
    return blocks.conv2d(x, in_channels, 3, f"{name}_out_conv")


def _squeeze_excite(x: Any, channels: int, reduced: int, name: str) -> Any:
    """SMP's MFAB gate: global average → 1×1 conv (bias) → ReLU → 1×1 conv (bias) → sigmoid, ``[B, 1, 1, C]``."""
    y = keras.layers.GlobalAveragePooling2D(keepdims=True, name=f"{name}_pool")(x)
    y = keras.layers.Conv2D(reduced, 1, name=f"{name}_conv1")(y)
    y = keras.layers.ReLU(name=f"{name}_relu")(y)
    y = keras.layers.Conv2D(channels, 1, name=f"{name}_conv2")(y)
    return keras.layers.Activation("sigmoid", name=f"{name}_sigmoid")(y)


def _upsample2(x: Any, interpolation: str, name: str) -> Any:
    # F.interpolate(scale_factor=2, mode=...) with PyTorch's default align_corners=False.
    return blocks.Resize(2, interpolation, align_corners=False, name=name)(x)


def mfab_block(x: Any, skip: Any, in_channels: int, skip_channels: int, out_channels: int, use_norm: bool = True,
               reduction: int = 16, interpolation: str = "nearest", name: str = "decoder_block") -> Any:
    """SMP ``MFABBlock``: hl 3×3 CBR + 1×1 CBR to the skip width, ×2, (SE(hl) + SE(skip)) gating, concat, 2× 3×3 CBR."""
    x = blocks.conv_bn_relu(x, in_channels, 3, f"{name}_hl_conv1", use_batchnorm=use_norm)
    x = blocks.conv_bn_relu(x, skip_channels, 1, f"{name}_hl_conv2", use_batchnorm=use_norm)
    x = _upsample2(x, interpolation, f"{name}_up")
    reduced = max(1, skip_channels // reduction)
    gate_hl = _squeeze_excite(x, skip_channels, reduced, f"{name}_se_hl")
    gate_ll = _squeeze_excite(skip, skip_channels, reduced, f"{name}_se_ll")
    gate = keras.layers.Add(name=f"{name}_gate")([gate_hl, gate_ll])
    x = keras.layers.Multiply(name=f"{name}_gated")([x, gate])
    x = keras.layers.Concatenate(name=f"{name}_concat")([x, skip])
    x = blocks.conv_bn_relu(x, out_channels, 3, f"{name}_conv1", use_batchnorm=use_norm)
    return blocks.conv_bn_relu(x, out_channels, 3, f"{name}_conv2", use_batchnorm=use_norm)


def decoder_block(x: Any, skip: Any, out_channels: int, use_norm: bool = True, interpolation: str = "nearest",
                  name: str = "decoder_block") -> Any:
    """SMP MAnet ``DecoderBlock``: ×2, optional concat with the skip, 2× 3×3 CBR."""
    x = _upsample2(x, interpolation, f"{name}_up")
    if skip is not None:
        x = keras.layers.Concatenate(name=f"{name}_concat")([x, skip])
    x = blocks.conv_bn_relu(x, out_channels, 3, f"{name}_conv1", use_batchnorm=use_norm)
    return blocks.conv_bn_relu(x, out_channels, 3, f"{name}_conv2", use_batchnorm=use_norm)


def manet_decoder(features: Sequence[Any], channels: Sequence[int], decoder_channels: Sequence[int],
                  use_norm: bool = True, pab_channels: int = 64, reduction: int = 16, interpolation: str = "nearest",
                  name: str = "decoder") -> Any:
    """SMP ``MAnetDecoder`` on ``features`` (``features[i]`` at stride ``2**i``; ``features[0]`` unused)."""
    feats = list(features[1:])[::-1]
    chans = list(channels[1:])[::-1]
    if len(decoder_channels) != len(feats):
        raise UserError(f"model.options decoder_channels for manet needs {len(feats)} entries (one per encoder "
                        f"stage), got {len(decoder_channels)}")
    head, skips = feats[0], feats[1:]
    in_channels = [chans[0]] + list(decoder_channels[:-1])
    skip_channels = chans[1:] + [0]
    x = pab_block(head, chans[0], pab_channels, name=f"{name}_center")
    for i, (in_ch, skip_ch, out_ch) in enumerate(zip(in_channels, skip_channels, decoder_channels)):
        skip = skips[i] if i < len(skips) else None
        if skip_ch > 0 and skip is not None:
            x = mfab_block(x, skip, in_ch, skip_ch, out_ch, use_norm, reduction, interpolation, f"{name}_block{i}")
        else:
            x = decoder_block(x, skip, out_ch, use_norm, interpolation, f"{name}_block{i}")
    return x


@register_architecture("manet")
def build_manet(
    num_classes: int,
    in_channels: int = 3,
    encoder: str | None = None,
    encoder_weights: str | None = None,
    encoder_depth: int = 5,
    decoder_use_norm: bool | str = "batchnorm",
    decoder_channels: Sequence[int] = (256, 128, 64, 32, 16),
    decoder_pab_channels: int = 64,
    decoder_interpolation: str = "nearest",
    decoder_use_batchnorm: bool | None = None,
) -> keras.Model:
    """MA-Net (Fan et al., IEEE Access 2020) in SMP 0.6.0's configuration; see the module docstring.

    Options are SMP's: ``encoder_depth`` (3–5, with as many ``decoder_channels``), ``decoder_use_norm``
    (``"batchnorm"``/True or ``"identity"``/False; ``decoder_use_batchnorm`` is the older alias),
    ``decoder_channels``, ``decoder_pab_channels`` and ``decoder_interpolation`` (``"nearest"`` or ``"bilinear"``).
    Input height and width must be multiples of ``2**encoder_depth``.
    """
    zoo = SegmentationModel("manet", encoder, encoder_depth)
    decoder_channels = [int(c) for c in decoder_channels]
    if len(decoder_channels) != encoder_depth:
        raise UserError(f"model.options decoder_channels for manet needs encoder_depth={encoder_depth} entries, "
                        f"got {len(decoder_channels)}")
    if decoder_interpolation not in ("nearest", "bilinear"):
        raise UserError(f"model.options decoder_interpolation must be 'nearest' or 'bilinear', got "
                        f"{decoder_interpolation!r}")
    if decoder_use_batchnorm is not None:
        decoder_use_norm = decoder_use_batchnorm
    use_norm = blocks.decoder_use_norm(decoder_use_norm, "manet")
    return zoo.build(
        lambda f: manet_decoder(f.maps, f.channels, decoder_channels, use_norm, int(decoder_pab_channels),
                                interpolation=decoder_interpolation),
        num_classes, in_channels, encoder_weights)

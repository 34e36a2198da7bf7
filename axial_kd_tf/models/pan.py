"""PAN (Li et al., "Pyramid Attention Network for Semantic Segmentation", BMVC 2018), as segmentation_models_pytorch
0.6.0 builds it (``decoders/pan/{model,decoder}.py``).

* The encoder runs at output stride 16 (``encoder_output_stride=16``: resnet34's ``layer4`` is dilated).
* **FPA** (feature pyramid attention) on the deepest map (512 ch at 1/16), ``decoder_channels=32``:
  a global-pool branch (GAP → 1×1 ConvBnRelu, broadcast back), a middle 1×1 ConvBnRelu, and a pyramid on one-channel
  maps: MaxPool 2 → 7×7 ConvBnRelu (512→1) → MaxPool 2 → 5×5 → MaxPool 2 → 3×3, 3×3; going back up,
  ``up(x3) + conv5(x2)``, ``up(·) + conv7(x1)``, ``up(·)`` (bilinear, ``align_corners=True``, to the sizes
  ``H//4``, ``H//2``, ``H``); ``out = pyramid · mid + gp``.
* **GAU** (global attention upsample) ×3 — ``gau3`` (256 ch, 1/16), ``gau2`` (128 ch, 1/8), ``gau1`` (64 ch, 1/4):
  ``up(y) + ConvBnRelu3×3(x) · sigmoid(BN(conv1×1(GAP(y))))``.
* head: 3×3 conv 32→classes and ×4 bilinear (``align_corners=True``) upsampling.

SMP's PAN ``ConvBnRelu`` keeps the conv *bias* in front of the BatchNorm (unlike ``Conv2dReLU``); with resnet34 and 5
classes this gives 21,476,972 trainable parameters (encoder 21,284,672, decoder 190,855, head 1,445).

Input size: SMP only checks divisibility by the output stride (16), but the FPA pools the 1/16 map three more times,
so a side under ``8 × 16 = 128`` pixels leaves an empty map (PyTorch's ``MaxPool2d`` raises "output size is too
small"). This port requires sides that are multiples of 16 *and* at least 128 (with a message that says so); sizes
such as 144 or 176 (1/16 map not a multiple of 8) work, the pyramid floors like PyTorch.
"""

from __future__ import annotations

from typing import Any, Sequence

import keras

from axial_kd_tf.errors import UserError
from axial_kd_tf.models import blocks
from axial_kd_tf.models.base import SegmentationModel
from axial_kd_tf.models.registry import register_architecture


def conv_bn_relu_biased(x: Any, filters: int, kernel_size: int, name: str, relu: bool = True) -> Any:
    """SMP PAN's own ``ConvBnRelu``: conv *with* bias (padding ``k//2``) → BN → optional ReLU."""
    x = blocks.conv2d(x, filters, kernel_size, f"{name}_conv", use_bias=True)
    x = blocks.batch_norm(f"{name}_bn")(x)
    return keras.layers.ReLU(name=f"{name}_relu")(x) if relu else x


def _up(x: Any, like: Any, name: str) -> Any:
    return blocks.Resize(interpolation="bilinear", align_corners=True, name=name)(x, like=like)


def fpa_block(x: Any, out_channels: int, name: str = "decoder_fpa") -> Any:
    """SMP ``FPABlock`` (bilinear, ``align_corners=True``)."""
    gp = keras.layers.GlobalAveragePooling2D(keepdims=True, name=f"{name}_branch1_pool")(x)
    gp = conv_bn_relu_biased(gp, out_channels, 1, f"{name}_branch1")
    gp = _up(gp, x, f"{name}_branch1_up")
    mid = conv_bn_relu_biased(x, out_channels, 1, f"{name}_mid")

    x1 = keras.layers.MaxPooling2D(2, 2, name=f"{name}_down1_pool")(x)
    x1 = conv_bn_relu_biased(x1, 1, 7, f"{name}_down1")
    x2 = keras.layers.MaxPooling2D(2, 2, name=f"{name}_down2_pool")(x1)
    x2 = conv_bn_relu_biased(x2, 1, 5, f"{name}_down2")
    x3 = keras.layers.MaxPooling2D(2, 2, name=f"{name}_down3_pool")(x2)
    x3 = conv_bn_relu_biased(x3, 1, 3, f"{name}_down3a")
    x3 = conv_bn_relu_biased(x3, 1, 3, f"{name}_down3b")

    # SMP resizes to (H//4, W//4) and (H//2, W//2): exactly the sizes of x2 and x1 (MaxPool floors the same way).
    x3 = _up(x3, x2, f"{name}_up3")
    x2 = conv_bn_relu_biased(x2, 1, 5, f"{name}_conv2")
    y = keras.layers.Add(name=f"{name}_add2")([x2, x3])
    y = _up(y, x1, f"{name}_up2")
    x1 = conv_bn_relu_biased(x1, 1, 7, f"{name}_conv1")
    y = keras.layers.Add(name=f"{name}_add1")([y, x1])
    y = _up(y, mid, f"{name}_up1")
    y = keras.layers.Multiply(name=f"{name}_attend")([y, mid])  # [B,H,W,1] · [B,H,W,C] (broadcast)
    return keras.layers.Add(name=f"{name}_out")([y, gp])


def gau_block(x: Any, y: Any, out_channels: int, interpolation: str = "bilinear", name: str = "decoder_gau") -> Any:
    """SMP ``GAUBlock``: ``up(y) + ConvBnRelu3×3(x) · sigmoid(BN(conv1×1(GAP(y))))`` (x low-, y high-level)."""
    y_up = blocks.Resize(interpolation=interpolation, align_corners=interpolation == "bilinear",
                         name=f"{name}_up")(y, like=x)
    x = conv_bn_relu_biased(x, out_channels, 3, f"{name}_conv2")
    g = keras.layers.GlobalAveragePooling2D(keepdims=True, name=f"{name}_conv1_pool")(y)
    g = conv_bn_relu_biased(g, out_channels, 1, f"{name}_conv1", relu=False)
    g = keras.layers.Activation("sigmoid", name=f"{name}_conv1_sigmoid")(g)
    z = keras.layers.Multiply(name=f"{name}_gated")([x, g])
    return keras.layers.Add(name=f"{name}_out")([y_up, z])


def pan_decoder(features: Sequence[Any], channels: Sequence[int], encoder_depth: int = 5, decoder_channels: int = 32,
                interpolation: str = "bilinear", name: str = "decoder") -> Any:
    """SMP ``PANDecoder``: FPA on the deepest map, then GAUs down to the stride-4 map (output at 1/4)."""
    feats, chans = list(features[2:]), list(channels[2:])
    out = fpa_block(feats[-1], decoder_channels, name=f"{name}_fpa")
    if encoder_depth == 5:
        out = gau_block(feats[2], out, decoder_channels, interpolation, f"{name}_gau3")
    if encoder_depth >= 4:
        out = gau_block(feats[1], out, decoder_channels, interpolation, f"{name}_gau2")
    return gau_block(feats[0], out, decoder_channels, interpolation, f"{name}_gau1")


@register_architecture("pan")
def build_pan(
    num_classes: int,
    in_channels: int = 3,
    encoder: str | None = None,
    encoder_weights: str | None = None,
    encoder_depth: int = 5,
    encoder_output_stride: int = 16,
    decoder_channels: int = 32,
    decoder_interpolation: str = "bilinear",
    upsampling: int = 4,
) -> keras.Model:
    """PAN (Li et al., BMVC 2018) in SMP 0.6.0's configuration; see the module docstring.

    Options are SMP's: ``encoder_depth`` (3–5), ``encoder_output_stride`` (16 or 32), ``decoder_channels``,
    ``decoder_interpolation`` (GAU upsampling, ``"bilinear"`` or ``"nearest"``) and ``upsampling`` (must be 4: the
    decoder output is at 1/4 and the logits are returned at the input resolution). Input sides must be multiples of
    the output stride and at least 8× it (the FPA pyramid halves the deepest map three times).
    """
    zoo = SegmentationModel("pan", encoder, encoder_depth)
    if encoder_output_stride not in (16, 32):
        raise UserError(f"model.options encoder_output_stride for pan must be 16 or 32, got {encoder_output_stride}")
    if decoder_interpolation not in ("bilinear", "nearest"):
        raise UserError(f"model.options decoder_interpolation must be 'bilinear' or 'nearest', got "
                        f"{decoder_interpolation!r}")
    if upsampling != 4:
        raise UserError(f"model.options upsampling for pan must be 4 (the decoder output is at 1/4), got {upsampling}")
    stride = min(encoder_output_stride, 2 ** encoder_depth)
    return zoo.build(
        lambda f: pan_decoder(f.maps, f.channels, encoder_depth, int(decoder_channels), decoder_interpolation),
        num_classes, in_channels, encoder_weights,
        output_stride=encoder_output_stride if encoder_output_stride < 2 ** encoder_depth else 32,
        min_size=8 * stride, min_size_reason=f"the feature pyramid attention pools the 1/{stride} map three more times",
        upsampling=4)

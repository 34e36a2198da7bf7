"""DeepLabV3 (Chen et al., "Rethinking Atrous Convolution for Semantic Image Segmentation", arXiv:1706.05587, 2017),
as implemented by segmentation_models_pytorch 0.6.0 (``decoders/deeplabv3/{model,decoder}.py``).

Design (SMP defaults, resnet34 encoder):

* The encoder runs at output stride 8 (``encoder_output_stride=8``): layer3 and layer4 are dilated instead of
  strided, so the 512-channel map is at 1/8 of the input.
* ASPP (512 → 256): a 1×1 Conv-BN-ReLU, three 3×3 *atrous* Conv-BN-ReLU with rates **(12, 24, 36)** (plain
  convolutions; ``decoder_aspp_separable=True`` swaps in depthwise-separable ones), and an image-pooling branch
  (global average pool → 1×1 Conv-BN-ReLU → bilinear upsampling back to the map size). The five 256-channel
  outputs are concatenated (1280) → 1×1 Conv-BN-ReLU → ``Dropout(0.5)``.
  The paper uses rates (6, 12, 18) at output stride 16 (doubled at OS 8); SMP uses (12, 24, 36) for both DeepLabV3
  and DeepLabV3+ whatever the output stride, and so do we.
* Then a 3×3 Conv(256, no bias)-BN-ReLU, and SMP's ``SegmentationHead`` with kernel 1 (256 → classes, with bias)
  and ×8 bilinear upsampling (``align_corners=True``), i.e. ×``output_stride`` unless ``upsampling`` is given.

All convolutions before a BatchNorm have no bias, exactly as in SMP: with resnet34, in_channels=3 and 5 classes the
network has 26,008,133 trainable parameters (encoder 21,284,672; decoder 4,722,176; head 1,285).

Faithfulness notes:

* **Initialisation.** SMP never calls ``initialize()`` on its DeepLab models, so their decoder and head keep
  PyTorch's default ``Conv2d`` initialisation: ``kaiming_uniform_(a=√5)`` for kernels and
  ``U(−1/√fan_in, 1/√fan_in)`` for biases — both are ``U(−1/√fan_in, 1/√fan_in)`` with PyTorch's fan_in
  (in_channels/groups · kh · kw; kh · kw for a depthwise conv). :func:`torch_default_init` re-draws the decoder
  and head weights that way after the model is built (Keras' own Glorot default would give a different scale).
  BatchNorm starts at γ=1, β=0 like PyTorch. The encoder keeps whatever :mod:`encoders` gives it. A model rebuilt
  from its *config* alone (``from_config`` without weights) gets Keras' default initialisers instead.
* **Image-pooling branch and batch size 1.** The pooling branch applies BatchNorm to a ``[B, 1, 1, C]`` tensor. With
  ``B = 1`` in training PyTorch refuses ("Expected more than 1 value per channel when training"); Keras does not
  raise but normalises a single value, so the branch outputs its BN β (a constant) for that step. Train with
  batches of 2 or more (the last partial batch of an epoch included), as SMP requires.
* The pooled vector is upsampled with ``bilinear`` / ``align_corners=False`` to the size of the ASPP input, as SMP's
  ``ASPPPooling`` does; from a 1×1 map any mode gives the same constant map. The branch works at unknown sizes.
* Dilated convolutions pad ``dilation·(k−1)/2`` on each side like PyTorch (:func:`blocks.conv2d`), so the atrous
  branches keep the map size even when the rate exceeds it (SMP does the same).
* Input height and width must be multiples of the encoder output stride (8 by default): :class:`blocks.InputSizeCheck`.
"""

from __future__ import annotations

import math
from typing import Any, Iterable, Optional, Sequence

import keras

from axial_kd_tf.errors import UserError
from axial_kd_tf.models import blocks
from axial_kd_tf.models.base import SegmentationModel
from axial_kd_tf.models.registry import register_architecture

#: Layer-name prefixes of everything the DeepLab builders add on top of the encoder (see :func:`torch_default_init`).
DECODER_PREFIXES = ("aspp", "decoder", "segmentation_head")


# --------------------------------------------------------------------------------------------------------------------
# Pieces shared with deeplabv3plus.py
# --------------------------------------------------------------------------------------------------------------------

def separable_conv2d(x: Any, filters: int, kernel_size: int, name: str, dilation_rate: int = 1,
                     use_bias: bool = False) -> Any:
    """SMP ``SeparableConv2d``: depthwise ``k×k`` conv (no bias, PyTorch padding ``dilation·(k−1)/2``), 1×1 conv.

    SMP's depthwise conv never has a bias; ``use_bias`` only applies to the pointwise conv (SMP passes
    ``bias=False`` everywhere DeepLab uses it, since a BatchNorm follows). Keras' ``SeparableConv2D`` would put a
    single bias after the pointwise conv and pad ``same``; this builds the two convs explicitly instead, so the
    parameter count is exactly SMP's: ``C_in·k² + C_in·C_out``.
    """
    pad = dilation_rate * (kernel_size - 1) // 2
    if pad:
        x = keras.layers.ZeroPadding2D(pad, name=f"{name}_pad")(x)
    x = keras.layers.DepthwiseConv2D(kernel_size, dilation_rate=dilation_rate, padding="valid", use_bias=False,
                                     name=f"{name}_depthwise")(x)
    return keras.layers.Conv2D(filters, 1, use_bias=use_bias, name=f"{name}_pointwise")(x)


def separable_conv_bn_relu(x: Any, filters: int, kernel_size: int, name: str, dilation_rate: int = 1) -> Any:
    """SMP ``ASPPSeparableConv`` / ``SeparableConv2d(bias=False)`` + BN + ReLU."""
    x = separable_conv2d(x, filters, kernel_size, f"{name}_sepconv", dilation_rate=dilation_rate)
    x = blocks.batch_norm(f"{name}_bn")(x)
    return keras.layers.ReLU(name=f"{name}_relu")(x)


def image_pooling(x: Any, filters: int, name: str) -> Any:
    """SMP ``ASPPPooling``: global average pool → 1×1 Conv-BN-ReLU → bilinear upsampling to ``x``'s size.

    Works at unknown spatial sizes (the target size is read from ``x`` when the graph runs).
    """
    y = keras.layers.GlobalAveragePooling2D(keepdims=True, name=f"{name}_gap")(x)
    y = blocks.conv_bn_relu(y, filters, 1, name)
    return blocks.Resize(interpolation="bilinear", align_corners=False, name=f"{name}_upsample")(y, like=x)


def aspp(x: Any, filters: int = 256, atrous_rates: Sequence[int] = (12, 24, 36), separable: bool = False,
         dropout: float = 0.5, name: str = "aspp") -> Any:
    """SMP ``ASPP``: [1×1 CBR, 3 atrous 3×3 CBR (plain or separable), image pooling] → concat → 1×1 CBR → Dropout.

    Every convolution is bias-free (each is followed by BatchNorm). Layer names: ``{name}_b0`` (1×1), ``{name}_b1``
    … ``{name}_b3`` (atrous, in the order of ``atrous_rates``), ``{name}_pool``, ``{name}_project``,
    ``{name}_dropout``.
    """
    branches = [blocks.conv_bn_relu(x, filters, 1, f"{name}_b0")]
    for i, rate in enumerate(atrous_rates, start=1):
        if separable:
            branches.append(separable_conv_bn_relu(x, filters, 3, f"{name}_b{i}", dilation_rate=rate))
        else:
            branches.append(blocks.conv_bn_relu(x, filters, 3, f"{name}_b{i}", dilation_rate=rate))
    branches.append(image_pooling(x, filters, f"{name}_pool"))
    y = keras.layers.Concatenate(name=f"{name}_concat")(branches)
    y = blocks.conv_bn_relu(y, filters, 1, f"{name}_project")
    return keras.layers.Dropout(dropout, name=f"{name}_dropout")(y)


def torch_default_init(model: keras.Model, prefixes: Iterable[str] = DECODER_PREFIXES) -> None:
    """Re-draw the conv kernels and biases of the layers named ``prefixes*`` with PyTorch's default ``Conv2d`` init.

    PyTorch initialises ``Conv2d`` with ``kaiming_uniform_(weight, a=√5)`` — i.e. ``U(−b, b)`` with
    ``b = √(6 / ((1 + 5)·fan_in)) = 1/√fan_in`` — and its bias with ``U(−1/√fan_in, 1/√fan_in)``, where
    ``fan_in = in_channels/groups · kh · kw`` (``kh · kw`` for a depthwise conv, whose Keras kernel shape
    ``(kh, kw, C, 1)`` would mislead Keras' own fan computation). Equivalent to
    ``VarianceScaling(scale=1/3, mode="fan_in", distribution="uniform")`` for ordinary convs. Uses Keras' global
    seed (``keras.utils.set_random_seed``) like every Keras initializer.
    """
    prefixes = tuple(prefixes)
    for layer in model.layers:
        if not layer.name.startswith(prefixes):
            continue
        if isinstance(layer, keras.layers.DepthwiseConv2D):
            kh, kw, _, _ = layer.kernel.shape
            fan_in = kh * kw
        elif isinstance(layer, keras.layers.Conv2D):
            kh, kw, cin_per_group, _ = layer.kernel.shape
            fan_in = kh * kw * cin_per_group
        else:
            continue
        bound = 1.0 / math.sqrt(fan_in)
        init = keras.initializers.RandomUniform(-bound, bound)
        layer.kernel.assign(init(tuple(layer.kernel.shape), dtype=layer.kernel.dtype))
        if layer.use_bias:
            layer.bias.assign(init(tuple(layer.bias.shape), dtype=layer.bias.dtype))


def check_deeplab_options(arch: str, encoder_output_stride: int, decoder_channels: int,
                          decoder_atrous_rates: Sequence[int], decoder_aspp_dropout: float,
                          upsampling: Optional[int]) -> tuple[int, ...]:
    """Validate the SMP options both DeepLab builders share; returns the atrous rates as a tuple of ints."""
    if encoder_output_stride not in (8, 16):
        raise UserError(f"model.options.encoder_output_stride for '{arch}' must be 8 or 16, got "
                        f"{encoder_output_stride!r}")
    if not isinstance(decoder_channels, int) or decoder_channels < 1:
        raise UserError(f"model.options.decoder_channels for '{arch}' must be a positive integer, got "
                        f"{decoder_channels!r}")
    try:
        rates = tuple(int(r) for r in decoder_atrous_rates)
    except (TypeError, ValueError):
        rates = ()
    if len(rates) != 3 or any(r < 1 for r in rates):
        raise UserError(f"model.options.decoder_atrous_rates for '{arch}' must be three positive integers, got "
                        f"{decoder_atrous_rates!r}")
    if not 0.0 <= float(decoder_aspp_dropout) < 1.0:
        raise UserError(f"model.options.decoder_aspp_dropout for '{arch}' must be in [0, 1), got "
                        f"{decoder_aspp_dropout!r}")
    if upsampling is not None and (not isinstance(upsampling, int) or upsampling < 1):
        raise UserError(f"model.options.upsampling for '{arch}' must be a positive integer, got {upsampling!r}")
    return rates


# --------------------------------------------------------------------------------------------------------------------
# DeepLabV3
# --------------------------------------------------------------------------------------------------------------------

def deeplabv3_decoder(x: Any, decoder_channels: int = 256, atrous_rates: Sequence[int] = (12, 24, 36),
                      aspp_separable: bool = False, aspp_dropout: float = 0.5) -> Any:
    """SMP ``DeepLabV3Decoder`` on the last encoder map: ASPP → 3×3 Conv(no bias)-BN-ReLU."""
    x = aspp(x, decoder_channels, atrous_rates, separable=aspp_separable, dropout=aspp_dropout, name="aspp")
    return blocks.conv_bn_relu(x, decoder_channels, 3, "decoder")


@register_architecture("deeplabv3")
def build_deeplabv3(
    num_classes: int,
    in_channels: int = 3,
    encoder: Optional[str] = None,
    encoder_weights: Optional[str] = None,
    encoder_depth: int = 5,
    encoder_output_stride: int = 8,
    decoder_channels: int = 256,
    decoder_atrous_rates: Sequence[int] = (12, 24, 36),
    decoder_aspp_separable: bool = False,
    decoder_aspp_dropout: float = 0.5,
    upsampling: Optional[int] = None,
) -> keras.Model:
    """DeepLabV3 (Chen et al. 2017, arXiv:1706.05587) as in segmentation_models_pytorch 0.6.0 (``smp.DeepLabV3``).

    Options are SMP's constructor arguments with SMP's defaults (``encoder=None`` means SMP's default
    ``"resnet34"``). ``decoder_atrous_rates`` defaults to SMP's (12, 24, 36), not the paper's (6, 12, 18).
    ``upsampling=None`` upsamples by the encoder output stride (``min(encoder_output_stride, 2**encoder_depth)``)
    so the logits come out at the input resolution. Returns a functional model ``deeplabv3_<encoder>`` mapping
    ``[B, H, W, in_channels]`` to float32 logits ``[B, H, W, num_classes]``; H and W must be multiples of the output
    stride. Decoder and head use PyTorch's default init (SMP never calls ``initialize()`` here); see the module
    docstring.
    """
    zoo = SegmentationModel("deeplabv3", encoder, encoder_depth)
    rates = check_deeplab_options("deeplabv3", encoder_output_stride, decoder_channels, decoder_atrous_rates,
                                  decoder_aspp_dropout, upsampling)
    output_stride = min(encoder_output_stride, 2 ** encoder_depth)
    return zoo.build(
        lambda f: deeplabv3_decoder(f.maps[-1], decoder_channels, rates, bool(decoder_aspp_separable),
                                    float(decoder_aspp_dropout)),
        num_classes, in_channels, encoder_weights, output_stride=encoder_output_stride, head_kernel_size=1,
        upsampling=output_stride if upsampling is None else upsampling, initialize=torch_default_init)

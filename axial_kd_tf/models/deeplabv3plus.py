"""DeepLabV3+ (Chen et al., "Encoder-Decoder with Atrous Separable Convolution for Semantic Image Segmentation",
ECCV 2018, arXiv:1802.02611), as implemented by segmentation_models_pytorch 0.6.0 (``decoders/deeplabv3``).

Design (SMP defaults, resnet34 encoder):

* The encoder runs at output stride 16 (``encoder_output_stride=16``): layer4 is dilated, so the 512-channel map
  is at 1/16.
* ASPP (512 → 256) with *depthwise-separable* atrous convolutions, rates **(12, 24, 36)**, plus the 1×1 and
  image-pooling branches, concat → 1×1 Conv-BN-ReLU → ``Dropout(0.5)`` (the ASPP of :mod:`deeplabv3`); then a 3×3
  SeparableConv-BN-ReLU and ×4 bilinear upsampling with ``align_corners=True`` (SMP's ``nn.UpsamplingBilinear2d``)
  to 1/4. The paper uses rates (6, 12, 18) at output stride 16; SMP uses (12, 24, 36), and so do we.
* Low-level features: the stride-4 encoder map (``maps[2]``, 64 channels for resnet34) → 1×1 Conv(48)-BN-ReLU.
* Concat (256 + 48 = 304) → 3×3 SeparableConv(256)-BN-ReLU → SMP ``SegmentationHead`` with kernel 1
  (256 → classes, with bias) and ×4 bilinear upsampling (``align_corners=True``).

SMP's ``SeparableConv2d`` is a depthwise conv *without* bias followed by a pointwise 1×1 conv (``bias=False`` in
every DeepLab use, as a BatchNorm follows); no convolution of the decoder has a bias. With resnet34, in_channels=3
and 5 classes the network has 22,438,485 trainable parameters (encoder 21,284,672; decoder 1,152,528; head 1,285).

As in SMP, the decoder and head keep PyTorch's *default* initialisation (SMP never calls ``initialize()`` for its
DeepLab models): :func:`deeplabv3.torch_default_init`. The image-pooling BatchNorm needs batches of 2 or more in
training (see :mod:`deeplabv3`). Input height and width must be multiples of the output stride (16 by default).

The ASPP upsampling factor is the encoder's real output stride / 4 (SMP: 4 at OS 16, 2 at OS 8 or depth 3), so the
ASPP map always meets the stride-4 map; SMP's fixed factor 2 would not at ``encoder_depth=4`` with OS 16.
"""

from __future__ import annotations

from typing import Optional, Sequence

import keras

from axial_kd_tf.errors import UserError
from axial_kd_tf.models import blocks
from axial_kd_tf.models.base import SegmentationModel
from axial_kd_tf.models.deeplabv3 import aspp, check_deeplab_options, separable_conv_bn_relu, torch_default_init
from axial_kd_tf.models.registry import register_architecture

HIGHRES_CHANNELS = 48  # "proposed by authors of paper" (SMP)


def deeplabv3plus_decoder(deep: keras.KerasTensor, low_level: keras.KerasTensor, deep_stride: int,
                          decoder_channels: int = 256, atrous_rates: Sequence[int] = (12, 24, 36),
                          aspp_separable: bool = True, aspp_dropout: float = 0.5) -> keras.KerasTensor:
    """SMP ``DeepLabV3PlusDecoder``: ASPP on ``deep`` (stride ``deep_stride``) fused with the stride-4 ``low_level``.

    Returns the 1/4-resolution fused map (``decoder_channels`` channels).
    """
    if low_level is None:
        raise UserError("deeplabv3plus needs the encoder's stride-4 map for its low-level branch; this encoder lacks "
                        "it (choose another encoder)")
    x = aspp(deep, decoder_channels, atrous_rates, separable=aspp_separable, dropout=aspp_dropout, name="aspp")
    x = separable_conv_bn_relu(x, decoder_channels, 3, "aspp_out")
    scale = deep_stride // 4
    if scale > 1:
        x = blocks.Resize(scale, "bilinear", align_corners=True, name="decoder_upsample")(x)
    low = blocks.conv_bn_relu(low_level, HIGHRES_CHANNELS, 1, "decoder_block1")
    x = keras.layers.Concatenate(name="decoder_concat")([x, low])
    return separable_conv_bn_relu(x, decoder_channels, 3, "decoder_block2")


@register_architecture("deeplabv3plus")
def build_deeplabv3plus(
    num_classes: int,
    in_channels: int = 3,
    encoder: Optional[str] = None,
    encoder_weights: Optional[str] = None,
    encoder_depth: int = 5,
    encoder_output_stride: int = 16,
    decoder_channels: int = 256,
    decoder_atrous_rates: Sequence[int] = (12, 24, 36),
    decoder_aspp_separable: bool = True,
    decoder_aspp_dropout: float = 0.5,
    upsampling: int = 4,
) -> keras.Model:
    """DeepLabV3+ (Chen et al., ECCV 2018) as in segmentation_models_pytorch 0.6.0 (``smp.DeepLabV3Plus``).

    Options are SMP's constructor arguments with SMP's defaults (``encoder=None`` means SMP's default
    ``"resnet34"``). ``decoder_atrous_rates`` defaults to SMP's (12, 24, 36), not the paper's (6, 12, 18). Returns a
    functional model ``deeplabv3plus_<encoder>`` mapping ``[B, H, W, in_channels]`` to float32 logits
    ``[B, H, W, num_classes]`` (with the default ``upsampling=4``); H and W must be multiples of the output stride.
    Decoder and head use PyTorch's default init (SMP never calls ``initialize()`` here).
    """
    zoo = SegmentationModel("deeplabv3plus", encoder, encoder_depth)
    rates = check_deeplab_options("deeplabv3plus", encoder_output_stride, decoder_channels, decoder_atrous_rates,
                                  decoder_aspp_dropout, upsampling)
    return zoo.build(
        lambda f: deeplabv3plus_decoder(f.maps[-1], f.maps[2], f.output_stride, decoder_channels, rates,
                                        bool(decoder_aspp_separable), float(decoder_aspp_dropout)),
        num_classes, in_channels, encoder_weights, output_stride=encoder_output_stride, head_kernel_size=1,
        upsampling=upsampling, initialize=torch_default_init)

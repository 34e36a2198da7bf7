"""U-Net (Ronneberger, Fischer & Brox, "U-Net: Convolutional Networks for Biomedical Image Segmentation", MICCAI 2015),
as segmentation_models_pytorch 0.6.0 builds it (``decoders/unet/{model,decoder}.py``).

* Encoder: any :func:`axial_kd_tf.models.encoders.build_encoder` backbone (default resnet34), ``encoder_depth`` 3–5.
* Decoder: one block per encoder stage, ``decoder_channels=(256, 128, 64, 32, 16)``. Each block upsamples (nearest)
  to the *exact* spatial size of the next shallower encoder map, concatenates it, and applies two 3×3 conv-BN-ReLU
  (SMP ``Conv2dReLU``: no conv bias with BN). The last block has no skip and upsamples to the input's size. Optional
  scSE attention (``decoder_attention_type="scse"``) after the concatenation and after the block.
* Center block (2× 3×3 CBR on the deepest map) only for ``vgg*`` encoders, as in SMP.
* Head: 3×3 conv 16→classes at the input resolution, float32 logits.

Because every upsampling goes to the skip's exact size, any input height and width work (SMP's Unet sets
``requires_divisible_input_shape = False``), so there is no :class:`~axial_kd_tf.models.blocks.InputSizeCheck`.

With resnet34 and 5 classes: 24,436,949 trainable parameters (encoder 21,284,672, decoder 3,151,552, head 725).

Where SMP's design differs from the paper (followed here): a pretrained classification backbone instead of the
paper's symmetric contracting path; padded 3×3 convs (the paper's are unpadded, with cropped skips); BatchNorm;
nearest upsampling instead of 2×2 up-convolutions; decoder widths 256…16 and a fifth decoder block without a skip
that brings the stride-2 map to full resolution; a 3×3 instead of a 1×1 output conv.
"""

from __future__ import annotations

from typing import Any, Optional, Sequence

import keras

from axial_kd_tf.errors import UserError
from axial_kd_tf.models import blocks
from axial_kd_tf.models.base import SegmentationModel
from axial_kd_tf.models.registry import register_architecture

_ATTENTION_TYPES = (None, "scse")
_INTERPOLATIONS = ("nearest", "bilinear")


def unet_decoder(
    features: Sequence[Any], channels: Sequence[int], decoder_channels: Sequence[int] = (256, 128, 64, 32, 16),
    use_norm: bool = True, attention_type: Optional[str] = None, center: bool = False,
    interpolation: str = "nearest", name: str = "decoder",
) -> Any:
    """SMP ``UnetDecoder`` on ``features`` (``features[i]`` at stride ``2**i``; ``features[0]`` is the input).

    Block ``i`` upsamples to the size of ``features[depth-1-i]`` and concatenates it (the input itself, ``i =
    depth-1``, only gives the size). A missing encoder map (``None``) means no skip and a plain ×2 upsampling.
    """
    depth = len(features) - 1
    if len(decoder_channels) != depth:
        raise UserError(f"model.options decoder_channels for unet needs encoder_depth={depth} entries (one per "
                        f"encoder stage), got {len(decoder_channels)}")
    x = features[-1]
    if center:
        head_channels = channels[-1]
        x = blocks.conv_bn_relu(x, head_channels, 3, f"{name}_center_conv1", use_batchnorm=use_norm)
        x = blocks.conv_bn_relu(x, head_channels, 3, f"{name}_center_conv2", use_batchnorm=use_norm)
    for i, filters in enumerate(decoder_channels):
        level = depth - 1 - i                      # stride 2**level after this block
        target = features[level]
        skip = target if level > 0 else None       # features[0] is the image: its size only
        x = blocks.unet_decoder_block(
            x, [skip] if skip is not None else None, int(filters), f"{name}_block{i}", use_batchnorm=use_norm,
            attention_type=attention_type, like=target, interpolation=interpolation,
        )
    return x


@register_architecture("unet")
def build_unet(
    num_classes: int,
    in_channels: int = 3,
    encoder: str | None = None,
    encoder_weights: str | None = None,
    encoder_depth: int = 5,
    decoder_use_norm: bool | str = "batchnorm",
    decoder_channels: Sequence[int] = (256, 128, 64, 32, 16),
    decoder_attention_type: str | None = None,
    decoder_interpolation: str = "nearest",
    decoder_use_batchnorm: bool | None = None,
) -> keras.Model:
    """U-Net (Ronneberger et al., MICCAI 2015) in SMP 0.6.0's configuration; see the module docstring.

    Options are SMP's: ``encoder_depth`` (3–5, with as many ``decoder_channels``), ``decoder_use_norm``
    (``"batchnorm"``/True or ``"identity"``/False; ``decoder_use_batchnorm`` is the older alias),
    ``decoder_channels``, ``decoder_attention_type`` (None or ``"scse"``) and ``decoder_interpolation``
    (``"nearest"`` or ``"bilinear"``). Any input height and width work.
    """
    zoo = SegmentationModel("unet", encoder, encoder_depth)
    decoder_channels = [int(c) for c in decoder_channels]
    if len(decoder_channels) != encoder_depth:
        raise UserError(f"model.options decoder_channels for unet needs encoder_depth={encoder_depth} entries, "
                        f"got {len(decoder_channels)}")
    if decoder_attention_type not in _ATTENTION_TYPES:
        raise UserError(f"model.options decoder_attention_type must be null or 'scse', got "
                        f"{decoder_attention_type!r}")
    if decoder_interpolation not in _INTERPOLATIONS:
        raise UserError(f"model.options decoder_interpolation must be 'nearest' or 'bilinear', got "
                        f"{decoder_interpolation!r}")
    if decoder_use_batchnorm is not None:
        decoder_use_norm = decoder_use_batchnorm
    use_norm = blocks.decoder_use_norm(decoder_use_norm, "unet")
    return zoo.build(
        lambda f: unet_decoder(f.maps, f.channels, decoder_channels, use_norm, decoder_attention_type,
                               center=zoo.encoder.startswith("vgg"), interpolation=decoder_interpolation),
        num_classes, in_channels, encoder_weights, check_size=False)

"""FPN for semantic segmentation: the feature pyramid of Lin et al. ("Feature Pyramid Networks for Object Detection",
CVPR 2017) with the semantic-segmentation branch of Kirillov et al.'s Panoptic FPN ("Panoptic Feature Pyramid
Networks", CVPR 2019; first shown in the COCO 2017 stuff challenge entry), as segmentation_models_pytorch 0.6.0 builds
it (``decoders/fpn/{model,decoder}.py``).

* Top-down pyramid, ``decoder_pyramid_channels=256``: ``p5`` = 1×1 conv (bias) of the deepest map; ``p4, p3, p2`` =
  ×2 upsampling (``decoder_interpolation``, default nearest) of the coarser level + 1×1 lateral conv (bias) of the
  encoder map. The pyramid levels use the last four encoder maps (strides 4–32 at ``encoder_depth=5``).
* Segmentation blocks, ``decoder_segmentation_channels=128``: per level ``n_upsamples = 3, 2, 1, 0`` (p5…p2) of
  3×3 conv (no bias) → GroupNorm(32) → ReLU → ×2 bilinear with ``align_corners=True`` (one conv when
  ``n_upsamples`` is 0), so that all four reach p2's resolution.
* Merge by ``"add"`` (or ``"cat"``, 4×128 channels), ``Dropout2d(0.2)`` (``SpatialDropout2D``: whole channels).
* Head: 1×1 conv 128→classes, ×4 bilinear (``align_corners=True``) to the input resolution, float32 logits. Input
  sides must be multiples of ``2**encoder_depth`` (32).

With resnet34 and 5 classes: 23,155,909 trainable parameters (encoder 21,284,672, decoder 1,870,592, head 645).

Where SMP differs from the papers (followed here): the pyramid has no 3×3 output convs on the merged levels (FPN's
anti-aliasing convs) and no p6; the segmentation branch's upsamplings use ``align_corners=True``; the merged map goes
through spatial dropout, and the head is a plain 1×1 conv followed by bilinear upsampling.
"""

from __future__ import annotations

from typing import Any, Optional, Sequence

import keras

from axial_kd_tf.errors import UserError
from axial_kd_tf.models import blocks
from axial_kd_tf.models.base import SegmentationModel
from axial_kd_tf.models.registry import register_architecture

GN_GROUPS = 32
GN_EPSILON = 1e-5  # PyTorch's nn.GroupNorm default


def conv3x3_gn_relu(x: Any, filters: int, upsample: bool, name: str) -> Any:
    """SMP ``Conv3x3GNReLU``: 3×3 conv (no bias) → GroupNorm(32) → ReLU → optional ×2 bilinear (align_corners)."""
    x = blocks.conv2d(x, filters, 3, f"{name}_conv", use_bias=False)
    x = keras.layers.GroupNormalization(GN_GROUPS, epsilon=GN_EPSILON, name=f"{name}_gn")(x)
    x = keras.layers.ReLU(name=f"{name}_relu")(x)
    if upsample:
        x = blocks.Resize(2, "bilinear", align_corners=True, name=f"{name}_up")(x)
    return x


def segmentation_block(x: Any, filters: int, n_upsamples: int, name: str) -> Any:
    """SMP FPN ``SegmentationBlock``: ``max(1, n_upsamples)`` Conv3x3GNReLU, each followed by ×2 if upsampling."""
    x = conv3x3_gn_relu(x, filters, bool(n_upsamples), f"{name}_0")
    for i in range(1, n_upsamples):
        x = conv3x3_gn_relu(x, filters, True, f"{name}_{i}")
    return x


def fpn_block(x: Any, skip: Any, pyramid_channels: int, interpolation: str, name: str) -> Any:
    """SMP ``FPNBlock``: ×2 upsampling (``F.interpolate`` default ``align_corners=False``) + 1×1 lateral conv."""
    x = blocks.Resize(2, interpolation, align_corners=False, name=f"{name}_up")(x)
    skip = blocks.conv2d(skip, pyramid_channels, 1, f"{name}_skip_conv")
    return keras.layers.Add(name=f"{name}_add")([x, skip])


def fpn_decoder(
    features: Sequence[Any], channels: Sequence[int], pyramid_channels: int = 256, segmentation_channels: int = 128,
    dropout: float = 0.2, merge_policy: str = "add", interpolation: str = "nearest", name: str = "decoder",
) -> Any:
    """SMP ``FPNDecoder`` on the last four ``features`` (``features[i]`` at stride ``2**i``)."""
    c2, c3, c4, c5 = features[-4:]
    if any(c is None for c in (c2, c3, c4, c5)):
        raise UserError("fpn needs the encoder's last four maps; this encoder lacks one of them")
    p5 = blocks.conv2d(c5, pyramid_channels, 1, f"{name}_p5")
    p4 = fpn_block(p5, c4, pyramid_channels, interpolation, f"{name}_p4")
    p3 = fpn_block(p4, c3, pyramid_channels, interpolation, f"{name}_p3")
    p2 = fpn_block(p3, c2, pyramid_channels, interpolation, f"{name}_p2")
    pyramid = [
        segmentation_block(p, segmentation_channels, n_up, f"{name}_seg{i}")
        for i, (p, n_up) in enumerate(zip((p5, p4, p3, p2), (3, 2, 1, 0)))
    ]
    if merge_policy == "add":
        x = keras.layers.Add(name=f"{name}_merge")(pyramid)
    else:
        x = keras.layers.Concatenate(name=f"{name}_merge")(pyramid)
    if dropout:
        x = keras.layers.SpatialDropout2D(dropout, name=f"{name}_dropout")(x)
    return x


@register_architecture("fpn")
def build_fpn(
    num_classes: int,
    in_channels: int = 3,
    encoder: str | None = None,
    encoder_weights: str | None = None,
    encoder_depth: int = 5,
    decoder_pyramid_channels: int = 256,
    decoder_segmentation_channels: int = 128,
    decoder_merge_policy: str = "add",
    decoder_dropout: float = 0.2,
    decoder_interpolation: str = "nearest",
    upsampling: Optional[int] = None,
) -> keras.Model:
    """FPN (Lin et al., CVPR 2017; Kirillov et al.'s panoptic FPN branch) in SMP 0.6.0's configuration; see the
    module docstring.

    Options are SMP's: ``encoder_depth`` (3–5), ``decoder_pyramid_channels``, ``decoder_segmentation_channels`` (a
    multiple of 32, for GroupNorm(32)), ``decoder_merge_policy`` (``"add"`` or ``"cat"``), ``decoder_dropout``,
    ``decoder_interpolation`` (``"nearest"`` or ``"bilinear"``, the pyramid's ×2) and ``upsampling`` (the head's
    factor; it must bring the finest pyramid level back to the input size, so it defaults to ``2**(depth-3)``:
    SMP's 4 at depth 5). Input height and width must be multiples of ``2**encoder_depth``.
    """
    zoo = SegmentationModel("fpn", encoder, encoder_depth)
    if decoder_merge_policy not in ("add", "cat"):
        raise UserError(f"model.options decoder_merge_policy must be 'add' or 'cat', got {decoder_merge_policy!r}")
    if decoder_interpolation not in ("nearest", "bilinear"):
        raise UserError(f"model.options decoder_interpolation must be 'nearest' or 'bilinear', got "
                        f"{decoder_interpolation!r}")
    if int(decoder_segmentation_channels) % GN_GROUPS:
        raise UserError(f"model.options decoder_segmentation_channels must be a multiple of {GN_GROUPS} "
                        f"(GroupNorm({GN_GROUPS})), got {decoder_segmentation_channels}")
    if not 0.0 <= float(decoder_dropout) < 1.0:
        raise UserError(f"model.options decoder_dropout must be in [0, 1), got {decoder_dropout}")
    finest_stride = 2 ** (encoder_depth - 3)  # stride of p2, the level the segmentation blocks end at
    if upsampling is None:
        upsampling = finest_stride
    if int(upsampling) != finest_stride:
        raise UserError(f"model.options upsampling for fpn with encoder_depth={encoder_depth} must be "
                        f"{finest_stride} (the stride of the finest pyramid level), got {upsampling}")
    return zoo.build(
        lambda f: fpn_decoder(f.maps, f.channels, int(decoder_pyramid_channels), int(decoder_segmentation_channels),
                              float(decoder_dropout), decoder_merge_policy, decoder_interpolation),
        num_classes, in_channels, encoder_weights, head_kernel_size=1, upsampling=int(upsampling))

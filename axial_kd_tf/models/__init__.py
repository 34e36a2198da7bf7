"""Segmentation networks behind a registry: one architecture per module, looked up by name.

``build_network(arch, ...)`` returns a functional Keras model mapping ``[B, H, W, in_channels]`` images to
``[B, H, W, num_classes]`` logits (no softmax), ready for :func:`axial_kd_tf.distill.build_distillation_model`.
"""

from __future__ import annotations

from axial_kd_tf.models.registry import available_architectures, build_network, register_architecture
# Importing a module registers its architecture(s).
from axial_kd_tf.models import (  # noqa: F401,E402
    deeplabv3,
    deeplabv3plus,
    fpn,
    linknet,
    manet,
    pan,
    pspnet,
    simple_unet,
    unet,
    unetplusplus,
)

ZOO = ("unet", "unetplusplus", "manet", "linknet", "fpn", "pspnet", "pan", "deeplabv3", "deeplabv3plus")

#: Shrunken variants of the nine architectures (with ``encoder="resnet18"``) for smoke tests and benchmarks' small
#: modes: the same blocks as the defaults (nearest/bilinear resizes, transposed convs, PAB, PSP, FPA/GAU, dilated ASPP)
#: at encoder depth 3–4 with narrow decoders. They take 32² inputs, PAN 64² (its pyramid pools the 1/8 map 3 times).
TINY_OPTIONS: dict[str, dict] = {
    "unet": dict(encoder_depth=3, decoder_channels=(16, 8, 8)),
    "unetplusplus": dict(encoder_depth=3, decoder_channels=(16, 8, 8)),
    "manet": dict(encoder_depth=3, decoder_channels=(16, 8, 8), decoder_pab_channels=8),
    "linknet": dict(encoder_depth=3),
    "fpn": dict(encoder_depth=4, decoder_pyramid_channels=32, decoder_segmentation_channels=32),
    "pspnet": dict(encoder_depth=3, psp_out_channels=32),
    "pan": dict(encoder_depth=3, decoder_channels=8),
    "deeplabv3": dict(encoder_depth=4, encoder_output_stride=8, decoder_channels=32),
    "deeplabv3plus": dict(encoder_depth=4, encoder_output_stride=8, decoder_channels=32),
}

__all__ = ["TINY_OPTIONS", "ZOO", "available_architectures", "build_network", "register_architecture"]

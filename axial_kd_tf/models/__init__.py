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

__all__ = ["ZOO", "available_architectures", "build_network", "register_architecture"]

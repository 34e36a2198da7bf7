"""Segmentation networks behind a registry: one architecture per module, looked up by name.

``build_network(arch, ...)`` returns a functional Keras model mapping ``[B, H, W, in_channels]`` images to
``[B, H, W, num_classes]`` logits (no softmax), ready for :func:`axial_kd_tf.distill.build_distillation_model`.
"""

from __future__ import annotations

from axial_kd_tf.models.registry import available_architectures, build_network, register_architecture
from axial_kd_tf.models import simple_unet as _simple_unet  # noqa: F401  (registers "simple_unet")

__all__ = ["available_architectures", "build_network", "register_architecture"]

"""Networks from the `segmentation-models` package (qubvel, 1.0.1), wrapped like native ones.

It runs on Keras 3 only when ``SM_FRAMEWORK=tf.keras`` is set before its first import (done here). It offers four
of the paper's nine architectures (Unet, FPN, Linknet, PSPNet) with that package's backbones, which gives users its
pretrained encoders. Its densenet encoders fail on this stack. Networks are built with ``activation=None`` so they
output logits, as the distillation loss needs.
"""

from __future__ import annotations

import os
from typing import Any

import keras

from axial_kd_tf.errors import UserError

SM_ARCHS = ("unet", "fpn", "linknet", "pspnet")


def import_sm() -> Any:
    """Import segmentation_models on the Keras 3 code path (``SM_FRAMEWORK=tf.keras``)."""
    os.environ.setdefault("SM_FRAMEWORK", "tf.keras")
    if os.environ["SM_FRAMEWORK"] != "tf.keras":
        raise UserError("SM_FRAMEWORK must be 'tf.keras' for segmentation_models on Keras 3; unset it or set it so")
    try:
        import segmentation_models as sm
    except ImportError:
        raise UserError("model.library 'segmentation_models' needs: pip install segmentation-models==1.0.1") from None
    return sm


def build_sm_network(
    arch: str,
    encoder: str | None = None,
    num_classes: int = 5,
    in_channels: int = 3,
    encoder_weights: str | None = None,
    **options: Any,
) -> keras.Model:
    """``sm.Unet`` / ``sm.FPN`` / ``sm.Linknet`` / ``sm.PSPNet`` with logits output and any input size it allows."""
    sm = import_sm()
    key = arch.lower()
    if key not in SM_ARCHS:
        raise UserError(f"model.arch '{arch}' is not in segmentation_models; choose one of: {', '.join(SM_ARCHS)}")
    backbone = encoder or "resnet18"
    if backbone not in sm.get_available_backbone_names():
        raise UserError(f"model.encoder '{backbone}' is not a segmentation_models backbone; see sm.get_available_backbone_names()")
    if backbone.startswith("densenet"):
        raise UserError(f"model.encoder '{backbone}': segmentation_models' densenet encoders fail on Keras 3; pick another")
    builder = {"unet": sm.Unet, "fpn": sm.FPN, "linknet": sm.Linknet, "pspnet": sm.PSPNet}[key]
    # PSPNet needs a fixed input size divisible by 48 (its pooling pyramid); the others take any multiple of 32.
    size = options.pop("input_size", 384 if key == "pspnet" else None)
    try:
        return builder(
            backbone_name=backbone, input_shape=(size, size, in_channels), classes=num_classes, activation=None,
            encoder_weights=encoder_weights, **options,
        )
    except TypeError as exc:
        raise UserError(f"model.options for segmentation_models {arch} are invalid: {exc}") from None
    except ValueError as exc:
        raise UserError(f"segmentation_models {arch}/{backbone}: {str(exc).splitlines()[0]}") from None

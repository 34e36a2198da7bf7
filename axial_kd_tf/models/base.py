"""What every zoo architecture shares, as segmentation_models_pytorch 0.6.0's ``SegmentationModel`` does: the input,
the input-size check, the encoder, the segmentation head, the initialisation and the model's name.

An architecture module keeps its decoder and a registered builder that creates a :class:`SegmentationModel`, checks
its own options and calls :meth:`SegmentationModel.build` with its decoder (see ``docs/zoo_contract.md``).
"""

from __future__ import annotations

from typing import Any, Callable, Optional

import keras

from axial_kd_tf.errors import UserError
from axial_kd_tf.models import blocks
from axial_kd_tf.models.encoders import Features, build_encoder

DEFAULT_ENCODER = "resnet34"  # SMP's default encoder_name


class SegmentationModel:
    """Builder of one zoo network: ``image → [size check] → encoder → decoder → head → float32 logits``.

    The constructor applies SMP's default encoder and checks ``encoder_depth`` (3, 4 or 5 for every architecture of
    the zoo) before the architecture checks its own options, some of which depend on the depth. ``encoder`` is then
    the encoder's name.
    """

    def __init__(self, arch: str, encoder: Optional[str], encoder_depth: int) -> None:
        if encoder_depth not in (3, 4, 5):
            raise UserError(f"model.options encoder_depth for {arch} must be 3, 4 or 5, got {encoder_depth!r}")
        self.arch = arch
        self.encoder = encoder or DEFAULT_ENCODER
        self.depth = encoder_depth

    def build(
        self, decoder: Callable[[Features], Any], num_classes: int, in_channels: int, encoder_weights: Optional[str],
        *, output_stride: int = 32, check_size: bool = True, min_size: int = 0, min_size_reason: str = "",
        head_kernel_size: int = 3, upsampling: int = 1,
        initialize: Callable[[keras.Model], None] = blocks.smp_initialize_decoder,
    ) -> keras.Model:
        """The functional model ``<arch>_<encoder>`` mapping ``[B, H, W, in_channels]`` images to float32 logits.

        Args:
            decoder: maps the encoder's :class:`~axial_kd_tf.models.encoders.Features` to the head's input.
            output_stride: the encoder's (32, or 16 / 8 for a dilated one; see ``build_encoder``).
            check_size: input height and width must be multiples of the encoder's real output stride
                (``min(output_stride, 2**encoder_depth)``) and at least ``min_size`` (``min_size_reason`` says why):
                a :class:`~axial_kd_tf.models.blocks.InputSizeCheck` named ``input_size_check``.
            head_kernel_size, upsampling: SMP's ``SegmentationHead``.
            initialize: applied to the built model (SMP's ``initialize_decoder`` unless the architecture differs).
        """
        inputs = keras.Input((None, None, in_channels), name="image")
        x = inputs
        if check_size:
            x = blocks.InputSizeCheck(min(output_stride, 2 ** self.depth), self.arch, minimum=min_size,
                                      reason=min_size_reason, name="input_size_check")(x)
        features = build_encoder(self.encoder, x, weights=encoder_weights, depth=self.depth,
                                 output_stride=output_stride)
        logits = blocks.segmentation_head(decoder(features), num_classes, kernel_size=head_kernel_size,
                                          upsampling=upsampling)
        model = keras.Model(inputs, logits, name=f"{self.arch}_{self.encoder}")
        initialize(model)
        return model

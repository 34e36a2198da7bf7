"""Shrunken variants of the nine zoo architectures for tests that compile or cross backends (not a test module).

The same blocks as the defaults (nearest/bilinear resizes, transposed convs, PAB, PSP, FPA/GAU, dilated ASPP) on a
resnet18 encoder at depth 3–4 with narrow decoders: XLA compiles them in seconds, and they run at 32² (PAN: 64²).
"""

from __future__ import annotations

from typing import Any

K = 3  # classes

TINY: dict[str, dict[str, Any]] = {
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
SIZE = {"pan": 64}  # PAN's feature pyramid pools the 1/8 map three more times; the rest take 32


def tiny_size(arch: str) -> int:
    """Input height and width for ``arch``'s tiny variant."""
    return SIZE.get(arch, 32)


def build_tiny(arch: str, in_channels: int = 1) -> Any:
    """``arch``'s tiny variant (resnet18, :data:`K` classes) on whichever Keras backend is running."""
    from axial_kd_tf.models import build_network

    return build_network(arch, encoder="resnet18", num_classes=K, in_channels=in_channels, **TINY[arch])

"""UNet++ (Zhou, Rahman Siddiquee, Tajbakhsh & Liang, "UNet++: A Nested U-Net Architecture for Medical Image
Segmentation", DLMIA 2018), as segmentation_models_pytorch 0.6.0 builds it (``decoders/unetplusplus/decoder.py``).

* Nested dense decoder nodes ``x_{depth}_{layer}``: node ``x_0_l`` (the main path) has ``decoder_channels[l]``
  channels, an inner node ``x_d_l`` (``d > 0``) has the channels of the encoder map it sits at. Every node is SMP's
  Unet ``DecoderBlock``: ×2 nearest upsampling of its predecessor ``x_d_{l-1}`` (or of an encoder map on the first
  diagonal), concatenation with all nodes ``x_k_l`` (``k > d``) of its level and the encoder skip, 2× 3×3 conv-BN-ReLU.
  With ``encoder_depth=5`` that is 11 blocks; with resnet34 (channels in→out): x_0_0 768→256, x_0_1 512→128,
  x_1_1 384→128, x_0_2 320→64, x_1_2 256→64, x_2_2 192→64, x_0_3 320→32, x_1_3 256→64, x_2_3 192→64,
  x_3_3 128→64, x_0_4 32→16 (no skip).
* Head: 3×3 conv 16→classes at the input resolution, float32 logits; input sides must be multiples of
  ``2**encoder_depth`` (32).

With resnet34 and 5 classes: 26,079,189 trainable parameters (encoder 21,284,672, decoder 4,793,792, head 725).

Where SMP differs from the paper (followed here): a pretrained classification backbone as the ``X^{i,0}`` column;
the inner nodes take the width of their encoder level while the outer column uses ``decoder_channels``; only the
final node feeds the head (no deep supervision / model pruning); nearest upsampling and BatchNorm. SMP builds a
center block for ``vgg*`` encoders but never calls it in ``forward``, so it is left out here.
"""

from __future__ import annotations

from typing import Any, Optional, Sequence

import keras

from axial_kd_tf.errors import UserError
from axial_kd_tf.models import blocks
from axial_kd_tf.models.base import SegmentationModel
from axial_kd_tf.models.registry import register_architecture


def unetplusplus_decoder(
    features: Sequence[Any], channels: Sequence[int], decoder_channels: Sequence[int] = (256, 128, 64, 32, 16),
    use_norm: bool = True, attention_type: Optional[str] = None, name: str = "decoder",
) -> Any:
    """SMP ``UnetPlusPlusDecoder`` on ``features`` (``features[i]`` at stride ``2**i``; ``features[0]`` unused)."""
    n_blocks = len(features) - 1
    decoder_channels = list(decoder_channels)
    if len(decoder_channels) < n_blocks:
        raise UserError(f"model.options decoder_channels for unetplusplus needs encoder_depth={n_blocks} entries, "
                        f"got {len(decoder_channels)}")
    decoder_channels = decoder_channels[-n_blocks:]  # SMP keeps the last n_blocks
    feats = list(features[1:])[::-1]                 # deepest first
    enc_channels = list(channels[1:])[::-1]
    if any(f is None for f in feats):
        raise UserError("unetplusplus needs an encoder map at every stride 2..2**encoder_depth; this encoder lacks "
                        "one (use unet or fpn with it)")
    skip_channels = enc_channels[1:] + [0]
    depth = n_blocks - 1

    def block(x: Any, skips: Optional[list], depth_idx: int, layer_idx: int) -> Any:
        filters = decoder_channels[layer_idx] if depth_idx == 0 else skip_channels[layer_idx]
        return blocks.unet_decoder_block(x, skips, int(filters), f"{name}_x_{depth_idx}_{layer_idx}",
                                         use_batchnorm=use_norm, attention_type=attention_type)

    dense: dict[str, Any] = {}
    for layer_idx in range(n_blocks - 1):
        for depth_idx in range(depth - layer_idx):
            if layer_idx == 0:
                dense[f"x_{depth_idx}_{depth_idx}"] = block(feats[depth_idx], [feats[depth_idx + 1]], depth_idx,
                                                            depth_idx)
            else:
                level = depth_idx + layer_idx
                cat = [dense[f"x_{idx}_{level}"] for idx in range(depth_idx + 1, level + 1)] + [feats[level + 1]]
                dense[f"x_{depth_idx}_{level}"] = block(dense[f"x_{depth_idx}_{level - 1}"], cat, depth_idx, level)
    return block(dense[f"x_0_{depth - 1}"], None, 0, depth)


@register_architecture("unetplusplus")
def build_unetplusplus(
    num_classes: int,
    in_channels: int = 3,
    encoder: str | None = None,
    encoder_weights: str | None = None,
    encoder_depth: int = 5,
    decoder_use_norm: bool | str = "batchnorm",
    decoder_channels: Sequence[int] = (256, 128, 64, 32, 16),
    decoder_attention_type: str | None = None,
    decoder_use_batchnorm: bool | None = None,
) -> keras.Model:
    """UNet++ (Zhou et al., DLMIA 2018) in SMP 0.6.0's configuration; see the module docstring.

    Options are SMP's: ``encoder_depth`` (3–5; the last ``encoder_depth`` of ``decoder_channels`` are used),
    ``decoder_use_norm`` (``"batchnorm"``/True or ``"identity"``/False; ``decoder_use_batchnorm`` is the older
    alias), ``decoder_channels`` and ``decoder_attention_type`` (None or ``"scse"``). Input height and width must be
    multiples of ``2**encoder_depth``.
    """
    zoo = SegmentationModel("unetplusplus", encoder, encoder_depth)
    decoder_channels = [int(c) for c in decoder_channels]
    if len(decoder_channels) < encoder_depth:
        raise UserError(f"model.options decoder_channels for unetplusplus needs encoder_depth={encoder_depth} "
                        f"entries, got {len(decoder_channels)}")
    if decoder_attention_type not in (None, "scse"):
        raise UserError(f"model.options decoder_attention_type must be null or 'scse', got "
                        f"{decoder_attention_type!r}")
    if decoder_use_batchnorm is not None:
        decoder_use_norm = decoder_use_batchnorm
    use_norm = blocks.decoder_use_norm(decoder_use_norm, "unetplusplus")
    return zoo.build(
        lambda f: unetplusplus_decoder(f.maps, f.channels, decoder_channels, use_norm, decoder_attention_type),
        num_classes, in_channels, encoder_weights)

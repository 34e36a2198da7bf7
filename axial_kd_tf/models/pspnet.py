"""PSPNet (Zhao et al., "Pyramid Scene Parsing Network", CVPR 2017), as segmentation_models_pytorch 0.6.0 builds it.

SMP's variant (``decoders/pspnet/{model,decoder}.py``):

* the encoder runs only to ``encoder_depth=3`` (output stride 8; resnet34's 128-channel ``layer2`` map);
* the pyramid pooling module pools that map adaptively to 1×1, 2×2, 3×3 and 6×6, maps each to ``C/4`` channels with a
  1×1 Conv-BN-ReLU (the 1×1 bin has no BatchNorm, so its conv has a bias), upsamples each back bilinearly with
  ``align_corners=True`` and concatenates ``[p1, p2, p3, p6, x]`` (``2C`` channels);
* a 1×1 Conv-BN-ReLU to ``psp_out_channels=512`` and ``Dropout2d(0.2)``;
* the head: 3×3 conv to the classes and ×8 bilinear (``align_corners=True``) upsampling.

With resnet34 and 5 classes the network has 1,519,653 trainable parameters (encoder stages used: 1,347,904; decoder
148,704; head 23,045). SMP's own ``parameters()`` count is 21,456,421 because its ResNet encoder keeps the unused
``layer3``/``layer4``; this port builds only the stages it uses.

:class:`AdaptiveAvgPool2D` reproduces PyTorch's ``nn.AdaptiveAvgPool2d`` bins exactly (bin ``i`` of ``s`` covers
``floor(i·n/s) .. ceil((i+1)·n/s)``, overlapping when ``n`` is not a multiple of ``s``) for any, including unknown,
input size, with ops that convert to builtin TFLite kernels.
"""

from __future__ import annotations

from typing import Any, Sequence

import keras
from keras import ops

from axial_kd_tf.errors import UserError
from axial_kd_tf.models import blocks
from axial_kd_tf.models.base import SegmentationModel
from axial_kd_tf.models.registry import register_architecture


def adaptive_pool_matrix(n: Any, size: int, dtype: Any = "float32") -> Any:
    """``[size, n]`` averaging matrix of PyTorch's adaptive average pooling along one axis of length ``n``.

    Row ``i`` is ``1/len`` on ``[floor(i·n/size), ceil((i+1)·n/size))`` and 0 elsewhere. ``n`` is an int, or a
    scalar int32 tensor where a TensorFlow graph has an unknown size.
    """
    if not isinstance(n, int):
        n = ops.cast(n, "int32")
    i = ops.arange(size, dtype="int32")
    start = ops.floor_divide(i * n, size)
    end = ops.floor_divide((i + 1) * n + size - 1, size)
    pos = ops.arange(n, dtype="int32")
    inside = ops.logical_and(pos[None, :] >= start[:, None], pos[None, :] < end[:, None])
    return ops.cast(inside, dtype) / ops.cast(end - start, dtype)[:, None]


@keras.saving.register_keras_serializable(package="axial_kd_tf")
class AdaptiveAvgPool2D(keras.layers.Layer):
    """PyTorch ``nn.AdaptiveAvgPool2d((size, size))`` for NHWC tensors of any (also unknown) height and width.

    The bins are rectangles, so the pooling is separable: ``out = P_h · x · P_wᵀ`` with the averaging matrices of
    :func:`adaptive_pool_matrix`, computed from the static shape (from the runtime one in a TensorFlow graph of
    unknown size): two batched matmuls and transposes, all ≤ 4-D (TFLite ``BATCH_MATMUL``/``TRANSPOSE``; ``size=1``
    is a plain ``MEAN``).
    """

    def __init__(self, output_size: int, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.output_size = int(output_size)
        if self.output_size < 1:
            raise ValueError(f"output_size must be >= 1, got {output_size}")

    def call(self, inputs: Any) -> Any:
        if self.output_size == 1:
            return ops.mean(inputs, axis=(1, 2), keepdims=True)
        height, width = blocks.spatial_size(inputs)
        p_h = adaptive_pool_matrix(height, self.output_size, inputs.dtype)  # [s, H]
        p_w = adaptive_pool_matrix(width, self.output_size, inputs.dtype)   # [s, W]
        x = ops.transpose(inputs, (0, 2, 3, 1))           # [B, W, C, H]
        x = ops.matmul(x, ops.transpose(p_h))             # [B, W, C, s_h]
        x = ops.transpose(x, (0, 3, 2, 1))                # [B, s_h, C, W]
        x = ops.matmul(x, ops.transpose(p_w))             # [B, s_h, C, s_w]
        return ops.transpose(x, (0, 1, 3, 2))             # [B, s_h, s_w, C]

    def compute_output_shape(self, input_shape: Sequence) -> tuple:
        return (input_shape[0], self.output_size, self.output_size, input_shape[3])

    def get_config(self) -> dict:
        config = super().get_config()
        config.update(output_size=self.output_size)
        return config


def psp_module(x: Any, in_channels: int, sizes: Sequence[int] = (1, 2, 3, 6), use_norm: bool = True,
               name: str = "decoder_psp") -> Any:
    """SMP ``PSPModule``: per size, adaptive pool → 1×1 Conv(-BN)-ReLU to ``C/len(sizes)`` → bilinear
    (``align_corners=True``) back to the input size; concatenated ``[*pyramid, x]``."""
    branches = []
    for size in sizes:
        y = AdaptiveAvgPool2D(size, name=f"{name}_pool{size}")(x)
        # SMP: "PyTorch does not support BatchNorm for 1x1 shape" -> the 1x1 bin is conv (with bias) + ReLU.
        y = blocks.conv_bn_relu(y, in_channels // len(sizes), 1, f"{name}_block{size}",
                                use_batchnorm=use_norm and size != 1)
        y = blocks.Resize(interpolation="bilinear", align_corners=True, name=f"{name}_block{size}_up")(y, like=x)
        branches.append(y)
    return keras.layers.Concatenate(name=f"{name}_concat")(branches + [x])


def pspnet_decoder(features: Sequence[Any], channels: Sequence[int], psp_out_channels: int = 512,
                   use_norm: bool = True, dropout: float = 0.2, name: str = "decoder") -> Any:
    """SMP ``PSPDecoder`` on the deepest encoder map: PSP module → 1×1 Conv-BN-ReLU → ``SpatialDropout2D``."""
    x = psp_module(features[-1], channels[-1], use_norm=use_norm, name=f"{name}_psp")
    x = blocks.conv_bn_relu(x, psp_out_channels, 1, f"{name}_conv", use_batchnorm=use_norm)
    return keras.layers.SpatialDropout2D(dropout, name=f"{name}_dropout")(x)


@register_architecture("pspnet")
def build_pspnet(
    num_classes: int,
    in_channels: int = 3,
    encoder: str | None = None,
    encoder_weights: str | None = None,
    encoder_depth: int = 3,
    psp_out_channels: int = 512,
    decoder_use_norm: bool | str = "batchnorm",
    psp_dropout: float = 0.2,
    upsampling: int | None = None,
    psp_use_batchnorm: bool | str | None = None,
) -> keras.Model:
    """PSPNet (Zhao et al., CVPR 2017) in SMP 0.6.0's configuration; see the module docstring.

    Options are SMP's: ``encoder_depth`` (3–5; the pyramid runs on the map of stride ``2**encoder_depth``),
    ``psp_out_channels``, ``decoder_use_norm`` (``"batchnorm"``/True or ``"identity"``/False),
    ``psp_dropout``, ``upsampling`` (must equal the output stride, ``2**encoder_depth``: this zoo always returns
    logits at the input resolution) and the deprecated alias ``psp_use_batchnorm``.
    """
    zoo = SegmentationModel("pspnet", encoder, encoder_depth)
    stride = 2 ** encoder_depth
    if upsampling is not None and upsampling != stride:
        raise UserError(f"model.options upsampling for pspnet must equal the output stride {stride} "
                        f"(2**encoder_depth) so that the logits have the input resolution, got {upsampling}")
    if not 0.0 <= float(psp_dropout) < 1.0:
        raise UserError(f"model.options psp_dropout must be in [0, 1), got {psp_dropout}")
    if psp_use_batchnorm is not None:
        decoder_use_norm = psp_use_batchnorm
    use_norm = blocks.decoder_use_norm(decoder_use_norm, "pspnet")
    return zoo.build(lambda f: pspnet_decoder(f.maps, f.channels, psp_out_channels, use_norm, float(psp_dropout)),
                     num_classes, in_channels, encoder_weights, upsampling=stride)

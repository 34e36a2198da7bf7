"""Building blocks shared by the model zoo (segmentation_models_pytorch 0.6 designs, in Keras 3).

PyTorch conventions are kept where they change behaviour or parameter counts:

* ``conv_bn_relu`` is SMP's ``Conv2dReLU``: a conv *without* bias when followed by BatchNorm, then BN, then ReLU.
* BatchNorm uses PyTorch's defaults (momentum 0.1 → Keras 0.9, eps 1e-5).
* Convolutions pad symmetrically like PyTorch (explicit ``ZeroPadding2D`` + ``valid``), so odd sizes and strides give
  PyTorch's output sizes.
* :class:`Resize` offers ``align_corners=True`` bilinear resizing (SMP's heads and PSP module use it).
"""

from __future__ import annotations

from typing import Any, Optional, Sequence

import keras
import tensorflow as tf
from keras import ops

BN_MOMENTUM = 0.9  # PyTorch momentum 0.1
BN_EPSILON = 1e-5


def batch_norm(name: str) -> keras.layers.BatchNormalization:
    return keras.layers.BatchNormalization(momentum=BN_MOMENTUM, epsilon=BN_EPSILON, name=name)


def conv2d(
    x: Any, filters: int, kernel_size: int, name: str, strides: int = 1, dilation_rate: int = 1,
    use_bias: bool = True, groups: int = 1, padding: Optional[int] = None,
) -> Any:
    """PyTorch-style ``Conv2d``: symmetric zero padding (default ``dilation·(k−1)/2``), then a ``valid`` conv."""
    pad = dilation_rate * (kernel_size - 1) // 2 if padding is None else padding
    if pad:
        x = keras.layers.ZeroPadding2D(pad, name=f"{name}_pad")(x)
    return keras.layers.Conv2D(
        filters, kernel_size, strides=strides, dilation_rate=dilation_rate, use_bias=use_bias, groups=groups,
        padding="valid", name=name,
    )(x)


def conv_bn_relu(
    x: Any, filters: int, kernel_size: int, name: str, strides: int = 1, dilation_rate: int = 1,
    use_batchnorm: bool = True, padding: Optional[int] = None,
) -> Any:
    """SMP ``Conv2dReLU``: conv (bias only without BN) → BN → ReLU."""
    x = conv2d(x, filters, kernel_size, f"{name}_conv", strides, dilation_rate, use_bias=not use_batchnorm,
               padding=padding)
    if use_batchnorm:
        x = batch_norm(f"{name}_bn")(x)
    return keras.layers.ReLU(name=f"{name}_relu")(x)


@keras.saving.register_keras_serializable(package="axial_kd_tf")
class Resize(keras.layers.Layer):
    """Resize ``[B, H, W, C]`` by an integer ``scale`` or to the spatial size of a second ``like`` input.

    ``interpolation`` is ``"nearest"`` or ``"bilinear"``; ``align_corners=True`` reproduces PyTorch's
    ``nn.Upsample(..., align_corners=True)`` / ``F.interpolate(..., align_corners=True)``. Works with unknown sizes
    and converts to the builtin TFLite ops ``RESIZE_NEAREST_NEIGHBOR`` / ``RESIZE_BILINEAR``.
    """

    def __init__(self, scale: Optional[int] = None, interpolation: str = "nearest", align_corners: bool = False,
                 **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if interpolation not in ("nearest", "bilinear"):
            raise ValueError(f"interpolation must be 'nearest' or 'bilinear', got {interpolation!r}")
        self.scale = scale
        self.interpolation = interpolation
        self.align_corners = bool(align_corners)

    def call(self, inputs: Any, like: Any = None) -> Any:
        if like is not None:
            size = ops.shape(like)[1:3]
        else:
            shape = ops.shape(inputs)
            size = (shape[1] * self.scale, shape[2] * self.scale)
        size = ops.cast(ops.stack(size), "int32")
        # The raw ops carry PyTorch's align_corners flag (keras.ops.image.resize has none).
        op = tf.raw_ops.ResizeBilinear if self.interpolation == "bilinear" else tf.raw_ops.ResizeNearestNeighbor
        # PyTorch's "nearest" picks floor(dst · in/out) (no half-pixel centres; that is "nearest-exact"), and its
        # bilinear uses half-pixel centres unless align_corners.
        half_pixel = self.interpolation == "bilinear" and not self.align_corners
        out = op(images=inputs, size=size, align_corners=self.align_corners, half_pixel_centers=half_pixel)
        return ops.cast(out, inputs.dtype)  # ResizeBilinear returns float32

    def compute_output_shape(self, inputs_shape: Sequence, like_shape: Optional[Sequence] = None) -> tuple:
        if like_shape is not None:
            return (inputs_shape[0], like_shape[1], like_shape[2], inputs_shape[3])
        h, w = inputs_shape[1], inputs_shape[2]
        return (inputs_shape[0], None if h is None else h * self.scale, None if w is None else w * self.scale,
                inputs_shape[3])

    def get_config(self) -> dict:
        config = super().get_config()
        config.update(scale=self.scale, interpolation=self.interpolation, align_corners=self.align_corners)
        return config


@keras.saving.register_keras_serializable(package="axial_kd_tf")
class InputSizeCheck(keras.layers.Layer):
    """Identity that rejects inputs whose height or width is not a multiple of ``multiple`` (the output stride).

    Known sizes fail while the model is built or called, with a message that says which multiple is needed; unknown
    sizes are checked when the graph runs.
    """

    def __init__(self, multiple: int, arch: str = "this architecture", **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.multiple = int(multiple)
        self.arch = arch

    def _message(self, h: Any, w: Any) -> str:
        return (f"{self.arch} needs input height and width divisible by {self.multiple} (its output stride), got "
                f"{h}x{w}; crop or pad the input to a multiple of {self.multiple}")

    def build(self, input_shape: Sequence) -> None:
        h, w = input_shape[1], input_shape[2]
        if (h is not None and h % self.multiple) or (w is not None and w % self.multiple):
            raise ValueError(self._message(h, w))
        self.built = True

    def call(self, inputs: Any) -> Any:
        if self.multiple == 1:
            return inputs
        h, w = inputs.shape[1], inputs.shape[2]
        if h is not None and w is not None:
            if h % self.multiple or w % self.multiple:
                raise ValueError(self._message(h, w))
            return inputs
        shape = tf.shape(inputs)
        check = tf.debugging.assert_equal(
            tf.math.floormod(shape[1:3], self.multiple), tf.zeros(2, tf.int32),
            message=self._message("H", "W"),
        )
        with tf.control_dependencies([check]):
            return tf.identity(inputs)

    def compute_output_shape(self, input_shape: Sequence) -> Sequence:
        return input_shape

    def get_config(self) -> dict:
        config = super().get_config()
        config.update(multiple=self.multiple, arch=self.arch)
        return config


def segmentation_head(x: Any, num_classes: int, kernel_size: int = 3, upsampling: int = 1,
                      name: str = "segmentation_head") -> Any:
    """SMP ``SegmentationHead``: conv (k, padding k//2) → optional ×``upsampling`` bilinear (align_corners=True).

    The output is float32 logits (no activation), so mixed-precision networks feed the loss in float32.
    """
    x = conv2d(x, num_classes, kernel_size, f"{name}_conv")
    if upsampling > 1:
        x = Resize(upsampling, "bilinear", align_corners=True, name=f"{name}_upsample")(x)
    return keras.layers.Activation("linear", dtype="float32", name="logits")(x)


def decoder_use_norm(value: Any, arch: str) -> bool:
    """SMP's ``decoder_use_norm`` / ``decoder_use_batchnorm`` option as a bool (True: Conv → BN → ReLU).

    ``True``/``"batchnorm"`` use BatchNorm; ``False``/``"identity"``/``None`` use none (the conv gets a bias). SMP's
    other norms (``"inplace"``, ``"layernorm"``, ``"instancenorm"``, dicts) are not ported.
    """
    from axial_kd_tf.errors import UserError

    if value is True or value == "batchnorm" or (isinstance(value, dict) and value.get("type") == "batchnorm"
                                                   and len(value) == 1):
        return True
    if value is False or value is None or value == "identity":
        return False
    raise UserError(f"model.options decoder_use_norm={value!r} is not supported by {arch}; use 'batchnorm' (True) "
                    "or 'identity' (False)")


def scse(x: Any, channels: int, name: str, reduction: int = 16) -> Any:
    """SMP ``SCSEModule`` (Roy et al. 2018, concurrent spatial and channel squeeze & excitation).

    ``x·cSE(x) + x·sSE(x)``: cSE = global average → 1×1 conv (bias) to ``channels // reduction`` → ReLU → 1×1 conv
    (bias) → sigmoid; sSE = 1×1 conv (bias) to one channel → sigmoid.
    """
    c = keras.layers.GlobalAveragePooling2D(keepdims=True, name=f"{name}_cse_pool")(x)
    c = keras.layers.Conv2D(channels // reduction, 1, name=f"{name}_cse_conv1")(c)
    c = keras.layers.ReLU(name=f"{name}_cse_relu")(c)
    c = keras.layers.Conv2D(channels, 1, name=f"{name}_cse_conv2")(c)
    c = keras.layers.Activation("sigmoid", name=f"{name}_cse_sigmoid")(c)
    s = keras.layers.Conv2D(1, 1, name=f"{name}_sse_conv")(x)
    s = keras.layers.Activation("sigmoid", name=f"{name}_sse_sigmoid")(s)
    xc = keras.layers.Multiply(name=f"{name}_cse_mul")([x, c])
    xs = keras.layers.Multiply(name=f"{name}_sse_mul")([x, s])
    return keras.layers.Add(name=f"{name}_add")([xc, xs])


def unet_decoder_block(
    x: Any, skips: Optional[Sequence[Any]], filters: int, name: str, use_batchnorm: bool = True,
    attention_type: Optional[str] = None, like: Any = None, interpolation: str = "nearest",
) -> Any:
    """SMP's Unet / Unet++ ``DecoderBlock``: upsample, concat ``[x, *skips]``, (scse), 2× 3×3 CBR, (scse).

    Upsampling goes to the spatial size of ``like`` when given (SMP 0.6 Unet: the next encoder map's exact size, so
    any input size works), otherwise ×2 (Unet++). Without skips the first attention is skipped, as in SMP.
    """
    if like is not None:
        x = Resize(interpolation=interpolation, name=f"{name}_up")(x, like=like)
    else:
        x = Resize(2, interpolation, name=f"{name}_up")(x)
    skips = [s for s in (skips or []) if s is not None]
    if skips:
        x = keras.layers.Concatenate(name=f"{name}_concat")([x, *skips])
        if attention_type == "scse":
            x = scse(x, x.shape[-1], f"{name}_attention1")
    x = conv_bn_relu(x, filters, 3, f"{name}_conv1", use_batchnorm=use_batchnorm)
    x = conv_bn_relu(x, filters, 3, f"{name}_conv2", use_batchnorm=use_batchnorm)
    if attention_type == "scse":
        x = scse(x, filters, f"{name}_attention2")
    return x


def smp_initialize_decoder(model: keras.Model, prefix: str = "decoder") -> None:
    """SMP ``initialize_decoder``: kaiming-uniform (fan_in, ReLU gain) kernels and zero biases for every ``Conv2D``
    whose name starts with ``prefix``.

    Keras' defaults already give the rest of SMP's init: norms start at ones/zeros and the head's glorot-uniform
    kernel with zero bias is SMP's ``initialize_head`` (xavier-uniform). Transposed convs are not ``nn.Conv2d`` in
    SMP either, so they keep their own (PyTorch-default) initializers.
    """
    init = keras.initializers.HeUniform()
    for layer in model.layers:
        if isinstance(layer, keras.layers.Conv2D) and layer.name.startswith(prefix):
            layer.kernel.assign(init(layer.kernel.shape, dtype=layer.kernel.dtype))
            if layer.use_bias:
                layer.bias.assign(ops.zeros(layer.bias.shape, dtype=layer.bias.dtype))

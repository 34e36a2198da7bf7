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
from keras import ops

from axial_kd_tf.errors import UserError

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


def spatial_size(x: Any) -> tuple[Any, Any]:
    """``(H, W)`` of an NHWC tensor: Python ints where the shape is static (always under JAX and PyTorch, and in
    TensorFlow graphs traced at a known size), scalar int32 tensors where it is not (TensorFlow graphs traced with
    unknown sizes)."""
    shape = ops.shape(x)
    return shape[1], shape[2]


def _is_static(*sizes: Any) -> bool:
    return all(isinstance(s, int) for s in sizes)


def _source_coords(in_size: Any, out_size: Any, align_corners: bool, half_pixel: bool) -> Any:
    """Float32 source coordinate of every output row (or column), computed as TensorFlow's resize kernels do.

    TF's ``CalculateResizeScale``: ``(in − 1)/(out − 1)`` with ``align_corners`` (and ``out > 1``), else
    ``in/out``, in float32; then ``i·scale`` (legacy) or ``(i + ½)·scale − ½`` (half-pixel centres).
    """
    in_f = ops.cast(in_size, "float32")
    out_f = ops.cast(out_size, "float32")
    if align_corners:
        scale = ops.where(out_f > 1, (in_f - 1) / ops.maximum(out_f - 1, 1), in_f / out_f)
    else:
        scale = in_f / out_f
    i = ops.cast(ops.arange(out_size, dtype="int32"), "float32")
    return (i + 0.5) * scale - 0.5 if half_pixel else i * scale


def nearest_indices(in_size: Any, out_size: Any, align_corners: bool = False) -> Any:
    """Source index of every output row of TensorFlow's ``ResizeNearestNeighbor`` (``half_pixel_centers=False``):
    ``min(floor(i·scale), in − 1)``, or ``roundf`` (half away from zero) with ``align_corners``.

    PyTorch's ``"nearest"`` is the same ``floor(i·in/out)`` rule.
    """
    src = _source_coords(in_size, out_size, align_corners, half_pixel=False)
    index = ops.floor(src)
    if align_corners:  # roundf for src >= 0, exactly (floor(src + 0.5) can round up at src = 0.5 − ulp)
        index = index + ops.cast(src - index >= 0.5, "float32")
    return ops.minimum(ops.cast(index, "int32"), in_size - 1)


def bilinear_weights(in_size: Any, out_size: Any, align_corners: bool = False) -> tuple[Any, Any, Any]:
    """``(lower, upper, lerp)`` per output row of TensorFlow's ``ResizeBilinear`` (its
    ``compute_interpolation_weights``): half-pixel centres unless ``align_corners``, ``lower = max(floor(src), 0)``,
    ``upper = min(ceil(src), in − 1)``, ``lerp = src − floor(src)``."""
    src = _source_coords(in_size, out_size, align_corners, half_pixel=not align_corners)
    floor = ops.floor(src)
    lower = ops.maximum(ops.cast(floor, "int32"), 0)
    upper = ops.minimum(ops.cast(ops.ceil(src), "int32"), in_size - 1)
    return lower, upper, src - floor


def repeat_upsample(x: Any, factor_h: int, factor_w: int) -> Any:
    """Nearest upsampling of ``[B, H, W, C]`` by integer factors: every pixel repeated ``factor_h × factor_w``.

    Equal to ``ResizeNearestNeighbor`` to ``(H·factor_h, W·factor_w)`` (``floor(i·in/out) = i // factor``), but
    built from repeat (broadcast + reshape), whose gradient is a reshape and a sum that XLA compiles on every device
    (XLA has no CPU kernel for ``ResizeNearestNeighborGrad``).
    """
    if factor_h > 1:
        x = ops.repeat(x, factor_h, axis=1)
    if factor_w > 1:
        x = ops.repeat(x, factor_w, axis=2)
    return x


def resize_nearest(x: Any, size: tuple[Any, Any], align_corners: bool = False) -> Any:
    """TensorFlow's ``ResizeNearestNeighbor(half_pixel_centers=False)`` of ``[B, H, W, C]`` to ``size`` in keras.ops.

    Integer factors known when the graph is traced use :func:`repeat_upsample`; other sizes (or unknown ones)
    gather the rows and columns of :func:`nearest_indices`. Exactly the old op's values (data movement only).
    """
    (in_h, in_w), (out_h, out_w) = spatial_size(x), size
    if not align_corners and _is_static(in_h, in_w, out_h, out_w) and out_h % in_h == 0 and out_w % in_w == 0:
        return repeat_upsample(x, out_h // in_h, out_w // in_w)
    x = ops.take(x, nearest_indices(in_h, out_h, align_corners), axis=1)
    return ops.take(x, nearest_indices(in_w, out_w, align_corners), axis=2)


def resize_bilinear(x: Any, size: tuple[Any, Any], align_corners: bool = False) -> Any:
    """TensorFlow's ``ResizeBilinear`` (half-pixel centres unless ``align_corners``) of ``[B, H, W, C]`` to
    ``size`` in keras.ops, computed in float32 as that op does, then cast back to ``x``'s dtype.

    Gathers the two source rows and columns of :func:`bilinear_weights` and interpolates in the kernel's order
    (``top = tl + (tr − tl)·x_lerp``, the same for the bottom, ``top + (bottom − top)·y_lerp``), so the values are
    the op's; the gradient is a scatter-add, which XLA compiles, and all dtypes stay consistent under mixed
    precision (the op returned float32 for bfloat16 inputs, which broke XLA's bfloat16 gradient).
    """
    dtype = x.dtype
    (in_h, in_w), (out_h, out_w) = spatial_size(x), size
    x = ops.cast(x, "float32")
    y0, y1, y_lerp = bilinear_weights(in_h, out_h, align_corners)
    x0, x1, x_lerp = bilinear_weights(in_w, out_w, align_corners)
    y_lerp = ops.reshape(y_lerp, (1, -1, 1, 1))
    x_lerp = ops.reshape(x_lerp, (1, 1, -1, 1))
    rows0, rows1 = ops.take(x, y0, axis=1), ops.take(x, y1, axis=1)
    top_left, top_right = ops.take(rows0, x0, axis=2), ops.take(rows0, x1, axis=2)
    bottom_left, bottom_right = ops.take(rows1, x0, axis=2), ops.take(rows1, x1, axis=2)
    top = top_left + (top_right - top_left) * x_lerp
    bottom = bottom_left + (bottom_right - bottom_left) * x_lerp
    return ops.cast(top + (bottom - top) * y_lerp, dtype)


@keras.saving.register_keras_serializable(package="axial_kd_tf")
class Resize(keras.layers.Layer):
    """Resize ``[B, H, W, C]`` by an integer ``scale`` or to the spatial size of a second ``like`` input.

    ``interpolation`` is ``"nearest"`` or ``"bilinear"``; ``align_corners=True`` reproduces PyTorch's
    ``nn.Upsample(..., align_corners=True)`` / ``F.interpolate(..., align_corners=True)``. Computes exactly what
    TensorFlow's ``ResizeNearestNeighbor`` / ``ResizeBilinear`` ops compute (PyTorch's "nearest" picks
    ``floor(dst · in/out)``, no half-pixel centres; its bilinear uses half-pixel centres unless ``align_corners``),
    but in keras.ops (:func:`resize_nearest`, :func:`resize_bilinear`): it runs on every Keras backend, XLA
    compiles its gradient on CPU, in float32 and bfloat16, and it converts to builtin TFLite ops. Works with unknown
    sizes.
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
        in_h, in_w = spatial_size(inputs)
        size = spatial_size(like) if like is not None else (in_h * self.scale, in_w * self.scale)
        if self.interpolation == "bilinear":
            return resize_bilinear(inputs, size, self.align_corners)
        if like is None and not self.align_corners:  # an integer factor even when the sizes are unknown
            return repeat_upsample(inputs, self.scale, self.scale)
        return resize_nearest(inputs, size, self.align_corners)

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


class InputSizeError(UserError, ValueError):
    """A wrong input height or width (one line naming the requirement and the fix).

    A :class:`~axial_kd_tf.errors.UserError` for the CLIs and a ``ValueError`` for code that catches Keras' shape
    errors.
    """

    def __init__(self, message: str) -> None:
        super().__init__(message)
        # Keras appends the call's arguments (several lines) to an error raised in a layer's call unless it sees this.
        self._keras_call_info_injected = True


@keras.saving.register_keras_serializable(package="axial_kd_tf")
class InputSizeCheck(keras.layers.Layer):
    """Identity that rejects inputs whose height or width is not a multiple of ``multiple`` (the output stride) or
    is below ``minimum``, with a one-line message naming the requirement (and ``reason`` for the minimum).

    Static sizes are checked when the layer is built and when it is called (under JAX and PyTorch sizes are always
    static), raising :class:`InputSizeError`, the multiple first. Only a TensorFlow graph traced with unknown sizes
    defers the checks to run time, as assertions in the graph (``tf.errors.InvalidArgumentError`` with the same
    message).
    """

    def __init__(self, multiple: int = 1, arch: str = "this architecture", minimum: int = 0, reason: str = "",
                 **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.multiple = int(multiple)
        self.arch = arch
        self.minimum = int(minimum)
        self.reason = reason

    def _requirements(self) -> list:
        """``(bad, message)`` per requirement, the multiple first: ``bad(side)`` takes an int or an int32 tensor,
        ``message(h, w)`` is the error."""
        requirements = []
        if self.multiple > 1:
            requirements.append((
                lambda size: size % self.multiple != 0,
                lambda h, w: (f"{self.arch} needs input height and width divisible by {self.multiple} (its output "
                              f"stride), got {h}x{w}; crop or pad the input to a multiple of {self.multiple}")))
        if self.minimum > 1:
            reason = f" ({self.reason})" if self.reason else ""
            requirements.append((
                lambda size: size < self.minimum,
                lambda h, w: f"{self.arch} needs input height and width of at least {self.minimum}{reason}, got "
                             f"{h}x{w}"))
        return requirements

    def build(self, input_shape: Sequence) -> None:
        h, w = input_shape[1], input_shape[2]
        for bad, message in self._requirements():
            if (h is not None and bad(h)) or (w is not None and bad(w)):
                raise InputSizeError(message(h, w))
        self.built = True

    def call(self, inputs: Any) -> Any:
        h, w = spatial_size(inputs)
        requirements = self._requirements()
        if _is_static(h, w):
            for bad, message in requirements:
                if bad(h) or bad(w):
                    raise InputSizeError(message(h, w))
            return inputs
        if not requirements or keras.backend.backend() != "tensorflow":  # pragma: no cover - other backends are static
            return inputs
        import tensorflow as tf  # only TensorFlow traces graphs whose sizes are unknown

        for bad, message in requirements:  # tf.function runs the assertions (stateful ops) in this order
            ok = ops.logical_not(ops.logical_or(bad(h), bad(w)))
            with tf.control_dependencies([tf.debugging.Assert(ok, [message("H", "W")])]):
                inputs = tf.identity(inputs)
        return inputs

    def compute_output_shape(self, input_shape: Sequence) -> Sequence:
        return input_shape

    def get_config(self) -> dict:
        config = super().get_config()
        config.update(multiple=self.multiple, arch=self.arch, minimum=self.minimum, reason=self.reason)
        return config


@keras.saving.register_keras_serializable(package="axial_kd_tf", name="MinInputSize")
class _MinInputSize(InputSizeCheck):
    """Reads ``.keras`` files saved while PAN's minimum-size check was a class of its own (``pan.MinInputSize``)."""

    @classmethod
    def from_config(cls, config: dict) -> InputSizeCheck:
        return InputSizeCheck(**config)


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

"""The Axial-Attention teacher head of the self-distillation method.

Paper: "Improving segmentation accuracy with self-distillation" (Hotta lab, Meijo University): an axial-attention
module applied to the student's output logits produces the *teacher* output, which sees global context along whole
rows and columns. Axial passes follow Axial-DeepLab (Wang et al., ECCV 2020): a height pass, then a width pass.

The head is residual and gated::

    h       = Dense(hidden)(pool(student))          # lift the K logits to `hidden` channels
    h       = AxialAttention(width)(AxialAttention(height)(h))
    teacher = student + gate · Dense(K)(upsample(relu(h)))

``gate`` is a scalar initialised to zero, so at initialisation the teacher equals the student and training starts
from the student's own prediction (a ReZero-style gate). ``pool_size`` > 1 runs the attention on an average-pooled
grid and upsamples its output bilinearly: the axial passes cost O(H·W·(H+W)), so pooling by ``s`` divides their cost
by about ``s³`` while the residual path keeps full-resolution detail.
"""

from __future__ import annotations

from typing import Any

import keras
from keras import ops

from axial_kd_tf.layers.axial_attention import AxialAttention


@keras.saving.register_keras_serializable(package="axial_kd_tf")
class AxialTeacherHead(keras.layers.Layer):
    """Residual, zero-gated axial-attention head mapping student logits ``[B, H, W, K]`` to teacher logits.

    Args:
        num_classes: K, the number of logit channels in and out.
        hidden_dim: width of the attention branch (the per-head value depth is ``hidden_dim // num_heads``).
        num_heads: attention heads in each axial pass.
        key_dim: query/key depth per head; defaults to ``max(hidden_dim // num_heads // 2, 1)`` as in Axial-DeepLab.
        max_span: relative distances beyond ``max_span − 1`` are clipped.
        use_positional_encoding: position-sensitive attention (Axial-DeepLab) or plain dot-product attention.
        use_normalization: folded BatchNorms inside the axial passes.
        pool_size: average-pool factor before attention (1 = full resolution).
        detach_input: stop the gradient from the teacher back into the student logits, so the teacher's loss trains
            the head only and the student learns from the teacher through the distillation term alone.
    """

    def __init__(
        self,
        num_classes: int,
        hidden_dim: int = 16,
        num_heads: int = 1,
        key_dim: int | None = None,
        max_span: int = 256,
        use_positional_encoding: bool = True,
        use_normalization: bool = True,
        pool_size: int = 1,
        detach_input: bool = False,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if num_classes < 1 or hidden_dim < 1 or num_heads < 1 or pool_size < 1:
            raise ValueError("num_classes, hidden_dim, num_heads and pool_size must be >= 1")
        if hidden_dim % num_heads:
            raise ValueError(f"hidden_dim ({hidden_dim}) must be divisible by num_heads ({num_heads})")
        self.num_classes = int(num_classes)
        self.hidden_dim = int(hidden_dim)
        self.num_heads = int(num_heads)
        self.key_dim = int(key_dim) if key_dim else max(self.hidden_dim // self.num_heads // 2, 1)
        self.max_span = int(max_span)
        self.use_positional_encoding = bool(use_positional_encoding)
        self.use_normalization = bool(use_normalization)
        self.pool_size = int(pool_size)
        self.detach_input = bool(detach_input)
        attn_kwargs = dict(
            num_heads=self.num_heads,
            key_dim=self.key_dim,
            value_dim=self.hidden_dim // self.num_heads,
            max_span=self.max_span,
            use_positional_encoding=self.use_positional_encoding,
            use_normalization=self.use_normalization,
            dtype=self.dtype_policy,
        )
        self.in_proj = keras.layers.Dense(self.hidden_dim, name="in_proj", dtype=self.dtype_policy)
        self.height_attention = AxialAttention("height", name="height_attention", **attn_kwargs)
        self.width_attention = AxialAttention("width", name="width_attention", **attn_kwargs)
        self.out_proj = keras.layers.Dense(self.num_classes, name="out_proj", dtype=self.dtype_policy)

    def build(self, input_shape: tuple) -> None:
        if input_shape[-1] is not None and int(input_shape[-1]) != self.num_classes:
            raise ValueError(f"AxialTeacherHead expects {self.num_classes} input channels, got {input_shape[-1]}")
        spatial = (None, None, None)
        self.in_proj.build(spatial + (self.num_classes,))
        self.height_attention.build(spatial + (self.hidden_dim,))
        self.width_attention.build(spatial + (self.hidden_dim,))
        self.out_proj.build(spatial + (self.hidden_dim,))
        self.gate = self.add_weight(name="gate", shape=(), initializer="zeros")
        self.built = True

    def call(self, student_logits: Any, training: bool | None = None) -> Any:
        x = ops.stop_gradient(student_logits) if self.detach_input else student_logits
        h = x
        if self.pool_size > 1:
            h = ops.average_pool(h, self.pool_size, strides=self.pool_size, padding="same")
        h = self.in_proj(h)
        h = self.height_attention(h, training=training)
        h = self.width_attention(h, training=training)
        h = ops.relu(h)
        if self.pool_size > 1:
            shape = ops.shape(x)
            h = ops.image.resize(h, (shape[1], shape[2]), interpolation="bilinear")
        y = self.out_proj(h)
        return ops.cast(x, y.dtype) + ops.cast(self.gate, y.dtype) * y

    def compute_output_shape(self, input_shape: tuple) -> tuple:
        return tuple(input_shape)

    def get_config(self) -> dict:
        config = super().get_config()
        config.update(
            num_classes=self.num_classes,
            hidden_dim=self.hidden_dim,
            num_heads=self.num_heads,
            key_dim=self.key_dim,
            max_span=self.max_span,
            use_positional_encoding=self.use_positional_encoding,
            use_normalization=self.use_normalization,
            pool_size=self.pool_size,
            detach_input=self.detach_input,
        )
        return config

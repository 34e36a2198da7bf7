"""The Axial-Attention teacher head of the self-distillation method.

Paper: "Improving segmentation accuracy with self-distillation" (Hotta lab, Meijo University): an axial-attention
module applied to the student's output logits produces the *teacher* output, which sees global context along whole
rows and columns. Axial passes follow Axial-DeepLab (Wang et al., ECCV 2020): a height pass, then a width pass.

The head maps the K student logits to K teacher logits::

    h       = Dense(hidden)(pool(student))                     # lift the K logits to `hidden` channels
    h       = relu(AxialAttention(width)(AxialAttention(height)(h)))          # block 1
    h       = h + relu(AxialAttention(width)(AxialAttention(height)(h)))      # blocks 2.. (num_blocks > 1)
    branch  = Dense(K)(upsample(h))
    teacher = student + gate · branch      (residual: true, the default)
    teacher = branch                       (residual: false, the "direct" head)

* **Residual, learned gate from zero** (``gate_init=0``, the default): a ReZero-style scalar gate, so the teacher
  starts as the student and training grows the attention branch from there.
* **Residual, fixed or non-zero gate** (``gate_init=1``, ``gate_trainable=False``): the branch is on from the first
  step at a constant weight.
* **Direct** (``residual=False``): the teacher is the attention branch alone; it must re-derive every logit from the
  student's through attention, so it can differ from the student most, and it has no shortcut to copy it.

``pool_size`` > 1 runs the attention on an average-pooled grid and upsamples its output bilinearly: the axial passes
cost O(H·W·(H+W)), so pooling by ``s`` divides their cost by about ``s³`` (with ``residual=True`` the shortcut keeps
full-resolution detail; a direct head is then limited to the pooled resolution).
"""

from __future__ import annotations

from typing import Any

import keras
from keras import ops

from axial_kd_tf.layers.axial_attention import AxialAttention


@keras.saving.register_keras_serializable(package="axial_kd_tf")
class AxialTeacherHead(keras.layers.Layer):
    """Axial-attention head mapping student logits ``[B, H, W, K]`` to teacher logits ``[B, H, W, K]``.

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
            the head only and the student learns from the teacher through the distillation term alone. True by
            default since the teacher study (docs/method.md); False is the paper's form.
        residual: ``teacher = student + gate · branch`` (True) or ``teacher = branch`` (False, the direct head).
        gate_init: initial value of the residual gate (0: the teacher starts as the student).
        gate_trainable: learn the gate (True) or keep it at ``gate_init`` (a fixed residual weight).
        num_blocks: axial blocks (a height pass and a width pass each) in the branch; blocks after the first are
            residual within the branch. ``hidden_dim=32, num_blocks=2`` by default since the teacher study's stage 2
            (docs/method.md); one 16-channel block is the lighter head the study started from.
    """

    def __init__(
        self,
        num_classes: int,
        hidden_dim: int = 32,
        num_heads: int = 1,
        key_dim: int | None = None,
        max_span: int = 256,
        use_positional_encoding: bool = True,
        use_normalization: bool = True,
        pool_size: int = 1,
        detach_input: bool = True,
        residual: bool = True,
        gate_init: float = 0.0,
        gate_trainable: bool = True,
        num_blocks: int = 2,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if num_classes < 1 or hidden_dim < 1 or num_heads < 1 or pool_size < 1 or num_blocks < 1:
            raise ValueError("num_classes, hidden_dim, num_heads, pool_size and num_blocks must be >= 1")
        if hidden_dim % num_heads:
            raise ValueError(f"hidden_dim ({hidden_dim}) must be divisible by num_heads ({num_heads})")
        if residual and not gate_trainable and gate_init == 0:
            raise ValueError("a fixed gate of 0 makes the teacher equal to the student: set gate_init != 0 or "
                             "gate_trainable=True")
        self.num_classes = int(num_classes)
        self.hidden_dim = int(hidden_dim)
        self.num_heads = int(num_heads)
        self.key_dim = int(key_dim) if key_dim else max(self.hidden_dim // self.num_heads // 2, 1)
        self.max_span = int(max_span)
        self.use_positional_encoding = bool(use_positional_encoding)
        self.use_normalization = bool(use_normalization)
        self.pool_size = int(pool_size)
        self.detach_input = bool(detach_input)
        self.residual = bool(residual)
        self.gate_init = float(gate_init)
        self.gate_trainable = bool(gate_trainable)
        self.num_blocks = int(num_blocks)
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
        # Block 1 keeps the names of the one-block head, so its weights load into a one-block head.
        suffixes = [""] + [f"_{i + 1}" for i in range(1, self.num_blocks)]
        self.blocks = [
            (AxialAttention("height", name=f"height_attention{s}", **attn_kwargs),
             AxialAttention("width", name=f"width_attention{s}", **attn_kwargs))
            for s in suffixes
        ]
        self.height_attention, self.width_attention = self.blocks[0]
        self.out_proj = keras.layers.Dense(self.num_classes, name="out_proj", dtype=self.dtype_policy)

    def build(self, input_shape: tuple) -> None:
        if input_shape[-1] is not None and int(input_shape[-1]) != self.num_classes:
            raise ValueError(f"AxialTeacherHead expects {self.num_classes} input channels, got {input_shape[-1]}")
        spatial = (None, None, None)
        self.in_proj.build(spatial + (self.num_classes,))
        for height, width in self.blocks:
            height.build(spatial + (self.hidden_dim,))
            width.build(spatial + (self.hidden_dim,))
        self.out_proj.build(spatial + (self.hidden_dim,))
        if self.residual:
            self.gate = self.add_weight(
                name="gate", shape=(), initializer=keras.initializers.Constant(self.gate_init),
                trainable=self.gate_trainable,
            )
        self.built = True

    def branch(self, student_logits: Any, training: bool | None = None) -> Any:
        """The attention branch alone (``[B, H, W, K]``): the teacher minus the shortcut, before the gate."""
        x = ops.stop_gradient(student_logits) if self.detach_input else student_logits
        h = x
        if self.pool_size > 1:
            h = ops.average_pool(h, self.pool_size, strides=self.pool_size, padding="same")
        h = self.in_proj(h)
        for i, (height, width) in enumerate(self.blocks):
            y = ops.relu(width(height(h, training=training), training=training))
            h = y if i == 0 else h + y
        if self.pool_size > 1:
            shape = ops.shape(x)
            # In float32, cast back: TensorFlow's bilinear resize returns float32 for bfloat16 input (same values),
            # and XLA then rejects the step's gradient (a float32 ResizeBilinearGrad meeting a bfloat16 ReluGrad).
            h = ops.cast(ops.image.resize(ops.cast(h, "float32"), (shape[1], shape[2]), interpolation="bilinear"),
                         h.dtype)
        return self.out_proj(h)

    def call(self, student_logits: Any, training: bool | None = None) -> Any:
        y = self.branch(student_logits, training=training)
        if not self.residual:
            return y
        x = ops.stop_gradient(student_logits) if self.detach_input else student_logits
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
            residual=self.residual,
            gate_init=self.gate_init,
            gate_trainable=self.gate_trainable,
            num_blocks=self.num_blocks,
        )
        return config

"""Position-sensitive axial self-attention (one pass along height or width).

Reference: H. Wang, Y. Zhu, B. Green, H. Adam, A. Yuille, L.-C. Chen, "Axial-DeepLab: Stand-Alone Axial-Attention
for Panoptic Segmentation", ECCV 2020, Eq. (4)::

    y_o = Σ_p softmax_p(q_oᵀ k_p + q_oᵀ r^q_{p−o} + k_pᵀ r^k_{p−o}) · (v_p + r^v_{p−o})

for every query position ``o`` and memory position ``p`` on one axis; the other axis is folded into the batch, so a
pass costs O(L) per pixel instead of O(H·W) for full 2-D attention.

Design choices that differ from the public implementations (see ``shared/reference/axial-attention.md``):

* **Any size.** The relative-position tables have ``2·max_span − 1`` rows and are indexed by the clipped distance
  ``clip(p − o, −(max_span − 1), max_span − 1)``. The table does not depend on the size the layer was built at, so a
  layer built at 32×32 and called at 48×48 (or at an unknown size) is exactly the same function as one built at 48.
  deeplab2's layer silently gives wrong results there.
* **Normalisation folded for Keras 3.** Keras 3 ``BatchNormalization`` normalises along one axis only. As in the
  official PyTorch design, the three similarity terms are stacked as ``3·heads`` channels of one
  ``[N, 3·heads, L, L]`` tensor (BN on axis 1), and the two retrieval terms as ``2·heads·value_dim`` channels of one
  ``[N, L, 2·heads·value_dim]`` tensor (BN on the last axis); each stack is then summed over its terms.
* **At most 5-D.** No intermediate tensor exceeds 5 dimensions and every op lowers to a TFLite builtin.
* With ``use_positional_encoding=False`` (and ``use_normalization=False``) the layer is plain multi-head scaled
  dot-product attention along the axis.
"""

from __future__ import annotations

import math
from typing import Any

import keras
from keras import ops

_AXES = {"height": 1, "width": 2, 1: 1, 2: 2}


@keras.saving.register_keras_serializable(package="axial_kd_tf")
class AxialAttention(keras.layers.Layer):
    """One multi-head, position-sensitive axial self-attention pass over a ``[B, H, W, C]`` tensor.

    Args:
        axis: ``"height"`` (attend along H, i.e. within each column) or ``"width"`` (along W, within each row).
        num_heads: number of attention heads.
        key_dim: query/key depth per head (``d_q = d_k``).
        value_dim: value depth per head; the output has ``num_heads · value_dim`` channels.
        max_span: relative distances are clipped to ``±(max_span − 1)``; the tables have ``2·max_span − 1`` rows.
        use_positional_encoding: add the ``r^q``, ``r^k`` and ``r^v`` terms of Axial-DeepLab Eq. (4). Off gives
            plain scaled dot-product attention.
        use_normalization: batch-normalise the qkv projection, the similarity terms and the retrieval terms
            (Axial-DeepLab). Off scales the similarity by ``1/sqrt(key_dim)`` instead.
        kernel_initializer: initializer of the qkv projection.
    """

    def __init__(
        self,
        axis: str | int = "height",
        num_heads: int = 1,
        key_dim: int = 8,
        value_dim: int = 8,
        max_span: int = 256,
        use_positional_encoding: bool = True,
        use_normalization: bool = True,
        kernel_initializer: Any = "glorot_uniform",
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if axis not in _AXES:
            raise ValueError(f"axis must be 'height' or 'width' (or 1/2), got {axis!r}")
        for name, value in (("num_heads", num_heads), ("key_dim", key_dim), ("value_dim", value_dim),
                            ("max_span", max_span)):
            if int(value) < 1:
                raise ValueError(f"{name} must be >= 1, got {value}")
        self.axis = "height" if _AXES[axis] == 1 else "width"
        self.num_heads = int(num_heads)
        self.key_dim = int(key_dim)
        self.value_dim = int(value_dim)
        self.max_span = int(max_span)
        self.use_positional_encoding = bool(use_positional_encoding)
        self.use_normalization = bool(use_normalization)
        self.kernel_initializer = keras.initializers.get(kernel_initializer)
        self.output_dim = self.num_heads * self.value_dim
        self.supports_masking = False

    # ------------------------------------------------------------------ build
    def build(self, input_shape: tuple) -> None:
        channels = input_shape[-1]
        if channels is None:
            raise ValueError("AxialAttention needs a known channel dimension")
        qkv_dim = self.num_heads * (2 * self.key_dim + self.value_dim)
        self.qkv_kernel = self.add_weight(
            name="qkv_kernel", shape=(int(channels), qkv_dim), initializer=self.kernel_initializer
        )
        if not self.use_normalization:
            self.qkv_bias = self.add_weight(name="qkv_bias", shape=(qkv_dim,), initializer="zeros")
        if self.use_positional_encoding:
            rows = 2 * self.max_span - 1
            # Axial-DeepLab initialises the relative embeddings with std 1/sqrt(depth).
            self.rel_q = self.add_weight(
                name="rel_q", shape=(rows, self.key_dim),
                initializer=keras.initializers.RandomNormal(stddev=1.0 / math.sqrt(self.key_dim)),
            )
            self.rel_k = self.add_weight(
                name="rel_k", shape=(rows, self.key_dim),
                initializer=keras.initializers.RandomNormal(stddev=1.0 / math.sqrt(self.key_dim)),
            )
            self.rel_v = self.add_weight(
                name="rel_v", shape=(rows, self.value_dim),
                initializer=keras.initializers.RandomNormal(stddev=1.0 / math.sqrt(self.value_dim)),
            )
        if self.use_normalization:
            n_terms = 3 if self.use_positional_encoding else 1
            n_out = 2 if self.use_positional_encoding else 1
            # Folded BNs: each normalises a single axis (Keras 3 requirement).
            self.qkv_norm = keras.layers.BatchNormalization(axis=-1, name="qkv_norm", dtype=self.dtype_policy)
            self.qkv_norm.build((None, None, qkv_dim))
            self.similarity_norm = keras.layers.BatchNormalization(
                axis=1, name="similarity_norm", dtype=self.dtype_policy
            )
            self.similarity_norm.build((None, n_terms * self.num_heads, None, None))
            self.output_norm = keras.layers.BatchNormalization(axis=-1, name="output_norm", dtype=self.dtype_policy)
            self.output_norm.build((None, None, n_out * self.output_dim))
        self.built = True

    # ------------------------------------------------------------------ call
    def _relative_table(self, table: Any, length: Any, reverse: bool = False) -> Any:
        """Rows ``r^{d}`` for the ``2L − 1`` distances ``d = −(L−1) … L−1`` (clipped to ±(max_span − 1)).

        With ``reverse`` the rows run from ``d = L−1`` down to ``−(L−1)``.
        """
        d = ops.arange(-(length - 1), length, dtype="int32")
        if reverse:
            d = -d
        d = ops.clip(d, -(self.max_span - 1), self.max_span - 1) + (self.max_span - 1)
        return ops.take(table, d, axis=0)

    @staticmethod
    def _rel_to_abs(x: Any, length: Any) -> Any:
        """``[M, L, 2L−1]`` indexed by (o, d + L − 1) → ``[M, L, L]`` indexed by (o, p = o + d).

        The "skew" of Music Transformer / Transformer-XL: pad one column, flatten, drop ``L − 1`` leading entries and
        re-read rows of width ``2L − 1``; row ``o`` then starts ``o`` entries later. Reshapes, pads and slices only
        (no gather over an ``L × L`` index), at most 3-D.
        """
        m = ops.shape(x)[0]
        flat = ops.reshape(ops.pad(x, ((0, 0), (0, 0), (0, 1))), (m, -1))  # [M, 2L²]
        flat = flat[:, length - 1 : length - 1 + length * (2 * length - 1)]
        return ops.reshape(flat, (m, length, 2 * length - 1))[:, :, :length]

    @staticmethod
    def _abs_to_rel(x: Any, length: Any) -> Any:
        """``[M, L, L]`` indexed by (o, p) → ``[M, L, 2L−1]`` indexed by (o, d + L − 1) with ``d = p − o`` (zero-filled).

        The inverse skew: pad each row to ``3L − 2``, then re-read the flat buffer with row stride ``3L − 1``.
        """
        m = ops.shape(x)[0]
        padded = ops.pad(x, ((0, 0), (0, 0), (length - 1, length - 1)))  # [M, L, 3L−2]
        flat = ops.reshape(padded, (m, -1))
        flat = ops.pad(flat, ((0, 0), (0, length)))
        skewed = ops.reshape(flat, (m, length, 3 * length - 1))
        return skewed[:, :, : 2 * length - 1]

    def _similarity_scales(self, q: Any, k: Any, length: Any, training: bool | None) -> tuple[Any, Any]:
        """Per-(term, head) scales ``s`` (``[T, h]``) and per-head offsets ``c`` (``[h]``) of the similarity logits.

        ``logits = Σ_t s_t ⊙ term_t + c`` equals the sum over terms of ``similarity_norm`` applied to the stacked
        ``[N, T·h, L, L]`` similarity tensor, without building that tensor: BatchNorm of channel ``t`` is the affine map
        ``s_t (x − μ_t) + β_t`` with ``s_t = γ_t / sqrt(σ²_t + ε)``, and in training the batch moments ``μ_t``, ``σ²_t``
        of each bilinear term are computed in closed form from ``q``, ``k`` and the relative tables
        (:meth:`_similarity_moments`). ``c`` is softmax-invariant; it is kept so that the logits (and ``β``'s
        gradient, zero up to round-off) are those of the explicit BatchNorm.
        """
        n_terms = 3 if self.use_positional_encoding else 1
        h = self.num_heads
        if not self.use_normalization:
            scale = ops.full((n_terms, h), 1.0 / math.sqrt(self.key_dim), dtype="float32")
            return scale, None
        bn = self.similarity_norm
        gamma = ops.cast(bn.gamma, "float32")
        beta = ops.cast(bn.beta, "float32")
        if training and bn.trainable:
            mean, variance = self._similarity_moments(q, k, length)
            bn.moving_mean.assign(
                ops.cast(bn.moving_mean, "float32") * bn.momentum + mean * (1.0 - bn.momentum)
            )
            bn.moving_variance.assign(
                ops.cast(bn.moving_variance, "float32") * bn.momentum + variance * (1.0 - bn.momentum)
            )
        else:
            mean = ops.cast(bn.moving_mean, "float32")
            variance = ops.cast(bn.moving_variance, "float32")
        scale = gamma * ops.rsqrt(variance + bn.epsilon)  # [T·h]
        offset = ops.sum(ops.reshape(beta - scale * mean, (n_terms, h)), axis=0)  # [h]
        return ops.reshape(scale, (n_terms, h)), offset

    def _similarity_moments(self, q: Any, k: Any, length: Any) -> tuple[Any, Any]:
        """Exact batch mean and (biased) variance of the ``T·h`` similarity channels, in float32, from small tensors.

        With ``N`` rows of length ``L`` each channel has ``N·L²`` entries. Per head:

        * ``qk[o,p] = q_o·k_p``: ``Σ = Σ_n (Σ_o q_o)·(Σ_p k_p)``, ``Σ x² = Σ_n ⟨Σ_o q_o q_oᵀ, Σ_p k_p k_pᵀ⟩``.
        * ``qr[o,p] = q_o·r_{p−o}``: with the band mask ``M[o, j] = [0 ≤ o + j − (L−1) < L]`` over the ``2L − 1``
          distance rows ``e_j``, ``Σ = Σ_{o,j} M[o,j] (Σ_n q_o)·e_j`` and ``Σ x² = Σ_{o,j} M[o,j] e_jᵀ (Σ_n q_o q_oᵀ) e_j``.
        * ``kr[o,p] = k_p·r_{p−o}``: the same with the roles of ``o`` and ``p`` swapped (``M[p, j] = [0 ≤ p − j + L − 1 < L]``).

        Cost ``O(N·L·h·d² + L²·h·d²)``; nothing has an ``N·L²`` factor. Differentiable, so gradients flow through the
        batch statistics as in BatchNorm.
        """
        q = ops.cast(q, "float32")  # [N, L, h, d]
        k = ops.cast(k, "float32")
        n_rows = ops.shape(q)[0]
        count = ops.cast(n_rows * length * length, "float32")
        # qk
        s1 = [ops.sum(ops.sum(q, axis=1) * ops.sum(k, axis=1), axis=(0, 2))]
        gram_q = ops.einsum("nohd,nohe->nhde", q, q)
        gram_k = ops.einsum("nphd,nphe->nhde", k, k)
        s2 = [ops.sum(gram_q * gram_k, axis=(0, 2, 3))]
        if self.use_positional_encoding:
            j = ops.arange(0, 2 * length - 1, dtype="int32")[None, :]
            o = ops.arange(0, length, dtype="int32")[:, None]
            for x, table, sign in ((q, self.rel_q, 1), (k, self.rel_k, -1)):
                e = ops.cast(self._relative_table(table, length), "float32")  # [2L−1, d], d = p − o = j − (L−1)
                other = o + sign * (j - (length - 1))  # the position (p for q, o for k) that row o/p meets at j
                band = ops.cast(ops.logical_and(other >= 0, other < length), "float32")  # [L, 2L−1]
                x_sum = ops.sum(x, axis=0)  # [L, h, d]
                x_gram = ops.einsum("nohd,nohe->ohde", x, x)  # [L, h, d, d]
                s1.append(ops.sum(ops.einsum("ohd,jd->ohj", x_sum, e) * band[:, None, :], axis=(0, 2)))
                e_outer = ops.reshape(e[:, :, None] * e[:, None, :], (2 * length - 1, -1))  # [2L−1, d²]
                weights = ops.matmul(band, e_outer)  # [L, d²]: Σ_j M[o, j] e_j e_jᵀ
                s2.append(ops.einsum("ohx,ox->h", ops.reshape(x_gram, (length, self.num_heads, -1)), weights))
        mean = ops.concatenate(s1, axis=0) / count
        variance = ops.maximum(ops.concatenate(s2, axis=0) / count - ops.square(mean), 0.0)
        return mean, variance

    def call(self, inputs: Any, training: bool | None = None) -> Any:
        x = inputs
        shape = ops.shape(x)
        batch, height, width = shape[0], shape[1], shape[2]
        channels = x.shape[-1]
        if self.axis == "height":
            # Fold W into the batch: [B, H, W, C] -> [B, W, H, C] -> [B·W, H, C].
            x = ops.transpose(x, (0, 2, 1, 3))
            length, other = height, width
        else:
            length, other = width, height
        x = ops.reshape(x, (batch * other, length, channels))

        h, dk, dv = self.num_heads, self.key_dim, self.value_dim
        qkv = ops.matmul(x, self.qkv_kernel)  # [N, L, h·(2dk+dv)]
        if self.use_normalization:
            qkv = self.qkv_norm(qkv, training=training)
        else:
            qkv = qkv + self.qkv_bias
        q = ops.reshape(qkv[..., : h * dk], (-1, length, h, dk))
        k = ops.reshape(qkv[..., h * dk : 2 * h * dk], (-1, length, h, dk))
        v = ops.reshape(qkv[..., 2 * h * dk :], (-1, length, h, dv))

        # The similarity normalisation (or 1/sqrt(dk)) is a per-(term, head) scale plus a per-head offset: apply
        # the scales to the [N, L, h, dk] operands, never to an [N, h, L, L] tensor.
        scale, offset = self._similarity_scales(q, k, length, training)
        scale = ops.cast(scale, q.dtype)[:, None, None, :, None]  # [T, 1, 1, h, 1]
        k_qk = k * scale[0]
        q_qk = q
        if offset is not None:
            # q_o·k_p + c: one more contraction column instead of an [N, h, L, L] broadcast add.
            ones = ops.ones_like(q[..., :1])
            q_qk = ops.concatenate([q, ones], axis=-1)
            k_qk = ops.concatenate([k_qk, ones * ops.cast(offset, q.dtype)[:, None]], axis=-1)
        logits = ops.einsum("nohd,nphd->nhop", q_qk, k_qk)  # [N, h, L, L]
        if self.use_positional_encoding:
            # q_o·r^q_{p−o}: one GEMM against the 2L−1 distance rows, then relative → absolute positions.
            e_q = self._relative_table(self.rel_q, length)  # [2L−1, dk]
            qr = ops.einsum("nohd,rd->nhor", q * scale[1], e_q)
            qr = ops.reshape(self._rel_to_abs(ops.reshape(qr, (-1, length, 2 * length - 1)), length),
                             (-1, h, length, length))
            # k_p·r^k_{p−o}: rows in reversed distance order give [p, o]; transpose to [o, p].
            e_k = self._relative_table(self.rel_k, length, reverse=True)
            kr = ops.einsum("nphd,rd->nhpr", k * scale[2], e_k)
            kr = ops.reshape(self._rel_to_abs(ops.reshape(kr, (-1, length, 2 * length - 1)), length),
                             (-1, h, length, length))
            logits = logits + qr + ops.transpose(kr, (0, 1, 3, 2))

        attn = ops.softmax(logits, axis=-1)  # over memory positions p
        out = ops.einsum("nhop,nphd->nohd", attn, v)  # [N, L, h, dv]
        out = ops.reshape(out, (-1, length, h * dv))
        if self.use_positional_encoding:
            # Σ_p a_op r^v_{p−o}: absolute → relative attention weights, then one GEMM with the distance rows.
            e_v = self._relative_table(self.rel_v, length)  # [2L−1, dv]
            a_rel = ops.reshape(self._abs_to_rel(ops.reshape(attn, (-1, length, length)), length),
                                (-1, h, length, 2 * length - 1))
            out_r = ops.einsum("nhor,rd->nohd", a_rel, e_v)
            out_r = ops.reshape(out_r, (-1, length, h * dv))
            if self.use_normalization:
                both = self.output_norm(ops.concatenate([out, out_r], axis=-1), training=training)
                out = both[..., : h * dv] + both[..., h * dv :]
            else:
                out = out + out_r
        elif self.use_normalization:
            out = self.output_norm(out, training=training)

        out = ops.reshape(out, (batch, other, length, h * dv))
        if self.axis == "height":
            out = ops.transpose(out, (0, 2, 1, 3))
        return out

    def compute_output_shape(self, input_shape: tuple) -> tuple:
        return tuple(input_shape[:-1]) + (self.output_dim,)

    def get_config(self) -> dict:
        config = super().get_config()
        config.update(
            axis=self.axis,
            num_heads=self.num_heads,
            key_dim=self.key_dim,
            value_dim=self.value_dim,
            max_span=self.max_span,
            use_positional_encoding=self.use_positional_encoding,
            use_normalization=self.use_normalization,
            kernel_initializer=keras.initializers.serialize(self.kernel_initializer),
        )
        return config

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
  official PyTorch design, the three similarity terms are ``3·heads`` channels of one BatchNorm (``similarity_norm``;
  channel ``term·heads + head``), and the two retrieval terms are ``2·heads·value_dim`` channels of one
  ``[N, L, 2·heads·value_dim]`` tensor (``output_norm``, BN on the last axis); each stack is then summed over its terms.
* **Analytic similarity normalisation (no L²-sized BatchNorm work).** Softmax over ``p`` ignores a per-channel shift,
  so BN of a similarity channel acts on the attention only through its scale ``γ/sqrt(σ² + ε)``. That scale is applied
  to the small ``[N, L, h, d]`` operands (``k`` for ``q·k``, ``q`` for ``q·r^q``, ``k`` for ``k·r^k``), and in
  training the batch mean and variance of each bilinear term are computed exactly, in float32, from ``q``, ``k`` and
  the tables (Gram matrices, ``O(N·L·(h·d)²)``), with the moving statistics updated as Keras BN updates them. The logits
  equal those of an explicit BN over the stacked ``[N, 3·heads, L, L]`` tensor, forward and backward.
* **Relative terms without skews.** ``q_o·r^q_{p−o}`` is, for each ``o``, one GEMM of the ``N·heads`` query vectors
  against the ``L`` table rows ``r^q_{p−o}`` (a contiguous window of the table), so the relative→absolute "skew"
  (pads and slices of ``2L²``-sized tensors, and their slow gradients) is replaced by one batched GEMM and one
  transpose; likewise ``k_p·r^k_{p−o}`` (per ``p``) and the retrieval ``Σ_p a_op r^v_{p−o}`` (per ``o``).
* **Synchronized statistics.** ``synchronized=True`` (or ``synchronized`` set on the three BatchNorms, as
  ``axial_kd_tf.distribute.synchronize_batchnorm`` does) computes every batch statistic over the global batch under
  a TensorFlow distribution strategy, as ``keras.layers.BatchNormalization(synchronized=True)`` does: the closed-form
  similarity moments are summed over the replicas before the mean and variance are taken. It acts in training only.
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
        synchronized: batch statistics over the global batch under a TensorFlow distribution strategy (the
            ``synchronized`` of ``keras.layers.BatchNormalization``: TensorFlow backend only, as there).
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
        synchronized: bool = False,
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
        self._synchronized = bool(synchronized)
        self.output_dim = self.num_heads * self.value_dim
        self.supports_masking = False

    @property
    def synchronized(self) -> bool:
        """Whether batch statistics are taken over the global batch. One flag, held by the folded BatchNorms once
        they exist, so setting it on them (``synchronize_batchnorm``) or here says the same thing."""
        norm = getattr(self, "similarity_norm", None)
        return bool(norm.synchronized) if norm is not None else self._synchronized

    @synchronized.setter
    def synchronized(self, value: bool) -> None:
        self._synchronized = bool(value)
        for name in ("qkv_norm", "similarity_norm", "output_norm"):
            norm = getattr(self, name, None)
            if norm is not None:
                norm.synchronized = self._synchronized

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
            bn = dict(dtype=self.dtype_policy, synchronized=self._synchronized)
            self.qkv_norm = keras.layers.BatchNormalization(axis=-1, name="qkv_norm", **bn)
            self.qkv_norm.build((None, None, qkv_dim))
            self.similarity_norm = keras.layers.BatchNormalization(axis=1, name="similarity_norm", **bn)
            self.similarity_norm.build((None, n_terms * self.num_heads, None, None))
            self.output_norm = keras.layers.BatchNormalization(axis=-1, name="output_norm", **bn)
            self.output_norm.build((None, None, n_out * self.output_dim))
        self.built = True

    # ------------------------------------------------------------------ call
    def _relative_windows(self, table: Any, length: Any) -> Any:
        """``W[o, p] = r_{p−o}``, the table row of the clipped distance ``clip(p − o, ±(max_span − 1))``: ``[L, L, d]``.

        Row ``o`` is the contiguous window of ``L`` table rows that query position ``o`` meets. A gather of
        ``L²·depth`` entries, independent of the batch (and of the heads).
        """
        pos = ops.arange(0, length, dtype="int32")
        d = ops.clip(pos[None, :] - pos[:, None], -(self.max_span - 1), self.max_span - 1) + (self.max_span - 1)
        return ops.take(table, d, axis=0)

    def _similarity_scales(
        self, qk: Any, qk_t: Any, w_q: Any, w_k: Any, length: Any, training: bool | None
    ) -> tuple[Any, Any]:
        """Per-(term, head) scales ``s`` (``[T, h]``, float32) and per-head offsets ``c`` (``[h]`` or ``None``).

        ``logits = Σ_t s_t ⊙ term_t + c`` equals the sum over terms of ``similarity_norm`` applied to the stacked
        ``[N, T·h, L, L]`` similarity tensor, without building that tensor: BatchNorm of channel ``t`` is the affine map
        ``s_t (x − μ_t) + β_t`` with ``s_t = γ_t / sqrt(σ²_t + ε)``, and in training the batch moments ``μ_t``, ``σ²_t``
        of each bilinear term are computed in closed form from ``q``, ``k`` and the relative tables
        (:meth:`_similarity_moments`). ``c = Σ_t (β_t − s_t μ_t)`` is softmax-invariant; it is kept so that the logits
        are exactly those of the explicit BatchNorm (and ``β`` keeps its round-off-sized gradient).
        Without normalisation ``s = 1/sqrt(key_dim)`` and ``c = None``.
        """
        n_terms = 3 if self.use_positional_encoding else 1
        h = self.num_heads
        if not self.use_normalization:
            return ops.full((n_terms, h), 1.0 / math.sqrt(self.key_dim), dtype="float32"), None
        bn = self.similarity_norm
        if training and bn.trainable:
            mean, variance = self._similarity_moments(qk, qk_t, w_q, w_k, length)
            # Exactly keras.layers.BatchNormalization's update (biased batch variance).
            bn.moving_mean.assign(
                ops.cast(bn.moving_mean, "float32") * bn.momentum + mean * (1.0 - bn.momentum)
            )
            bn.moving_variance.assign(
                ops.cast(bn.moving_variance, "float32") * bn.momentum + variance * (1.0 - bn.momentum)
            )
        else:
            mean = ops.cast(bn.moving_mean, "float32")
            variance = ops.cast(bn.moving_variance, "float32")
        scale = ops.cast(bn.gamma, "float32") * ops.rsqrt(variance + bn.epsilon)  # [T·h]
        offset = ops.sum(ops.reshape(ops.cast(bn.beta, "float32") - scale * mean, (n_terms, h)), axis=0)
        return ops.reshape(scale, (n_terms, h)), offset

    def _similarity_moments(self, qk: Any, qk_t: Any, w_q: Any, w_k: Any, length: Any) -> tuple[Any, Any]:
        """Exact batch mean and (biased) variance of the ``T·h`` similarity channels (float32) from small tensors.

        ``qk`` is ``[N, L, 2·h·d]`` (``q`` then ``k``, head-major), ``qk_t`` its ``[L, N, 2·h·d]`` transpose (only with
        positional encoding). Each channel has ``N·L²`` entries. Per head:

        * ``qk[o,p] = q_o·k_p``: ``Σ x = Σ_n (Σ_o q_o)·(Σ_p k_p)``, ``Σ x² = Σ_n ⟨Σ_o q_o q_oᵀ, Σ_p k_p k_pᵀ⟩``.
        * ``qr[o,p] = q_o·W_q[o,p]``: ``Σ x = Σ_o (Σ_n q_o)·(Σ_p W_q[o,p])``,
          ``Σ x² = Σ_o ⟨Σ_n q_o q_oᵀ, Σ_p W_q[o,p] W_q[o,p]ᵀ⟩``.
        * ``kr[o,p] = k_p·W_k[p,o]``: the same with ``k``, ``W_k`` and the roles of ``o`` and ``p`` swapped.

        The Gram matrices are batched GEMMs over all ``2·h·d`` channels at once (per row ``n``, contracting the ``L``
        positions; per position, contracting the ``N`` rows); the cross-head blocks are computed and dropped. They are
        formed from mean-shifted float32 data and assembled in float64 (:func:`_shifted_gram`), so that
        ``σ² = E[x²] − E[x]²`` stays accurate when ``|E[x]| ≫ σ``. Cost ``O(N·L·(h·d)²)``: nothing has an ``N·L²``
        factor. Built from differentiable ops, so gradients flow through the batch statistics as through BatchNorm's.
        """
        h, d = self.num_heads, self.key_dim
        hd = h * d
        same_head = ops.eye(h, dtype="float64")[:, None, :, None]  # [h, 1, h, 1]

        def per_head_trace(a: Any, b: Any) -> Any:
            """Per head ``i``: ``⟨a, b⟩`` over the diagonal ``(i, i)`` blocks of ``[..., h·d, h·d]`` → ``[h]``."""
            prod = ops.reshape(ops.sum(ops.reshape(a * b, (-1, hd, hd)), axis=0), (h, d, h, d))
            return ops.sum(prod * same_head, axis=(1, 2, 3))

        count = ops.cast(ops.shape(qk)[0], "float64") * ops.square(ops.cast(length, "float64"))  # N·L²
        sums, gram = _shifted_gram(qk)  # per row: Σ_o x_o [N, 2hd], Σ_o x_o x_oᵀ [N, 2hd, 2hd]
        sums = ops.reshape(sums, (-1, 2, h, d))
        s1 = [ops.sum(sums[:, 0] * sums[:, 1], axis=(0, 2))]
        s2 = [per_head_trace(gram[:, :hd, :hd], gram[:, hd:, hd:])]
        if self.use_positional_encoding:
            pos_sums, pos_gram = _shifted_gram(qk_t)  # per position: Σ_n [L, 2hd], Σ_n x xᵀ [L, 2hd, 2hd]
            pos_sums = ops.reshape(pos_sums, (length, 2, h, d))
            for i, w in enumerate((w_q, w_k)):
                w_sum, w_gram = _shifted_gram(w)  # [L, d], [L, d, d]: Σ over the other position
                s1.append(ops.sum(pos_sums[:, i] * w_sum[:, None, :], axis=(0, 2)))
                block = pos_gram[:, i * hd : (i + 1) * hd, i * hd : (i + 1) * hd]  # [L, hd, hd]
                s2.append(per_head_trace(block, ops.tile(w_gram, (1, h, h))))
        s1, s2 = ops.concatenate(s1, axis=0), ops.concatenate(s2, axis=0)
        if self.similarity_norm.synchronized:
            # Sums are additive over the replicas' shares of the batch, so the global moments are exact.
            s1, s2, count = _replica_sum([s1, s2, count])
        mean = s1 / count
        variance = ops.maximum(s2 / count - ops.square(mean), 0.0)
        return ops.cast(mean, "float32"), ops.cast(variance, "float32")

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
        pos = self.use_positional_encoding
        qkv = ops.matmul(x, self.qkv_kernel)  # [N, L, h·(2dk+dv)]
        if self.use_normalization:
            qkv = self.qkv_norm(qkv, training=training)
        else:
            qkv = qkv + self.qkv_bias
        qk, v = ops.split(qkv, [2 * h * dk], axis=-1)
        q, k = (ops.reshape(t, (-1, length, h, dk)) for t in ops.split(qk, 2, axis=-1))
        v = ops.reshape(v, (-1, length, h, dv))

        qk_t = w_q = w_k = None
        if pos:
            qk_t = ops.transpose(qk, (1, 0, 2))  # [L, N, 2h·dk]: position-major, for the per-position GEMMs
            w_q = self._relative_windows(self.rel_q, length)  # [L (o), L (p), dk]: W_q[o, p] = r^q_{p−o}
            w_k = ops.transpose(self._relative_windows(self.rel_k, length), (1, 0, 2))  # W_k[p, o] = r^k_{p−o}

        # The similarity normalisation (or 1/sqrt(dk)) is a per-(term, head) scale plus a per-head offset: apply the
        # scales to the [N, L, h, dk] operands, never to an [N, h, L, L] tensor.
        scale, offset = self._similarity_scales(qk, qk_t, w_q, w_k, length, training)
        scale = ops.cast(scale, q.dtype)
        q_qk, k_qk = q, k * scale[0][:, None]
        if offset is not None:
            # q_o·k_p + c as one more contraction column, instead of an [N, h, L, L] broadcast add.
            ones = ops.ones_like(q[..., :1])
            q_qk = ops.concatenate([q_qk, ones], axis=-1)
            k_qk = ops.concatenate([k_qk, ones * ops.cast(offset, q.dtype)[:, None]], axis=-1)
        if pos:
            qk_scale = ops.reshape(ops.tile(scale[1:, :, None], (1, 1, dk)), (2 * h * dk,))  # s_qr on q, s_kr on k
            q_t, k_t = (ops.reshape(t, (length, -1, dk)) for t in ops.split(qk_t * qk_scale, 2, axis=-1))
            w_v = self._relative_windows(self.rel_v, length)  # [L (o), L (p), dv]
        # Everything with an L×L factor happens in the *_maps methods, from small operands only. (Recomputing them in
        # the backward pass with keras.remat was measured and not kept: no lower peak memory on TF, torch or JAX CPU,
        # 12-46 % slower steps; benchmarks/README.md.)
        if pos:
            out, out_r = self._position_maps(
                q_qk, k_qk, v, q_t, k_t, ops.cast(w_q, q.dtype), ops.cast(w_k, q.dtype), ops.cast(w_v, v.dtype))
        else:
            out = self._content_maps(q_qk, k_qk, v)
        if pos:
            if self.use_normalization:
                both = self.output_norm(ops.concatenate([out, out_r], axis=-1), training=training)
                out_a, out_b = ops.split(both, 2, axis=-1)
                out = out_a + out_b
            else:
                out = out + out_r
        elif self.use_normalization:
            out = self.output_norm(out, training=training)

        out = ops.reshape(out, (batch, other, length, h * dv))
        if self.axis == "height":
            out = ops.transpose(out, (0, 2, 1, 3))
        return out

    def _content_maps(self, q_qk: Any, k_qk: Any, v: Any) -> Any:
        """Scaled dot-product attention along the axis: ``softmax_p(q_o·k_p) v_p`` → ``[N, L, h·dv]``."""
        logits = ops.einsum("nohd,nphd->nhop", q_qk, k_qk)  # [N, h, L, L]
        attn = ops.softmax(logits, axis=-1)  # over memory positions p
        out = ops.einsum("nhop,nphd->nohd", attn, v)  # [N, L, h, dv]
        return ops.reshape(out, (-1, ops.shape(v)[1], self.num_heads * self.value_dim))

    def _position_maps(self, q_qk: Any, k_qk: Any, v: Any, q_t: Any, k_t: Any, w_q: Any, w_k: Any,
                       w_v: Any) -> tuple[Any, Any]:
        """Eq. (4) from the scaled operands: the content and the relative retrieval, each ``[N, L, h·dv]``.

        ``q_o·r^q_{p−o}``: for each query o one GEMM of its N·h query vectors against the L rows W_q[o, :]; the result
        is [o, N·h, p]. No relative→absolute skew (pads, slices) over L² tensors, one transpose.
        ``k_p·r^k_{p−o}``: for each memory position p one GEMM against W_k[p, :], giving [p, N·h, o].
        ``Σ_p a_op r^v_{p−o}``: for each query o one GEMM of its N·h attention rows against the L rows W_v[o, :].
        """
        h, dv = self.num_heads, self.value_dim
        length, n_rows = ops.shape(v)[1], ops.shape(v)[0]
        logits = ops.einsum("nohd,nphd->nhop", q_qk, k_qk)  # [N, h, L, L]
        qr = ops.matmul(q_t, ops.transpose(w_q, (0, 2, 1)))  # [o, N·h, p]
        qr = ops.transpose(ops.reshape(qr, (length, n_rows, h, length)), (1, 2, 0, 3))
        kr = ops.matmul(k_t, ops.transpose(w_k, (0, 2, 1)))  # [p, N·h, o]
        kr = ops.transpose(ops.reshape(kr, (length, n_rows, h, length)), (1, 2, 3, 0))
        attn = ops.softmax(logits + qr + kr, axis=-1)  # over memory positions p
        out = ops.reshape(ops.einsum("nhop,nphd->nohd", attn, v), (-1, length, h * dv))  # [N, L, h·dv]
        a_t = ops.reshape(ops.transpose(attn, (2, 0, 1, 3)), (length, -1, length))  # [o, N·h, p]
        out_r = ops.matmul(a_t, w_v)  # [o, N·h, dv]
        out_r = ops.reshape(ops.transpose(ops.reshape(out_r, (length, n_rows, h, dv)), (1, 0, 2, 3)),
                            (-1, length, h * dv))
        return out, out_r

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
            synchronized=self.synchronized,
        )
        return config


def _replica_sum(values: list) -> list:
    """``values`` summed over the replicas of the current TensorFlow distribution strategy (as Keras' synchronized
    ``ops.moments`` does: ``ReplicaContext.all_reduce``, whose gradient is the all-reduced gradient); unchanged
    outside a replica context and on the jax and torch backends."""
    if keras.backend.backend() != "tensorflow":
        return values
    import tensorflow as tf  # only on the TensorFlow backend: the layer stays importable without TensorFlow

    ctx = tf.distribute.get_replica_context()
    if ctx is None or ctx.num_replicas_in_sync == 1:
        return values
    return ctx.all_reduce(tf.distribute.ReduceOp.SUM, values)


def _shifted_gram(x: Any) -> tuple[Any, Any]:
    """``(Σ_k x[b, k], Σ_k x[b, k] x[b, k]ᵀ)`` of ``x: [B, K, C]`` as float64 ``[B, C]`` and ``[B, C, C]``.

    The GEMM runs in float32 on ``x − μ`` (``μ`` the channel mean over ``B, K``, a constant for the gradient) and the
    result is shifted back in float64: ``Σ x xᵀ = Σ x̃ x̃ᵀ + s̃ μᵀ + μ s̃ᵀ + K μ μᵀ`` with ``s̃ = Σ x̃``. The identity holds
    for any ``μ``; centring keeps the float32 part small, so the float64 moments do not lose the variance to
    cancellation when the data have a large mean.
    """
    x = ops.cast(x, "float32")
    shift = ops.stop_gradient(ops.mean(x, axis=(0, 1)))
    centred = x - shift
    s = ops.cast(ops.sum(centred, axis=1), "float64")
    g = ops.cast(ops.matmul(ops.transpose(centred, (0, 2, 1)), centred), "float64")
    shift = ops.cast(shift, "float64")
    k = ops.cast(ops.shape(x)[1], "float64")
    sums = s + k * shift
    gram = g + s[:, :, None] * shift[None, None, :] + shift[None, :, None] * s[:, None, :] + k * (
        shift[:, None] * shift[None, :]
    )
    return sums, gram

"""Tests of ``axial_kd_tf.layers.axial_attention.AxialAttention``.

The numerical reference (``helpers.reference_axial``) is written from Axial-DeepLab (ECCV 2020) Eq. (4) with explicit
loops over (batch, other axis, head, o, p), independently of the layer's einsum/gather implementation::

    y_o = Σ_p softmax_p(q_o·k_p + q_o·r^q_{p−o} + k_p·r^k_{p−o}) (v_p + r^v_{p−o})

with relative tables of ``2·max_span − 1`` rows indexed by ``clip(p − o, ±(max_span − 1)) + max_span − 1`` and the
inference-mode BatchNorm ``(x − mean)/sqrt(var + eps)·gamma + beta`` on the qkv projection, on each similarity term
(``3·heads`` channels, term-major then head) and on each retrieval term (``2·heads·value_dim`` channels).
"""

from __future__ import annotations

import math

import keras
import numpy as np
import pytest
import tensorflow as tf

from axial_kd_tf.layers.axial_attention import AxialAttention
from helpers import randomize_axial_weights as randomize_weights, reference_axial, weight_key as _weight_key

ATOL = 1e-4
RTOL = 1e-5


@pytest.fixture(autouse=True)
def _seed():
    keras.utils.set_random_seed(1234)


# ----------------------------------------------------------------------------------------------------- helpers
def _make(axis="height", num_heads=1, key_dim=3, value_dim=5, max_span=16, pos=True, norm=True, **kw):
    return AxialAttention(axis=axis, num_heads=num_heads, key_dim=key_dim, value_dim=value_dim,
                          max_span=max_span, use_positional_encoding=pos, use_normalization=norm, **kw)


def _ref_kwargs(layer: AxialAttention) -> dict:
    return dict(axis=layer.axis, num_heads=layer.num_heads, key_dim=layer.key_dim, value_dim=layer.value_dim,
                max_span=layer.max_span, pos=layer.use_positional_encoding, norm=layer.use_normalization)


def _input(shape, seed=0):
    return np.random.default_rng(seed).normal(0.0, 1.0, shape).astype(np.float32)


def _run(layer, x, training=False):
    return keras.ops.convert_to_numpy(layer(tf.constant(x), training=training))


def _built_random_layer(shape, seed=7, **kw):
    layer = _make(**kw)
    layer.build(shape)
    params = randomize_weights(layer, seed)
    return layer, params


# ---------------------------------------------------------------------------------- 1. reference (Eq. 4 + BN)
@pytest.mark.parametrize("axis", ["height", "width"])
@pytest.mark.parametrize("num_heads", [1, 3])
@pytest.mark.parametrize("pos", [True, False], ids=["pos", "nopos"])
@pytest.mark.parametrize("norm", [True, False], ids=["norm", "nonorm"])
def test_matches_reference(axis, num_heads, pos, norm):
    shape = (2, 5, 7, 4)  # non-square, H != W
    layer, params = _built_random_layer(shape, axis=axis, num_heads=num_heads, pos=pos, norm=norm, max_span=16)
    x = _input(shape)
    y = _run(layer, x)
    assert y.shape == (2, 5, 7, num_heads * 5)
    np.testing.assert_allclose(y, reference_axial(x, params, **_ref_kwargs(layer)), atol=ATOL, rtol=RTOL)


@pytest.mark.parametrize(
    "axis,shape,max_span,num_heads,norm",
    [
        ("height", (2, 9, 4, 3), 3, 3, True),   # H = 9 > max_span = 3
        ("width", (1, 3, 10, 4), 4, 2, True),   # W = 10 > max_span = 4
        ("height", (1, 8, 3, 4), 2, 1, False),  # only 3 table rows
        ("width", (2, 4, 6, 2), 1, 2, True),    # max_span 1: a single row, no relative information
    ],
)
def test_matches_reference_with_clipping(axis, shape, max_span, num_heads, norm):
    layer, params = _built_random_layer(shape, axis=axis, num_heads=num_heads, max_span=max_span, norm=norm)
    assert layer.rel_q.shape == (2 * max_span - 1, 3)
    assert layer.rel_v.shape == (2 * max_span - 1, 5)
    x = _input(shape, seed=3)
    np.testing.assert_allclose(_run(layer, x), reference_axial(x, params, **_ref_kwargs(layer)),
                               atol=ATOL, rtol=RTOL)


@pytest.mark.parametrize("mutation", ["flip_rel", "clip_off_by_one", "head_major_sim", "swap_out_terms"])
def test_reference_comparison_detects_known_bugs(mutation):
    """The tolerance of the reference tests is far below the effect of the bugs they are meant to catch."""
    shape = (1, 9, 3, 4)
    layer, params = _built_random_layer(shape, axis="height", num_heads=3, max_span=4)
    x = _input(shape, seed=5)
    y = _run(layer, x)
    kwargs = _ref_kwargs(layer)
    np.testing.assert_allclose(y, reference_axial(x, params, **kwargs), atol=ATOL, rtol=RTOL)
    wrong = reference_axial(x, params, mutation=mutation, **kwargs)
    assert np.max(np.abs(y - wrong)) > 100 * ATOL


# ------------------------------------------------------------------------------------------ 2. size independence
@pytest.mark.parametrize("max_span", [256, 20])
def test_built_size_does_not_matter(max_span):
    kw = dict(axis="height", num_heads=2, key_dim=4, value_dim=3, max_span=max_span)
    small = _make(**kw)
    small(tf.zeros((1, 32, 32, 3)))  # built (and run) at 32x32
    randomize_weights(small, seed=11)
    big = _make(**kw)
    big(tf.zeros((1, 48, 48, 3)))
    big.set_weights(small.get_weights())
    x = _input((1, 48, 48, 3), seed=2)
    y_small, y_big = _run(small, x), _run(big, x)
    assert y_small.shape == (1, 48, 48, 6)
    np.testing.assert_array_equal(y_small, y_big)
    # and the width pass as well, on the same weights
    small_w, big_w = _make(**{**kw, "axis": "width"}), _make(**{**kw, "axis": "width"})
    small_w(tf.zeros((1, 32, 32, 3)))
    big_w(tf.zeros((1, 48, 48, 3)))
    small_w.set_weights(small.get_weights())
    big_w.set_weights(small.get_weights())
    np.testing.assert_array_equal(_run(small_w, x), _run(big_w, x))


def test_unknown_spatial_size_in_model_matches_reference():
    channels = 3
    inp = keras.Input((None, None, channels))
    layer = _make(axis="width", num_heads=2, key_dim=3, value_dim=4, max_span=5)
    model = keras.Model(inp, layer(inp))
    params = randomize_weights(layer, seed=13)
    assert model.output_shape == (None, None, None, 8)
    graph_fn = tf.function(lambda t: model(t, training=False),
                           input_signature=[tf.TensorSpec((None, None, None, channels), tf.float32)])
    for i, size in enumerate([(4, 7), (8, 8), (6, 3), (2, 9)]):
        x = _input((2, *size, channels), seed=20 + i)
        ref = reference_axial(x, params, **_ref_kwargs(layer))
        np.testing.assert_allclose(keras.ops.convert_to_numpy(model(x, training=False)), ref, atol=ATOL, rtol=RTOL)
        np.testing.assert_allclose(model.predict(x, verbose=0), ref, atol=ATOL, rtol=RTOL)
        np.testing.assert_allclose(graph_fn(tf.constant(x)).numpy(), ref, atol=ATOL, rtol=RTOL)


# ---------------------------------------------------------------------------------------- 3. plain attention
@pytest.mark.parametrize("axis", ["height", "width"])
@pytest.mark.parametrize("num_heads", [1, 2])
def test_plain_scaled_dot_product_attention(axis, num_heads):
    shape = (2, 6, 5, 3)
    dk, dv = 4, 3
    layer, params = _built_random_layer(shape, axis=axis, num_heads=num_heads, key_dim=dk, value_dim=dv,
                                        pos=False, norm=False)
    assert sorted(_weight_key(w) for w in layer.weights) == ["qkv_bias", "qkv_kernel"]
    x = _input(shape, seed=9)

    h = num_heads
    w, bias = params["qkv_kernel"], params["qkv_bias"]
    wq, wk, wv = w[:, : h * dk], w[:, h * dk : 2 * h * dk], w[:, 2 * h * dk :]
    bq, bk, bv = bias[: h * dk], bias[h * dk : 2 * h * dk], bias[2 * h * dk :]
    xs = x.astype(np.float64)
    if axis == "height":
        xs = xs.transpose(0, 2, 1, 3)  # [B, W, H, C]: attend along H
    q = (xs @ wq + bq).reshape(*xs.shape[:3], h, dk)
    k = (xs @ wk + bk).reshape(*xs.shape[:3], h, dk)
    v = (xs @ wv + bv).reshape(*xs.shape[:3], h, dv)
    logits = np.einsum("bjohd,bjphd->bjhop", q, k) / np.sqrt(dk)
    attn = np.exp(logits - logits.max(-1, keepdims=True))
    attn /= attn.sum(-1, keepdims=True)
    expected = np.einsum("bjhop,bjphd->bjohd", attn, v).reshape(*xs.shape[:3], h * dv)
    if axis == "height":
        expected = expected.transpose(0, 2, 1, 3)
    np.testing.assert_allclose(_run(layer, x), expected, atol=ATOL, rtol=RTOL)


# --------------------------------------------------------------------------------------- 4. serialisation
# get_config/from_config, Keras serialisation and .keras save/load: tests/test_layers.py (helpers.run_layer_test).


# ------------------------------------------------------------------------------------------------- 5. TFLite
def test_tflite_builtins_only():
    from ai_edge_litert.interpreter import Interpreter

    inp = keras.Input((16, 12, 4), batch_size=1)
    a = _make(axis="height", num_heads=2, key_dim=4, value_dim=4, max_span=8)  # 16 > 8: clipping inside
    b = _make(axis="width", num_heads=2, key_dim=4, value_dim=3, max_span=8)
    model = keras.Model(inp, b(a(inp)))
    randomize_weights(a, seed=31)
    randomize_weights(b, seed=32)
    x = _input((1, 16, 12, 4), seed=8)
    expected = keras.ops.convert_to_numpy(model(x, training=False))

    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
    flatbuffer = converter.convert()

    interpreter = Interpreter(model_content=flatbuffer)
    runner = interpreter.get_signature_runner()
    (in_name,) = runner.get_input_details().keys()
    outputs = runner(**{in_name: x})
    (got,) = outputs.values()
    assert got.shape == (1, 16, 12, 6)
    np.testing.assert_allclose(got, expected, atol=ATOL, rtol=RTOL)

    ranks = {t["name"]: len(t["shape"]) for t in interpreter.get_tensor_details()}
    assert ranks and max(ranks.values()) <= 5, {n: r for n, r in ranks.items() if r > 5}
    op_names = [op["op_name"] for op in interpreter._get_ops_details()]
    assert op_names and not [n for n in op_names if n.upper().startswith("FLEX")], op_names


# ---------------------------------------------------------------------------------------------- 6. gradients
@pytest.mark.parametrize("norm", [True, False], ids=["norm", "nonorm"])
def test_all_trainable_weights_get_finite_gradients(norm):
    shape = (2, 6, 5, 3)
    layer, _ = _built_random_layer(shape, axis="height", num_heads=2, key_dim=3, value_dim=4, max_span=4,
                                   pos=True, norm=norm)
    x = tf.constant(_input(shape, seed=12))
    probe = tf.constant(_input((2, 6, 5, 8), seed=13))
    before = layer.qkv_norm.moving_mean.numpy().copy() if norm else None
    with tf.GradientTape() as tape:
        y = layer(x, training=True)
        loss = tf.reduce_sum(y * probe)  # a random projection: sum(y) would be blind to BN-normalised paths
    trainable = layer.trainable_weights
    assert len(trainable) == (4 + 6 if norm else 5)
    grads = tape.gradient(loss, trainable)
    for var, grad in zip(trainable, grads):
        assert grad is not None, var.path
        g = keras.ops.convert_to_numpy(grad)
        assert g.shape == tuple(var.shape)
        assert np.all(np.isfinite(g)), var.path
        assert np.any(g != 0), var.path
    if norm:  # training=True updates the moving statistics
        assert not np.allclose(layer.qkv_norm.moving_mean.numpy(), before)


# ------------------------------------------------------------------------------------------ 7. invalid args
@pytest.mark.parametrize(
    "kwargs",
    [
        dict(axis="depth"),
        dict(axis=3),
        dict(num_heads=0),
        dict(key_dim=0),
        dict(value_dim=-1),
        dict(max_span=0),
    ],
)
def test_invalid_arguments(kwargs):
    with pytest.raises(ValueError):
        AxialAttention(**kwargs)


def test_integer_axis_alias():
    assert AxialAttention(axis=1).axis == "height"
    assert AxialAttention(axis=2).axis == "width"


# ------------------------------------------------------------------ 8. training mode: folded similarity BatchNorm
def _explicit_bn(t, norm, axis, training):
    """Keras BatchNormalization on ``axis`` written out (biased batch variance in training), in ``t``'s dtype.

    Returns the output and the batch ``(mean, variance)`` (``None`` in inference).
    """
    gamma, beta = (tf.cast(w, t.dtype) for w in (norm.gamma, norm.beta))
    axis = axis % len(t.shape)
    shape = [1] * len(t.shape)
    shape[axis] = -1
    if training:
        axes = [i for i in range(len(t.shape)) if i != axis]
        mean = tf.reduce_mean(t, axes)
        variance = tf.reduce_mean(tf.square(t - tf.reshape(mean, shape)), axes)
        stats = (mean, variance)
    else:
        mean, variance = (tf.cast(w, t.dtype) for w in (norm.moving_mean, norm.moving_variance))
        stats = None
    y = (t - tf.reshape(mean, shape)) * tf.reshape(gamma / tf.sqrt(variance + norm.epsilon), shape)
    return y + tf.reshape(beta, shape), stats


def explicit_axial(layer: AxialAttention, x, training: bool, dtype=tf.float64):
    """The layer's function with every term as an explicit ``[N, h, L, L]`` tensor and, with normalisation, a real
    BatchNorm over the stacked ``[N, 3·h, L, L]`` similarity tensor (Axial-DeepLab's design).

    Reads the layer's variables (so gradients w.r.t. them can be compared) and assigns nothing. Returns the output and
    ``{norm name: (batch mean, batch variance)}`` in training.
    """
    h, dk, dv, span = layer.num_heads, layer.key_dim, layer.value_dim, layer.max_span
    x = tf.cast(x, dtype)
    if layer.axis == "height":
        x = tf.transpose(x, (0, 2, 1, 3))
    n_b, n_other, length, channels = x.shape
    seqs = tf.reshape(x, (n_b * n_other, length, channels))
    stats = {}
    qkv = seqs @ tf.cast(layer.qkv_kernel, dtype)
    if layer.use_normalization:
        qkv, stats["qkv_norm"] = _explicit_bn(qkv, layer.qkv_norm, -1, training)
    else:
        qkv = qkv + tf.cast(layer.qkv_bias, dtype)
    q = tf.reshape(qkv[..., : h * dk], (-1, length, h, dk))
    k = tf.reshape(qkv[..., h * dk : 2 * h * dk], (-1, length, h, dk))
    v = tf.reshape(qkv[..., 2 * h * dk :], (-1, length, h, dv))
    pos = np.arange(length)
    rows = np.clip(pos[None, :] - pos[:, None], -(span - 1), span - 1) + span - 1  # [o, p]
    terms = [tf.einsum("nohd,nphd->nhop", q, k)]
    if layer.use_positional_encoding:
        r_q, r_k, r_v = (tf.gather(tf.cast(t, dtype), rows) for t in (layer.rel_q, layer.rel_k, layer.rel_v))
        terms.append(tf.einsum("nohd,opd->nhop", q, r_q))
        terms.append(tf.einsum("nphd,opd->nhop", k, r_k))
    if layer.use_normalization:
        stacked, stats["similarity_norm"] = _explicit_bn(tf.concat(terms, axis=1), layer.similarity_norm, 1, training)
        logits = tf.add_n(tf.split(stacked, len(terms), axis=1))
    else:
        logits = tf.add_n(terms) / math.sqrt(dk)
    attn = tf.nn.softmax(logits, axis=-1)
    outs = [tf.einsum("nhop,nphd->nohd", attn, v)]
    if layer.use_positional_encoding:
        outs.append(tf.einsum("nhop,opd->nohd", attn, r_v))
    out = tf.concat([tf.reshape(o, (-1, length, h * dv)) for o in outs], axis=-1)
    if layer.use_normalization:
        out, stats["output_norm"] = _explicit_bn(out, layer.output_norm, -1, training)
    out = tf.add_n(tf.split(out, len(outs), axis=-1))
    out = tf.reshape(out, (n_b, n_other, length, h * dv))
    if layer.axis == "height":
        out = tf.transpose(out, (0, 2, 1, 3))
    return out, stats


def _output_and_grads(fn, layer, x, probe):
    x = tf.constant(x)
    with tf.GradientTape() as tape:
        tape.watch(x)
        y = fn(x)
        loss = tf.reduce_sum(tf.cast(y, tf.float64) * tf.cast(probe, tf.float64))
    grads = tape.gradient(loss, [x] + list(layer.trainable_weights))
    return y, [tf.convert_to_tensor(g) if g is not None else None for g in grads]


def _assert_close_scaled(actual, expected, atol=1e-4, rtol=1e-4, what=""):
    """``|a − e| <= atol + rtol·max|e|`` elementwise (relative to the tensor's scale)."""
    actual, expected = np.asarray(actual, np.float64), np.asarray(expected, np.float64)
    assert actual.shape == expected.shape, what
    tol = atol + rtol * np.max(np.abs(expected))
    err = np.max(np.abs(actual - expected))
    assert err <= tol, f"{what}: max |diff| {err:.3g} > {tol:.3g}"


@pytest.mark.parametrize(
    "axis,num_heads,pos,max_span,shape",
    [
        ("height", 1, True, 16, (2, 7, 5, 3)),
        ("width", 2, True, 16, (2, 4, 6, 3)),
        ("height", 2, True, 3, (2, 9, 4, 3)),  # L = 9 > max_span = 3: clipped distances
        ("width", 1, False, 16, (2, 5, 7, 3)),
        ("height", 2, False, 16, (3, 6, 4, 3)),
    ],
)
def test_training_matches_explicit_batchnorm(axis, num_heads, pos, max_span, shape):
    """training=True: output and gradients (input and every weight) equal a real BN over the similarity tensor."""
    layer, _ = _built_random_layer(shape, axis=axis, num_heads=num_heads, key_dim=3, value_dim=4, pos=pos,
                                   max_span=max_span)
    x = _input(shape, seed=41)
    probe = _input(shape[:3] + (num_heads * 4,), seed=42)
    y_ref, g_ref = _output_and_grads(lambda t: explicit_axial(layer, t, training=True)[0], layer, x, probe)
    y, g = _output_and_grads(lambda t: layer(t, training=True), layer, x, probe)
    _assert_close_scaled(y, y_ref, what="output")
    names = ["input"] + [w.path for w in layer.trainable_weights]
    for name, a, e in zip(names, g, g_ref):
        if name.endswith("similarity_norm/beta"):
            # softmax over p is invariant to a per-channel shift: the exact gradient is 0 (round-off either side)
            assert a is not None and np.max(np.abs(a)) < 1e-5, name
            continue
        assert a is not None and e is not None, name
        _assert_close_scaled(a, e, what=name)


@pytest.mark.parametrize("pos", [True, False], ids=["pos", "nopos"])
def test_training_updates_moving_statistics_like_batchnorm(pos):
    shape = (2, 9, 5, 3)
    layer, _ = _built_random_layer(shape, axis="height", num_heads=2, key_dim=3, value_dim=4, pos=pos, max_span=4)
    x = _input(shape, seed=43)
    norms = {"qkv_norm": layer.qkv_norm, "similarity_norm": layer.similarity_norm, "output_norm": layer.output_norm}
    before = {name: (n.moving_mean.numpy().copy(), n.moving_variance.numpy().copy()) for name, n in norms.items()}
    _, stats = explicit_axial(layer, x, training=True)
    layer(tf.constant(x), training=True)
    for name, norm in norms.items():
        mean, variance = (s.numpy() for s in stats[name])
        m = norm.momentum
        _assert_close_scaled(norm.moving_mean.numpy(), before[name][0] * m + mean * (1 - m), atol=1e-5, rtol=1e-5,
                             what=f"{name}/moving_mean")
        _assert_close_scaled(norm.moving_variance.numpy(), before[name][1] * m + variance * (1 - m), atol=1e-5,
                             rtol=1e-5, what=f"{name}/moving_variance")
        assert not np.allclose(norm.moving_variance.numpy(), before[name][1])
    # inference mode reads the moving statistics and updates nothing
    after = layer.similarity_norm.moving_variance.numpy().copy()
    layer(tf.constant(x), training=False)
    np.testing.assert_array_equal(layer.similarity_norm.moving_variance.numpy(), after)


@pytest.mark.parametrize("norm", [True, False], ids=["norm", "nonorm"])
@pytest.mark.parametrize("pos", [True, False], ids=["pos", "nopos"])
def test_inference_matches_explicit_reference(pos, norm):
    shape = (2, 6, 9, 3)
    layer, _ = _built_random_layer(shape, axis="width", num_heads=2, key_dim=3, value_dim=4, pos=pos, norm=norm,
                                   max_span=5)
    x = _input(shape, seed=44)
    _assert_close_scaled(_run(layer, x), explicit_axial(layer, x, training=False)[0].numpy(), what="output")


@pytest.mark.parametrize("training", [True, False], ids=["train", "infer"])
@pytest.mark.parametrize("pos", [True, False], ids=["pos", "nopos"])
def test_jit_compile_matches_eager(pos, training):
    shape = (2, 9, 6, 3)
    layer, _ = _built_random_layer(shape, axis="height", num_heads=2, key_dim=3, value_dim=4, pos=pos, max_span=4)
    x = _input(shape, seed=45)
    probe = tf.constant(_input((2, 9, 6, 8), seed=46))
    weights = [w.numpy() for w in layer.weights]

    def step(t):
        with tf.GradientTape() as tape:
            y = layer(t, training=training)
            loss = tf.reduce_sum(y * probe)
        return y, [tf.convert_to_tensor(g) for g in tape.gradient(loss, layer.trainable_weights)]

    y_eager, g_eager = step(tf.constant(x))
    state_eager = [w.numpy() for w in layer.weights]
    layer.set_weights(weights)
    y_jit, g_jit = tf.function(step, jit_compile=True)(tf.constant(x))
    _assert_close_scaled(y_jit, y_eager, atol=1e-5, rtol=1e-5, what="output")
    for var, a, e in zip(layer.trainable_weights, g_jit, g_eager):
        if not var.path.endswith("similarity_norm/beta"):  # exactly 0 up to round-off
            _assert_close_scaled(a, e, atol=1e-5, rtol=1e-4, what=var.path)
    for var, a, e in zip(layer.weights, [w.numpy() for w in layer.weights], state_eager):
        _assert_close_scaled(a, e, atol=1e-6, rtol=1e-6, what=var.path)  # same moving-statistics updates


@pytest.mark.parametrize("policy", ["mixed_float16", "mixed_bfloat16"])
def test_mixed_precision_training_statistics(policy):
    """Mixed precision: statistics in float32, so they (and the output) stay close to the float32 layer's."""
    shape = (2, 8, 6, 3)
    ref, _ = _built_random_layer(shape, axis="width", num_heads=2, key_dim=3, value_dim=4, max_span=4)
    layer = _make(axis="width", num_heads=2, key_dim=3, value_dim=4, max_span=4, dtype=policy)
    layer.build(shape)
    layer.set_weights(ref.get_weights())
    x = _input(shape, seed=47)
    y_ref = _run(ref, x, training=True)
    y = _run(layer, x, training=True)
    assert y.dtype == np.dtype(policy.split("_")[1])
    tol = 2e-2 if policy == "mixed_float16" else 1e-1
    _assert_close_scaled(y.astype(np.float32), y_ref, atol=tol, rtol=tol, what="output")
    for name in ("moving_mean", "moving_variance"):
        a = getattr(layer.similarity_norm, name)
        assert a.dtype == "float32"
        _assert_close_scaled(a.numpy(), getattr(ref.similarity_norm, name).numpy(), atol=tol, rtol=tol, what=name)


@pytest.mark.parametrize("pos", [True, False], ids=["pos", "nopos"])
def test_training_graph_has_no_reductions_or_concats_over_similarity_tensor(pos):
    """Analytic similarity normalisation: no reduction, concatenation, pad or slice reads an L²-sized tensor."""
    shape = (4, 24, 3, 4)  # N = 12 rows of length L = 24, 2 heads: one term is N·h·L² = 13824 ≫ other tensors
    layer, _ = _built_random_layer(shape, axis="height", num_heads=2, key_dim=3, value_dim=4, pos=pos, max_span=8)
    term_size = shape[0] * shape[2] * 2 * shape[1] ** 2
    fn = tf.function(lambda t: layer(t, training=True))
    graph = fn.get_concrete_function(tf.TensorSpec(shape, tf.float32)).graph
    big = {}
    for op in graph.get_operations():
        if op.type in ("Sum", "Mean", "Max", "SquaredDifference", "ConcatV2", "Pad", "PadV2", "StridedSlice", "Slice"):
            sizes = [t.shape.num_elements() or 0 for t in op.inputs]
            if max(sizes, default=0) >= term_size:
                big[op.name] = op.type
    assert not big, big


def test_training_with_unknown_spatial_size_matches_explicit_batchnorm():
    """Training-mode statistics with dynamic N and L (one traced graph, several sizes, L above and below max_span)."""
    layer = _make(axis="width", num_heads=2, key_dim=3, value_dim=4, max_span=5)
    layer.build((None, None, None, 3))
    randomize_weights(layer, seed=48)
    fn = tf.function(lambda t: layer(t, training=True),
                     input_signature=[tf.TensorSpec((None, None, None, 3), tf.float32)])
    for i, size in enumerate([(3, 7), (5, 4), (2, 9)]):
        x = _input((2, *size, 3), seed=50 + i)
        expected = explicit_axial(layer, x, training=True)[0].numpy()  # before the call updates the moving stats
        _assert_close_scaled(fn(tf.constant(x)).numpy(), expected, what=f"output {size}")


@pytest.mark.parametrize("shift", [0.0, 30.0])
def test_training_statistics_accurate_for_large_means(shift):
    """|mean| ≫ std (here up to ~70×): the analytic variance must not lose digits to E[x²] − E[x]² cancellation."""
    shape = (4, 32, 8, 4)
    layer, _ = _built_random_layer(shape, axis="height", num_heads=2, key_dim=4, value_dim=4, max_span=16)
    layer.qkv_norm.beta.assign(layer.qkv_norm.beta.numpy() + shift)  # q, k with large means
    layer.rel_q.assign(layer.rel_q.numpy() + shift / 10)  # tables with large means
    layer.rel_k.assign(layer.rel_k.numpy() - shift / 10)
    layer.similarity_norm.momentum = 0.0  # the moving statistics become the batch statistics
    x = _input(shape, seed=49)
    mean, variance = (s.numpy() for s in explicit_axial(layer, x, training=True)[1]["similarity_norm"])
    layer(tf.constant(x), training=True)
    np.testing.assert_allclose(layer.similarity_norm.moving_variance.numpy(), variance, rtol=1e-5)
    _assert_close_scaled(layer.similarity_norm.moving_mean.numpy(), mean, atol=1e-6, rtol=1e-6, what="mean")

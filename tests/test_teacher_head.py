"""AxialTeacherHead: NumPy reference, zero-gate identity, pooling, argument checks (the generic layer checks, config and
``.keras`` round trip included, are in tests/test_layers.py)."""

from __future__ import annotations

import numpy as np
import pytest
import keras

from axial_kd_tf.layers import AxialTeacherHead
from helpers import randomize_axial_weights as randomize_weights, reference_axial


def _params_of(layer) -> dict:
    return {"kernel": np.asarray(layer.kernel, np.float64), "bias": np.asarray(layer.bias, np.float64)}


@pytest.mark.parametrize("pos,norm,heads", [(True, True, 1), (True, False, 2), (False, True, 2)])
def test_matches_numpy_reference(pos, norm, heads):
    x = np.random.default_rng(0).normal(size=(2, 7, 6, 3)).astype("float32")
    head = AxialTeacherHead(3, hidden_dim=4, num_heads=heads, max_span=5, use_positional_encoding=pos,
                            use_normalization=norm, num_blocks=1)
    head(x)
    p_h = randomize_weights(head.height_attention, seed=1)
    p_w = randomize_weights(head.width_attention, seed=2)
    rng = np.random.default_rng(3)
    for dense in (head.in_proj, head.out_proj):
        dense.set_weights([rng.normal(0, 0.5, w.shape).astype("float32") for w in dense.get_weights()])
    head.gate.assign(0.7)
    kw = dict(num_heads=heads, key_dim=head.key_dim, value_dim=4 // heads, max_span=5, pos=pos, norm=norm)
    pin, pout = _params_of(head.in_proj), _params_of(head.out_proj)
    h = x.astype(np.float64) @ pin["kernel"] + pin["bias"]
    h = reference_axial(h, p_h, axis="height", **kw)
    h = reference_axial(h, p_w, axis="width", **kw)
    expected = x + 0.7 * (np.maximum(h, 0) @ pout["kernel"] + pout["bias"])
    np.testing.assert_allclose(np.asarray(head(x, training=False)), expected, atol=2e-4, rtol=1e-4)


@pytest.mark.parametrize("pool", [1, 2, 4])
def test_teacher_starts_equal_to_student(pool):
    x = np.random.default_rng(1).normal(size=(2, 12, 20, 5)).astype("float32")
    head = AxialTeacherHead(5, hidden_dim=8, num_heads=2, pool_size=pool)
    np.testing.assert_array_equal(np.asarray(head(x)), x)
    assert float(head.gate) == 0.0


def test_pooled_branch_is_upsampled_to_input_size():
    x = np.random.default_rng(2).normal(size=(1, 13, 18, 4)).astype("float32")  # not divisible by the pool
    head = AxialTeacherHead(4, hidden_dim=8, pool_size=4, num_blocks=1)
    head(x)
    head.gate.assign(1.0)
    y = np.asarray(head(x))
    assert y.shape == x.shape
    # The same computation spelled out with the sub-layers.
    h = keras.ops.average_pool(x, 4, strides=4, padding="same")
    h = head.width_attention(head.height_attention(head.in_proj(h)))
    h = keras.ops.image.resize(keras.ops.relu(h), (13, 18), interpolation="bilinear")
    np.testing.assert_allclose(y, x + np.asarray(head.out_proj(h)), atol=1e-5)


def test_any_size_in_a_model():
    inp = keras.Input((None, None, 3))
    model = keras.Model(inp, AxialTeacherHead(3, hidden_dim=4, pool_size=2)(inp))
    for shape in [(1, 8, 8, 3), (2, 17, 9, 3)]:
        assert model(np.zeros(shape, "float32")).shape == shape


def _reference_head(head, x, gate=None, blocks=None):
    """NumPy forward of a (possibly multi-block, residual or direct) head with its current weights."""
    kw = dict(num_heads=head.num_heads, key_dim=head.key_dim, value_dim=head.hidden_dim // head.num_heads,
              max_span=head.max_span, pos=head.use_positional_encoding, norm=head.use_normalization)
    pin, pout = _params_of(head.in_proj), _params_of(head.out_proj)
    h = x.astype(np.float64) @ pin["kernel"] + pin["bias"]
    for i, (p_h, p_w) in enumerate(blocks):
        y = np.maximum(reference_axial(reference_axial(h, p_h, axis="height", **kw), p_w, axis="width", **kw), 0)
        h = y if i == 0 else h + y
    branch = h @ pout["kernel"] + pout["bias"]
    return branch if gate is None else x + gate * branch


@pytest.mark.parametrize("residual,blocks", [(False, 1), (True, 2), (False, 2)])
def test_direct_and_multi_block_heads_match_numpy(residual, blocks):
    x = np.random.default_rng(5).normal(size=(2, 6, 5, 3)).astype("float32")
    head = AxialTeacherHead(3, hidden_dim=4, num_heads=2, max_span=4, residual=residual, num_blocks=blocks,
                            gate_init=0.3)
    head(x)
    assert len(head.blocks) == blocks
    params = [(randomize_weights(hh, seed=10 + 2 * i), randomize_weights(ww, seed=11 + 2 * i))
              for i, (hh, ww) in enumerate(head.blocks)]
    rng = np.random.default_rng(6)
    for dense in (head.in_proj, head.out_proj):
        dense.set_weights([rng.normal(0, 0.5, w.shape).astype("float32") for w in dense.get_weights()])
    expected = _reference_head(head, x, gate=0.3 if residual else None, blocks=params)
    np.testing.assert_allclose(np.asarray(head(x, training=False)), expected, atol=2e-4, rtol=1e-4)
    assert hasattr(head, "gate") == residual


def test_fixed_gate_is_not_trained_and_teacher_differs_from_start():
    x = np.random.default_rng(7).normal(size=(1, 8, 8, 5)).astype("float32")
    head = AxialTeacherHead(5, hidden_dim=8, gate_init=1.0, gate_trainable=False)
    y = np.asarray(head(x))
    assert float(head.gate) == 1.0
    assert all(w.path != head.gate.path for w in head.trainable_weights)
    assert np.abs(y - x).mean() > 1e-3  # the branch is on from the first step
    with pytest.raises(ValueError, match="gate"):
        AxialTeacherHead(5, gate_init=0.0, gate_trainable=False)
    with pytest.raises(ValueError):
        AxialTeacherHead(5, num_blocks=0)


def test_first_block_weights_keep_one_block_names():
    """A two-block head's first block has the one-block head's weight paths (its weights load by name)."""
    one = AxialTeacherHead(5, hidden_dim=8, num_blocks=1, name="h")
    two = AxialTeacherHead(5, hidden_dim=8, num_blocks=2, name="h")
    x = np.zeros((1, 4, 4, 5), "float32")
    one(x), two(x)
    assert {w.path for w in one.weights} < {w.path for w in two.weights}


def test_rejects_bad_arguments():
    with pytest.raises(ValueError):
        AxialTeacherHead(5, hidden_dim=10, num_heads=3)
    with pytest.raises(ValueError):
        AxialTeacherHead(5, pool_size=0)
    with pytest.raises(ValueError):
        AxialTeacherHead(5)(np.zeros((1, 4, 4, 3), "float32"))

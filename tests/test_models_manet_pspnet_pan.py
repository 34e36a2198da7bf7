"""MAnet, PSPNet and PAN: decoder parameter pins (SMP 0.6.0, on stand-in encoder maps), size checks in graphs of
unknown size, option errors, and NumPy references for the PSP adaptive pooling and the MAnet position attention block.
The full networks' pins, shapes and size errors are in tests/test_zoo.py, the layers' generic checks in
tests/test_layers.py."""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf

from axial_kd_tf.errors import UserError
from axial_kd_tf.models import blocks, manet, pan, pspnet
from helpers import ZOO_SPECS, count_params as n_trainable

RESNET34_CHANNELS = [3, 64, 64, 128, 256, 512]


def standin_features(depth: int, output_stride: int, size: int) -> list:
    """keras.Inputs shaped like resnet34's feature maps (stride 2**i, capped at ``output_stride`` by dilation)."""
    return [keras.Input((size // min(2**i, output_stride),) * 2 + (RESNET34_CHANNELS[i],), name=f"feat{i}")
            for i in range(depth + 1)]


# --------------------------------------------------------------------------------------------- decoder-only pins
def _manet_decoder_model() -> keras.Model:
    feats = standin_features(5, 32, 64)
    x = manet.manet_decoder(feats, RESNET34_CHANNELS, (256, 128, 64, 32, 16))
    return keras.Model(feats[1:], blocks.segmentation_head(x, 5))


def _pspnet_decoder_model() -> keras.Model:
    feats = standin_features(3, 32, 64)
    x = pspnet.pspnet_decoder(feats, RESNET34_CHANNELS[:4])
    return keras.Model(feats[-1], blocks.segmentation_head(x, 5, upsampling=8))


def _pan_decoder_model() -> keras.Model:
    feats = standin_features(5, 16, 128)
    x = pan.pan_decoder(feats, RESNET34_CHANNELS, encoder_depth=5, decoder_channels=32)
    return keras.Model(feats[2:], blocks.segmentation_head(x, 5, upsampling=4))


@pytest.mark.parametrize("build, arch, out_size", [
    (_manet_decoder_model, "manet", 64),
    (_pspnet_decoder_model, "pspnet", 64),
    (_pan_decoder_model, "pan", 128),
], ids=["manet", "pspnet", "pan"])
def test_decoder_and_head_parameter_counts_match_smp(build, arch, out_size):
    model = build()
    assert n_trainable(model) == ZOO_SPECS[arch].decoder + ZOO_SPECS[arch].head
    assert tuple(model.output.shape) == (None, out_size, out_size, 5)


# --------------------------------------------------------------------------------------------- size checks
def test_unknown_size_is_checked_at_run_time(zoo_network):
    pspnet_model = zoo_network("pspnet")
    fn = tf.function(lambda x: pspnet_model(x, training=False),
                     input_signature=[tf.TensorSpec((None, None, None, 3), tf.float32)])
    assert tuple(fn(tf.zeros((1, 40, 48, 3))).shape) == (1, 40, 48, 5)
    with pytest.raises(tf.errors.InvalidArgumentError, match="divisible by 8"):
        fn(tf.zeros((1, 44, 48, 3)))


def test_pan_minimum_size_is_checked_at_run_time():
    """The FPA pools the 1/16 map three more times: a dynamic-size graph must refuse sides under 128, and name the
    multiple first when both requirements fail (as the static check does)."""
    check = blocks.InputSizeCheck(16, "pan", minimum=128, name="check")
    fn = tf.function(check, input_signature=[tf.TensorSpec((None, None, None, 3), tf.float32)])
    assert tuple(fn(tf.zeros((1, 128, 144, 3))).shape) == (1, 128, 144, 3)
    with pytest.raises(tf.errors.InvalidArgumentError, match="at least 128"):
        fn(tf.zeros((1, 112, 144, 3)))
    for size in (120, 136):  # 120 fails both requirements, 136 only the multiple
        with pytest.raises(tf.errors.InvalidArgumentError, match="divisible by 16"):
            fn(tf.zeros((1, size, 144, 3)))
    with pytest.raises(UserError, match="divisible by 16"):
        check(np.zeros((1, 120, 144, 3), "float32"))


def test_pan_size_check_saved_as_min_input_size_still_loads():
    """``.keras`` files written while PAN's minimum was a class of its own (``pan.MinInputSize``) still load."""
    layer = keras.saving.deserialize_keras_object({
        "module": "axial_kd_tf.models.pan", "class_name": "MinInputSize", "registered_name": "axial_kd_tf>MinInputSize",
        "config": {"name": "input_min_size_check", "trainable": True, "dtype": "float32", "minimum": 128, "arch": "pan",
                   "reason": "the feature pyramid attention pools the 1/16 map three more times"}})
    assert type(layer) is blocks.InputSizeCheck and layer.name == "input_min_size_check"
    assert layer(np.zeros((1, 128, 136, 3), "float32")).shape == (1, 128, 136, 3)
    with pytest.raises(UserError, match=r"pan needs input height and width of at least 128 \(the feature pyramid"):
        layer(np.zeros((1, 120, 136, 3), "float32"))


def test_invalid_options_raise_user_errors():
    with pytest.raises(UserError, match="decoder_channels"):
        manet.build_manet(5, decoder_channels=(256, 128, 64, 32))
    with pytest.raises(UserError, match="upsampling"):
        pspnet.build_pspnet(5, upsampling=4)
    with pytest.raises(UserError, match="encoder_output_stride"):
        pan.build_pan(5, encoder_output_stride=8)
    with pytest.raises(UserError, match="decoder_use_norm"):
        pspnet.build_pspnet(5, decoder_use_norm="layernorm")


# --------------------------------------------------------------------------------------------- PSP adaptive pooling
def adaptive_avg_pool_reference(x: np.ndarray, size: int) -> np.ndarray:
    """PyTorch ``AdaptiveAvgPool2d((size, size))`` on NHWC: bin i covers [floor(i·n/s), ceil((i+1)·n/s))."""
    _, h, w, _ = x.shape
    out = np.zeros((x.shape[0], size, size, x.shape[3]), np.float64)
    for i in range(size):
        h0, h1 = (i * h) // size, -(-((i + 1) * h) // size)
        for j in range(size):
            w0, w1 = (j * w) // size, -(-((j + 1) * w) // size)
            out[:, i, j] = x[:, h0:h1, w0:w1].mean(axis=(1, 2))
    return out


@pytest.mark.parametrize("shape", [(2, 10, 7, 3), (1, 8, 8, 4), (1, 4, 5, 2), (1, 32, 13, 1)])
@pytest.mark.parametrize("size", [1, 2, 3, 6])
def test_adaptive_avg_pool_matches_pytorch_bins(shape, size):
    x = np.random.default_rng(1).standard_normal(shape).astype("float32")
    layer = pspnet.AdaptiveAvgPool2D(size)
    expected = adaptive_avg_pool_reference(x.astype(np.float64), size)
    np.testing.assert_allclose(layer(x).numpy(), expected, rtol=1e-5, atol=1e-6)
    # The same with unknown height and width (the shape is read at run time).
    fn = tf.function(layer, input_signature=[tf.TensorSpec((None, None, None, shape[3]), tf.float32)])
    np.testing.assert_allclose(fn(x).numpy(), expected, rtol=1e-5, atol=1e-6)


def test_adaptive_pool_bins_overlap_for_non_divisible_sizes():
    """7 → 3 bins: [0, 3), [2, 5), [4, 7) (PyTorch), i.e. overlapping, not a plain reshape-mean."""
    matrix = pspnet.adaptive_pool_matrix(7, 3).numpy()
    expected = np.zeros((3, 7))
    for i, (a, b) in enumerate([(0, 3), (2, 5), (4, 7)]):
        expected[i, a:b] = 1 / (b - a)
    np.testing.assert_allclose(matrix, expected, rtol=1e-6)


# --------------------------------------------------------------------------------------------- MAnet PAB
def _conv_nchw(x: np.ndarray, kernel: np.ndarray, bias: np.ndarray) -> np.ndarray:
    """PyTorch Conv2d (stride 1, padding k//2) on NCHW with a Keras HWIO kernel."""
    k = kernel.shape[0]
    pad = k // 2
    w = kernel.transpose(3, 2, 0, 1)  # OIHW
    xp = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    _, _, h, wd = x.shape
    out = np.zeros((x.shape[0], w.shape[0], h, wd))
    for dy in range(k):
        for dx in range(k):
            out += np.einsum("oi,bihw->bohw", w[:, :, dy, dx], xp[:, :, dy:dy + h, dx:dx + wd])
    return out + bias[None, :, None, None]


def pab_reference(x_nchw: np.ndarray, p: dict) -> np.ndarray:
    """SMP 0.6.0 ``PABBlock.forward`` transcribed to NumPy (NCHW), including its ``reshape(B, C, H, W)``."""
    b, c, h, w = x_nchw.shape
    top = _conv_nchw(x_nchw, *p["top"]).reshape(b, -1, h * w)                          # [B, P, HW]
    center = _conv_nchw(x_nchw, *p["center"]).reshape(b, -1, h * w).transpose(0, 2, 1)  # [B, HW, P]
    bottom = _conv_nchw(x_nchw, *p["bottom"]).reshape(b, c, h * w).transpose(0, 2, 1)   # [B, HW, C]
    sp = (center @ top).reshape(b, -1)
    sp = np.exp(sp - sp.max(axis=1, keepdims=True))
    sp = (sp / sp.sum(axis=1, keepdims=True)).reshape(b, h * w, h * w)
    sp = (sp @ bottom).reshape(b, c, h, w)   # a reinterpretation of the [B, HW, C] buffer, as in PyTorch
    return _conv_nchw(x_nchw + sp, *p["out"])


def test_position_attention_block_matches_numpy_reference():
    channels, pab_channels, h, w = 6, 4, 3, 5
    inp = keras.Input((None, None, channels))
    model = keras.Model(inp, manet.pab_block(inp, channels, pab_channels, name="pab"))
    rng = np.random.default_rng(2)
    params = {}
    for part in ("top", "center", "bottom", "out"):
        layer = model.get_layer(f"pab_{part}_conv")
        kernel = rng.standard_normal(layer.kernel.shape) * 0.5
        bias = rng.standard_normal(layer.bias.shape) * 0.1
        layer.set_weights([kernel.astype("float32"), bias.astype("float32")])
        params[part] = (kernel, bias)
    x = rng.standard_normal((2, h, w, channels)).astype("float32")
    expected = pab_reference(x.transpose(0, 3, 1, 2).astype(np.float64), params).transpose(0, 2, 3, 1)
    got = model(x).numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4)
    # Unknown spatial size at trace time gives the same result.
    fn = tf.function(model, input_signature=[tf.TensorSpec((None, None, None, channels), tf.float32)])
    np.testing.assert_allclose(fn(x).numpy(), expected, rtol=1e-4, atol=1e-4)

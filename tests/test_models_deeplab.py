"""DeepLabV3 / DeepLabV3+ (SMP 0.6.0 ports): decoder parameter pins, output stride, input-size checks in graphs,
init. The full networks' pins, shapes and size errors are in tests/test_zoo.py."""

from __future__ import annotations

import math

import keras
import numpy as np
import pytest
import tensorflow as tf

from axial_kd_tf.errors import UserError
from axial_kd_tf.models import blocks, build_network
from axial_kd_tf.models.deeplabv3 import (
    build_deeplabv3, deeplabv3_decoder, image_pooling, separable_conv2d, torch_default_init,
)
from axial_kd_tf.models.deeplabv3plus import build_deeplabv3plus, deeplabv3plus_decoder
from helpers import ZOO_SPECS, count_params as n_trainable

SMP_DECODER_AND_HEAD = {arch: ZOO_SPECS[arch].decoder + ZOO_SPECS[arch].head for arch in ("deeplabv3", "deeplabv3plus")}


def images(batch: int, size: int, channels: int = 3) -> np.ndarray:
    return np.random.default_rng(0).normal(size=(batch, size, size, channels)).astype("float32")


# --------------------------------------------------------------------------------------------------------------------
# Decoder + head on stand-in encoder maps (SMP resnet34 channels [3, 64, 64, 128, 256, 512]); no encoder needed
# --------------------------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def v3_decoder() -> keras.Model:
    deep = keras.Input((None, None, 512), name="deep")
    y = deeplabv3_decoder(deep)
    model = keras.Model(deep, blocks.segmentation_head(y, 5, kernel_size=1, upsampling=8))
    torch_default_init(model)
    return model


@pytest.fixture(scope="module")
def v3plus_decoder() -> keras.Model:
    deep = keras.Input((None, None, 512), name="deep")
    low = keras.Input((None, None, 64), name="low")
    y = deeplabv3plus_decoder(deep, low, deep_stride=16)
    model = keras.Model([deep, low], blocks.segmentation_head(y, 5, kernel_size=1, upsampling=4))
    torch_default_init(model)
    return model


def test_decoder_param_pins_match_smp(v3_decoder, v3plus_decoder):
    assert n_trainable(v3_decoder) == SMP_DECODER_AND_HEAD["deeplabv3"]
    assert n_trainable(v3plus_decoder) == SMP_DECODER_AND_HEAD["deeplabv3plus"]


@pytest.mark.parametrize("fixture", ["v3_decoder", "v3plus_decoder"])
def test_only_the_head_conv_has_a_bias(fixture, request):
    model = request.getfixturevalue(fixture)
    with_bias = [l.name for l in model.layers
                 if isinstance(l, (keras.layers.Conv2D, keras.layers.DepthwiseConv2D)) and l.use_bias]
    assert with_bias == ["segmentation_head_conv"]


def test_separable_conv_matches_smp_param_count():
    x = keras.Input((None, None, 304))
    model = keras.Model(x, separable_conv2d(x, 256, 3, "sep", dilation_rate=1))
    assert n_trainable(model) == 304 * 9 + 304 * 256  # depthwise (no bias) + pointwise (no bias)
    out = model(np.zeros((1, 7, 5, 304), "float32"))
    assert out.shape == (1, 7, 5, 256)  # PyTorch padding keeps the size


def test_atrous_branches_keep_size_with_pytorch_padding(v3plus_decoder):
    # Rates (12, 24, 36) on a 4x4 / 16x16 map (64x64 input at OS 16): padding = rate on each side, as in SMP.
    for name, rate in (("aspp_b1", 12), ("aspp_b2", 24), ("aspp_b3", 36)):
        dw = v3plus_decoder.get_layer(f"{name}_sepconv_depthwise")
        assert dw.dilation_rate == (rate, rate)
        assert v3plus_decoder.get_layer(f"{name}_sepconv_pad").padding == ((rate, rate), (rate, rate))
    out = v3plus_decoder([np.zeros((2, 4, 4, 512), "float32"), np.zeros((2, 16, 16, 64), "float32")])
    assert out.shape == (2, 64, 64, 5) and out.dtype == tf.float32


def test_v3_atrous_convs_are_plain_3x3(v3_decoder):
    for name, rate in (("aspp_b1", 12), ("aspp_b2", 24), ("aspp_b3", 36)):
        conv = v3_decoder.get_layer(f"{name}_conv")
        assert isinstance(conv, keras.layers.Conv2D) and conv.kernel.shape == (3, 3, 512, 256)
        assert conv.dilation_rate == (rate, rate)
    out = v3_decoder(np.zeros((1, 8, 6, 512), "float32"))
    assert out.shape == (1, 64, 48, 5) and out.dtype == tf.float32


def test_pytorch_default_init(v3plus_decoder):
    # kaiming_uniform(a=sqrt(5)) == U(-1/sqrt(fan_in), 1/sqrt(fan_in)); PyTorch's fan_in of a depthwise conv is k*k.
    cases = {"aspp_b0_conv": 512, "aspp_project_conv": 1280, "aspp_b1_sepconv_depthwise": 9,
             "decoder_block2_sepconv_pointwise": 304, "segmentation_head_conv": 256}
    for name, fan_in in cases.items():
        layer = v3plus_decoder.get_layer(name)
        bound = 1 / math.sqrt(fan_in)
        for w in layer.weights:
            w = np.abs(w.numpy())
            assert w.max() <= bound + 1e-6
            if w.size >= 256:
                assert w.max() > 0.9 * bound
    bias = v3plus_decoder.get_layer("segmentation_head_conv").bias.numpy()
    assert np.any(bias != 0)  # PyTorch's default bias init, not zeros


def test_image_pooling_branch_at_unknown_sizes():
    x = keras.Input((None, None, 8))
    model = keras.Model(x, image_pooling(x, 4, "pool"))
    fn = tf.function(model, input_signature=[tf.TensorSpec((None, None, None, 8), tf.float32)])
    for shape in ((2, 3, 5, 8), (1, 4, 4, 8), (1, 1, 1, 8)):
        inp = np.random.default_rng(1).normal(size=shape).astype("float32")
        out = fn(tf.constant(inp)).numpy()
        assert out.shape == shape[:3] + (4,)
        # constant over space, equal to ReLU(BN(conv(mean))) (inference BN: x / sqrt(1 + eps))
        kernel = model.get_layer("pool_conv").kernel.numpy()[0, 0]
        expect = np.maximum(inp.mean(axis=(1, 2)) @ kernel / np.sqrt(1 + blocks.BN_EPSILON), 0)
        np.testing.assert_allclose(out, np.broadcast_to(expect[:, None, None, :], out.shape), rtol=1e-4, atol=1e-5)


def test_v3plus_decoder_converts_to_builtin_tflite():
    # Dilated depthwise convs with PyTorch padding must become plain DEPTHWISE_CONV_2D (no SPACE_TO_BATCH_ND, no Flex).
    from axial_kd_tf.export import convert_tflite, run_tflite, tflite_op_names

    image = keras.Input((None, None, 3), name="image")
    deep = blocks.conv2d(image, 512, 16, "standin_deep", strides=16, padding=0)  # stand-in encoder maps
    low = blocks.conv2d(image, 64, 4, "standin_low", strides=4, padding=0)
    y = deeplabv3plus_decoder(deep, low, deep_stride=16)
    model = keras.Model(image, blocks.segmentation_head(y, 5, kernel_size=1, upsampling=4))
    torch_default_init(model)
    model_bytes = convert_tflite(model, (64, 64, 3), "float32")
    ops = tflite_op_names(model_bytes)
    assert "DEPTHWISE_CONV_2D" in ops and "SPACE_TO_BATCH_ND" not in ops
    x = images(1, 64)
    np.testing.assert_allclose(run_tflite(model_bytes, x), model(x).numpy(), atol=1e-5)


# --------------------------------------------------------------------------------------------------------------------
# Option validation (checked before the encoder is built)
# --------------------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("builder", [build_deeplabv3, build_deeplabv3plus])
@pytest.mark.parametrize("options, match", [
    ({"encoder_output_stride": 32}, "encoder_output_stride"),
    ({"decoder_atrous_rates": (6, 12)}, "decoder_atrous_rates"),
    ({"decoder_aspp_dropout": 1.5}, "decoder_aspp_dropout"),
    ({"encoder_depth": 2}, "encoder_depth"),
])
def test_invalid_options(builder, options, match):
    with pytest.raises(UserError, match=match):
        builder(5, **options)


def test_unknown_option_is_a_user_error():
    with pytest.raises(UserError, match="deeplabv3plus"):
        build_network("deeplabv3plus", encoder="resnet34", num_classes=5, activation="softmax")


# --------------------------------------------------------------------------------------------------------------------
# Full networks (the shared resnet34 networks of the session, read only)
# --------------------------------------------------------------------------------------------------------------------

@pytest.fixture
def v3(zoo_network) -> keras.Model:
    return zoo_network("deeplabv3")


@pytest.fixture
def v3plus(zoo_network) -> keras.Model:
    return zoo_network("deeplabv3plus")


def _aspp_input_shape(model: keras.Model, size: int) -> tuple:
    probe = keras.Model(model.input, model.get_layer("aspp_b0_conv").input)
    return tuple(probe(images(1, size, channels=model.input.shape[-1])).shape)


def test_encoder_runs_at_output_stride_8_and_16(v3, v3plus):
    assert _aspp_input_shape(v3, 64) == (1, 8, 8, 512)       # OS 8: 64 / 8
    assert _aspp_input_shape(v3plus, 64) == (1, 4, 4, 512)   # OS 16: 64 / 16
    low = keras.Model(v3plus.input, v3plus.get_layer("decoder_block1_conv").input)
    assert tuple(low(images(1, 64)).shape) == (1, 16, 16, 64)  # low-level maps[2] at 1/4
    assert v3.get_layer("segmentation_head_upsample").scale == 8
    assert v3plus.get_layer("decoder_upsample").scale == 4
    assert v3plus.get_layer("decoder_upsample").align_corners  # nn.UpsamplingBilinear2d


def test_input_size_is_checked_at_run_time_in_a_graph_of_unknown_size(v3plus):
    fn = tf.function(v3plus, input_signature=[tf.TensorSpec((None, None, None, 3), tf.float32)])
    with pytest.raises(tf.errors.InvalidArgumentError, match="divisible by 16"):
        fn(tf.constant(images(1, 72)))
    assert fn(tf.constant(images(1, 80))).shape == (1, 80, 80, 5)  # 72 is fine for OS 8, 80 for OS 16


def test_v3_output_stride_16_option():
    model = build_deeplabv3(3, in_channels=1, encoder="resnet18", encoder_output_stride=16)
    assert _aspp_input_shape(model, 64) == (1, 4, 4, 512)
    assert model.get_layer("segmentation_head_upsample").scale == 16
    assert model(images(1, 64, channels=1)).shape == (1, 64, 64, 3)
    with pytest.raises(ValueError, match="divisible by 16"):
        model(images(1, 72, channels=1))

"""Unet, UNet++, Linknet and FPN: parameter counts pinned to segmentation_models_pytorch 0.6.0, shapes, size checks.

SMP reference (resnet34 encoder, 5 classes, 3 input channels; trainable parameters, BN running stats excluded):
Unet 24,436,949; UnetPlusPlus 26,079,189; Linknet 21,772,069; FPN 23,155,909, of which the encoder is 21,284,672.
"""

from __future__ import annotations

import numpy as np
import pytest

import keras

from axial_kd_tf.models import blocks, fpn, linknet, unet, unetplusplus

RESNET34_CHANNELS = [3, 64, 64, 128, 256, 512]
RESNET34_PARAMS = 21_284_672
SMP_TOTAL = {"unet": 24_436_949, "unetplusplus": 26_079_189, "linknet": 21_772_069, "fpn": 23_155_909}
SMP_DECODER_AND_HEAD = {arch: total - RESNET34_PARAMS for arch, total in SMP_TOTAL.items()}
BUILDERS = {"unet": unet.build_unet, "unetplusplus": unetplusplus.build_unetplusplus,
            "linknet": linknet.build_linknet, "fpn": fpn.build_fpn}
DECODERS = {  # decoder function, head kernel size, head upsampling
    "unet": (unet.unet_decoder, 3, 1),
    "unetplusplus": (unetplusplus.unetplusplus_decoder, 3, 1),
    "linknet": (linknet.linknet_decoder, 1, 1),
    "fpn": (fpn.fpn_decoder, 1, 4),
}


def n_trainable(model: keras.Model) -> int:
    return int(sum(np.prod(w.shape) for w in model.trainable_weights))


def standin_features(h: int | None = 64, w: int | None = 64, channels=RESNET34_CHANNELS) -> list:
    """Encoder stand-in: one ``keras.Input`` per stride 2**i with resnet34's channels (ceil sizes, like the convs)."""
    return [keras.Input((None if h is None else -(-h // 2**i), None if w is None else -(-w // 2**i), c),
                        name=f"feature{i}") for i, c in enumerate(channels)]


def decoder_model(arch: str, num_classes: int = 5, **kwargs) -> keras.Model:
    fn, kernel, up = DECODERS[arch]
    feats = standin_features()
    x = fn(feats, RESNET34_CHANNELS, **kwargs)
    logits = blocks.segmentation_head(x, num_classes, kernel_size=kernel, upsampling=up)
    return keras.Model(feats, logits)


# --- decoder + head on stand-in encoder maps (no encoder module needed) ----------------------------------------

@pytest.mark.parametrize("arch", sorted(DECODERS))
def test_decoder_and_head_params_match_smp(arch):
    model = decoder_model(arch)
    assert n_trainable(model) == SMP_DECODER_AND_HEAD[arch]
    assert tuple(model.output.shape) == (None, 64, 64, 5)
    assert model.output.dtype == "float32"


def test_unet_decoder_resizes_to_each_skips_exact_size():
    # 72×72 through resnet34 gives maps of 36, 18, 9, 5, 3: non-integer ratios (3→5, 5→9)
    feats = [keras.Input((s, s, c)) for s, c in zip((72, 36, 18, 9, 5, 3), RESNET34_CHANNELS)]
    x = unet.unet_decoder(feats, RESNET34_CHANNELS)
    assert tuple(x.shape) == (None, 72, 72, 16)


def test_unet_scse_attention_param_count():
    """scSE (reduction 16) after each concat and each block; SMP also *creates* (but never calls) attention1 of the
    skip-less last block (32 channels, 195 parameters): a Keras functional model has no unused layers."""

    def scse(c: int) -> int:
        r = c // 16
        return (c * r + r) + (r * c + c) + (c + 1)

    cat_channels = [768, 384, 192, 128]      # blocks with a skip
    out_channels = [256, 128, 64, 32, 16]
    expected = SMP_DECODER_AND_HEAD["unet"] + sum(map(scse, cat_channels)) + sum(map(scse, out_channels))
    assert n_trainable(decoder_model("unet", attention_type="scse")) == expected


def test_fpn_cat_merge_widens_head_input():
    model = decoder_model("fpn", merge_policy="cat")
    # head 1×1: 4·128 → 5 instead of 128 → 5
    assert n_trainable(model) == SMP_DECODER_AND_HEAD["fpn"] - (128 * 5) + (512 * 5)


def test_linknet_transposed_conv_is_pytorch_convtranspose_k4_s2_p1():
    """Keras Conv2DTranspose(4, 2, "same") == PyTorch ConvTranspose2d(k=4, s=2, p=1) with weight [in,out,kh,kw] →
    Keras [kh,kw,out,in]; output exactly 2× the input; 16·in·out + out parameters."""
    rng = np.random.default_rng(0)
    cin, cout, h, w = 3, 2, 5, 7
    x = rng.standard_normal((1, h, w, cin)).astype("float32")
    w_torch = rng.standard_normal((cin, cout, 4, 4)).astype("float32")
    bias = rng.standard_normal(cout).astype("float32")
    # PyTorch semantics: full transposed conv (size (n-1)·2+4), then crop padding=1 on each side
    full = np.zeros((2 * h + 2, 2 * w + 2, cout), "float32")
    for iy in range(h):
        for ix in range(w):
            full[2 * iy:2 * iy + 4, 2 * ix:2 * ix + 4] += np.einsum("c,cokl->klo", x[0, iy, ix], w_torch)
    expected = full[1:-1, 1:-1] + bias
    inp = keras.Input((None, None, cin))
    layer = keras.layers.Conv2DTranspose(cout, 4, strides=2, padding="same")
    model = keras.Model(inp, layer(inp))
    layer.set_weights([w_torch.transpose(2, 3, 1, 0), bias])
    out = np.asarray(model(x))
    assert out.shape == (1, 2 * h, 2 * w, cout)
    np.testing.assert_allclose(out[0], expected, rtol=1e-5, atol=1e-5)
    assert n_trainable(model) == 16 * cin * cout + cout


# --- full networks with the resnet34 encoder ----------------------------------------------------------------------

_MODELS: dict = {}


@pytest.fixture(scope="module")
def built():
    def get(arch: str, **kwargs) -> keras.Model:
        key = (arch, tuple(sorted(kwargs.items())))
        if key not in _MODELS:
            _MODELS[key] = BUILDERS[arch](num_classes=5, in_channels=kwargs.pop("in_channels", 3),
                                          encoder="resnet34", **kwargs)
        return _MODELS[key]

    return get


@pytest.mark.parametrize("arch", sorted(BUILDERS))
def test_total_params_match_smp(built, arch):
    model = built(arch)
    assert model.name == f"{arch}_resnet34"
    assert n_trainable(model) == SMP_TOTAL[arch]


@pytest.mark.parametrize("arch", sorted(BUILDERS))
def test_output_is_float32_logits_at_input_size_for_two_sizes(built, arch):
    model = built(arch)
    assert tuple(model.input.shape) == (None, None, None, 3)
    for h, w in ((64, 64), (64, 96)):
        x = np.random.default_rng(0).standard_normal((1, h, w, 3)).astype("float32")
        y = model(x, training=False)
        assert tuple(y.shape) == (1, h, w, 5)
        assert y.dtype == "float32"
        assert np.isfinite(np.asarray(y)).all()


def test_unet_accepts_sizes_that_are_not_multiples_of_32(built):
    model = built("unet")
    for h, w in ((72, 72), (65, 67)):
        y = model(np.zeros((2, h, w, 3), "float32"), training=False)
        assert tuple(y.shape) == (2, h, w, 5)


@pytest.mark.parametrize("arch", ["unetplusplus", "linknet", "fpn"])
def test_others_reject_72x72_naming_the_multiple(built, arch):
    model = built(arch)
    with pytest.raises(ValueError, match=r"divisible by 32.*multiple of 32"):
        model(np.zeros((1, 72, 72, 3), "float32"), training=False)


def test_unet_single_channel_input(built):
    model = built("unet", in_channels=1)
    y = model(np.ones((1, 64, 64, 1), "float32"), training=False)
    assert tuple(y.shape) == (1, 64, 64, 5)
    assert y.dtype == "float32"

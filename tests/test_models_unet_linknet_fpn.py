"""Unet, UNet++, Linknet and FPN: decoder parameter pins (SMP 0.6.0, on stand-in encoder maps), decoder details,
U-Net's any-size input. The full networks' pins, shapes and size errors are in the zoo tester (tests/test_zoo.py).
"""

from __future__ import annotations

import numpy as np
import pytest

import keras

from axial_kd_tf.models import blocks, fpn, linknet, unet, unetplusplus
from helpers import ZOO_SPECS, count_params as n_trainable

RESNET34_CHANNELS = [3, 64, 64, 128, 256, 512]
SMP_DECODER_AND_HEAD = {arch: ZOO_SPECS[arch].decoder + ZOO_SPECS[arch].head
                        for arch in ("unet", "unetplusplus", "linknet", "fpn")}
DECODERS = {  # decoder function, head kernel size, head upsampling
    "unet": (unet.unet_decoder, 3, 1),
    "unetplusplus": (unetplusplus.unetplusplus_decoder, 3, 1),
    "linknet": (linknet.linknet_decoder, 1, 1),
    "fpn": (fpn.fpn_decoder, 1, 4),
}


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


# --- full network (the shared resnet34 U-Net of the session) -------------------------------------------------------

def test_unet_accepts_sizes_that_are_not_multiples_of_32(zoo_network):
    model = zoo_network("unet")
    for h, w in ((72, 72), (65, 67)):
        y = model(np.zeros((2, h, w, 3), "float32"), training=False)
        assert tuple(y.shape) == (2, h, w, 5)

"""Encoders of the model zoo (``axial_kd_tf.models.encoders``): taps, parameter pins, dilation, ImageNet weights.

Nothing downloads: Keras' ImageNet weights are faked by pointing keras.applications' ``get_file`` at local files;
torchvision's are random-weight PyTorch ResNets saved with ``torch.save`` and "downloaded" from a ``file://`` mirror.
"""

from __future__ import annotations

import datetime
import hashlib
import pickle
import re
import shutil
import zipfile
from collections import OrderedDict

import keras
import numpy as np
import pytest
from keras.src.utils import file_utils  # what keras.applications calls to fetch weights
from torch_resnet import torch_resnet

from axial_kd_tf.data import download
from axial_kd_tf.errors import UserError
from axial_kd_tf.models import encoders
from axial_kd_tf.models import torchvision_weights as tv
from axial_kd_tf.models.torch_checkpoint import read_torch_state_dict
from axial_kd_tf.models.encoders import (
    APP_TAPS,
    adapt_first_conv_kernel,
    available_encoders,
    build_encoder,
    dilatable_encoders,
)
from helpers import RESNET34_DEPTH3_ENCODER, RESNET34_ENCODER

HEAVY = {"resnet152", "efficientnetb5", "efficientnetb6", "efficientnetb7", "convnext_base"}

# Channels of maps[1..5] (0 = no map at that stride).
EXPECTED_CHANNELS = {
    "resnet18": (64, 64, 128, 256, 512),
    "resnet34": (64, 64, 128, 256, 512),
    "resnet50": (64, 256, 512, 1024, 2048),
    "resnet101": (64, 256, 512, 1024, 2048),
    "resnet152": (64, 256, 512, 1024, 2048),
    "efficientnetb0": (96, 144, 240, 672, 1280),
    "efficientnetb1": (96, 144, 240, 672, 1280),
    "efficientnetb2": (96, 144, 288, 720, 1408),
    "efficientnetb3": (144, 192, 288, 816, 1536),
    "efficientnetb4": (144, 192, 336, 960, 1792),
    "efficientnetb5": (144, 240, 384, 1056, 2048),
    "efficientnetb6": (192, 240, 432, 1200, 2304),
    "efficientnetb7": (192, 288, 480, 1344, 2560),
    "mobilenetv2": (96, 144, 192, 576, 1280),
    "convnext_tiny": (0, 96, 192, 384, 768),
    "convnext_small": (0, 96, 192, 384, 768),
    "convnext_base": (0, 128, 256, 512, 1024),
    "vgg16": (128, 256, 512, 512, 512),
}

# Trainable parameters at in_channels=1 (at 3 channels each keras.applications encoder has exactly the trainable
# parameters of its keras.applications model with include_top=False; resnet18/34 are pinned below).
PARAMS_1CH = {
    "resnet18": 11_170_240, "resnet34": 21_278_400,
    "resnet50": 23_528_320, "resnet101": 42_546_560, "resnet152": 58_213_248,
    "efficientnetb0": 4_006_972, "efficientnetb1": 6_512_608, "efficientnetb2": 7_700_418,
    "efficientnetb3": 10_695_512, "efficientnetb4": 17_547_752, "efficientnetb5": 28_339_920,
    "efficientnetb6": 40_734_696, "efficientnetb7": 63_785_808,
    "mobilenetv2": 2_223_296,
    "convnext_tiny": 27_817_056, "convnext_small": 49_451_616, "convnext_base": 87_562_368,
    "vgg16": 14_713_536,
}


def _maybe_slow(names):
    return [pytest.param(n, marks=pytest.mark.slow) if n in HEAVY else n for n in names]


def _params(features: encoders.Features) -> int:
    model = keras.Model(features.maps[0], [m for m in features.maps[1:] if m is not None])
    return sum(int(np.prod(w.shape)) for w in model.trainable_weights)


def _model(features: encoders.Features) -> keras.Model:
    return keras.Model(features.maps[0], [m for m in features.maps[1:] if m is not None])


# ---------------------------------------------------------------------------------------------------------------
# Native resnets
# ---------------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name, depth, expected", [
    ("resnet34", 5, RESNET34_ENCODER),  # SMP / torchvision resnet34 without fc
    ("resnet18", 5, 11_176_512),
    ("resnet34", 3, RESNET34_DEPTH3_ENCODER),  # PSPNet's encoder_depth=3: stem + layer1 + layer2
])
def test_native_resnet_parameter_pins(name, depth, expected):
    feats = build_encoder(name, keras.Input((None, None, 3)), depth=depth)
    assert _params(feats) == expected
    assert len(feats.maps) == depth + 1
    assert feats.output_stride == min(32, 2 ** depth)


def test_native_resnet_layer_names_follow_torchvision_keys():
    inp = keras.Input((None, None, 3))
    names = [layer.name for layer in _model(build_encoder("resnet34", inp)).layers[1:]]
    assert len(names) == len(set(names))
    assert all(n.startswith("encoder_") for n in names)
    for expected in ("encoder_conv1", "encoder_bn1", "encoder_maxpool", "encoder_layer1_block2_conv2",
                     "encoder_layer3_block5_bn1", "encoder_layer4_block0_downsample_conv"):
        assert expected in names
    assert "encoder_layer1_block0_downsample_conv" not in names  # layer1 keeps width and stride
    again = [layer.name for layer in _model(build_encoder("resnet34", keras.Input((None, None, 3)))).layers[1:]]
    assert again == names  # stable across builds


# ---------------------------------------------------------------------------------------------------------------
# Taps of every encoder (built with in_channels=1, which also checks single-channel inputs for every family)
# ---------------------------------------------------------------------------------------------------------------

def test_every_encoder_has_expected_channels():
    assert sorted(EXPECTED_CHANNELS) == sorted(available_encoders())
    assert set(APP_TAPS) | set(encoders.NATIVE_RESNETS) == set(available_encoders())


@pytest.mark.parametrize("name", _maybe_slow(available_encoders()))
def test_taps_strides_and_channels(name):
    inp = keras.Input((64, 64, 1))
    feats = build_encoder(name, inp)
    assert len(feats.maps) == 6 and len(feats.channels) == 6
    assert feats.maps[0] is inp and feats.channels[0] == 1
    assert feats.output_stride == 32
    for i in range(1, 6):
        m = feats.maps[i]
        if EXPECTED_CHANNELS[name][i - 1] == 0:
            assert m is None and feats.channels[i] == 0
            continue
        assert tuple(m.shape[1:3]) == (64 // 2 ** i,) * 2, (name, i, m.shape)
        assert feats.channels[i] == m.shape[-1] == EXPECTED_CHANNELS[name][i - 1]
    assert _params(feats) == PARAMS_1CH[name]
    model = _model(feats)
    assert all(layer.momentum == 0.9 for layer in model.layers if isinstance(layer, keras.layers.BatchNormalization))
    names = [layer.name for layer in model.layers[1:]]
    assert all(n.startswith("encoder_") for n in names) and len(set(names)) == len(names)


@pytest.mark.parametrize("name, deeper", [
    ("resnet50", r"conv4_"),
    ("efficientnetb0", r"block4a_dwconv|block[5-7]|top_"),
    ("convnext_tiny", r"stage_2|downsampling_block_2"),
])
def test_depth_builds_only_used_stages(name, deeper):
    feats = build_encoder(name, keras.Input((32, 32, 3)), depth=3)
    assert len(feats.maps) == 4 and feats.output_stride == 8
    assert feats.maps[3].shape[1] == 4 and feats.channels[3] == EXPECTED_CHANNELS[name][2]
    names = " ".join(layer.name for layer in _model(feats).layers)
    assert not re.search(deeper, names)


def test_any_input_size():
    """One built encoder (native and keras.applications) runs on 64² and 96² inputs."""
    for name in ("resnet34", "mobilenetv2"):
        inp = keras.Input((None, None, 3))
        model = _model(build_encoder(name, inp))
        for size in (64, 96):
            outs = model(np.zeros((1, size, size, 3), np.float32), training=False)
            assert [o.shape[1] for o in outs] == [size // 2 ** i for i in range(1, 6)]


# ---------------------------------------------------------------------------------------------------------------
# Dilation (output_stride 16 / 8)
# ---------------------------------------------------------------------------------------------------------------

# Layer configs a dilated network must have: output_stride → [(layer, attribute, value)].
DILATED_CONFIGS = {
    "mobilenetv2": {
        16: [("block_6_pad", "padding", ((0, 1), (0, 1))), ("block_13_pad", "padding", ((2, 2), (2, 2))),
             ("block_13_depthwise", "strides", (1, 1)), ("block_16_depthwise", "dilation_rate", (2, 2))],
        8: [("block_6_pad", "padding", ((2, 2), (2, 2))), ("block_6_depthwise", "strides", (1, 1)),
            ("block_12_depthwise", "dilation_rate", (2, 2)), ("block_13_pad", "padding", ((4, 4), (4, 4))),
            ("block_15_depthwise", "dilation_rate", (4, 4)), ("block_3_depthwise", "strides", (2, 2))],
    },
    "efficientnetb0": {
        16: [("block6a_dwconv_pad", "padding", ((4, 4), (4, 4))), ("block6a_dwconv", "strides", (1, 1)),
             ("block7a_dwconv", "dilation_rate", (2, 2)), ("block4a_dwconv", "strides", (2, 2))],
        8: [("block4a_dwconv_pad", "padding", ((2, 2), (2, 2))), ("block5c_dwconv", "dilation_rate", (2, 2)),
            ("block6a_dwconv_pad", "padding", ((8, 8), (8, 8))), ("block6d_dwconv", "dilation_rate", (4, 4))],
    },
    "resnet50": {
        16: [("conv5_block1_1_conv", "strides", (1, 1)), ("conv5_block1_0_conv", "strides", (1, 1)),
             ("conv5_block3_2_conv", "dilation_rate", (2, 2)), ("conv4_block1_1_conv", "strides", (2, 2))],
        8: [("conv4_block1_0_conv", "strides", (1, 1)), ("conv4_block6_2_conv", "dilation_rate", (2, 2)),
            ("conv5_block1_2_conv", "dilation_rate", (4, 4))],
    },
}


@pytest.mark.parametrize("name", ["resnet18", "resnet34", "resnet50", "mobilenetv2", "efficientnetb0",
                                  pytest.param("resnet101", marks=pytest.mark.slow),
                                  pytest.param("efficientnetb4", marks=pytest.mark.slow)])
@pytest.mark.parametrize("output_stride", [16, 8])
def test_dilation_sizes_configs_and_unchanged_params(name, output_stride):
    feats = build_encoder(name, keras.Input((64, 64, 1)), output_stride=output_stride)
    assert feats.output_stride == output_stride
    sizes = [m.shape[1] for m in feats.maps[1:]]
    assert sizes == [32, 16, 8, 64 // min(16, output_stride), 64 // output_stride]
    assert feats.channels[1:] == list(EXPECTED_CHANNELS[name])
    assert _params(feats) == PARAMS_1CH[name]
    model = _model(feats)
    for layer, attr, value in DILATED_CONFIGS.get(name, {}).get(output_stride, []):
        got = getattr(model.get_layer(f"encoder_{layer}"), attr)
        assert tuple(map(lambda v: tuple(v) if isinstance(v, (list, tuple)) else v, got)) == value, (layer, attr)


def test_dilation_follows_smp_make_dilated_on_native_resnet():
    """SMP dilates *every* conv of a dilated stage (torchvision keeps the old rate on the first block's conv1)."""
    model = _model(build_encoder("resnet34", keras.Input((None, None, 3)), output_stride=8))
    convs = {layer.name: layer for layer in model.layers if isinstance(layer, keras.layers.Conv2D)}
    for layer_i, rate in ((3, 2), (4, 4)):
        for name, conv in convs.items():
            if name.startswith(f"encoder_layer{layer_i}_"):
                assert tuple(conv.strides) == (1, 1)
                if conv.kernel_size == (3, 3):
                    assert tuple(conv.dilation_rate) == (rate, rate)
                    assert model.get_layer(f"{name}_pad").padding == ((rate, rate), (rate, rate))
    assert tuple(convs["encoder_layer2_block0_conv1"].strides) == (2, 2)


def test_dilated_keras_resnet_is_exact_a_trous():
    """Keras ResNet v1 strides with 1×1 convs, so the dilated network equals the undilated one on its sub-grid."""
    x = np.random.default_rng(0).normal(size=(1, 64, 64, 3)).astype(np.float32)
    models = {os_: _model(build_encoder("resnet50", keras.Input((None, None, 3)), output_stride=os_))
              for os_ in (32, 8)}
    models[8].set_weights(models[32].get_weights())
    ref = [o.numpy() for o in models[32](x, training=False)]
    out8 = [o.numpy() for o in models[8](x, training=False)]
    np.testing.assert_allclose(out8[2], ref[2], atol=1e-5)
    np.testing.assert_allclose(out8[3][:, ::2, ::2], ref[3], atol=1e-5)
    np.testing.assert_allclose(out8[4][:, ::4, ::4], ref[4], atol=1e-5)


@pytest.mark.parametrize("name", ["vgg16", "convnext_tiny"])
def test_dilation_unsupported_is_a_user_error(name):
    with pytest.raises(UserError, match="resnet50.*mobilenetv2|mobilenetv2.*resnet50"):
        build_encoder(name, keras.Input((None, None, 3)), output_stride=16)
    assert name not in dilatable_encoders()


# ---------------------------------------------------------------------------------------------------------------
# ImageNet weights (faked) and first-conv adaptation
# ---------------------------------------------------------------------------------------------------------------

def test_adapt_first_conv_kernel_matches_smp_patch_first_conv():
    k = np.random.default_rng(1).normal(size=(3, 3, 3, 4)).astype(np.float32)
    np.testing.assert_allclose(adapt_first_conv_kernel(k, 1), k.sum(axis=2, keepdims=True))
    np.testing.assert_allclose(adapt_first_conv_kernel(k, 3), k)
    np.testing.assert_allclose(adapt_first_conv_kernel(k, 2), k[:, :, [0, 1]] * 1.5)
    np.testing.assert_allclose(adapt_first_conv_kernel(k, 5), k[:, :, [0, 1, 2, 0, 1]] * 0.6, rtol=1e-6)


@pytest.fixture
def fake_imagenet(monkeypatch, tmp_path):
    """``make(name)`` writes random "ImageNet" weights for encoder ``name`` and routes every download to them."""
    state = {"requested": []}

    def make(name: str) -> keras.Model:
        spec = encoders._APPS[name]
        model = getattr(keras.applications, spec.builder)(include_top=False, weights=None,
                                                         input_shape=(None, None, 3), **spec.kwargs)
        rng = np.random.default_rng(0)
        model.set_weights([
            rng.uniform(0.5, 1.5, v.shape).astype(np.float32) if "variance" in v.path
            else rng.normal(0.0, 0.1, v.shape).astype(np.float32)
            for v in model.weights
        ])
        state["path"] = str(tmp_path / f"{name}.weights.h5")
        model.save_weights(state["path"])
        return model

    def fake_get_file(fname=None, origin=None, **kwargs):
        state["requested"].append(fname)
        if "path" not in state:
            raise OSError("URL fetch failure: no network in tests")
        return state["path"]

    monkeypatch.setattr(file_utils, "get_file", fake_get_file)
    make.state = state
    return make


def _first_kernel(model: keras.Model) -> np.ndarray:
    return next(v for v in model.weights if len(v.shape) == 4).numpy()  # graph order: the stem conv comes first


_PREPROCESSING = (keras.layers.Rescaling, keras.layers.Normalization)


def _keras_taps(ref: keras.Model, name: str) -> tuple[keras.Model, keras.Model]:
    """The keras.applications model's taps, and its baked-in preprocessing (which the encoders leave out)."""
    def tap(t):
        if t == "@output":
            return ref.outputs[0]
        return ref.get_layer(t[1:]).input if t.startswith("<") else ref.get_layer(t).output

    taps = keras.Model(ref.input, [tap(t) for t in APP_TAPS[name] if t is not None])
    pre = [layer for layer in ref.layers if isinstance(layer, _PREPROCESSING)]
    preprocess = keras.Model(ref.input, pre[-1].output if pre else ref.input)
    return taps, preprocess


@pytest.mark.parametrize("name, channels", [
    ("vgg16", (3, 1, 5)),
    ("convnext_tiny", (3, 1)),  # the stem conv sits in a Sequential
    ("efficientnetb0", (3,)),  # baked-in Rescaling/Normalization are dropped
    pytest.param("efficientnetb0", (1, 5), marks=pytest.mark.slow),
    pytest.param("convnext_tiny", (5,), marks=pytest.mark.slow),
    pytest.param("resnet50", (3, 1, 5), marks=pytest.mark.slow),
    pytest.param("mobilenetv2", (3, 1, 5), marks=pytest.mark.slow),
])
def test_imagenet_weights(fake_imagenet, name, channels):
    """Fake ImageNet weights load, the first conv is adapted as SMP does, everything else is copied unchanged,
    and at 3 channels the encoder computes what the keras.applications model computes after its preprocessing."""
    ref = fake_imagenet(name)
    ref_kernel = _first_kernel(ref)
    x = np.random.default_rng(2).uniform(0, 255, size=(1, 64, 64, 3)).astype(np.float32)
    for c in channels:
        model = _model(build_encoder(name, keras.Input((None, None, c)), weights="imagenet"))
        expected = {1: ref_kernel.sum(axis=2, keepdims=True), 3: ref_kernel,
                    5: ref_kernel[:, :, [0, 1, 2, 0, 1]] * (3 / 5)}[c]
        np.testing.assert_allclose(_first_kernel(model), expected, rtol=1e-5, atol=1e-6)
        ours = [v.numpy() for layer in model.layers for v in layer.weights]
        theirs = [v.numpy() for layer in ref.layers if not isinstance(layer, _PREPROCESSING) for v in layer.weights]
        assert len(ours) == len(theirs)
        same = [np.array_equal(a, b) for a, b in zip(ours, theirs) if a.shape == b.shape]
        assert len(same) == len(ours) - (c != 3) and all(same)
        if c == 3:
            taps, preprocess = _keras_taps(ref, name)
            for a, b in zip(taps(x, training=False), model(preprocess(x), training=False)):
                np.testing.assert_allclose(b.numpy(), a.numpy(), rtol=1e-4, atol=1e-4 * float(np.abs(a).max()))
    requested = fake_imagenet.state["requested"]
    assert len(requested) == len(channels) and all(f.endswith(".h5") for f in requested)


def test_imagenet_download_failure_is_a_user_error(fake_imagenet):
    with pytest.raises(UserError, match="ImageNet weights of encoder 'vgg16'"):
        build_encoder("vgg16", keras.Input((None, None, 3)), weights="imagenet")


# ---------------------------------------------------------------------------------------------------------------
# User errors
# ---------------------------------------------------------------------------------------------------------------

def test_unknown_encoder_suggests_closest():
    with pytest.raises(UserError, match=r"unknown encoder 'resnet43'; did you mean 'resnet34'\?") as err:
        build_encoder("resnet43", keras.Input((None, None, 3)))
    assert "\n" not in str(err.value)
    with pytest.raises(UserError, match="did you mean 'efficientnetb0'"):
        build_encoder("efficientnet-b0", keras.Input((None, None, 3)))


@pytest.mark.parametrize("kwargs, match", [
    ({"weights": "noisy-student"}, "encoder_weights 'noisy-student'"),
    ({"depth": 6}, "encoder_depth"),
    ({"depth": 0}, "encoder_depth"),
    ({"output_stride": 4}, "output_stride must be 8, 16 or 32"),
])
def test_bad_arguments(kwargs, match):
    with pytest.raises(UserError, match=match):
        build_encoder("resnet18", keras.Input((None, None, 3)), **kwargs)


def test_weights_none_spellings():
    feats = build_encoder("resnet18", keras.Input((None, None, 3)), weights="none", depth=1)
    assert feats.channels == [3, 64]


# ---------------------------------------------------------------------------------------------------------------
# Cross-check against PyTorch (torchvision layout + SMP's make_dilated), only where torch is installed
# ---------------------------------------------------------------------------------------------------------------

# Output stride 32 in the default tier; the dilated strides (16, 8) in the slow tier to keep the default suite's time.
@pytest.mark.parametrize("output_stride", [32, pytest.param(16, marks=pytest.mark.slow),
                                           pytest.param(8, marks=pytest.mark.slow)])
def test_native_resnet_matches_torch(output_stride):
    """The package's converter (:func:`tv.load_torchvision_resnet`) on a 2-channel torch resnet34, plain and dilated."""
    import torch  # a test requirement (requirements-test.txt, the "test" extra): fails rather than skips
    net = torch_resnet(torch, encoders.NATIVE_RESNETS["resnet34"], 2)
    # SMP encoders/_utils.py replace_strides_with_dilation on stages 5 (and 4)
    for layer, rate in {32: {}, 16: {"layer4": 2}, 8: {"layer3": 2, "layer4": 4}}[output_stride].items():
        for mod in getattr(net, layer).modules():
            if isinstance(mod, torch.nn.Conv2d):
                mod.stride, mod.dilation = (1, 1), (rate, rate)
                mod.padding = ((mod.kernel_size[0] // 2) * rate, (mod.kernel_size[1] // 2) * rate)
    feats = build_encoder("resnet34", keras.Input((None, None, 2)), output_stride=output_stride)
    model = _model(feats)
    state = {k: v.numpy() for k, v in net.state_dict().items()}
    tv.load_torchvision_resnet({layer.name: layer for layer in model.layers}, state, "resnet34")
    x = np.random.default_rng(3).normal(size=(1, 2, 72, 56)).astype(np.float32)
    with torch.no_grad():
        expected = [t.numpy().transpose(0, 2, 3, 1) for t in net(torch.from_numpy(x))]
    got = [t.numpy() for t in model(x.transpose(0, 2, 3, 1), training=False)]
    for e, g in zip(expected, got):
        assert e.shape == g.shape
        np.testing.assert_allclose(g, e, rtol=1e-3, atol=1e-3 * float(np.abs(e).max()))


# ---------------------------------------------------------------------------------------------------------------
# torchvision checkpoints: the torch-free reader, the converter, the cache/download and the errors
# ---------------------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def resnet18_pth(tmp_path_factory):
    """A random-weight torch resnet18 with a 10-class ``fc`` (ignored, as torchvision's 1000-class one is) and the
    ``torch.save(net.state_dict())`` file of it."""
    import torch  # a test requirement (requirements-test.txt, the "test" extra): fails rather than skips
    net = torch_resnet(torch, encoders.NATIVE_RESNETS["resnet18"], 3, num_classes=10)
    path = tmp_path_factory.mktemp("weights") / "resnet18.pth"
    torch.save(net.state_dict(), path)
    return net, path


def _rgb_conv1(net) -> np.ndarray:
    return net.conv1.weight.detach().numpy().transpose(2, 3, 1, 0)  # torch (out, in, kh, kw) → Keras layout


def test_read_torch_state_dict_matches_torch_save(tmp_path):
    """dtypes, 0-d tensors, views that share one storage at an offset or with strides (non-contiguous), empty ones."""
    import torch  # a test requirement (requirements-test.txt, the "test" extra): fails rather than skips
    base = torch.arange(24, dtype=torch.float32).reshape(4, 6)
    state = OrderedDict(
        contiguous=torch.randn(2, 3, 4), transposed=base.t(), row=base[2, 1:5], every_other=base[:, ::2],
        steps=torch.tensor(7), half=torch.randn(5).half(), bf16=torch.randn(3).bfloat16(),
        double=torch.randn(2, 2, dtype=torch.float64), flags=torch.tensor([True, False]),
        small=torch.arange(4, dtype=torch.uint8), int32=torch.tensor([-3, 4], dtype=torch.int32),
        empty=torch.zeros(0, 3),
    )
    torch.save(state, tmp_path / "state.pth")
    got = read_torch_state_dict(tmp_path / "state.pth")
    assert list(got) == list(state)
    for key, tensor in state.items():
        want = (tensor.float() if tensor.dtype == torch.bfloat16 else tensor).numpy()
        assert got[key].dtype == want.dtype and got[key].shape == want.shape, key
        np.testing.assert_array_equal(got[key], want, err_msg=key)
    assert got["transposed"].flags["C_CONTIGUOUS"] and got["transposed"].flags["WRITEABLE"]


def _archive(path, payload: bytes) -> None:
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("archive/data.pkl", payload)


class _Call:
    def __reduce__(self):
        return (shutil.rmtree, ("/nonexistent-axial-kd-test",))  # what a malicious checkpoint would do


def test_read_torch_state_dict_refuses_anything_but_tensors(tmp_path):
    """A checkpoint is untrusted: globals other than a state dict's are refused, never imported or called."""
    _archive(tmp_path / "evil.pth", pickle.dumps({"x": _Call()}, protocol=2))
    with pytest.raises(UserError, match=r"evil\.pth.*refers to 'shutil\.rmtree'.*not loaded"):
        read_torch_state_dict(tmp_path / "evil.pth")
    _archive(tmp_path / "date.pth", pickle.dumps({"when": datetime.date(2020, 1, 1)}, protocol=2))
    with pytest.raises(UserError, match="datetime.date"):
        read_torch_state_dict(tmp_path / "date.pth")
    _archive(tmp_path / "epoch.pth", pickle.dumps({"epoch": 3}, protocol=2))
    with pytest.raises(UserError, match="holds int under 'epoch', not a tensor"):
        read_torch_state_dict(tmp_path / "epoch.pth")


def test_read_torch_state_dict_damaged_files_are_one_line_errors(tmp_path, resnet18_pth):
    _, good = resnet18_pth
    (tmp_path / "noise.pth").write_bytes(np.random.default_rng(0).bytes(1000))
    (tmp_path / "half.pth").write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    for name in ("noise.pth", "half.pth", "missing.pth"):
        with pytest.raises(UserError) as err:
            read_torch_state_dict(tmp_path / name)
        message = str(err.value)
        assert str(tmp_path / name) in message and "\n" not in message, message
        assert ("does not exist" if name == "missing.pth" else "not a PyTorch zip checkpoint") in message


def test_torchvision_checkpoint_file_matches_torch(resnet18_pth):
    """torch.save → torch-free reader → converter → native resnet18: the same features as the torch model."""
    import torch  # a test requirement (requirements-test.txt, the "test" extra): fails rather than skips
    net, path = resnet18_pth
    model = _model(build_encoder("resnet18", keras.Input((None, None, 3)), weights=str(path)))
    x = np.random.default_rng(4).normal(size=(1, 3, 64, 64)).astype(np.float32)
    with torch.no_grad():
        expected = [t.numpy().transpose(0, 2, 3, 1) for t in net(torch.from_numpy(x))]
    got = [t.numpy() for t in model(x.transpose(0, 2, 3, 1), training=False)]
    for e, g in zip(expected, got):
        assert e.shape == g.shape
        np.testing.assert_allclose(g, e, rtol=1e-4, atol=1e-4 * max(1.0, float(np.abs(e).max())))


@pytest.mark.parametrize("channels", [1, 2, 4])
def test_torchvision_first_conv_adapted_as_smp(resnet18_pth, channels):
    """SMP change_conv_in_channels: 1 → sum over RGB; otherwise RGB repeated cyclically, × 3/channels. depth=1 also
    checks that the stages an encoder does not build need no layers."""
    net, path = resnet18_pth
    model = _model(build_encoder("resnet18", keras.Input((None, None, channels)), weights=str(path), depth=1))
    rgb = _rgb_conv1(net)
    expected = {1: rgb.sum(axis=2, keepdims=True), 2: rgb[:, :, [0, 1]] * 1.5, 4: rgb[:, :, [0, 1, 2, 0]] * 0.75}
    np.testing.assert_allclose(model.get_layer("encoder_conv1").kernel.numpy(), expected[channels], rtol=1e-6,
                               atol=1e-7)
    np.testing.assert_array_equal(model.get_layer("encoder_bn1").moving_variance.numpy(),
                                  net.bn1.running_var.numpy())


def test_torchvision_checkpoint_of_another_network_is_a_user_error(resnet18_pth, tmp_path):
    _, path = resnet18_pth
    with pytest.raises(UserError, match=r"resnet18\.pth' is not a torchvision resnet34 state dict: it lacks .*"
                                        r"'layer1\.2\.conv1\.weight'"):
        build_encoder("resnet34", keras.Input((None, None, 3)), weights=str(path))
    renamed = tmp_path / "resnet18-f37072fd.pth"  # a published name: its sha256 prefix is checked
    shutil.copy(path, renamed)
    with pytest.raises(UserError, match=r"resnet18-f37072fd\.pth' failed sha256 verification.*download it again "
                                        r"from https://download\.pytorch\.org/models/resnet18-f37072fd\.pth"):
        build_encoder("resnet18", keras.Input((None, None, 3)), weights=str(renamed), depth=1)
    with pytest.raises(UserError, match=r"file '.*nowhere\.pth' does not exist; .*encoder_weights: imagenet"):
        build_encoder("resnet18", keras.Input((None, None, 3)), weights=str(tmp_path / "nowhere.pth"))


def test_checkpoint_file_for_a_keras_encoder_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match=r"torchvision-layout encoders only \(resnet18, resnet34\); for 'resnet50' "
                                        r"use imagenet"):
        build_encoder("resnet50", keras.Input((None, None, 3)), weights=str(tmp_path / "resnet50.pth"))


@pytest.fixture
def weights_env(monkeypatch, tmp_path):
    """Empty weights and torch.hub caches, a ``file://`` mirror in place of download.pytorch.org, no retry waits."""
    dirs = {name: tmp_path / name for name in ("cache", "torch", "mirror")}
    monkeypatch.setenv(tv.WEIGHTS_DIR_ENV, str(dirs["cache"]))
    monkeypatch.setenv("TORCH_HOME", str(dirs["torch"]))
    monkeypatch.setenv(download.MIRROR_ENV, dirs["mirror"].as_uri())
    monkeypatch.setattr(download.time, "sleep", lambda s: None)
    (dirs["mirror"] / "weights").mkdir(parents=True)
    return dirs


def test_imagenet_downloads_verifies_and_reuses_the_cache(resnet18_pth, weights_env, monkeypatch):
    net, path = resnet18_pth
    prefix = hashlib.sha256(path.read_bytes()).hexdigest()[:8]
    name = f"resnet18-{prefix}.pth"  # the fake's own hash, since no file has torchvision's
    monkeypatch.setitem(tv.TORCHVISION_IMAGENET, "resnet18",
                        tv.TorchvisionCheckpoint(f"https://download.pytorch.org/models/{name}", prefix))
    shutil.copy(path, weights_env["mirror"] / "weights" / name)

    def conv1(weights="imagenet"):
        model = _model(build_encoder("resnet18", keras.Input((None, None, 1)), weights=weights, depth=1))
        return model.get_layer("encoder_conv1").kernel.numpy()

    np.testing.assert_allclose(conv1(), _rgb_conv1(net).sum(axis=2, keepdims=True), rtol=1e-6, atol=1e-7)
    cached = weights_env["cache"] / name
    assert cached.is_file() and not (weights_env["cache"] / f"{name}.part").exists()
    (weights_env["mirror"] / "weights" / name).unlink()  # offline from now on
    conv1()  # from the cache
    hub = weights_env["torch"] / "hub" / "checkpoints"
    hub.mkdir(parents=True)
    cached.rename(hub / name)
    conv1()  # from torch.hub's cache
    assert not cached.exists()
    conv1(" ImageNet ")  # spelling


def test_imagenet_checksum_mismatch_and_offline_are_user_errors(resnet18_pth, weights_env):
    _, path = resnet18_pth
    shutil.copy(path, weights_env["mirror"] / "weights" / "resnet18-f37072fd.pth")  # not torchvision's file
    with pytest.raises(UserError, match=r"resnet18-f37072fd\.pth' failed sha256 verification .*expected f37072fd"):
        build_encoder("resnet18", keras.Input((None, None, 3)), weights="imagenet")
    assert list(weights_env["cache"].iterdir()) == []  # the .part is deleted
    with pytest.raises(UserError) as err:  # nothing at the mirror: as if offline
        build_encoder("resnet34", keras.Input((None, None, 3)), weights="imagenet")
    message = str(err.value)
    for part in ("resnet34-b627a593.pth", "download https://download.pytorch.org/models/resnet34-b627a593.pth",
                 "set model.encoder_weights to its path"):
        assert part in message

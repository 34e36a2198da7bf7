"""Encoders of the model zoo (``axial_kd_tf.models.encoders``): taps, parameter pins, dilation, ImageNet weights.

Nothing downloads: ImageNet weights are faked by pointing keras.applications' ``get_file`` at local files.
"""

from __future__ import annotations

import re

import keras
import numpy as np
import pytest
from keras.src.utils import file_utils  # what keras.applications calls to fetch weights

from axial_kd_tf.errors import UserError
from axial_kd_tf.models import encoders
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


def test_imagenet_on_native_resnet_lists_available():
    with pytest.raises(UserError, match="native 'resnet34'") as err:
        build_encoder("resnet34", keras.Input((None, None, 3)), weights="imagenet")
    for name in ("resnet50", "efficientnetb0", "mobilenetv2", "convnext_tiny", "vgg16"):
        assert name in str(err.value)


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

def _torch_resnet(torch, blocks, in_channels):
    nn = torch.nn

    class BasicBlock(nn.Module):  # torchvision.models.resnet.BasicBlock
        def __init__(self, inplanes, planes, stride):
            super().__init__()
            self.conv1 = nn.Conv2d(inplanes, planes, 3, stride, 1, bias=False)
            self.bn1 = nn.BatchNorm2d(planes)
            self.relu = nn.ReLU()
            self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
            self.bn2 = nn.BatchNorm2d(planes)
            self.downsample = None
            if stride != 1 or inplanes != planes:
                self.downsample = nn.Sequential(nn.Conv2d(inplanes, planes, 1, stride, bias=False),
                                                nn.BatchNorm2d(planes))

        def forward(self, x):
            identity = x if self.downsample is None else self.downsample(x)
            out = self.relu(self.bn1(self.conv1(x)))
            return self.relu(self.bn2(self.conv2(out)) + identity)

    class ResNet(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv1 = nn.Conv2d(in_channels, 64, 7, 2, 3, bias=False)
            self.bn1 = nn.BatchNorm2d(64)
            self.relu = nn.ReLU()
            self.maxpool = nn.MaxPool2d(3, 2, 1)
            inplanes = 64
            for i, (n, planes) in enumerate(zip(blocks, (64, 128, 256, 512)), start=1):
                layer = []
                for b in range(n):
                    layer.append(BasicBlock(inplanes, planes, (1 if i == 1 else 2) if b == 0 else 1))
                    inplanes = planes
                setattr(self, f"layer{i}", nn.Sequential(*layer))

        def forward(self, x):
            x = self.relu(self.bn1(self.conv1(x)))
            feats = [x]
            x = self.layer1(self.maxpool(x))
            feats.append(x)
            for i in (2, 3, 4):
                x = getattr(self, f"layer{i}")(x)
                feats.append(x)
            return feats

    return ResNet()


# Output stride 32 in the default tier; the dilated strides (16, 8) in the slow tier to keep the default suite's time.
@pytest.mark.parametrize("output_stride", [32, pytest.param(16, marks=pytest.mark.slow),
                                           pytest.param(8, marks=pytest.mark.slow)])
def test_native_resnet_matches_torch(output_stride):
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    net = _torch_resnet(torch, encoders.NATIVE_RESNETS["resnet34"], 2)
    # SMP encoders/_utils.py replace_strides_with_dilation on stages 5 (and 4)
    for layer, rate in {32: {}, 16: {"layer4": 2}, 8: {"layer3": 2, "layer4": 4}}[output_stride].items():
        for mod in getattr(net, layer).modules():
            if isinstance(mod, torch.nn.Conv2d):
                mod.stride, mod.dilation = (1, 1), (rate, rate)
                mod.padding = ((mod.kernel_size[0] // 2) * rate, (mod.kernel_size[1] // 2) * rate)
    with torch.no_grad():
        for mod in net.modules():
            if isinstance(mod, torch.nn.BatchNorm2d):
                mod.weight.uniform_(0.5, 1.5), mod.bias.uniform_(-0.2, 0.2)
                mod.running_mean.uniform_(-0.2, 0.2), mod.running_var.uniform_(0.5, 1.5)
    net.eval()
    feats = build_encoder("resnet34", keras.Input((None, None, 2)), output_stride=output_stride)
    model = _model(feats)
    for key, mod in net.named_modules():
        kname = re.sub(r"layer(\d)\.(\d+)\.", r"layer\1_block\2_", key)
        kname = "encoder_" + kname.replace("downsample.0", "downsample_conv").replace("downsample.1", "downsample_bn")
        if isinstance(mod, torch.nn.Conv2d):
            model.get_layer(kname).set_weights([mod.weight.detach().numpy().transpose(2, 3, 1, 0)])
        elif isinstance(mod, torch.nn.BatchNorm2d):
            model.get_layer(kname).set_weights([t.detach().numpy() for t in (
                mod.weight, mod.bias, mod.running_mean, mod.running_var)])
    x = np.random.default_rng(3).normal(size=(1, 2, 72, 56)).astype(np.float32)
    with torch.no_grad():
        expected = [t.numpy().transpose(0, 2, 3, 1) for t in net(torch.from_numpy(x))]
    got = [t.numpy() for t in model(x.transpose(0, 2, 3, 1), training=False)]
    for e, g in zip(expected, got):
        assert e.shape == g.shape
        np.testing.assert_allclose(g, e, rtol=1e-3, atol=1e-3 * float(np.abs(e).max()))

"""One shared harness over the whole model zoo (the nine SMP architectures), as SMP's own test suite does.

For every architecture: the SMP 0.6.0 parameter pin (resnet34), output shape and dtype, a distillation training step
that lowers the loss, ``.keras`` save/load with identical predictions, and a builtin-only TFLite student that matches
Keras in LiteRT. Functional checks use resnet18 (same layout as resnet34, a third of the work); a second encoder
family runs in the fast tier, heavier encoders in the slow tier.
"""

from __future__ import annotations

import numpy as np
import pytest
import keras

from axial_kd_tf.distill import DistillationTrainer, build_distillation_model, student_network
from axial_kd_tf.errors import UserError
from axial_kd_tf.models import build_network

ARCHS = ["unet", "unetplusplus", "manet", "linknet", "fpn", "pspnet", "pan", "deeplabv3", "deeplabv3plus"]

# SMP 0.6.0, resnet34, classes=5, in_channels=3, encoder_weights=None (shared/reference/smp-architectures.md).
# PSPNet: the parameters actually used (SMP also counts the unused layer3/layer4: 21,456,421).
SMP_PARAMS = {
    "unet": 24_436_949, "unetplusplus": 26_079_189, "manet": 31_784_213, "linknet": 21_772_069,
    "fpn": 23_155_909, "pspnet": 1_519_653, "pan": 21_476_972, "deeplabv3": 26_008_133,
    "deeplabv3plus": 22_438_485,
}
SIZE = {"pan": 128}  # PAN's feature-pyramid attention needs >= 128; the rest run at 64
K = 5


def _trainable(model: keras.Model) -> int:
    return int(sum(np.prod(w.shape) for w in model.trainable_weights))


def _size(arch: str) -> int:
    return SIZE.get(arch, 64)


_CACHE: dict = {}


def network(arch: str, encoder: str = "resnet18", in_channels: int = 3) -> keras.Model:
    key = (arch, encoder, in_channels)
    if key not in _CACHE:
        keras.utils.set_random_seed(0)
        _CACHE[key] = build_network(arch, encoder=encoder, num_classes=K, in_channels=in_channels)
    return _CACHE[key]


@pytest.mark.parametrize("arch", ARCHS)
def test_parameter_count_matches_smp(arch):
    model = build_network(arch, encoder="resnet34", num_classes=K, in_channels=3)
    assert _trainable(model) == SMP_PARAMS[arch]


@pytest.mark.parametrize("arch", ARCHS)
def test_output_shape_and_dtype(arch):
    net = network(arch)
    s = _size(arch)
    out = net(np.random.default_rng(0).random((2, s, s, 3), dtype=np.float32))
    assert tuple(out.shape) == (2, s, s, K) and out.dtype == "float32"


@pytest.mark.parametrize("arch", ARCHS)
def test_keras_save_load_identical_predictions(arch, tmp_path):
    net = network(arch)
    x = np.random.default_rng(2).random((1, _size(arch), _size(arch), 3), dtype=np.float32)
    path = tmp_path / f"{arch}.keras"
    net.save(path)
    loaded = keras.saving.load_model(path)
    np.testing.assert_allclose(np.asarray(loaded(x)), np.asarray(net(x)), atol=1e-5)


@pytest.mark.parametrize("arch", ARCHS)
def test_tflite_student_builtins_only_matches_keras(arch, tmp_path):
    from axial_kd_tf.export import convert_tflite, run_tflite, tflite_op_names

    net = network(arch)
    s = _size(arch)
    blob = convert_tflite(net, (s, s, 3))
    assert not any(op.startswith("CUSTOM") for op in tflite_op_names(blob))
    x = np.random.default_rng(3).random((2, s, s, 3), dtype=np.float32)
    got = run_tflite(blob, x)
    want = np.asarray(net(x))
    np.testing.assert_allclose(got, want, atol=2e-4 * max(1.0, float(np.abs(want).max())))
    assert (got.argmax(-1) == want.argmax(-1)).mean() > 0.999


# Runs after the read-only checks above: it trains the cached network in place (pytest keeps file order).
@pytest.mark.parametrize("arch", ARCHS)
def test_distillation_training_step_lowers_the_loss(arch):
    keras.utils.set_random_seed(1)
    net = network(arch)
    model = build_distillation_model(net, K, teacher_kwargs=dict(hidden_dim=8, pool_size=2))
    trainer = DistillationTrainer(model, K)
    # Eager: tracing a graph of a 20M-parameter network costs far more than a few small steps.
    trainer.compile(optimizer=keras.optimizers.Adam(3e-4), run_eagerly=True)
    s = _size(arch)
    rng = np.random.default_rng(0)
    x = rng.random((2, s, s, 3), dtype=np.float32)
    y = (x[..., 0] * K).astype("int32").clip(0, K - 1)  # a learnable target
    losses = [float(trainer.train_on_batch(x, y, return_dict=True)["loss"]) for _ in range(8)]
    assert np.all(np.isfinite(losses)) and min(losses[-3:]) < losses[0], losses
    assert student_network(model) is net


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("encoder", ["mobilenetv2"])
def test_second_encoder_family(arch, encoder):
    net = network(arch, encoder=encoder, in_channels=1)
    s = _size(arch)
    assert tuple(net(np.zeros((1, s, s, 1), np.float32)).shape) == (1, s, s, K)


# Encoders an architecture cannot take, and what the error must say: ConvNeXt has no stride-2 map, and ConvNeXt and
# VGG cannot be dilated (the DeepLab family and PAN run at output stride 8 or 16).
REFUSED = {
    **{(arch, "convnext_tiny"): "lacks" for arch in ("unetplusplus", "linknet")},
    **{(arch, enc): f"encoder '{enc}' does not support output_stride"
       for arch in ("pan", "deeplabv3", "deeplabv3plus") for enc in ("convnext_tiny", "vgg16")},
}


@pytest.mark.slow
@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("encoder", ["resnet50", "efficientnetb0", "convnext_tiny", "vgg16"])
def test_heavier_encoders(arch, encoder):
    s = _size(arch)
    refused = REFUSED.get((arch, encoder))
    if refused:
        with pytest.raises(UserError, match=refused):
            build_network(arch, encoder=encoder, num_classes=K, in_channels=3)
        return
    net = build_network(arch, encoder=encoder, num_classes=K, in_channels=3)
    assert tuple(net(np.zeros((1, s, s, 3), np.float32)).shape) == (1, s, s, K)

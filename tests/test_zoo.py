"""The zoo tester: one parametrised harness over the nine SMP architectures, driven by ``helpers.ZOO_SPECS`` (one row
per architecture), as SMP's own test suite runs one set of checks over every model.

For every architecture: the SMP 0.6.0 parameter pins (resnet34), float32 logits at two input sizes and a one-line
error at a size the architecture refuses, a distillation training step that lowers the loss and reaches every weight,
``.keras`` save/load with identical predictions, and a builtin-only TFLite student that matches Keras in LiteRT.
The resnet34 networks are built once per session (``zoo_network``) and only read; the training step builds its own.
Round trip and TFLite use resnet18 (the same layout, half the weights to write and convert). A second encoder
family runs in the fast tier, heavier encoders in the slow tier.
"""

from __future__ import annotations

from collections.abc import Callable

import keras
import numpy as np
import pytest

from axial_kd_tf.distill import DistillationTrainer, build_distillation_model, student_network
from axial_kd_tf.errors import UserError
from axial_kd_tf.models import ZOO
from helpers import NUM_CLASSES as K, ZOO_SPECS, ZooSpec, build_zoo_network, count_params

ZooNetwork = Callable[..., keras.Model]
SPECS = [pytest.param(ZOO_SPECS[arch], id=arch) for arch in ZOO]


def test_the_spec_table_covers_the_zoo():
    # The table drives every check below: an architecture added to models.ZOO without a row would go untested.
    assert list(ZOO_SPECS) == list(ZOO)


@pytest.mark.parametrize("spec", SPECS)
def test_parameter_count_matches_smp(spec: ZooSpec, zoo_network: ZooNetwork):
    model = zoo_network(spec.arch)
    assert model.name == f"{spec.arch}_resnet34"
    assert count_params(model) == spec.params


@pytest.mark.parametrize("spec", SPECS)
def test_float32_logits_at_two_sizes(spec: ZooSpec, zoo_network: ZooNetwork, rng: np.random.Generator):
    model = zoo_network(spec.arch)
    assert tuple(model.input.shape) == (None, None, None, 3)
    for batch, (h, w) in zip((2, 1), spec.sizes):
        out = model(rng.standard_normal((batch, h, w, 3)).astype("float32"), training=False)
        assert tuple(out.shape) == (batch, h, w, K) and out.dtype == "float32"
        assert np.isfinite(keras.ops.convert_to_numpy(out)).all()


@pytest.mark.parametrize("spec", [s for s in SPECS if s.values[0].invalid])
def test_refused_input_size_is_a_one_line_error(spec: ZooSpec, zoo_network: ZooNetwork):
    model = zoo_network(spec.arch)
    for (h, w), message in spec.invalid:
        with pytest.raises(ValueError, match=message) as info:
            model(np.zeros((1, h, w, 3), "float32"), training=False)
        assert isinstance(info.value, UserError) and f"{h}x{w}" in str(info.value) and "\n" not in str(info.value)


@pytest.mark.parametrize("spec", SPECS)
def test_keras_save_load_identical_predictions(spec: ZooSpec, zoo_network: ZooNetwork, tmp_path,
                                               rng: np.random.Generator):
    net = zoo_network(spec.arch, "resnet18")
    x = rng.random((1, *spec.size, 3), dtype=np.float32)
    path = tmp_path / f"{spec.arch}.keras"
    net.save(path)
    loaded = keras.saving.load_model(path)
    np.testing.assert_allclose(np.asarray(loaded(x)), np.asarray(net(x)), atol=1e-5)


@pytest.mark.parametrize("spec", SPECS)
def test_tflite_student_builtins_only_matches_keras(spec: ZooSpec, zoo_network: ZooNetwork,
                                                    rng: np.random.Generator):
    from axial_kd_tf.export import CUSTOM_OP_PREFIX, convert_tflite, run_tflite, tflite_op_names

    net = zoo_network(spec.arch, "resnet18")
    blob = convert_tflite(net, (*spec.size, 3))
    ops = tflite_op_names(blob)
    assert "CONV_2D" in ops and not [op for op in ops if op.startswith(CUSTOM_OP_PREFIX)], ops
    x = rng.random((2, *spec.size, 3), dtype=np.float32)
    got = run_tflite(blob, x)
    want = np.asarray(net(x))
    np.testing.assert_allclose(got, want, atol=2e-4 * max(1.0, float(np.abs(want).max())))
    assert (got.argmax(-1) == want.argmax(-1)).mean() > 0.999


@pytest.mark.parametrize("spec", SPECS)
def test_distillation_training_step_lowers_the_loss(spec: ZooSpec, rng: np.random.Generator):
    net = build_zoo_network(spec.arch, "resnet18", seed=1)  # its own network: training changes the weights
    model = build_distillation_model(net, K, teacher_kwargs=dict(hidden_dim=8, pool_size=2))
    assert student_network(model) is net
    trainer = DistillationTrainer(model, K)
    # Eager: tracing a graph of a 10M-parameter network costs far more than a few small steps.
    trainer.compile(optimizer=keras.optimizers.Adam(3e-4), run_eagerly=True)
    x = rng.random((2, *spec.size, 3), dtype=np.float32)
    y = (x[..., 0] * K).astype("int32").clip(0, K - 1)  # a learnable target
    before = [keras.ops.convert_to_numpy(w) for w in net.trainable_weights]
    losses = [float(trainer.train_on_batch(x, y, return_dict=True)["loss"]) for _ in range(8)]
    assert np.all(np.isfinite(losses)) and min(losses[-3:]) < losses[0], losses
    # Every weight of the student moved: the loss's gradient reaches all of them (none is cut off).
    frozen = [w.path for w, b in zip(net.trainable_weights, before) if np.array_equal(keras.ops.convert_to_numpy(w), b)]
    assert not frozen


@pytest.mark.parametrize("spec", SPECS)
def test_second_encoder_family_single_channel(spec: ZooSpec, zoo_network: ZooNetwork):
    net = zoo_network(spec.arch, "mobilenetv2", in_channels=1)
    assert tuple(net(np.zeros((1, *spec.size, 1), np.float32)).shape) == (1, *spec.size, K)


# Encoders an architecture cannot take, and what the error must say: ConvNeXt has no stride-2 map, and ConvNeXt and
# VGG cannot be dilated (the DeepLab family and PAN run at output stride 8 or 16).
REFUSED = {
    **{(arch, "convnext_tiny"): "lacks" for arch in ("unetplusplus", "linknet")},
    **{(arch, enc): f"encoder '{enc}' does not support output_stride"
       for arch in ("pan", "deeplabv3", "deeplabv3plus") for enc in ("convnext_tiny", "vgg16")},
}


@pytest.mark.slow
@pytest.mark.parametrize("spec", SPECS)
@pytest.mark.parametrize("encoder", ["resnet50", "efficientnetb0", "convnext_tiny", "vgg16"])
def test_heavier_encoders(spec: ZooSpec, encoder: str):
    refused = REFUSED.get((spec.arch, encoder))
    if refused:
        with pytest.raises(UserError, match=refused):
            build_zoo_network(spec.arch, encoder)
        return
    net = build_zoo_network(spec.arch, encoder)
    assert tuple(net(np.zeros((1, *spec.size, 3), np.float32)).shape) == (1, *spec.size, K)

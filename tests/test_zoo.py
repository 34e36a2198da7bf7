"""The zoo tester: one parametrised harness over the nine SMP architectures, driven by ``helpers.ZOO_SPECS`` (one row
per architecture), as SMP's own test suite runs one set of checks over every model.

For every architecture: the SMP 0.6.0 parameter pins (resnet34), float32 logits at two input sizes and a one-line
error at a size the architecture refuses, a distillation training step (resnet18) whose loss reaches every weight
and lowers the student's cross-entropy, ``.keras`` save/load with identical predictions, and a builtin-only TFLite
student that matches Keras in LiteRT (the tiny variant; resnet18 at the defaults in the slow tier). The resnet34
networks are built once per session (``zoo_network``) and only read; the training step builds its own. A second
encoder family runs in the fast tier, heavier encoders in the slow tier.
"""

from __future__ import annotations

from collections.abc import Callable

import keras
import numpy as np
import pytest
import tensorflow as tf

from axial_kd_tf.distill import DistillationTrainer, build_distillation_model, student_network, teacher_head
from axial_kd_tf.errors import UserError
from axial_kd_tf.models import ZOO
from helpers import NUM_CLASSES as K, ZOO_SPECS, ZooSpec, build_tiny, build_zoo_network, count_params

ZooNetwork = Callable[..., keras.Model]
SPECS = [pytest.param(ZOO_SPECS[arch], id=arch) for arch in ZOO]


def test_the_spec_table_covers_the_zoo():
    # The table drives every check below: an architecture added to models.ZOO without a row would go untested.
    assert list(ZOO_SPECS) == list(ZOO)


@pytest.mark.parametrize("spec", SPECS)
def test_parameter_count_matches_smp(spec: ZooSpec, zoo_network: ZooNetwork):
    model = zoo_network(spec.arch)
    assert model.name == f"{spec.arch}_resnet34"
    got = count_params(model)
    assert got == spec.params, f"{spec.arch}: {got:,} trainable parameters, SMP 0.6.0 has {spec.params:,} (ZOO_SPECS)"


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


# .keras and TFLite: the tiny variant in the fast tier (the same layer types and ops, a third of the converter's
# time), the resnet18 network at its defaults in the slow tier.
VARIANTS = ["tiny", pytest.param("resnet18", marks=pytest.mark.slow)]


def _network(spec: ZooSpec, variant: str, zoo_network: ZooNetwork) -> tuple[keras.Model, tuple[int, int]]:
    if variant == "tiny":
        return build_tiny(spec.arch, in_channels=3), (spec.tiny_size,) * 2
    return zoo_network(spec.arch, variant), spec.size


@pytest.mark.parametrize("spec", SPECS)
@pytest.mark.parametrize("variant", VARIANTS)
def test_keras_save_load_identical_predictions(spec: ZooSpec, variant: str, zoo_network: ZooNetwork, tmp_path,
                                               rng: np.random.Generator):
    net, size = _network(spec, variant, zoo_network)
    x = rng.random((1, *size, 3), dtype=np.float32)
    path = tmp_path / f"{spec.arch}.keras"
    net.save(path)
    loaded = keras.saving.load_model(path)
    np.testing.assert_allclose(np.asarray(loaded(x)), np.asarray(net(x)), atol=1e-5)


@pytest.mark.parametrize("spec", SPECS)
@pytest.mark.parametrize("variant", VARIANTS)
def test_tflite_student_builtins_only_matches_keras(spec: ZooSpec, variant: str, zoo_network: ZooNetwork,
                                                    rng: np.random.Generator):
    from axial_kd_tf.export import CUSTOM_OP_PREFIX, convert_tflite, run_tflite, tflite_op_names

    net, size = _network(spec, variant, zoo_network)
    blob = convert_tflite(net, (*size, 3))
    ops = tflite_op_names(blob)
    assert "CONV_2D" in ops and not [op for op in ops if op.startswith(CUSTOM_OP_PREFIX)], ops
    x = rng.random((2, *size, 3), dtype=np.float32)
    got = run_tflite(blob, x)
    want = np.asarray(net(x))
    np.testing.assert_allclose(got, want, atol=2e-4 * max(1.0, float(np.abs(want).max())))
    assert (got.argmax(-1) == want.argmax(-1)).mean() > 0.999


@pytest.mark.parametrize("spec", SPECS)
def test_distillation_training_step_trains_the_student(spec: ZooSpec, rng: np.random.Generator):
    net = build_zoo_network(spec.arch, "resnet18", seed=1)  # its own network: training changes the weights
    model = build_distillation_model(net, K, teacher_kwargs=dict(hidden_dim=8, pool_size=2))
    assert student_network(model) is net
    trainer = DistillationTrainer(model, K)  # the library's default loss (T²·KL on teacher_fixes pixels)
    # Eager: tracing a graph of a 10M-parameter network costs far more than a few small steps.
    trainer.compile(optimizer=keras.optimizers.Adam(3e-4), run_eagerly=True)
    x = rng.random((2, *spec.size, 3), dtype=np.float32)
    y = (x[..., 0] * K).astype("int32").clip(0, K - 1)  # a learnable target
    # The trainer's loss reaches every weight of the student and of the teacher head: none is cut off from the
    # graph. (Whether a weight moves is no test: the gradient of a conv bias before a training-mode BatchNorm is
    # zero, e.g. in PAN's pyramid; that of the head's inner weights is zero while its gate is 0.)
    with tf.GradientTape() as tape:
        terms = trainer.compute_loss_terms(y, trainer(x, training=True))
    weights = net.trainable_weights + teacher_head(model).trainable_weights
    assert len(weights) == len(model.trainable_weights)
    cut_off = [w.path for w, g in zip(weights, tape.gradient(terms["loss"], weights)) if g is None]
    assert not cut_off, f"the distillation loss does not reach {len(cut_off)} weights, e.g. {cut_off[:3]}"
    # Four steps (~1 s each) lower the student's own cross-entropy: the step trains the student, not only the head.
    steps = [trainer.train_on_batch(x, y, return_dict=True) for _ in range(4)]
    losses = [float(s["loss"]) for s in steps]
    student_ce = [float(s["student_ce"]) for s in steps]
    assert np.all(np.isfinite(losses)) and min(losses[-3:]) < losses[0], losses
    assert min(student_ce[-3:]) < student_ce[0], f"the student's cross-entropy did not drop: {student_ce}"


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

"""The two-output model, the self-distillation loss (paper Eq. 1) and the trainer."""

from __future__ import annotations

import numpy as np
import pytest
import keras
import tensorflow as tf

from axial_kd_tf.distill import (
    DistillationTrainer,
    build_distillation_model,
    distillation_mse,
    softmax_cross_entropy,
    student_network,
    teacher_network,
)
from axial_kd_tf.models import build_network

K = 5


def _net(seed: int = 0) -> keras.Model:
    keras.utils.set_random_seed(seed)
    return build_network("simple_unet", num_classes=K, in_channels=1, base_filters=4, depth=2)


def _batch(n: int = 2, size: int = 16, seed: int = 0):
    rng = np.random.default_rng(seed)
    return rng.random((n, size, size, 1), dtype=np.float32), rng.integers(0, K, (n, size, size)).astype("int32")


def _np_ce(labels, logits, ignore=None, weights=None):
    z = logits - logits.max(-1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(-1, keepdims=True))
    valid = np.ones(labels.shape, bool) if ignore is None else labels != ignore
    lab = np.where(valid, labels, 0)
    nll = -np.take_along_axis(logp, lab[..., None], -1)[..., 0]
    w = valid.astype(np.float64) * (np.asarray(weights)[lab] if weights is not None else 1.0)
    return (nll * w).sum() / w.sum()


# ------------------------------------------------------------------------------------------------------ losses
@pytest.mark.parametrize("ignore,weights", [(None, None), (2, None), (None, [1, 2, 0.5, 3, 1]), (4, [1, 2, 0.5, 3, 1])])
def test_cross_entropy_matches_numpy(ignore, weights):
    rng = np.random.default_rng(1)
    logits = rng.normal(size=(2, 6, 7, K)).astype("float32")
    labels = rng.integers(0, K, (2, 6, 7))
    got = float(softmax_cross_entropy(labels, logits, ignore_index=ignore, class_weights=weights))
    np.testing.assert_allclose(got, _np_ce(labels, logits.astype(np.float64), ignore, weights), rtol=1e-5)


def test_ignored_pixels_do_not_change_the_loss():
    rng = np.random.default_rng(2)
    logits = rng.normal(size=(1, 4, 4, K)).astype("float32")
    labels = rng.integers(0, K, (1, 4, 4))
    labels[0, 0, :] = 255
    a = float(softmax_cross_entropy(labels, logits, ignore_index=255))
    logits2 = logits.copy()
    logits2[0, 0, :] += 50.0  # arbitrary change on ignored pixels only
    assert float(softmax_cross_entropy(labels, logits2, ignore_index=255)) == pytest.approx(a, rel=1e-6)


@pytest.mark.parametrize("target", ["logits", "probabilities"])
def test_distillation_mse_matches_numpy(target):
    rng = np.random.default_rng(3)
    s, t = rng.normal(size=(2, 3, 3, K)), rng.normal(size=(2, 3, 3, K))
    if target == "probabilities":
        sm = lambda z: np.exp(z) / np.exp(z).sum(-1, keepdims=True)  # noqa: E731
        expected = np.mean((sm(s) - sm(t)) ** 2)
    else:
        expected = np.mean((s - t) ** 2)
    got = float(distillation_mse(s.astype("float32"), t.astype("float32"), target))
    np.testing.assert_allclose(got, expected, rtol=1e-5)


def test_stop_gradient_into_teacher():
    s = tf.Variable(np.random.default_rng(4).normal(size=(1, 2, 2, K)).astype("float32"))
    t = tf.Variable(np.random.default_rng(5).normal(size=(1, 2, 2, K)).astype("float32"))
    for stop, teacher_grad_zero in ((True, True), (False, False)):
        with tf.GradientTape() as tape:
            loss = distillation_mse(s, t, stop_gradient_teacher=stop)
        gs, gt = tape.gradient(loss, [s, t])
        assert np.abs(gs.numpy()).sum() > 0
        assert (gt is None or np.abs(gt.numpy()).sum() == 0) == teacher_grad_zero


# --------------------------------------------------------------------------------------------------- the model
def test_two_output_model_wraps_network_unchanged():
    net = _net()
    model = build_distillation_model(net, K, teacher_kwargs=dict(hidden_dim=8, num_heads=2))
    x, _ = _batch()
    out = model(x)
    assert set(out) == {"student", "teacher"}
    assert out["student"].dtype == "float32" and out["teacher"].dtype == "float32"
    assert student_network(model) is net
    np.testing.assert_allclose(np.asarray(out["student"]), np.asarray(net(x)), atol=1e-6)
    # zero-initialised gate: the teacher starts equal to the student
    np.testing.assert_array_equal(np.asarray(out["teacher"]), np.asarray(out["student"]))
    assert teacher_network(model)(x).shape == out["teacher"].shape


def test_baseline_model_has_student_only_and_identical_student():
    base = build_distillation_model(_net(0), K, with_teacher=False)
    dist = build_distillation_model(_net(0), K)
    assert set(base.output) == {"student"}
    sb, sd = student_network(base), student_network(dist)
    assert sb.count_params() == sd.count_params()
    assert [l.__class__.__name__ for l in sb.layers] == [l.__class__.__name__ for l in sd.layers]
    assert dist.count_params() > base.count_params()


def test_exported_student_same_params_and_ops_as_baseline():
    from axial_kd_tf.export import convert_tflite, tflite_op_names, tflite_operator_sequence

    base = student_network(build_distillation_model(_net(0), K, with_teacher=False))
    dist_model = build_distillation_model(_net(1), K)
    dist = student_network(dist_model)
    shape = (16, 16, 1)
    tfl_b, tfl_d = convert_tflite(base, shape), convert_tflite(dist, shape)
    ops_b = tflite_op_names(tfl_b)
    ops_d = tflite_op_names(tfl_d)
    assert ops_b == ops_d and ops_b  # same op set
    assert tflite_operator_sequence(tfl_b) == tflite_operator_sequence(tfl_d)  # same kernels, same order
    # ... and the teacher really is extra work that the student export leaves out
    teacher_seq = tflite_operator_sequence(convert_tflite(teacher_network(dist_model), shape))
    assert len(teacher_seq) > len(tflite_operator_sequence(tfl_d))
    assert base.count_params() == dist.count_params()
    assert not any("AXIAL" in o or o.startswith("CUSTOM") for o in ops_d)


def test_wraps_a_segmentation_models_network():
    from axial_kd_tf.models.sm_library import build_sm_network

    net = build_sm_network("unet", encoder="resnet18", num_classes=K, in_channels=3)
    model = build_distillation_model(net, K, teacher_kwargs=dict(hidden_dim=8, pool_size=2))
    trainer = DistillationTrainer(model, K)
    trainer.compile(optimizer=keras.optimizers.Adam(1e-3))
    rng = np.random.default_rng(0)
    x = rng.random((2, 64, 64, 3), dtype=np.float32)
    y = rng.integers(0, K, (2, 64, 64))
    logs = trainer.train_on_batch(x, y, return_dict=True)
    assert np.isfinite(logs["loss"]) and "teacher_miou" in logs
    assert student_network(model) is net


# ------------------------------------------------------------------------------------------------- the trainer
def _trainer(distill: bool = True, **kw) -> DistillationTrainer:
    model = build_distillation_model(_net(), K, with_teacher=distill, teacher_kwargs=dict(hidden_dim=8))
    trainer = DistillationTrainer(model, K, class_names=["a", "b", "c", "d", "e"], **kw)
    trainer.compile(optimizer=keras.optimizers.Adam(3e-3))
    return trainer


def test_loss_is_the_weighted_sum_of_logged_terms():
    trainer = _trainer(student_weight=0.5, teacher_weight=2.0, distill_weight=3.0)
    trainer.network.get_layer("axial_teacher_head").gate.assign(0.3)  # teacher != student
    x, y = _batch()
    terms = {k: float(v) for k, v in trainer.compute_loss_terms(y, trainer(x, training=False)).items()}
    assert terms["distill_mse"] > 0
    expected = 0.5 * terms["student_ce"] + 2.0 * terms["teacher_ce"] + 3.0 * terms["distill_mse"]
    assert terms["loss"] == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize("distill", [True, False])
def test_training_lowers_the_loss_and_logs_every_term(distill):
    trainer = _trainer(distill)
    x, y = _batch(4)
    first = trainer.train_on_batch(x, y, return_dict=True)
    for _ in range(15):
        last = trainer.train_on_batch(x, y, return_dict=True)
    assert last["loss"] < first["loss"]
    expected = {"loss", "student_ce", "student_miou", "student_iou_a", "student_iou_e"}
    if distill:
        expected |= {"teacher_ce", "distill_mse", "teacher_miou", "teacher_iou_c"}
    assert expected <= set(last)
    assert distill or not any(k.startswith("teacher") or k == "distill_mse" for k in last)


def test_stop_gradient_option_changes_teacher_gradients():
    """With the gradient stopped, the distillation term alone gives the teacher head no gradient."""
    x, y = _batch()
    for stop in (True, False):
        trainer = _trainer(student_weight=0.0, teacher_weight=0.0, distill_weight=1.0, stop_gradient_teacher=stop)
        head = trainer.network.get_layer("axial_teacher_head")
        head.gate.assign(0.5)
        with tf.GradientTape() as tape:
            loss = trainer.compute_loss_terms(y, trainer(x, training=True))["loss"]
        grads = tape.gradient(loss, head.trainable_variables)
        total = sum(float(tf.reduce_sum(tf.abs(g))) for g in grads if g is not None)
        assert (total == 0.0) == stop


@pytest.mark.parametrize("policy", ["mixed_bfloat16", "mixed_float16"])
def test_mixed_precision(policy):
    keras.mixed_precision.set_global_policy(policy)
    try:
        trainer = _trainer()
        if policy == "mixed_float16":
            assert isinstance(trainer.optimizer, keras.optimizers.LossScaleOptimizer)
        x, y = _batch()
        out = trainer(x)
        assert out["student"].dtype == "float32" and out["teacher"].dtype == "float32"
        for _ in range(3):
            logs = trainer.train_on_batch(x, y, return_dict=True)
        assert np.isfinite(logs["loss"])
        # weights stay float32 (master copies), compute happens in the low-precision dtype
        assert all(v.dtype == "float32" for v in trainer.trainable_variables)
    finally:
        keras.mixed_precision.set_global_policy("float32")


def test_epoch_miou_comes_from_the_accumulated_confusion_matrix():
    from axial_kd_tf.metrics import confusion_matrix_np, iou_from_confusion

    trainer = _trainer()
    x, y = _batch(4, seed=3)
    logs = trainer.evaluate(x, y, batch_size=1, return_dict=True, verbose=0)
    out = trainer.predict(x, batch_size=4, verbose=0)
    _, miou = iou_from_confusion(confusion_matrix_np(y, out["student"].argmax(-1), K))
    assert logs["student_miou"] == pytest.approx(miou, abs=1e-5)

"""The two-output model, the self-distillation loss (paper Eq. 1) and the trainer."""

from __future__ import annotations

import numpy as np
import pytest
import keras
import tensorflow as tf

from axial_kd_tf.distill import (
    DistillationTrainer,
    build_distillation_model,
    distillation_loss,
    distillation_map,
    distillation_mask,
    softmax_cross_entropy,
    teacher_diagnostics,
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


def _np_softmax(z, temperature=1.0):
    z = z / temperature
    e = np.exp(z - z.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def _np_distill_map(s, t, target, temperature=1.0):
    if target == "logits":
        return np.mean((s - t) ** 2, -1)
    if target == "probabilities":
        return np.mean((_np_softmax(s) - _np_softmax(t)) ** 2, -1)
    pt, ps = _np_softmax(t, temperature), _np_softmax(s, temperature)
    return temperature**2 * np.sum(pt * (np.log(pt) - np.log(ps)), -1)


@pytest.mark.parametrize("target,temperature", [("logits", 1.0), ("probabilities", 1.0), ("kl", 1.0), ("kl", 3.0)])
def test_distillation_terms_match_numpy(target, temperature):
    rng = np.random.default_rng(3)
    s, t = rng.normal(size=(2, 3, 4, K)) * 2, rng.normal(size=(2, 3, 4, K)) * 2
    expected = _np_distill_map(s, t, target, temperature)
    got = np.asarray(distillation_map(s.astype("float32"), t.astype("float32"), target, temperature))
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-6)
    weights = rng.integers(0, 2, (2, 3, 4)).astype("float32")
    got = float(distillation_loss(s.astype("float32"), t.astype("float32"), target, temperature,
                                  pixel_weights=weights))
    # A mask lowers the term: masked pixels count as zero, the mean stays over every pixel.
    np.testing.assert_allclose(got, (expected * weights).sum() / weights.size, rtol=1e-4)
    np.testing.assert_allclose(float(distillation_loss(s.astype("float32"), t.astype("float32"), target,
                                                       temperature)), expected.mean(), rtol=1e-4)


def test_kl_is_zero_at_the_teacher_and_its_gradient_points_to_it():
    rng = np.random.default_rng(8)
    t = rng.normal(size=(1, 2, 2, K)).astype("float32")
    assert float(distillation_loss(t, t, "kl", 2.0)) == pytest.approx(0.0, abs=1e-6)
    s = tf.Variable(rng.normal(size=(1, 2, 2, K)).astype("float32"))
    with tf.GradientTape() as tape:
        loss = distillation_loss(s, t, "kl", 2.0)
    g = tape.gradient(loss, s).numpy()
    # d/ds of T²·KL(p_t^T ‖ p_s^T) = T·(p_s^T − p_t^T) / N (mean over N pixels)
    expected = 2.0 * (_np_softmax(s.numpy(), 2.0) - _np_softmax(t, 2.0)) / 4
    np.testing.assert_allclose(g, expected, rtol=1e-4, atol=1e-7)


def test_distillation_masks_match_numpy():
    rng = np.random.default_rng(9)
    s, t = rng.normal(size=(2, 5, 5, K)).astype("float32"), rng.normal(size=(2, 5, 5, K)).astype("float32")
    y = rng.integers(0, K, (2, 5, 5))
    np.testing.assert_array_equal(np.asarray(distillation_mask(y, s, t, "none")), np.ones((2, 5, 5)))
    np.testing.assert_array_equal(np.asarray(distillation_mask(y, s, t, "teacher_correct")),
                                  (t.argmax(-1) == y).astype("float32"))
    fixes = (t.argmax(-1) == y) & (s.argmax(-1) != y)
    assert 0 < fixes.mean() < 1
    np.testing.assert_array_equal(np.asarray(distillation_mask(y, s, t, "teacher_fixes")), fixes.astype("float32"))
    p_t, p_s = _np_softmax(t), _np_softmax(s)
    better = np.take_along_axis(p_t, y[..., None], -1)[..., 0] > np.take_along_axis(p_s, y[..., None], -1)[..., 0]
    assert 0 < better.mean() < 1  # the fixture exercises both outcomes
    np.testing.assert_array_equal(np.asarray(distillation_mask(y, s, t, "teacher_better")), better.astype("float32"))
    y_ignored = np.where(np.arange(5)[None, :, None] == 0, 255, y)  # column 0 is an ignore_index
    np.testing.assert_array_equal(np.asarray(distillation_mask(y_ignored, s, t, "teacher_better")),
                                  np.where(y_ignored == 255, 0.0, better).astype("float32"))
    for gone in ("sometimes", "teacher_confident"):  # teacher_confident was removed after the study
        with pytest.raises(ValueError, match="mask"):
            distillation_mask(y, s, t, gone)
    with pytest.raises(ValueError, match="target"):
        distillation_map(s, t, "mse")


def test_teacher_diagnostics_match_numpy():
    rng = np.random.default_rng(10)
    s, t = rng.normal(size=(2, 4, 4, K)).astype("float32"), rng.normal(size=(2, 4, 4, K)).astype("float32")
    d = {k: float(v) for k, v in teacher_diagnostics(s, t).items()}
    assert d["teacher_delta_l1"] == pytest.approx(np.abs(t - s).mean(), rel=1e-5)
    assert d["teacher_delta_share"] == pytest.approx(np.abs(t - s).mean() / np.abs(t).mean(), rel=1e-5)
    assert d["argmax_disagreement"] == pytest.approx((s.argmax(-1) != t.argmax(-1)).mean())
    same = {k: float(v) for k, v in teacher_diagnostics(s, s).items()}
    assert same["teacher_delta_l1"] == 0 and same["argmax_disagreement"] == 0


def test_stop_gradient_into_teacher():
    s = tf.Variable(np.random.default_rng(4).normal(size=(1, 2, 2, K)).astype("float32"))
    t = tf.Variable(np.random.default_rng(5).normal(size=(1, 2, 2, K)).astype("float32"))
    for target in ("logits", "kl"):
        for stop, teacher_grad_zero in ((True, True), (False, False)):
            with tf.GradientTape() as tape:
                loss = distillation_loss(s, t, target, stop_gradient_teacher=stop)
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


@pytest.mark.slow  # the optional segmentation_models library (~20 s idle)
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
    assert terms["distill_loss"] > 0
    expected = 0.5 * terms["student_ce"] + 2.0 * terms["teacher_ce"] + 3.0 * terms["distill_loss"]
    assert terms["loss"] == pytest.approx(expected, rel=1e-6)


def test_masked_kl_term_in_the_trainer():
    trainer = _trainer(target="kl", temperature=2.0, mask="teacher_correct")
    trainer.network.get_layer("axial_teacher_head").gate.assign(0.5)
    x, y = _batch()
    out = trainer(x, training=False)
    terms = {k: float(v) for k, v in trainer.compute_loss_terms(y, out).items()}
    s, t = np.asarray(out["student"], np.float64), np.asarray(out["teacher"], np.float64)
    mask = t.argmax(-1) == y
    assert 0 < mask.mean() < 1
    assert terms["distill_mask_share"] == pytest.approx(mask.mean())
    assert terms["distill_loss"] == pytest.approx((_np_distill_map(s, t, "kl", 2.0) * mask).mean(), rel=1e-4)


def test_distill_weight_warmup_ramps_linearly():
    trainer = _trainer(distill_weight=2.0, warmup_steps=4)
    x, y = _batch()
    seen = []
    for _ in range(6):
        seen.append(float(trainer.current_distill_weight()))
        logs = trainer.train_on_batch(x, y, return_dict=True)
    np.testing.assert_allclose(seen, [0.5, 1.0, 1.5, 2.0, 2.0, 2.0], rtol=1e-6)
    assert logs["distill_weight"] == pytest.approx(2.0)  # train_on_batch logs the last batch
    assert float(_trainer(distill_weight=2.0).current_distill_weight()) == 2.0


@pytest.mark.parametrize("warmup, expected", [(0, [0.0, 0.0, 2.0, 2.0]), (2, [0.0, 0.0, 1.0, 2.0])])
def test_distill_weight_delay_keeps_it_at_zero_first(warmup, expected):
    trainer = _trainer(distill_weight=2.0, warmup_steps=warmup, delay_steps=2)
    x, y = _batch()
    seen = []
    for _ in range(4):
        seen.append(float(trainer.current_distill_weight()))
        trainer.train_on_batch(x, y, return_dict=True)
    np.testing.assert_allclose(seen, expected, rtol=1e-6)


def test_gradient_diagnostics():
    x, y = _batch(4)
    trainer = _trainer(target="logits", temperature=1.0, mask="none")  # exact zeros: the MSE's gradient at t = s
    # Gate 0: the teacher is the student, the distillation term has no gradient.
    assert trainer.gradient_diagnostics(x, y)["distill_grad_share"] == 0.0
    trainer.network.get_layer("axial_teacher_head").gate.assign(1.0)
    before = [np.asarray(v) for v in trainer.network.non_trainable_variables]
    weights = [np.asarray(v) for v in trainer.network.trainable_variables]
    d = trainer.gradient_diagnostics(x, y)
    assert 0.0 < d["distill_grad_share"] < 1.0 and -1.0 <= d["distill_grad_cosine"] <= 1.0
    # Probing runs in training mode but leaves BatchNorm statistics and weights as they were.
    for a, b in zip(before, trainer.network.non_trainable_variables):
        np.testing.assert_array_equal(a, np.asarray(b))
    for a, b in zip(weights, trainer.network.trainable_variables):
        np.testing.assert_array_equal(a, np.asarray(b))
    # The share grows with the distillation weight; with weight 0 it is 0.
    heavy = _trainer(distill_weight=100.0)
    heavy.network.set_weights(trainer.network.get_weights())
    assert heavy.gradient_diagnostics(x, y)["distill_grad_share"] > d["distill_grad_share"]
    off = _trainer(distill_weight=0.0)
    off.network.set_weights(trainer.network.get_weights())
    assert off.gradient_diagnostics(x, y)["distill_grad_share"] == 0.0
    assert _trainer(distill=False).gradient_diagnostics(x, y) == {}


def test_trainer_rejects_bad_options():
    for kw in (dict(target="mse"), dict(mask="always"), dict(temperature=0.0)):
        with pytest.raises(ValueError):
            _trainer(**kw)


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
        expected |= {"teacher_ce", "distill_loss", "teacher_miou", "teacher_iou_c", "teacher_delta_l1",
                     "teacher_delta_share", "argmax_disagreement", "distill_mask_share", "distill_weight"}
    assert expected <= set(last)
    assert distill or not any(k.startswith(("teacher", "distill", "argmax")) for k in last)


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

"""axial_kd_tf.losses.self_distillation_loss: paper Eq. 1 in keras.ops, the loss the TensorFlow trainer minimises.

The pieces (CE, distillation map, mask) are checked against NumPy in tests/test_distill.py; here the whole loss is,
at the library's defaults and in the paper's form, against NumPy and against the loss ``DistillationTrainer`` reports
for a real training step. That the module imports without TensorFlow is checked under the torch backend in
tests/test_torch_example.py.
"""

from __future__ import annotations

import dataclasses
import inspect

import keras
import numpy as np
import pytest

from axial_kd_tf.config import DistillConfig
from axial_kd_tf.distill import DistillationTrainer, build_distillation_model
from axial_kd_tf.losses import self_distillation_loss
from axial_kd_tf.models import build_network

K = 4
PAPER = dict(target="logits", temperature=1.0, mask="none")
DEFAULTS: dict = {}


def _np_log_softmax(z: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    z = z / temperature
    z = z - z.max(-1, keepdims=True)
    return z - np.log(np.exp(z).sum(-1, keepdims=True))


def _np_loss(y: np.ndarray, s: np.ndarray, t: np.ndarray, target: str, temperature: float, mask: str,
             weights=(1.0, 1.0, 1.0)) -> float:
    """Eq. 1 in float64: w_s·CE(s) + w_t·CE(t) + w_d·mean over all pixels of (mask · D)."""
    ce = lambda z: -np.take_along_axis(_np_log_softmax(z), y[..., None], -1).mean()  # noqa: E731
    if target == "logits":
        d = ((s - t) ** 2).mean(-1)
    else:
        log_pt, log_ps = _np_log_softmax(t, temperature), _np_log_softmax(s, temperature)
        d = temperature**2 * (np.exp(log_pt) * (log_pt - log_ps)).sum(-1)
    m = {"teacher_correct": t.argmax(-1) == y, "teacher_fixes": (t.argmax(-1) == y) & (s.argmax(-1) != y),
         "none": np.ones(y.shape, bool)}[mask]
    return weights[0] * ce(s) + weights[1] * ce(t) + weights[2] * (d * m).mean()


def test_defaults_are_the_configs_defaults():
    """Called with no options, the function computes what train.py trains with (DistillConfig's defaults)."""
    params = inspect.signature(self_distillation_loss).parameters
    cfg = DistillConfig()
    for name in ("target", "temperature", "mask", "ignore_index", "class_weights", "stop_gradient_teacher"):
        assert params[name].default == getattr(cfg, name), name
    assert tuple(params["weights"].default) == (cfg.student_weight, cfg.teacher_weight, cfg.distill_weight)
    assert {f.name for f in dataclasses.fields(DistillConfig)} - set(params) == {
        "enabled", "student_weight", "teacher_weight", "distill_weight", "warmup", "delay"}


@pytest.mark.parametrize("form", [DEFAULTS, PAPER], ids=["defaults", "paper"])
def test_matches_numpy(form):
    rng = np.random.default_rng(0)
    s, t = rng.normal(size=(2, 6, 5, K)) * 2, rng.normal(size=(2, 6, 5, K)) * 2
    y = rng.integers(0, K, (2, 6, 5))
    opts = dict(target="kl", temperature=2.0, mask="teacher_fixes") | form
    total, parts = self_distillation_loss(y, s.astype("float32"), t.astype("float32"), **form)
    # the default weights are the library's (1, 1, 10): the teacher study's distill_weight
    assert float(total) == pytest.approx(_np_loss(y, s, t, **opts, weights=(1.0, 1.0, 10.0)), rel=1e-5)
    assert float(parts["loss"]) == float(total)
    weights = (0.5, 2.0, 3.0)
    total = self_distillation_loss(y, s.astype("float32"), t.astype("float32"), weights=weights, **form)[0]
    assert float(total) == pytest.approx(_np_loss(y, s, t, **opts, weights=weights), rel=1e-5)
    # Without a teacher: the CE-only baseline.
    base, parts = self_distillation_loss(y, s.astype("float32"), None, weights=weights)
    assert float(base) == pytest.approx(0.5 * _np_loss(y, s, s, "logits", 1.0, "none", (1.0, 0.0, 0.0)), rel=1e-5)
    assert "teacher_ce" not in parts and float(parts["weighted_distill"]) == 0.0


@pytest.mark.parametrize("form", [DEFAULTS, PAPER], ids=["defaults", "paper"])
def test_is_the_loss_the_trainer_reports_for_a_training_step(form):
    keras.utils.set_random_seed(0)
    net = build_network("simple_unet", num_classes=K, in_channels=1, base_filters=4, depth=2)
    model = build_distillation_model(net, K, teacher_kwargs=dict(hidden_dim=8, detach_input=form is DEFAULTS))
    model.get_layer("axial_teacher_head").gate.assign(0.7)  # the teacher differs from the student
    trainer = DistillationTrainer(model, K, **form)
    trainer.compile(optimizer=keras.optimizers.SGD(1e-3), run_eagerly=True)  # the same train_step, untraced
    rng = np.random.default_rng(1)
    x = rng.random((2, 16, 16, 1), dtype=np.float32)
    y = rng.integers(0, K, (2, 16, 16)).astype("int32")
    out = model(x, training=True)  # before the step: the outputs its loss is computed from (BatchNorm batch stats)
    want, parts = self_distillation_loss(y, out["student"], out["teacher"], **form)
    assert float(parts["distill_loss"]) > 0 and 0 < float(parts["distill_mask_share"]) <= 1
    logs = trainer.train_on_batch(x, y, return_dict=True)
    assert logs["loss"] == pytest.approx(float(want), rel=1e-5)
    for key in ("student_ce", "teacher_ce", "distill_loss"):
        assert logs[key] == pytest.approx(float(parts[key]), rel=1e-5), key


def test_rejects_bad_options():
    y, s = np.zeros((1, 2, 2), "int32"), np.zeros((1, 2, 2, K), "float32")
    for kw, word in ((dict(target="mse"), "target"), (dict(mask="always"), "mask"), (dict(temperature=0.0),
                     "temperature"), (dict(weights=(1.0, 1.0)), "weights")):
        with pytest.raises(ValueError, match=word):
            self_distillation_loss(y, s, s, **kw)

"""Axial-Attention self-distillation: the two-output model, the loss and the trainer.

Paper: "Improving segmentation accuracy with self-distillation" (Hotta lab, Meijo University).

* The segmentation network's logits are the **student** output.
* :class:`~axial_kd_tf.layers.AxialTeacherHead` applied to those logits gives the **teacher** output.
* Loss (paper, Eq. 1 with unit weights by default)::

      L = w_s · CE(y, student) + w_t · CE(y, teacher) + w_d · D(student, teacher)

  CE is softmax cross-entropy from logits (optionally class-weighted, pixels equal to ``ignore_index`` excluded);
  ``D`` distils the teacher into the student: the paper's MSE on logits, an MSE on softmax probabilities, or a
  temperature-scaled KL divergence, optionally over the pixels the teacher gets right only, with the gradient stopped
  into the teacher by default (the teacher is the target of that term). See docs/method.md. The loss itself is
  :func:`axial_kd_tf.losses.self_distillation_loss` (``keras.ops`` only, no TensorFlow: PyTorch and JAX training
  loops use it too); its pieces are re-exported here.
* At deployment the student alone runs: it *is* the wrapped network, layer for layer.

``distill.enabled: false`` is the paper's "without" baseline: the same trainer with the student output only and
``L = CE(y, student)``, so both modes share one code path and one set of metrics.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import keras
import tensorflow as tf
from keras import ops

from axial_kd_tf.distribute import scale_loss
from axial_kd_tf.layers.teacher_head import AxialTeacherHead
# The loss lives in the TensorFlow-free axial_kd_tf.losses (PyTorch / JAX use it too); re-exported here.
from axial_kd_tf.losses import (  # noqa: F401
    MASKS,
    TARGETS,
    check_loss_options,
    distillation_loss,
    distillation_map,
    distillation_mask,
    self_distillation_loss,
    softmax_cross_entropy,
)
from axial_kd_tf.metrics import ConfusionMatrixIoU

STUDENT = "student"
TEACHER = "teacher"


def build_distillation_model(
    network: keras.Model,
    num_classes: int | None = None,
    with_teacher: bool = True,
    teacher_kwargs: Mapping[str, Any] | None = None,
    name: str = "axial_kd",
) -> keras.Model:
    """Wrap any logits-producing Keras segmentation network into a functional model with outputs ``student``/``teacher``.

    ``network`` maps ``[B, H, W, C]`` to logits ``[B, H, W, K]`` (no softmax): one of ours, or a segmentation-models
    network built with ``activation=None`` (or ``'linear'``). The network is nested unchanged as one layer, so
    :func:`student_network` returns exactly it. Outputs are float32 even under a mixed-precision policy.
    With ``with_teacher=False`` the model has the ``student`` output only (the baseline).
    """
    if len(network.outputs) != 1:
        raise ValueError(f"network '{network.name}' must have exactly one (logits) output, has {len(network.outputs)}")
    k = network.outputs[0].shape[-1]
    if num_classes is not None and k is not None and int(k) != int(num_classes):
        raise ValueError(f"network '{network.name}' outputs {k} channels but num_classes={num_classes}")
    num_classes = int(num_classes or k)
    inputs = keras.Input(shape=network.inputs[0].shape[1:], name="image")
    logits = network(inputs)
    # float32 logits for the loss even when the network computes in bf16/fp16.
    student = keras.layers.Activation("linear", dtype="float32", name=STUDENT)(logits)
    outputs = {STUDENT: student}
    if with_teacher:
        head = AxialTeacherHead(num_classes, name="axial_teacher_head", **dict(teacher_kwargs or {}))
        teacher = head(student)
        outputs[TEACHER] = keras.layers.Activation("linear", dtype="float32", name=TEACHER)(teacher)
    return keras.Model(inputs, outputs, name=name)


def student_network(model: keras.Model) -> keras.Model:
    """The deployable student: the wrapped segmentation network itself (no teacher, no extra op)."""
    for layer in model.layers:
        if isinstance(layer, keras.Model):
            return layer
    raise ValueError(f"model '{model.name}' does not nest a segmentation network")


def teacher_network(model: keras.Model) -> keras.Model:
    """A single-output functional model image → teacher logits (for optional teacher deployment)."""
    if TEACHER not in model.output:
        raise ValueError(f"model '{model.name}' has no teacher output")
    return keras.Model(model.inputs, model.output[TEACHER], name="teacher")


# ------------------------------------------------------------------------------------------------------ trainer
class DistillationTrainer(keras.Model):
    """Trains a :func:`build_distillation_model` model with the self-distillation loss (or CE only, the baseline).

    Loss (paper Eq. 1, generalised): ``w_s·CE(student) + w_t·CE(teacher) + w_d(step)·D(student, teacher)`` where
    ``D`` is :func:`distillation_loss` (``target``, ``temperature``) over the pixels chosen by ``mask``
    (:func:`distillation_mask`), and ``w_d(step)`` ramps linearly from 0 to ``distill_weight`` over the first
    ``warmup_steps`` optimizer steps (the teacher learns something before it teaches), after ``delay_steps`` steps at
    ``w_d = 0`` (the student trains as the baseline does, with the teacher head learning beside it).

    Logged per epoch: ``loss``, ``student_ce``, ``teacher_ce``, ``distill_loss``; ``student_miou``,
    ``student_iou_<class>`` (and the same for ``teacher_``) from a confusion matrix accumulated over the whole epoch;
    and the teacher diagnostics (:data:`DIAGNOSTICS`): ``teacher_delta_l1`` (mean ``|t − s|`` on logits),
    ``teacher_delta_share`` (``mean|t − s| / mean|t|``: the share of the teacher logits that is not the student),
    ``argmax_disagreement`` (share of pixels whose class differs between the two outputs), ``distill_mask_share``
    (share of pixels distilled) and ``distill_weight`` (the ramped ``w_d``). :meth:`gradient_diagnostics` gives the
    share of the student's gradient that comes from the distillation term (logged per epoch by
    ``callbacks.TeacherDiagnostics``).

    Per DEVELOPERS.md, a Model subclass wrapping a functional model does not reload from ``.keras``: checkpoint this
    trainer's weights (``save_weights``) and save ``self.network`` (a plain functional model) for deployment.
    """

    def __init__(
        self,
        network: keras.Model,
        num_classes: int,
        class_names: Sequence[str] | None = None,
        student_weight: float = 1.0,
        teacher_weight: float = 1.0,
        distill_weight: float = 10.0,
        target: str = "kl",
        temperature: float = 2.0,
        mask: str = "teacher_fixes",
        warmup_steps: int = 0,
        delay_steps: int = 0,
        stop_gradient_teacher: bool = True,
        ignore_index: int | None = None,
        class_weights: Sequence[float] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        check_loss_options(target, temperature, mask)
        self.network = network
        self.num_classes = int(num_classes)
        self.class_names = list(class_names) if class_names else [f"class{i}" for i in range(num_classes)]
        self.has_teacher = isinstance(network.output, dict) and TEACHER in network.output
        self.student_weight = float(student_weight)
        self.teacher_weight = float(teacher_weight)
        self.distill_weight = float(distill_weight)
        self.target = target
        self.temperature = float(temperature)
        self.mask = mask
        self.warmup_steps = int(warmup_steps)
        self.delay_steps = int(delay_steps)
        self.stop_gradient_teacher = bool(stop_gradient_teacher)
        self.ignore_index = ignore_index
        self.class_weights = list(class_weights) if class_weights is not None else None
        if self.class_weights is not None and len(self.class_weights) != self.num_classes:
            raise ValueError(f"class_weights has {len(self.class_weights)} entries, expected {self.num_classes}")
        names = ["loss", "student_ce"]
        if self.has_teacher:
            names += ["teacher_ce", "distill_loss", *DIAGNOSTICS]
        self.trackers = {n: keras.metrics.Mean(name=n) for n in names}
        iou_kwargs = dict(num_classes=self.num_classes, class_names=self.class_names, ignore_index=ignore_index)
        self.student_iou = ConfusionMatrixIoU(prefix="student_", name="student_iou", **iou_kwargs)
        self.teacher_iou = (
            ConfusionMatrixIoU(prefix="teacher_", name="teacher_iou", **iou_kwargs) if self.has_teacher else None
        )
        self._gradient_fn = None
        # The wrapped functional network is built already; BackupAndRestore and save_weights need a built model.
        self.built = True

    def call(self, inputs: Any, training: bool | None = None) -> dict:
        return self.network(inputs, training=training)

    @property
    def metrics(self) -> list:
        m = list(self.trackers.values()) + [self.student_iou]
        return m + ([self.teacher_iou] if self.teacher_iou is not None else [])

    def current_distill_weight(self) -> Any:
        """``w_d`` at the current optimizer step (float32 scalar): 0 for the first ``delay_steps`` steps, then a
        linear ramp over ``warmup_steps``, then ``distill_weight``."""
        if (self.warmup_steps <= 0 and self.delay_steps <= 0) or getattr(self, "optimizer", None) is None:
            return ops.convert_to_tensor(self.distill_weight, dtype="float32")
        step = ops.cast(self.optimizer.iterations, "float32") + 1.0 - float(self.delay_steps)
        ramp = ops.minimum(step / float(max(self.warmup_steps, 1)), 1.0)
        return self.distill_weight * ops.maximum(ramp, 0.0)

    def compute_loss_terms(self, labels: Any, outputs: Mapping[str, Any]) -> dict:
        """The loss, its logged terms and the teacher diagnostics for one batch (the paper's Eq. 1, through
        :func:`axial_kd_tf.losses.self_distillation_loss`)."""
        teacher = outputs[TEACHER] if self.has_teacher else None
        _, terms = self_distillation_loss(
            labels, outputs[STUDENT], teacher, target=self.target, temperature=self.temperature, mask=self.mask,
            weights=(self.student_weight, self.teacher_weight, self.current_distill_weight()),
            ignore_index=self.ignore_index, class_weights=self.class_weights,
            stop_gradient_teacher=self.stop_gradient_teacher,
        )
        if teacher is not None:
            terms.update(teacher_diagnostics(outputs[STUDENT], teacher))
        return terms

    def _update_metrics(self, labels: Any, outputs: Mapping[str, Any], terms: Mapping[str, Any]) -> dict:
        # Weighted by the batch's images, so the epoch value is the mean over images whatever the batches (and over
        # replicas: the Mean's variables are summed across them). An empty batch (a replica left without images at
        # the end of an evaluation split) has NaN means; it must weigh nothing, not poison the sum.
        count = ops.cast(ops.shape(labels)[0], "float32")
        for name, tracker in self.trackers.items():
            value = ops.cast(terms[name], "float32")
            tracker.update_state(ops.where(count > 0, value, ops.zeros_like(value)), sample_weight=count)
        self.student_iou.update_state(labels, outputs[STUDENT])
        if self.teacher_iou is not None:
            self.teacher_iou.update_state(labels, outputs[TEACHER])
        return self.get_metrics_result()

    def _total_loss(self, terms: Mapping[str, Any]) -> Any:
        loss = terms["loss"]
        if self.losses:  # layer regularisers
            loss = loss + ops.sum(ops.stack([ops.cast(x, "float32") for x in self.losses]))
        return loss

    def _maybe_symbolic_build(self, iterator: Any = None, data_batch: Any = None) -> None:
        """Under a strategy Keras builds the model on a batch it draws from the training iterator, which shifts the
        stream by one batch (or starts a reshuffled pass of it), so a distributed run would not see the batches of a
        one-device run nor resume on the right one. Everything here but the optimizer is built already: build that
        (in the strategy's scope) and draw nothing."""
        if iterator is not None and self._distribute_strategy is not None and self.built:
            if getattr(self, "optimizer", None) is not None and not self.optimizer.built:
                with self._distribute_strategy.scope():
                    self.optimizer.build(self.trainable_variables)
            return
        super()._maybe_symbolic_build(iterator=iterator, data_batch=data_batch)

    def train_step(self, data: Any) -> dict:
        images, labels = data[0], data[1]
        with tf.GradientTape() as tape:
            outputs = self(images, training=True)
            terms = self.compute_loss_terms(labels, outputs)
            # Under a strategy each replica's mean is divided by the replicas in sync (the optimizer sums their
            # gradients: their sum is then the global-batch mean's); then loss scaling for mixed_float16 (identity
            # for other policies). The logged terms stay unscaled.
            scaled = self.optimizer.scale_loss(scale_loss(self._total_loss(terms)))
        variables = self.trainable_variables
        grads = tape.gradient(scaled, variables)
        self.optimizer.apply(grads, variables)
        return self._step_logs(self._update_metrics(labels, outputs, terms))

    def test_step(self, data: Any) -> dict:
        images, labels = data[0], data[1]
        if self._distribute_strategy is None:
            outputs = self(images, training=False)
            return self._update_metrics(labels, outputs, self.compute_loss_terms(labels, outputs))

        def update() -> Any:
            outputs = self(images, training=False)
            self._update_metrics(labels, outputs, self.compute_loss_terms(labels, outputs))
            return ops.zeros(())

        # At the end of an evaluation split TensorFlow hands a replica without images an empty batch, on which the
        # convolutions fail on CPU (a wrongly shaped empty result): such a replica skips the step.
        tf.cond(ops.shape(images)[0] > 0, update, lambda: ops.zeros(()))
        return self._step_logs(self.get_metrics_result())

    def _step_logs(self, logs: dict) -> dict:
        """Under MultiWorkerMirroredStrategy Keras reduces a step's outputs with ``strategy.reduce("MEAN", v,
        axis=0)``, which needs an axis to reduce: the scalars get one (elsewhere they stay scalars)."""
        if isinstance(self._distribute_strategy, tf.distribute.MultiWorkerMirroredStrategy):
            return {k: ops.reshape(v, (1,)) for k, v in logs.items()}
        return logs

    def predict_step(self, data: Any) -> dict:
        images = data[0] if isinstance(data, (tuple, list)) else data
        return self(images, training=False)

    def gradient_diagnostics(self, images: Any, labels: Any) -> dict:
        """How much of the student's gradient comes from the distillation term, on one batch.

        Returns ``distill_grad_share = ‖g_d‖ / (‖g_ce‖ + ‖g_d‖)`` and ``distill_grad_cosine = cos(g_d, g_ce)``, where
        ``g_d`` is the gradient of ``w_d(step)·D`` and ``g_ce`` that of ``w_s·CE(student) + w_t·CE(teacher)`` with
        respect to the student network's trainable weights (a negative cosine: the distillation pulls against the
        labels). The forward pass runs in training mode (as in ``train_step``) and the BatchNorm statistics it
        updates are restored afterwards, so probing does not change training.
        """
        if not self.has_teacher:
            return {}
        if self._gradient_fn is None:
            self._gradient_fn = tf.function(self._replica_gradient_norms)
        state = [ops.copy(v.value) for v in self.network.non_trainable_variables]
        try:
            ce_sq, d_sq, dot = (float(x) for x in self._gradient_fn(images, labels))
        finally:
            for v, value in zip(self.network.non_trainable_variables, state):
                v.assign(value)
        ce_norm, d_norm = ce_sq**0.5, d_sq**0.5
        share = d_norm / (ce_norm + d_norm) if ce_norm + d_norm > 0 else 0.0
        cosine = dot / (ce_norm * d_norm) if ce_norm > 0 and d_norm > 0 else 0.0
        return {"distill_grad_share": share, "distill_grad_cosine": cosine}

    def _replica_gradient_norms(self, images: Any, labels: Any) -> tuple:
        """:meth:`_gradient_norms` on every replica of the trainer's strategy (each on the whole probe batch, with
        the same weights, so they agree; synchronized BatchNorm's all-reduce needs every replica), the first one's
        result returned. Without a strategy, the plain call."""
        strategy = self._distribute_strategy  # the strategy the trainer was built under (None: none)
        if strategy is None:
            return self._gradient_norms(images, labels)
        out = strategy.run(self._gradient_norms, args=(images, labels))
        return tuple(strategy.experimental_local_results(x)[0] for x in out)

    def _gradient_norms(self, images: Any, labels: Any) -> tuple:
        variables = [v for v in self.network.trainable_variables if not v.path.startswith(_head_prefix(self))]
        with tf.GradientTape(persistent=True) as tape:
            terms = self.compute_loss_terms(labels, self(images, training=True))
        g_ce = tape.gradient(terms["ce_loss"], variables, unconnected_gradients="zero")
        g_d = tape.gradient(terms["weighted_distill"], variables, unconnected_gradients="zero")
        del tape
        flat = lambda grads: ops.concatenate([ops.reshape(ops.cast(g, "float32"), (-1,)) for g in grads])  # noqa: E731
        a, b = flat(g_ce), flat(g_d)
        return ops.sum(a * a), ops.sum(b * b), ops.sum(a * b)


DIAGNOSTICS = ("teacher_delta_l1", "teacher_delta_share", "argmax_disagreement", "distill_mask_share",
               "distill_weight")


def teacher_diagnostics(student: Any, teacher: Any) -> dict:
    """Per-batch measures of how far the teacher is from its student (no gradient).

    ``teacher_delta_l1``: mean ``|t − s|`` over pixels and classes (logits); ``teacher_delta_share``:
    ``mean|t − s| / mean|t|``; ``argmax_disagreement``: the share of pixels whose predicted class differs.
    """
    s = ops.stop_gradient(ops.cast(student, "float32"))
    t = ops.stop_gradient(ops.cast(teacher, "float32"))
    delta = ops.mean(ops.abs(t - s))
    return {
        "teacher_delta_l1": delta,
        "teacher_delta_share": delta / ops.maximum(ops.mean(ops.abs(t)), 1e-12),
        "argmax_disagreement": ops.mean(ops.cast(ops.not_equal(ops.argmax(s, -1), ops.argmax(t, -1)), "float32")),
    }


def teacher_head(model: keras.Model) -> AxialTeacherHead | None:
    """The :class:`AxialTeacherHead` of a two-output model (None for a baseline)."""
    for layer in model.layers:
        if isinstance(layer, AxialTeacherHead):
            return layer
    return None


def _head_prefix(trainer: DistillationTrainer) -> str:
    head = teacher_head(trainer.network)
    return head.path if head is not None else "\0"

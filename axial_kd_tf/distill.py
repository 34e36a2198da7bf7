"""Axial-Attention self-distillation: the two-output model, the loss and the trainer.

Paper: "Improving segmentation accuracy with self-distillation" (Hotta lab, Meijo University).

* The segmentation network's logits are the **student** output.
* :class:`~axial_kd_tf.layers.AxialTeacherHead` applied to those logits gives the **teacher** output.
* Loss (paper, Eq. 1 with unit weights by default)::

      L = w_s · CE(y, student) + w_t · CE(y, teacher) + w_d · MSE(student, teacher)

  CE is softmax cross-entropy from logits (optionally class-weighted, pixels equal to ``ignore_index`` excluded);
  the MSE distils the teacher into the student, on logits (default) or on softmax probabilities, with the gradient
  stopped into the teacher by default (the teacher is the target of that term).
* At deployment the student alone runs: it *is* the wrapped network, layer for layer.

``distill.enabled: false`` is the paper's "without" baseline: the same trainer with the student output only and
``L = CE(y, student)``, so both modes share one code path and one set of metrics.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import keras
import tensorflow as tf
from keras import ops

from axial_kd_tf.layers.teacher_head import AxialTeacherHead
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


# ------------------------------------------------------------------------------------------------------- losses
def softmax_cross_entropy(
    labels: Any,
    logits: Any,
    ignore_index: int | None = None,
    class_weights: Sequence[float] | None = None,
) -> Any:
    """Mean pixel-wise softmax cross-entropy from logits.

    Pixels labelled ``ignore_index`` are excluded. With ``class_weights`` the mean is weighted by the weight of each
    pixel's true class (as ``torch.nn.CrossEntropyLoss(weight=...)``); without, it is the plain mean (the paper's CE).
    """
    labels = ops.cast(labels, "int32")
    logits = ops.cast(logits, "float32")
    if ignore_index is not None:
        valid = ops.not_equal(labels, ignore_index)
        labels = ops.where(valid, labels, ops.zeros_like(labels))
        weights = ops.cast(valid, "float32")
    else:
        weights = ops.ones_like(labels, dtype="float32")
    if class_weights is not None:
        cw = ops.convert_to_tensor(list(class_weights), dtype="float32")
        weights = weights * ops.take(cw, labels, axis=0)
    ce = ops.sparse_categorical_crossentropy(labels, logits, from_logits=True)
    return ops.sum(ce * weights) / ops.maximum(ops.sum(weights), 1e-12)


def distillation_mse(student: Any, teacher: Any, target: str = "logits", stop_gradient_teacher: bool = True) -> Any:
    """Mean squared error distilling the teacher into the student, on ``logits`` or ``probabilities``."""
    s = ops.cast(student, "float32")
    t = ops.cast(teacher, "float32")
    if target == "probabilities":
        s, t = ops.softmax(s, axis=-1), ops.softmax(t, axis=-1)
    elif target != "logits":
        raise ValueError(f"target must be 'logits' or 'probabilities', got {target!r}")
    if stop_gradient_teacher:
        t = ops.stop_gradient(t)
    return ops.mean(ops.square(s - t))


# ------------------------------------------------------------------------------------------------------ trainer
class DistillationTrainer(keras.Model):
    """Trains a :func:`build_distillation_model` model with the self-distillation loss (or CE only, the baseline).

    Logged per epoch: ``loss``, ``student_ce``, ``teacher_ce``, ``distill_mse``, and ``student_miou``,
    ``student_iou_<class>`` (and the same for ``teacher_``) from a confusion matrix accumulated over the whole epoch.

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
        distill_weight: float = 1.0,
        target: str = "logits",
        stop_gradient_teacher: bool = True,
        ignore_index: int | None = None,
        class_weights: Sequence[float] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.network = network
        self.num_classes = int(num_classes)
        self.class_names = list(class_names) if class_names else [f"class{i}" for i in range(num_classes)]
        self.has_teacher = isinstance(network.output, dict) and TEACHER in network.output
        self.student_weight = float(student_weight)
        self.teacher_weight = float(teacher_weight)
        self.distill_weight = float(distill_weight)
        self.target = target
        self.stop_gradient_teacher = bool(stop_gradient_teacher)
        self.ignore_index = ignore_index
        self.class_weights = list(class_weights) if class_weights is not None else None
        if self.class_weights is not None and len(self.class_weights) != self.num_classes:
            raise ValueError(f"class_weights has {len(self.class_weights)} entries, expected {self.num_classes}")
        names = ["loss", "student_ce"] + (["teacher_ce", "distill_mse"] if self.has_teacher else [])
        self.trackers = {n: keras.metrics.Mean(name=n) for n in names}
        iou_kwargs = dict(num_classes=self.num_classes, class_names=self.class_names, ignore_index=ignore_index)
        self.student_iou = ConfusionMatrixIoU(prefix="student_", name="student_iou", **iou_kwargs)
        self.teacher_iou = (
            ConfusionMatrixIoU(prefix="teacher_", name="teacher_iou", **iou_kwargs) if self.has_teacher else None
        )
        # The wrapped functional network is built already; BackupAndRestore and save_weights need a built model.
        self.built = True

    def call(self, inputs: Any, training: bool | None = None) -> dict:
        return self.network(inputs, training=training)

    @property
    def metrics(self) -> list:
        m = list(self.trackers.values()) + [self.student_iou]
        return m + ([self.teacher_iou] if self.teacher_iou is not None else [])

    def compute_loss_terms(self, labels: Any, outputs: Mapping[str, Any]) -> dict:
        """The loss and its logged terms for one batch (the paper's Eq. 1)."""
        ce = dict(ignore_index=self.ignore_index, class_weights=self.class_weights)
        terms = {"student_ce": softmax_cross_entropy(labels, outputs[STUDENT], **ce)}
        loss = self.student_weight * terms["student_ce"]
        if self.has_teacher:
            terms["teacher_ce"] = softmax_cross_entropy(labels, outputs[TEACHER], **ce)
            terms["distill_mse"] = distillation_mse(
                outputs[STUDENT], outputs[TEACHER], self.target, self.stop_gradient_teacher
            )
            loss = loss + self.teacher_weight * terms["teacher_ce"] + self.distill_weight * terms["distill_mse"]
        terms["loss"] = loss
        return terms

    def _update_metrics(self, labels: Any, outputs: Mapping[str, Any], terms: Mapping[str, Any]) -> dict:
        for name, tracker in self.trackers.items():
            tracker.update_state(terms[name])
        self.student_iou.update_state(labels, outputs[STUDENT])
        if self.teacher_iou is not None:
            self.teacher_iou.update_state(labels, outputs[TEACHER])
        return self.get_metrics_result()

    def train_step(self, data: Any) -> dict:
        images, labels = data[0], data[1]
        with tf.GradientTape() as tape:
            outputs = self(images, training=True)
            terms = self.compute_loss_terms(labels, outputs)
            loss = terms["loss"]
            if self.losses:  # layer regularisers
                loss = loss + ops.sum(ops.stack([ops.cast(x, "float32") for x in self.losses]))
            # Loss scaling for mixed_float16 (identity for other policies / optimizers).
            scaled = self.optimizer.scale_loss(loss)
        variables = self.trainable_variables
        grads = tape.gradient(scaled, variables)
        self.optimizer.apply(grads, variables)
        return self._update_metrics(labels, outputs, terms)

    def test_step(self, data: Any) -> dict:
        images, labels = data[0], data[1]
        outputs = self(images, training=False)
        terms = self.compute_loss_terms(labels, outputs)
        return self._update_metrics(labels, outputs, terms)

    def predict_step(self, data: Any) -> dict:
        images = data[0] if isinstance(data, (tuple, list)) else data
        return self(images, training=False)

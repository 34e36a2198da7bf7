"""Axial-Attention self-distillation: the two-output model, the loss and the trainer.

Paper: "Improving segmentation accuracy with self-distillation" (Hotta lab, Meijo University).

* The segmentation network's logits are the **student** output.
* :class:`~axial_kd_tf.layers.AxialTeacherHead` applied to those logits gives the **teacher** output.
* Loss (paper, Eq. 1 with unit weights by default)::

      L = w_s · CE(y, student) + w_t · CE(y, teacher) + w_d · D(student, teacher)

  CE is softmax cross-entropy from logits (optionally class-weighted, pixels equal to ``ignore_index`` excluded);
  ``D`` distils the teacher into the student: the paper's MSE on logits, an MSE on softmax probabilities, or a
  temperature-scaled KL divergence, optionally over the pixels the teacher gets right only, with the gradient stopped
  into the teacher by default (the teacher is the target of that term). See docs/method.md.
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


TARGETS = ("logits", "probabilities", "kl")
MASKS = ("none", "teacher_correct", "teacher_better", "teacher_confident")


def distillation_map(student: Any, teacher: Any, target: str = "logits", temperature: float = 1.0,
                     stop_gradient_teacher: bool = True) -> Any:
    """Per-pixel distillation loss ``[B, H, W]`` pulling the student towards the teacher.

    * ``logits``: mean over the K classes of ``(s − t)²`` (the paper's MSE between the two outputs);
    * ``probabilities``: the same on softmax probabilities;
    * ``kl``: ``T² · KL(softmax(t/T) ‖ softmax(s/T))`` (Hinton et al., "Distilling the knowledge in a neural
      network", 2015); ``T²`` keeps the gradient scale independent of ``T``.

    With ``stop_gradient_teacher`` the teacher is a constant target of this term.
    """
    s = ops.cast(student, "float32")
    t = ops.cast(teacher, "float32")
    if stop_gradient_teacher:
        t = ops.stop_gradient(t)
    if target == "logits":
        return ops.mean(ops.square(s - t), axis=-1)
    if target == "probabilities":
        return ops.mean(ops.square(ops.softmax(s, axis=-1) - ops.softmax(t, axis=-1)), axis=-1)
    if target == "kl":
        temperature = float(temperature)
        log_ps = ops.log_softmax(s / temperature, axis=-1)
        log_pt = ops.log_softmax(t / temperature, axis=-1)
        return temperature**2 * ops.sum(ops.exp(log_pt) * (log_pt - log_ps), axis=-1)
    raise ValueError(f"target must be one of {', '.join(TARGETS)}, got {target!r}")


def distillation_mask(labels: Any, student: Any, teacher: Any, mask: str = "none") -> Any:
    """Which pixels are distilled (``[B, H, W]`` float 0/1, no gradient).

    * ``none``: every pixel;
    * ``teacher_correct``: pixels where the teacher's argmax is the label (the teacher only teaches what it gets
      right, so a class it misses is not taken from the student);
    * ``teacher_better``: pixels where the teacher gives the *label* a higher softmax probability than the student
      does, so the term only pulls the student towards a distribution that is closer to the label there (on the
      other pixels distillation would work against the student's CE);
    * ``teacher_confident``: pixels where the teacher's top softmax probability exceeds the student's.
    """
    if mask == "none":
        return ops.ones(ops.shape(student)[:-1], dtype="float32")
    t = ops.stop_gradient(ops.cast(teacher, "float32"))
    if mask == "teacher_correct":
        return ops.cast(ops.equal(ops.argmax(t, axis=-1), ops.cast(labels, "int32")), "float32")
    if mask == "teacher_better":
        s = ops.stop_gradient(ops.cast(student, "float32"))
        labels = ops.cast(labels, "int32")
        num_classes = ops.shape(t)[-1]
        # A label outside [0, K) (an ignore_index such as 255) has no probability to compare: not distilled, as with
        # teacher_correct, whose argmax never equals it.
        valid = ops.logical_and(ops.greater_equal(labels, 0), ops.less(labels, num_classes))
        y = ops.clip(labels, 0, num_classes - 1)[..., None]
        p_t = ops.take_along_axis(ops.softmax(t, axis=-1), y, axis=-1)[..., 0]
        p_s = ops.take_along_axis(ops.softmax(s, axis=-1), y, axis=-1)[..., 0]
        return ops.cast(ops.logical_and(valid, ops.greater(p_t, p_s)), "float32")
    if mask == "teacher_confident":
        s = ops.stop_gradient(ops.cast(student, "float32"))
        conf_t = ops.max(ops.softmax(t, axis=-1), axis=-1)
        conf_s = ops.max(ops.softmax(s, axis=-1), axis=-1)
        return ops.cast(ops.greater(conf_t, conf_s), "float32")
    raise ValueError(f"mask must be one of {', '.join(MASKS)}, got {mask!r}")


def distillation_loss(
    student: Any,
    teacher: Any,
    target: str = "logits",
    temperature: float = 1.0,
    stop_gradient_teacher: bool = True,
    pixel_weights: Any = None,
) -> Any:
    """Mean of :func:`distillation_map` over pixels; with ``pixel_weights`` (``[B, H, W]``, e.g. a mask times the
    valid pixels) the weighted sum divided by the number of pixels, so a mask lowers the term instead of
    re-weighting the pixels it keeps."""
    per_pixel = distillation_map(student, teacher, target, temperature, stop_gradient_teacher)
    if pixel_weights is None:
        return ops.mean(per_pixel)
    return ops.sum(per_pixel * pixel_weights) / ops.cast(ops.size(per_pixel), "float32")


# ------------------------------------------------------------------------------------------------------ trainer
class DistillationTrainer(keras.Model):
    """Trains a :func:`build_distillation_model` model with the self-distillation loss (or CE only, the baseline).

    Loss (paper Eq. 1, generalised): ``w_s·CE(student) + w_t·CE(teacher) + w_d(step)·D(student, teacher)`` where
    ``D`` is :func:`distillation_loss` (``target``, ``temperature``) over the pixels chosen by ``mask``
    (:func:`distillation_mask`), and ``w_d(step)`` ramps linearly from 0 to ``distill_weight`` over the first
    ``warmup_steps`` optimizer steps (the teacher learns something before it teaches).

    Logged per epoch: ``loss``, ``student_ce``, ``teacher_ce``, ``distill_loss``; ``student_miou``,
    ``student_iou_<class>`` (and the same for ``teacher_``) from a confusion matrix accumulated over the whole epoch;
    and the teacher diagnostics (:data:`DIAGNOSTICS`): ``teacher_delta_l1`` (mean ``|t − s|`` on logits),
    ``teacher_delta_share`` (``mean|t − s| / mean|t|``: the share of the teacher logits that is not the student),
    ``argmax_disagreement`` (share of pixels whose class differs between the two outputs), ``distill_mask_share``
    (share of pixels distilled) and ``distill_weight`` (the ramped ``w_d``). :meth:`gradient_diagnostics` gives the
    share of the student's gradient that comes from the distillation term (logged per epoch by
    ``training.TeacherDiagnostics``).

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
        target: str = "kl",
        temperature: float = 2.0,
        mask: str = "teacher_correct",
        warmup_steps: int = 0,
        stop_gradient_teacher: bool = True,
        ignore_index: int | None = None,
        class_weights: Sequence[float] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if target not in TARGETS:
            raise ValueError(f"target must be one of {', '.join(TARGETS)}, got {target!r}")
        if mask not in MASKS:
            raise ValueError(f"mask must be one of {', '.join(MASKS)}, got {mask!r}")
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
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
        """``w_d`` at the current optimizer step: a linear ramp over ``warmup_steps`` (float32 scalar)."""
        if self.warmup_steps <= 0 or getattr(self, "optimizer", None) is None:
            return ops.convert_to_tensor(self.distill_weight, dtype="float32")
        step = ops.cast(self.optimizer.iterations, "float32") + 1.0
        return self.distill_weight * ops.minimum(step / float(self.warmup_steps), 1.0)

    def compute_loss_terms(self, labels: Any, outputs: Mapping[str, Any]) -> dict:
        """The loss, its logged terms and the teacher diagnostics for one batch (the paper's Eq. 1)."""
        ce = dict(ignore_index=self.ignore_index, class_weights=self.class_weights)
        student = outputs[STUDENT]
        terms = {"student_ce": softmax_cross_entropy(labels, student, **ce)}
        terms["ce_loss"] = self.student_weight * terms["student_ce"]
        terms["weighted_distill"] = ops.zeros((), dtype="float32")
        if self.has_teacher:
            teacher = outputs[TEACHER]
            terms["teacher_ce"] = softmax_cross_entropy(labels, teacher, **ce)
            pixel_mask = distillation_mask(labels, student, teacher, self.mask)
            terms["distill_loss"] = distillation_loss(
                student, teacher, self.target, self.temperature, self.stop_gradient_teacher,
                pixel_weights=None if self.mask == "none" else pixel_mask,
            )
            terms["ce_loss"] = terms["ce_loss"] + self.teacher_weight * terms["teacher_ce"]
            terms["distill_weight"] = self.current_distill_weight()
            terms["weighted_distill"] = terms["distill_weight"] * terms["distill_loss"]
            terms.update(teacher_diagnostics(student, teacher))
            terms["distill_mask_share"] = ops.mean(pixel_mask)
        terms["loss"] = terms["ce_loss"] + terms["weighted_distill"]
        return terms

    def _update_metrics(self, labels: Any, outputs: Mapping[str, Any], terms: Mapping[str, Any]) -> dict:
        for name, tracker in self.trackers.items():
            tracker.update_state(terms[name])
        self.student_iou.update_state(labels, outputs[STUDENT])
        if self.teacher_iou is not None:
            self.teacher_iou.update_state(labels, outputs[TEACHER])
        return self.get_metrics_result()

    def _total_loss(self, terms: Mapping[str, Any]) -> Any:
        loss = terms["loss"]
        if self.losses:  # layer regularisers
            loss = loss + ops.sum(ops.stack([ops.cast(x, "float32") for x in self.losses]))
        return loss

    def train_step(self, data: Any) -> dict:
        images, labels = data[0], data[1]
        with tf.GradientTape() as tape:
            outputs = self(images, training=True)
            terms = self.compute_loss_terms(labels, outputs)
            # Loss scaling for mixed_float16 (identity for other policies / optimizers).
            scaled = self.optimizer.scale_loss(self._total_loss(terms))
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
            self._gradient_fn = tf.function(self._gradient_norms)
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

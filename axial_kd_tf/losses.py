"""The self-distillation loss in ``keras.ops`` only: the same numbers on the TensorFlow, JAX and PyTorch backends.

Paper: "Improving segmentation accuracy with self-distillation" (Hotta lab, Meijo University), Eq. 1 with weights::

    L = w_s · CE(y, student) + w_t · CE(y, teacher) + w_d · D(student, teacher)

CE is softmax cross-entropy from logits (optionally class-weighted, pixels equal to ``ignore_index`` excluded); ``D``
distils the teacher into the student: the paper's MSE on logits, an MSE on softmax probabilities, or a
temperature-scaled KL divergence, optionally over the pixels the teacher gets right only, with the gradient stopped
into the teacher (the teacher is the target of that term). See docs/method.md.

Nothing here imports TensorFlow, so a PyTorch or JAX training loop uses :func:`self_distillation_loss` with
:class:`~axial_kd_tf.layers.AxialTeacherHead` through Keras' torch or jax backend. The TensorFlow trainer
(:class:`axial_kd_tf.distill.DistillationTrainer`) computes its loss with the same function; ``axial_kd_tf.distill``
re-exports the names below.
"""

from __future__ import annotations

from typing import Any, Sequence

from keras import ops

TARGETS = ("logits", "probabilities", "kl")
MASKS = ("none", "teacher_correct", "teacher_fixes", "teacher_better")


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
    * ``teacher_fixes``: pixels where the teacher's argmax is the label and the student's is not: the term only
      corrects the student's errors, and leaves alone the pixels both get right (there a softened teacher that is
      surer of the majority class would push a rare class's logit down at every pixel, which CE alone does not);
    * ``teacher_better``: pixels where the teacher gives the *label* a higher softmax probability than the student
      does, so the term only pulls the student towards a distribution that is closer to the label there (on the
      other pixels distillation would work against the student's CE).
    """
    if mask == "none":
        return ops.ones(ops.shape(student)[:-1], dtype="float32")
    t = ops.stop_gradient(ops.cast(teacher, "float32"))
    if mask == "teacher_correct":
        return ops.cast(ops.equal(ops.argmax(t, axis=-1), ops.cast(labels, "int32")), "float32")
    if mask == "teacher_fixes":
        s = ops.stop_gradient(ops.cast(student, "float32"))
        labels = ops.cast(labels, "int32")
        teacher_right = ops.equal(ops.argmax(t, axis=-1), labels)
        student_wrong = ops.not_equal(ops.argmax(s, axis=-1), labels)
        return ops.cast(ops.logical_and(teacher_right, student_wrong), "float32")
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


def check_loss_options(target: str, temperature: float, mask: str) -> None:
    """Raise ``ValueError`` naming the argument when ``target``, ``temperature`` or ``mask`` is not supported."""
    if target not in TARGETS:
        raise ValueError(f"target must be one of {', '.join(TARGETS)}, got {target!r}")
    if mask not in MASKS:
        raise ValueError(f"mask must be one of {', '.join(MASKS)}, got {mask!r}")
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")


def self_distillation_loss(
    labels: Any,
    student: Any,
    teacher: Any = None,
    *,
    target: str = "kl",
    temperature: float = 2.0,
    mask: str = "teacher_fixes",
    weights: Sequence[Any] = (1.0, 1.0, 10.0),
    ignore_index: int | None = None,
    class_weights: Sequence[float] | None = None,
    stop_gradient_teacher: bool = True,
) -> tuple[Any, dict]:
    """The whole self-distillation loss (paper Eq. 1) of one batch: ``(total, parts)``.

    ``total = w_s·CE(labels, student) + w_t·CE(labels, teacher) + w_d·D(student, teacher)`` with
    ``(w_s, w_t, w_d) = weights``, ``D`` = :func:`distillation_loss` (``target``, ``temperature``) over the pixels
    :func:`distillation_mask` chooses (``mask``). The defaults are the library's (``DistillConfig``: T²·KL at
    T = 2, weighted 10, on the pixels the teacher classifies correctly and the student does not); the paper's form
    is ``target="logits", temperature=1.0, mask="none", weights=(1, 1, 1)``. This is what
    :class:`~axial_kd_tf.distill.DistillationTrainer` minimises (its ``w_d`` may be a tensor: the warm-up ramp).
    ``teacher=None`` is the CE-only baseline, ``w_s·CE(student)``.

    ``labels`` are class ids ``[B, H, W]``; ``student`` and ``teacher`` are logits ``[B, H, W, K]`` (channels last,
    as Keras layers produce them: permute a PyTorch ``[B, K, H, W]`` output first). The teacher's own input detach
    (``AxialTeacherHead(detach_input=True)``, the default) is the head's business, not the loss's.

    ``parts`` holds scalar tensors: ``student_ce``, ``ce_loss`` (the weighted CE terms), ``weighted_distill`` and
    ``loss`` (= ``total``); with a teacher also ``teacher_ce``, ``distill_loss`` (unweighted ``D``),
    ``distill_weight`` (``w_d``) and ``distill_mask_share`` (the share of pixels distilled).
    """
    check_loss_options(target, temperature, mask)
    if len(weights) != 3:
        raise ValueError(f"weights must be (student, teacher, distill), got {len(weights)} values")
    w_s, w_t, w_d = weights
    ce = dict(ignore_index=ignore_index, class_weights=class_weights)
    parts: dict[str, Any] = {"student_ce": softmax_cross_entropy(labels, student, **ce)}
    parts["ce_loss"] = w_s * parts["student_ce"]
    parts["weighted_distill"] = ops.zeros((), dtype="float32")
    if teacher is not None:
        parts["teacher_ce"] = softmax_cross_entropy(labels, teacher, **ce)
        pixel_mask = distillation_mask(labels, student, teacher, mask)
        parts["distill_loss"] = distillation_loss(
            student, teacher, target, temperature, stop_gradient_teacher,
            pixel_weights=None if mask == "none" else pixel_mask,
        )
        parts["ce_loss"] = parts["ce_loss"] + w_t * parts["teacher_ce"]
        parts["distill_weight"] = ops.cast(w_d, "float32")
        parts["weighted_distill"] = parts["distill_weight"] * parts["distill_loss"]
        parts["distill_mask_share"] = ops.mean(pixel_mask)
    parts["loss"] = parts["ce_loss"] + parts["weighted_distill"]
    return parts["loss"], parts

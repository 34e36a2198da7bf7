"""Training one run: build the model from the config, check it against the data and the machine, and fit it.

:func:`prepare` loads the data, builds and compiles the student (and teacher) and runs the preflight checks before
any file is written; :func:`fit` trains into a locked run directory (:mod:`axial_kd_tf.rundir`) with per-epoch
checkpoints, backups for resuming, TensorBoard, ``history.csv`` and the teacher diagnostics, then loads the best
checkpoint. :mod:`axial_kd_tf.pipeline` chains this with evaluation and export; the run directory's layout is
described there.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from dataclasses import asdict, dataclass
from typing import Any, Callable, Optional

import keras
import numpy as np
import tensorflow as tf

from axial_kd_tf.config import Config, first_difference
from axial_kd_tf.data import DataBundle, load_data
from axial_kd_tf.distill import (
    STUDENT,
    TEACHER,
    DistillationTrainer,
    build_distillation_model,
    student_network,
    teacher_head,
)
from axial_kd_tf.distribute import (
    AverageBatchNormStatistics,
    Distribution,
    agree,
    check_batch_size,
    distributed_dataset,
    eval_steps,
    resolve_jit,
    synchronize_batchnorm,
)
from axial_kd_tf.errors import UserError
from axial_kd_tf.io_utils import atomic_write_json, check_writable_dir
from axial_kd_tf.preflight import check_input_sizes, check_memory, data_nbytes, estimate_memory
from axial_kd_tf.rundir import (
    EpochBackup,
    check_unlocked,
    epoch_base,
    history_rows,
    is_empty_dir,
    list_backups,
    load_run_config,
    load_weights,
    read_json,
    read_trained,
    remove_temporaries,
    restore_backup,
    save_weights_atomic,
    truncate_history,
    write_trained,
)
from axial_kd_tf.xla import resolve_jit_compile

Progress = Callable[[str], None]
BEST_MONITOR = "val_student_miou"


# ---------------------------------------------------------------------------------------------------- building
def build_student_from_config(cfg: Config, num_classes: int, in_channels: int) -> keras.Model:
    """The segmentation network named by the ``model:`` section (logits output)."""
    m = cfg.model
    if m.library == "native":
        from axial_kd_tf.models import build_network

        return build_network(
            m.arch, encoder=m.encoder, num_classes=num_classes, in_channels=in_channels,
            encoder_weights=m.encoder_weights, **m.options,
        )
    from axial_kd_tf.models.sm_library import build_sm_network

    return build_sm_network(
        m.arch, encoder=m.encoder, num_classes=num_classes, in_channels=in_channels,
        encoder_weights=m.encoder_weights, **m.options,
    )


def teacher_kwargs(cfg: Config) -> dict:
    """``AxialTeacherHead``'s arguments: the ``teacher`` section as it is (its keys are the head's arguments)."""
    return asdict(cfg.teacher)


def build_model_from_config(cfg: Config, num_classes: int, in_channels: int) -> keras.Model:
    """The two-output (distillation) or student-only (baseline) functional model."""
    network = build_student_from_config(cfg, num_classes, in_channels)
    return build_distillation_model(
        network, num_classes, with_teacher=cfg.distill.enabled, teacher_kwargs=teacher_kwargs(cfg),
    )


def make_trainer(cfg: Config, model: keras.Model, class_names: tuple[str, ...], total_steps: int = 0
                 ) -> DistillationTrainer:
    """The trainer for ``cfg.distill``; ``total_steps`` (epochs × steps per epoch) sizes the ``distill.warmup`` ramp
    and the ``distill.delay``."""
    d = cfg.distill
    if d.class_weights is not None and len(d.class_weights) != len(class_names):
        raise UserError(
            f"config key 'distill.class_weights' has {len(d.class_weights)} entries; the dataset has "
            f"{len(class_names)} classes ({', '.join(class_names)})"
        )
    if d.ignore_index is not None and d.ignore_index >= len(class_names):  # the loaders give labels 0..K-1 only
        raise UserError(
            f"config key 'distill.ignore_index' is {d.ignore_index} but the dataset's labels are "
            f"0..{len(class_names) - 1} ({', '.join(class_names)}), so it would ignore nothing; use one of them or null"
        )
    return DistillationTrainer(
        model, num_classes=len(class_names), class_names=class_names, student_weight=d.student_weight,
        teacher_weight=d.teacher_weight, distill_weight=d.distill_weight, target=d.target,
        temperature=d.temperature, mask=d.mask, warmup_steps=int(round(d.warmup * total_steps)),
        delay_steps=int(round(d.delay * total_steps)),
        stop_gradient_teacher=d.stop_gradient_teacher, ignore_index=d.ignore_index, class_weights=d.class_weights,
        name="trainer",
    )


def make_optimizer(cfg: Config, total_steps: int) -> keras.optimizers.Optimizer:
    t = cfg.train
    lr: Any = t.learning_rate
    if t.lr_schedule == "cosine":
        lr = keras.optimizers.schedules.CosineDecay(t.learning_rate, decay_steps=max(total_steps, 1), alpha=0.01)
    elif t.lr_schedule == "poly":
        lr = keras.optimizers.schedules.PolynomialDecay(
            t.learning_rate, decay_steps=max(total_steps, 1), end_learning_rate=0.0, power=0.9
        )
    if t.optimizer == "adam":
        return keras.optimizers.Adam(lr)
    if t.optimizer == "adamw":
        return keras.optimizers.AdamW(lr, weight_decay=t.weight_decay)
    return keras.optimizers.SGD(lr, momentum=0.9, weight_decay=t.weight_decay or None)


def steps_per_epoch(cfg: Config, num_train: int) -> int:
    return cfg.train.steps_per_epoch or max(1, math.ceil(num_train / cfg.train.batch_size))


def center_crop(images: np.ndarray, size: int) -> np.ndarray:
    """Centre-crop (or reflect-pad) ``[N, H, W, C]`` images to ``size``², for fixed-shape export inputs."""
    n, h, w = images.shape[:3]
    if h < size or w < size:
        ph, pw = max(size - h, 0), max(size - w, 0)
        images = np.pad(images, ((0, 0), (ph // 2, ph - ph // 2), (pw // 2, pw - pw // 2), (0, 0)), mode="reflect")
        n, h, w = images.shape[:3]
    top, left = (h - size) // 2, (w - size) // 2
    return np.ascontiguousarray(images[:, top : top + size, left : left + size])


# ------------------------------------------------------------------------------------------------- run folder
def check_run_dir(run_dir: Path, cfg: Config, resume: bool, overwrite: bool) -> bool:
    """Check, without touching anything, that ``run_dir`` may be used; returns True when resuming.

    An existing run directory is never overwritten silently: it needs ``--overwrite`` (start afresh) or ``--resume``
    (continue an interrupted run with the same configuration). A directory another live process writes is refused;
    so is a location that cannot be created or written (a file, /proc, a read-only mount).
    """
    run_dir = Path(run_dir)
    if run_dir.exists() and not run_dir.is_dir():
        raise UserError(f"run directory '{run_dir}' is a file, not a folder; choose another --run-dir")
    if run_dir.is_dir() and not is_empty_dir(run_dir):
        check_unlocked(run_dir)
        if overwrite:
            check_writable_dir(run_dir.parent, "the parent of run directory")
            return False
        if not resume:
            raise UserError(
                f"run directory '{run_dir}' already exists; pass --resume to continue it, --overwrite to replace it, "
                "or choose another --run-dir"
            )
        saved = run_dir / "config.yaml"
        if not saved.is_file():
            raise UserError(f"cannot resume '{run_dir}': it has no config.yaml; use another --run-dir")
        previous = load_run_config(run_dir)
        if previous.to_dict() != cfg.to_dict():
            diff = first_difference(previous.to_dict(), cfg.to_dict())
            raise UserError(
                f"cannot resume '{run_dir}': config differs from its config.yaml at '{diff}'; "
                "resume with the same config or use another --run-dir"
            )
        if (run_dir / "metrics.json").is_file():
            raise UserError(f"run '{run_dir}' is already complete (metrics.json exists); use another --run-dir")
        check_writable_dir(run_dir, "run directory")
        return True
    if resume:
        raise UserError(f"cannot resume '{run_dir}': it does not exist or is empty; start it without --resume")
    check_writable_dir(run_dir, "run directory")
    return False


# -------------------------------------------------------------------------------------------------- callbacks
class ImagePanelCallback(keras.callbacks.Callback):
    """Every ``every`` epochs, write input | ground truth | student | teacher panels to TensorBoard."""

    def __init__(self, log_dir: Path, images: np.ndarray, masks: np.ndarray, class_names: tuple[str, ...],
                 every: int = 1) -> None:
        super().__init__()
        self.images, self.masks, self.class_names, self.every = images, masks, class_names, every
        self.writer = tf.summary.create_file_writer(str(log_dir))

    def on_epoch_end(self, epoch: int, logs: Optional[dict] = None) -> None:
        if (epoch + 1) % self.every and epoch != self.params.get("epochs", 0) - 1:
            return
        from axial_kd_tf.visualize import overlay_panel

        outputs = self.model.predict_on_batch(self.images)
        panels = []
        for i in range(len(self.images)):
            preds = {name: np.argmax(np.asarray(outputs[name][i]), -1) for name in (STUDENT, TEACHER) if name in outputs}
            panels.append(overlay_panel(self.images[i], self.masks[i], preds, self.class_names))
        with self.writer.as_default():
            tf.summary.image("val_panels/input_gt_student_teacher", np.stack(panels), step=epoch,
                             max_outputs=len(panels))
        self.writer.flush()


class BestCheckpoint(keras.callbacks.Callback):
    """Saves ``checkpoints/best.weights.h5`` (atomically) when the validation student mIoU beats ``threshold``, and
    records the epoch and value in ``checkpoints/best.json`` (survives a resume)."""

    def __init__(self, weights: Path, record: Path, threshold: Optional[float] = None) -> None:
        super().__init__()
        self.weights, self.record, self.best = Path(weights), Path(record), threshold

    def on_epoch_end(self, epoch: int, logs: Optional[dict] = None) -> None:
        value = (logs or {}).get(BEST_MONITOR)
        if value is None or not math.isfinite(float(value)):
            return
        if self.best is None or float(value) > self.best:
            save_weights_atomic(self.model, self.weights)
            atomic_write_json(self.record, {"epoch": epoch + 1, "monitor": BEST_MONITOR, "value": float(value)})
            self.best = float(value)


class LastCheckpoint(keras.callbacks.Callback):
    """Saves ``checkpoints/last.weights.h5`` (atomically) at every epoch end."""

    def __init__(self, weights: Path) -> None:
        super().__init__()
        self.weights = Path(weights)

    def on_epoch_end(self, epoch: int, logs: Optional[dict] = None) -> None:
        save_weights_atomic(self.model, self.weights)


class TrainingDiverged(UserError):
    """The training loss (or the validation loss) became NaN or infinite."""


class NonFiniteGuard(keras.callbacks.Callback):
    """Stops training at the first step whose loss is NaN or infinite, with one line naming the step.

    The check runs after every batch (Keras' running mean of the loss turns non-finite with the first bad batch)
    and, for the validation loss, at the epoch end — first in the callback list, so nothing of the bad epoch is
    written: the checkpoints and the backup of the last good epoch stay as they were.
    """

    def __init__(self, learning_rate: float, steps_per_epoch: int) -> None:
        super().__init__()
        self.learning_rate, self.steps_per_epoch = float(learning_rate), int(steps_per_epoch)
        self.epoch = 0

    def on_epoch_begin(self, epoch: int, logs: Optional[dict] = None) -> None:
        self.epoch = epoch

    def on_train_batch_end(self, batch: int, logs: Optional[dict] = None) -> None:
        loss = (logs or {}).get("loss")
        if loss is not None and not math.isfinite(float(loss)):
            step = self.epoch * self.steps_per_epoch + batch + 1
            raise self._error(f"the loss became {float(loss)} at epoch {self.epoch + 1}, step {batch + 1}/"
                              f"{self.steps_per_epoch} (optimizer step {step})")

    def on_epoch_end(self, epoch: int, logs: Optional[dict] = None) -> None:
        for key in ("loss", "val_loss"):
            value = (logs or {}).get(key)
            if value is not None and not math.isfinite(float(value)):
                raise self._error(f"the {'validation ' if key == 'val_loss' else ''}loss became {float(value)} in "
                                  f"epoch {epoch + 1}")

    def _error(self, what: str) -> TrainingDiverged:
        lr = self.learning_rate
        advice = f"lower train.learning_rate (now {lr:g}, try {lr / 10:g})"
        if self.epoch:
            return TrainingDiverged(f"training diverged: {what}; {advice} and rerun with --overwrite or another "
                                    f"--run-dir; the checkpoints and backup of epoch {self.epoch} are kept")
        return TrainingDiverged(f"training diverged: {what}; {advice}; no epoch had finished, so nothing is kept")


class TeacherDiagnostics(keras.callbacks.Callback):
    """Per epoch, into the logs (so ``history.csv`` and TensorBoard get them): the teacher head's ``gate`` and the
    distillation term's share of the student's gradient (``distill_grad_share``, ``distill_grad_cosine``, see
    :meth:`DistillationTrainer.gradient_diagnostics`) on a fixed probe batch of training images.

    Must come before ``CSVLogger`` and ``TensorBoard`` in the callback list: they read the same logs dict.
    """

    def __init__(self, images: np.ndarray, masks: np.ndarray) -> None:
        super().__init__()
        self.images = tf.constant(images)
        self.masks = tf.constant(np.asarray(masks).astype("int32"))

    def on_epoch_end(self, epoch: int, logs: Optional[dict] = None) -> None:
        if logs is None:
            return
        head = teacher_head(self.model.network)
        if head is None:
            return
        if head.residual:
            logs["gate"] = float(np.asarray(keras.ops.convert_to_numpy(head.gate)))  # a MirroredVariable too
        logs.update(self.model.gradient_diagnostics(self.images, self.masks))


class ClassWatch(keras.callbacks.Callback):
    """Warns, as it happens, when a class collapses in an output's validation IoU.

    A class *collapses* when its IoU falls below ``floor`` (1 %) after having reached ``learned`` (10 %), or falls
    below half of its best with a drop of at least ``learned``; it is reported once per fall. The warnings are kept in ``warnings`` (and written to
    ``metrics.json``) so a collapsing class is seen during the run, not after it.
    """

    def __init__(self, class_names: tuple[str, ...], progress: Progress = print, floor: float = 0.01,
                 learned: float = 0.10) -> None:
        super().__init__()
        self.class_names, self.progress, self.floor, self.learned = class_names, progress, floor, learned
        self.best: dict[str, float] = {}
        self.down: set[str] = set()  # classes fallen and not recovered yet
        self.warnings: list[str] = []

    def on_epoch_end(self, epoch: int, logs: Optional[dict] = None) -> None:
        for output in (STUDENT, TEACHER):
            for name in self.class_names:
                key = f"val_{output}_iou_{name}"
                value = (logs or {}).get(key)
                if value is None or math.isnan(float(value)):
                    continue
                value, best = float(value), self.best.get(key, 0.0)
                collapsed = best >= self.learned and (value < self.floor or (value < best / 2
                                                                              and best - value >= self.learned))
                if collapsed and key not in self.down:  # once per fall, not every epoch it stays down
                    line = (f"warning: epoch {epoch + 1}: {output} IoU of class '{name}' fell to {value * 100:.1f} "
                            f"(best {best * 100:.1f})")
                    self.warnings.append(line)
                    self.progress(line)
                    self.down.add(key)
                elif not collapsed:
                    self.down.discard(key)
                self.best[key] = max(best, value)


class EpochProgress(keras.callbacks.Callback):
    """One concise line per epoch: loss terms, student/teacher mIoU (train and val), best so far, elapsed and ETA."""

    def __init__(self, progress: Progress = print) -> None:
        super().__init__()
        self.progress = progress
        self.best = -1.0

    def on_train_begin(self, logs: Optional[dict] = None) -> None:
        self.t0 = time.time()
        self.first_epoch: Optional[int] = None

    def on_epoch_begin(self, epoch: int, logs: Optional[dict] = None) -> None:
        if self.first_epoch is None:  # differs from 0 after a resume
            self.first_epoch = epoch

    def on_epoch_end(self, epoch: int, logs: Optional[dict] = None) -> None:
        logs = logs or {}
        total = self.params.get("epochs", epoch + 1)
        done = epoch + 1 - (self.first_epoch or 0)
        elapsed = time.time() - self.t0
        eta = elapsed / max(done, 1) * (total - epoch - 1)
        val = logs.get(BEST_MONITOR)
        if val is not None and val > self.best:
            self.best = float(val)

        def pct(key: str) -> str:
            return f"{logs[key] * 100:5.1f}" if key in logs else "  -  "

        terms = " ".join(f"{k} {logs[k]:.3f}" for k in ("student_ce", "teacher_ce", "distill_loss") if k in logs)
        teacher = ""
        if "val_argmax_disagreement" in logs:
            teacher = f" | T≠S {logs['val_argmax_disagreement'] * 100:.1f}%"
            teacher += f" gate {logs['gate']:.3f}" if "gate" in logs else ""
            teacher += f" D-grad {logs['distill_grad_share'] * 100:.0f}%" if "distill_grad_share" in logs else ""
        line = (f"epoch {epoch + 1:>3}/{total} loss {logs.get('loss', float('nan')):.3f} ({terms}) | mIoU train "
                f"S {pct('student_miou')} T {pct('teacher_miou')} | val S {pct('val_student_miou')} "
                f"T {pct('val_teacher_miou')}{teacher} | best val S {self.best * 100:5.1f} | {elapsed:4.0f}s, "
                f"ETA {eta:4.0f}s")
        self.progress(line.replace(" T   -  ", ""))


class InterruptAfterEpoch(keras.callbacks.Callback):
    """Test helper and crash simulator: raise KeyboardInterrupt after epoch ``n`` (1-based) ends."""

    def __init__(self, n: int) -> None:
        super().__init__()
        self.n = n

    def on_epoch_end(self, epoch: int, logs: Optional[dict] = None) -> None:
        if epoch + 1 == self.n:
            raise KeyboardInterrupt(f"simulated interruption after epoch {self.n}")


class HistoryCSV(keras.callbacks.CSVLogger):
    """``history.csv`` with epochs numbered from 1, as the console, ``best.json`` and ``metrics.json`` number them
    (Keras' CSVLogger writes the 0-based index)."""

    def on_epoch_end(self, epoch: int, logs: Optional[dict] = None) -> None:
        super().on_epoch_end(epoch + 1, logs)


# ----------------------------------------------------------------------------------------------------- train
@dataclass
class Setup:
    """What :func:`prepare` builds and checks before a run directory is touched."""

    data: DataBundle
    model: keras.Model
    trainer: DistillationTrainer
    steps_per_epoch: int
    dist: Optional[Distribution] = None  # the strategy the model was built under (None: one device)


@dataclass
class Fitted:
    """What :func:`fit` leaves behind: the best weights loaded into ``Setup.model``, and how the training went."""

    train_wall_time_s: float
    best_epoch: int
    class_warnings: list


def prepare(cfg: Config, force: bool = False, progress: Progress = print, dist: Optional[Distribution] = None
            ) -> Setup:
    """Load the data, build and compile the model (inside ``dist``'s strategy scope), and check input sizes and
    memory (under the caller's precision policy). ``force`` turns a memory error into a warning."""
    keras.utils.set_random_seed(cfg.train.seed)
    progress(f"[data] loading '{cfg.data.dataset}'")
    data = load_data(cfg)
    dist = dist or Distribution(tf.distribute.get_strategy(), "none")
    check_batch_size(cfg.train.batch_size, dist)
    spe = steps_per_epoch(cfg, len(data.train_images))
    with dist.scope():  # variables, metrics and optimizer state are mirrored over the replicas
        model = build_model_from_config(cfg, data.num_classes, data.in_channels)
        if cfg.train.sync_batchnorm:
            n_bn = synchronize_batchnorm(model)  # the student's and the teacher head's
            progress(f"[model] {n_bn} BatchNormalization layers synchronized across replicas")
        trainer = make_trainer(cfg, model, data.class_names, spe * cfg.train.epochs)
        size = cfg.data.crop_size or min(data.train_images.shape[1:3])
        jit = resolve_jit(cfg.train.jit_compile, dist, progress)
        jit = resolve_jit_compile(jit, model, (size, size, data.in_channels), progress)
        trainer.compile(optimizer=make_optimizer(cfg, spe * cfg.train.epochs), jit_compile=jit)
    data.train_dataset(cfg.train.batch_size, cfg.data.seed, cfg.data.crop_size, cfg.data.augment)  # checks sizes
    _preflight(cfg, model, data, force, progress)
    n_student = student_network(model).count_params()
    progress(
        f"[model] {cfg.model.arch}: {n_student:,} student params, {model.count_params() - n_student:,} teacher params"
        f" ({'distillation' if cfg.distill.enabled else 'baseline'} mode, {cfg.train.mixed_precision})"
    )
    if dist.distributed:
        progress(f"[distribute] {dist.describe()}, global batch {cfg.train.batch_size}")
    return Setup(data, model, trainer, spe, dist)


def _preflight(cfg: Config, model: keras.Model, data: DataBundle, force: bool, progress: Progress) -> None:
    """Input sizes against the network's output stride, then the memory estimate against the machine."""
    network = student_network(model)
    train_hw = (cfg.data.crop_size,) * 2 if cfg.data.crop_size else tuple(data.train_images.shape[1:3])
    val_images = data.split("val")[0]
    val_hw = tuple(val_images.shape[1:3]) if len(val_images) else None
    multiple = check_input_sizes(cfg, network, train_hw, val_hw)
    estimate = estimate_memory(cfg, network, train_hw, val_hw, multiple=multiple,
                               data_bytes=data_nbytes(data.train_images, data.train_masks, *data.split("val")))
    check_memory(cfg, estimate, force=force, progress=progress)


def fit(cfg: Config, run_dir: Path, setup: Setup, resuming: bool, progress: Progress = print,
        extra_callbacks: tuple = (), t0: Optional[float] = None) -> Fitted:
    """Train into the (locked) run directory, or find the finished training of a resumed run, then load the best
    checkpoint into ``setup.model``. Epoch backups make it resumable after a kill; ``t0`` starts the wall clock."""
    t0 = time.time() if t0 is None else t0
    data, trainer, spe = setup.data, setup.trainer, setup.steps_per_epoch
    dist = setup.dist or Distribution(tf.distribute.get_strategy(), "none")
    if resuming:
        remove_temporaries(run_dir)
    trained = read_trained(run_dir, cfg.train.epochs) if resuming else None
    if resuming and trained is None and (run_dir / "model.keras").is_file() and not list_backups(run_dir):
        # model.keras is only written after the training: a run of an older version (no trained.json) whose
        # training finished but whose export failed.
        trained = {"epochs": cfg.train.epochs, "train_wall_time_s": None}
        write_trained(run_dir, trained)
    watch = ClassWatch(data.class_names, progress)
    with dist.scope():  # optimizer slots created by a restore must be mirrored too
        initial_epoch = restore_backup(trainer, run_dir, progress) if resuming and trained is None else 0
    agree(dist, initial_epoch if trained is None else -1, "the epoch to resume after")
    if trained is None:
        if resuming:
            truncate_history(run_dir / "history.csv", initial_epoch)
            progress(f"[resume] continuing '{run_dir}' after epoch {initial_epoch}" if initial_epoch else
                     f"[resume] '{run_dir}' has no finished epoch; training starts at epoch 1")
        threshold = _best_threshold(run_dir, progress) if initial_epoch else None
        backup = EpochBackup(run_dir)
        callbacks = [NonFiniteGuard(cfg.train.learning_rate, spe)]
        if dist.distributed:  # the replicas' BatchNorm statistics agree before anything is measured or saved
            callbacks.append(AverageBatchNormStatistics(dist.strategy))
        callbacks += (_callbacks(cfg, run_dir, data, initial_epoch > 0, threshold) + [backup, watch]
                      + list(extra_callbacks))
        if cfg.logging.verbose == 1:  # within an epoch (a bar on a terminal, timed lines otherwise), then per epoch
            from axial_kd_tf.progress import StepProgress

            val_steps = math.ceil(len(data.split("val")[0]) / cfg.train.batch_size)
            callbacks.append(StepProgress.for_console(spe, progress, cfg.logging.progress_seconds, val_steps))
            callbacks.append(EpochProgress(progress))
        # A resumed run skips the batches of the finished epochs: the same samples and augmentations follow.
        train_ds = distributed_dataset(dist, lambda batch, shard: data.train_dataset(
            batch, cfg.data.seed, cfg.data.crop_size, cfg.data.augment, skip_batches=initial_epoch * spe, shard=shard,
            global_batch=cfg.train.batch_size), cfg.train.batch_size)
        val_ds = distributed_dataset(dist, lambda batch, shard: data.eval_dataset("val", batch, shard=shard),
                                     cfg.train.batch_size)
        progress(f"[train] {cfg.train.epochs} epochs × {spe} steps, run dir {run_dir}")
        trainer.fit(
            train_ds, epochs=cfg.train.epochs, initial_epoch=initial_epoch, steps_per_epoch=spe,
            validation_data=val_ds, callbacks=callbacks, verbose=2 if cfg.logging.verbose >= 2 else 0,
            validation_steps=eval_steps(dist, len(data.split("val")[0]), cfg.train.batch_size),
            shuffle=False,  # tf.data shuffles
        )
        train_time = time.time() - t0
        write_trained(run_dir, {"epochs": cfg.train.epochs, "train_wall_time_s": round(train_time, 1),
                                "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z")})
        backup.remove()
    else:
        progress(f"[resume] training of '{run_dir}' finished earlier; only the missing steps are redone")
        train_time = float(trained.get("train_wall_time_s") or 0.0)
    with dist.scope():
        best_epoch = _load_final_weights(trainer, run_dir, cfg.train.epochs, progress, trained_now=trained is None)
    return Fitted(train_time, best_epoch, watch.warnings)


def _best_threshold(run_dir: Path, progress: Progress) -> Optional[float]:
    """The best validation mIoU so far, from ``checkpoints/best.json`` or, when that is unreadable, from
    ``history.csv`` (then best.json is rewritten). None when there is no best checkpoint to beat."""
    record, weights = run_dir / "checkpoints" / "best.json", run_dir / "checkpoints" / "best.weights.h5"
    info = read_json(record)
    if isinstance(info, dict) and isinstance(info.get("value"), (int, float)) and isinstance(info.get("epoch"), int):
        return float(info["value"])
    if record.exists():
        progress(f"note: '{record}' is unreadable; the best value so far is taken from history.csv")
    if not weights.is_file():
        return None
    epoch, value = _best_from_history(run_dir)
    if value is None:
        return None
    atomic_write_json(record, {"epoch": epoch, "monitor": BEST_MONITOR, "value": value})
    return value


def _best_from_history(run_dir: Path) -> tuple[Optional[int], Optional[float]]:
    """(1-based epoch, value) of the best validation student mIoU in ``history.csv``; (None, None) when unknown."""
    best: tuple[Optional[int], Optional[float]] = (None, None)
    rows = history_rows(run_dir / "history.csv")
    try:
        base = epoch_base(int(rows[0]["epoch"]))
    except (IndexError, KeyError, TypeError, ValueError):
        base = 0
    for row in rows:
        try:
            epoch, value = int(row["epoch"]) - base + 1, float(row[BEST_MONITOR])
        except (KeyError, TypeError, ValueError):
            continue
        if math.isfinite(value) and (best[1] is None or value > best[1]):
            best = (epoch, value)
    return best


def _load_final_weights(trainer: DistillationTrainer, run_dir: Path, epochs: int, progress: Progress,
                        trained_now: bool) -> int:
    """Load the best checkpoint (falling back to the last one, saying so); returns its 1-based epoch."""
    ckpt = run_dir / "checkpoints"
    info = read_json(ckpt / "best.json")
    best_epoch = info.get("epoch") if isinstance(info, dict) and isinstance(info.get("epoch"), int) else None
    if best_epoch is None:
        best_epoch = _best_from_history(run_dir)[0]
    for path, epoch in ((ckpt / "best.weights.h5", best_epoch or epochs), (ckpt / "last.weights.h5", epochs)):
        if not path.is_file():
            continue
        try:
            load_weights(trainer, path)
        except Exception as exc:  # truncated or corrupt file
            progress(f"note: checkpoint '{path}' does not load ({type(exc).__name__}); trying the next one")
            continue
        if path.name == "last.weights.h5" and (ckpt / "best.weights.h5").exists():
            progress(f"note: using the last epoch's weights ('{path}') instead of the best checkpoint")
        return epoch
    if trained_now:  # no validation ran (nothing to pick a best from): the final weights are in memory
        return epochs
    raise UserError(f"no checkpoint of the finished training in '{ckpt}' loads; rerun with --overwrite")


def _callbacks(cfg: Config, run_dir: Path, data: DataBundle, resuming: bool, threshold: Optional[float]) -> list:
    """The writers of an epoch, in order (the epoch backup, the commit point, goes after all of them)."""
    ckpt_dir = run_dir / "checkpoints"
    ckpt_dir.mkdir(exist_ok=True)
    callbacks: list = []
    if cfg.distill.enabled:
        # First: it adds the gate and gradient shares to the logs that the callbacks below write.
        size = cfg.data.crop_size or min(data.train_images.shape[1:3])
        n = min(cfg.train.batch_size, len(data.train_images))
        probe_masks = center_crop(np.asarray(data.train_masks[:n])[..., None], size)[..., 0]
        callbacks.append(TeacherDiagnostics(center_crop(data.train_images[:n], size), probe_masks))
    callbacks += [
        BestCheckpoint(ckpt_dir / "best.weights.h5", ckpt_dir / "best.json", threshold),
        LastCheckpoint(ckpt_dir / "last.weights.h5"),
        HistoryCSV(str(run_dir / "history.csv"), append=resuming),
    ]
    if cfg.logging.tensorboard:
        tb_dir = run_dir / "tensorboard"
        callbacks.append(keras.callbacks.TensorBoard(str(tb_dir), write_graph=False, update_freq="epoch"))
        n = min(cfg.logging.num_images, len(data.split("val")[0]))
        if n:
            images, masks = data.split("val")
            callbacks.append(
                ImagePanelCallback(tb_dir / "images", images[:n], masks[:n], data.class_names, cfg.logging.image_every)
            )
    return callbacks

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

from axial_kd_tf.callbacks import (
    BEST_MONITOR,
    BestCheckpoint,
    ClassWatch,
    EpochProgress,
    HistoryCSV,
    ImagePanelCallback,
    LastCheckpoint,
    NonFiniteGuard,
    TeacherDiagnostics,
)
from axial_kd_tf.config import Config, first_difference
from axial_kd_tf.data import DataBundle, load_data
from axial_kd_tf.distill import DistillationTrainer, build_distillation_model, student_network
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
    truncate_history,
    write_trained,
)
from axial_kd_tf.runlock import check_unlocked
from axial_kd_tf.xla import resolve_jit_compile

Progress = Callable[[str], None]


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

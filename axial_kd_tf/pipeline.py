"""One training run, end to end: config → data → model → fit → best checkpoint → metrics → export.

The top of the library: :func:`train` chains :mod:`axial_kd_tf.training` (prepare, fit), :mod:`axial_kd_tf.inference`
(validation IoU) and :mod:`axial_kd_tf.export` (SavedModel and TFLite), all inside one locked run directory
(:mod:`axial_kd_tf.rundir`). The command-line tools (:mod:`axial_kd_tf.cli`) and the experiment grid call it.

A run directory holds::

    config.yaml               the resolved configuration
    .lock                     the PID of the process writing the run (while it runs)
    checkpoints/              best.weights.h5 (best student val mIoU), last.weights.h5, best.json,
                              trained.json (training finished: a resume only redoes what is missing)
    backup/                   epoch-NNNN.weights.h5, the two newest epoch states while training (removed when
                              training completes); a resume continues from the newest that loads
    tensorboard/              scalars (loss terms, mIoU, per-class IoU, learning rate) and image panels
    history.csv, curves.png   per-epoch logs and their plot
    model.keras               the two-output functional network (student + teacher), best epoch
    student.keras             the plain student network, best epoch
    metrics.json, metrics.md  validation per-class IoU and mIoU of student and teacher
    export/                   student_saved_model/, student.tflite (+ variants), export_report.json
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Optional

import keras

from axial_kd_tf.config import Config, dump_config
from axial_kd_tf.data import DataBundle, load_data
from axial_kd_tf.distill import TEACHER, student_network, teacher_network
from axial_kd_tf.distribute import Distribution, make_distribution
from axial_kd_tf.errors import UserError
from axial_kd_tf.export import export_network
from axial_kd_tf.inference import KerasPredictor, evaluate_split, metrics_payload
from axial_kd_tf.io_utils import atomic_path, atomic_write_json, atomic_write_text, disk_full_error, is_disk_full
from axial_kd_tf.plots import plot_history
from axial_kd_tf.preflight import network_size_multiple, size_error
from axial_kd_tf.reporting import format_iou_table
from axial_kd_tf.rundir import load_run_config, load_run_model, open_run_dir, read_json
from axial_kd_tf.training import Fitted, Progress, Setup, center_crop, check_run_dir, fit, prepare


def train(
    cfg: Config,
    run_dir: str | os.PathLike,
    resume: bool = False,
    overwrite: bool = False,
    progress: Progress = print,
    extra_callbacks: tuple = (),
    force: bool = False,
) -> dict:
    """Train ``cfg`` into ``run_dir`` and return the metrics written to ``metrics.json``.

    Everything that can be checked is checked before the run directory is created: the run directory itself, the
    data, the model build, the input sizes and the memory estimate (``force`` turns a memory error into a warning).
    A new run that fails before its first epoch is committed is removed again. ``resume`` continues from the newest
    epoch backup that loads, and after a finished training only redoes what is missing (models, metrics, export).

    Under ``train.distribute: multi_worker`` only the chief writes ``run_dir``; another worker trains with it (its
    files go to a temporary folder) and returns ``{}`` (docs/distributed.md).
    """
    run_dir = Path(run_dir)
    t0 = time.time()
    dist = make_distribution(cfg.train.distribute, progress)  # first: before anything starts TensorFlow's devices
    resuming = check_run_dir(run_dir, cfg, resume, overwrite) if dist.is_chief else False
    previous_policy = keras.mixed_precision.global_policy().name
    keras.mixed_precision.set_global_policy(cfg.train.mixed_precision)
    try:
        setup = prepare(cfg, force, progress, dist)
        if not dist.is_chief:
            return _train_worker(cfg, run_dir, setup, resume, progress, extra_callbacks)
        with open_run_dir(run_dir, dump_config(cfg), resuming, overwrite, progress):
            try:
                fitted = fit(cfg, run_dir, setup, resuming, progress, extra_callbacks, t0)
                return _finish(cfg, run_dir, setup, fitted, progress, t0)
            except OSError as exc:  # history.csv, TensorBoard, the models: a full disk is one line too
                if is_disk_full(exc):
                    raise disk_full_error(exc.filename) from None
                raise
    finally:
        keras.mixed_precision.set_global_policy(previous_policy)


def _train_worker(cfg: Config, run_dir: Path, setup: Setup, resume: bool, progress: Progress,
                  extra_callbacks: tuple) -> dict:
    """A non-chief worker of a multi-worker run: the same training steps as the chief (its collectives need every
    worker), with its checkpoints, history and TensorBoard files in a temporary folder that is deleted at the end.
    To resume, it reads the chief's epoch backups from ``run_dir`` (so ``run_dir`` must be on a shared filesystem)."""
    dist: Distribution = setup.dist  # type: ignore[assignment]
    with tempfile.TemporaryDirectory(prefix=f"axial_kd_worker{dist.worker_index}_") as tmp:
        scratch = Path(tmp) / "run"
        scratch.mkdir()
        resuming = False
        if resume and (run_dir / "config.yaml").is_file():
            for name in ("backup", "checkpoints"):
                if (run_dir / name).is_dir():
                    shutil.copytree(run_dir / name, scratch / name)
            if (run_dir / "history.csv").is_file():
                shutil.copy2(run_dir / "history.csv", scratch / "history.csv")
            resuming = True
        fit(cfg, scratch, setup, resuming, progress, extra_callbacks)
    progress(f"[worker {dist.worker_index}] training done; the chief writes '{run_dir}'")
    return {}


def _finish(cfg: Config, run_dir: Path, setup: Setup, fitted: Fitted, progress: Progress, t0: float) -> dict:
    """After the training: save the models and curves, evaluate on the validation split, export, write metrics."""
    data, model = setup.data, setup.model
    n_student = student_network(model).count_params()
    _save_models(run_dir, model)
    if setup.dist is not None and setup.dist.distributed:
        # The evaluation and export use the saved network, whose variables are plain (not mirrored): no collective
        # with workers that have finished, and SavedModel/TFLite see ordinary variables.
        model = load_run_model(run_dir)
    _write_curves(run_dir)
    images, masks = data.split("val")
    cms = evaluate_split(KerasPredictor(model), images, masks, data.num_classes, cfg.train.batch_size)
    metrics = metrics_payload(cms, data.class_names, split="val")
    metrics.update(
        best_epoch=fitted.best_epoch, epochs=cfg.train.epochs, mode="distillation" if cfg.distill.enabled else "baseline",
        train_wall_time_s=round(fitted.train_wall_time_s, 1), student_params=n_student,
        teacher_params=model.count_params() - n_student, class_warnings=fitted.class_warnings,
    )
    if cfg.export.enabled:
        if export_complete(run_dir, cfg):
            progress(f"[export] {run_dir / 'export'} is complete; not exported again")
        else:
            export_run(run_dir, cfg, model=model, data=data, progress=progress)
    metrics["total_wall_time_s"] = round(time.time() - t0, 1)
    _write_metrics(run_dir, metrics, data.class_names)
    progress(f"[done] {run_dir} in {metrics['total_wall_time_s']:.0f}s: " + ", ".join(
        f"{k} mIoU {v['miou'] * 100:.2f}" for k, v in metrics["outputs"].items() if v["miou"] is not None))
    return metrics


def _save_models(run_dir: Path, model: keras.Model) -> None:
    with atomic_path(run_dir / "model.keras") as tmp:
        model.save(tmp.with_suffix(".keras"))
        os.replace(tmp.with_suffix(".keras"), tmp)
    with atomic_path(run_dir / "student.keras") as tmp:
        student_network(model).save(tmp.with_suffix(".keras"))
        os.replace(tmp.with_suffix(".keras"), tmp)


def _write_curves(run_dir: Path) -> None:
    history = run_dir / "history.csv"
    if not history.is_file():
        return
    plot_history(history, run_dir / "curves.png")


def _write_metrics(run_dir: Path, metrics: dict, class_names: tuple[str, ...]) -> None:
    rows = {name: {"per_class_iou": [v["per_class_iou"][c] for c in class_names], "miou": v["miou"]}
            for name, v in metrics["outputs"].items()}
    table = format_iou_table(rows, class_names)
    atomic_write_text(run_dir / "metrics.md", f"# Validation IoU (%), best epoch {metrics['best_epoch']}\n\n{table}\n")
    atomic_write_json(run_dir / "metrics.json", metrics)


def export_input_size(cfg: Config, train_hw: Optional[tuple[int, int]] = None) -> Optional[int]:
    """The side of the exported networks' square input: ``export.input_size``, else the training crop
    (``data.crop_size``), else the training images' side (``data.synthetic.image_size``, or the smaller side
    ``train_hw`` of the loaded training images); None when only the loaded data can tell and ``train_hw`` is not
    given."""
    d = cfg.data
    if cfg.export.input_size or d.crop_size:
        return cfg.export.input_size or d.crop_size
    if d.dataset == "synthetic":
        return d.synthetic.image_size
    return min(train_hw) if train_hw else None


def export_complete(run_dir: Path, cfg: Config) -> bool:
    """Whether ``export/`` holds everything ``cfg.export`` asks for (so a resumed run does not export again)."""
    report = read_json(Path(run_dir) / "export" / "export_report.json")
    if not isinstance(report, dict) or not isinstance(report.get("networks"), dict):
        return False
    size = export_input_size(cfg)  # None: the training images' side, which the report's own shape was made from
    if size is not None and list(report.get("input_shape", []))[:2] != [size, size]:
        return False
    for name in ["student"] + (["teacher"] if cfg.export.teacher else []):
        rep = report["networks"].get(name)
        if not isinstance(rep, dict) or not rep.get("saved_model") or not Path(rep["saved_model"]).is_dir():
            return False
        variants = rep.get("variants") or {}
        if any(v not in variants or not Path(variants[v].get("path", "")).is_file() for v in cfg.export.variants):
            return False
    return True


# -------------------------------------------------------------------------------------------------- export
def export_run(
    run_dir: str | os.PathLike,
    cfg: Optional[Config] = None,
    model: Optional[keras.Model] = None,
    data: Optional[DataBundle] = None,
    progress: Progress = print,
) -> dict:
    """Export the student (and on request the teacher) of a run; writes ``export/export_report.json``."""
    run_dir = Path(run_dir)
    if cfg is None:
        cfg = load_run_config(run_dir)
    if model is None:
        model = load_run_model(run_dir)
    if data is None:
        data = load_data(cfg)
    size = export_input_size(cfg, data.train_images.shape[1:3])
    multiple = network_size_multiple(student_network(model))
    if size % multiple:
        raise size_error("the export input size (export.input_size, or --input-size of the export command)", size,
                         multiple, cfg.model.arch)
    shape = (size, size, data.in_channels)
    e = cfg.export
    verify = center_crop(data.split("val")[0][: e.verify_samples], size)
    calibration = center_crop(data.train_images[: e.calibration_samples], size)
    out_dir = run_dir / "export"
    report: dict = {"input_shape": list(shape), "networks": {}}
    targets = [("student", student_network(model))]
    if e.teacher:
        if TEACHER not in model.output:
            raise UserError("config key 'export.teacher' is true but this run has no teacher (distill.enabled: false)")
        targets.append(("teacher", teacher_network(model)))
    for name, net in targets:
        progress(f"[export] {name}: saved model + {', '.join(e.variants)} TFLite at {size}x{size}")
        report["networks"][name] = export_network(
            net, out_dir, shape, name=name, variants=e.variants, calibration_images=calibration,
            verify_images=verify, saved_model=True, progress=progress,
        )
        report["networks"][name]["params"] = int(net.count_params())
    atomic_write_json(out_dir / "export_report.json", report)
    _remove_stale_exports(out_dir, report, progress)
    return report


def _remove_stale_exports(out_dir: Path, report: dict, progress: Progress = print) -> None:
    """Delete the ``*.tflite`` files and ``*_saved_model/`` folders of ``export/`` that ``report`` does not list:
    left by an earlier export with other variants (or the teacher), they would be taken for this model's."""
    current = {Path(v["path"]).name for net in report["networks"].values() for v in net["variants"].values()}
    current |= {Path(net["saved_model"]).name for net in report["networks"].values() if net.get("saved_model")}
    stale = [p for p in sorted(out_dir.glob("*.tflite")) + sorted(out_dir.glob("*_saved_model"))
             if p.name not in current and not p.name.startswith(".")]
    for path in stale:
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
    if stale:
        progress(f"[export] removed {len(stale)} file(s) of an earlier export that this one replaces: "
                 f"{', '.join(p.name for p in stale)}")

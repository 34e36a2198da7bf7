"""Executing the runs of a grid: train and evaluate one run, in this process or in a child process.

A child (``python -m axial_kd_tf.experiments --_worker <spec>``) returns its memory to the system when it ends, and
its crash or kill does not end the grid; its output is streamed with a ``[arch/variant/fold-seed]`` prefix.
"""

from __future__ import annotations

import gc
import io
import json
import os
import queue
import sys
import time
import traceback
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence

from axial_kd_tf import quiet  # sets TensorFlow's C++ log level before it loads
from axial_kd_tf import study
from axial_kd_tf.errors import UserError
from axial_kd_tf.io_utils import atomic_write_bytes, atomic_write_json
from axial_kd_tf.parallel import StreamedProcess, child_env, pin_from_env
from axial_kd_tf.experiments.grid import (
    PlannedRun,
    Progress,
    RunSpec,
    SPLITS,
    variant_keys,
    check_existing,
    config_digest,
    metrics_name,
    predictions_name,
    run_state,
)


# --------------------------------------------------------------------------------------------- executing a run
def execute_run(spec: RunSpec, cfg, run_dir: Path, overlays: int, progress: Progress = print, split: str = "test",
                **eval_options: Any) -> dict:
    """Train (or resume) the run if needed, then evaluate it on ``split``; returns ``<split>_metrics.json``."""
    state = run_state(run_dir, split)
    if state == "done":
        return json.loads((run_dir / metrics_name(split)).read_text())
    check_existing(run_dir, cfg, state, identity=variant_keys(spec))
    trained = False
    if state in ("new", "resume"):
        from axial_kd_tf.pipeline import train

        if state == "resume":
            progress(f"[resume] {run_dir} was interrupted; continuing it")
        train(cfg, run_dir, resume=state == "resume", progress=progress)
        trained = True
    return evaluate_run(spec, run_dir, overlays, progress=progress, trained_now=trained, split=split, **eval_options)


def evaluate_run(spec: RunSpec, run_dir: Path, overlays: int, progress: Progress = print,
                 trained_now: bool = False, split: str = "test", grid_overrides: Sequence[str] = (),
                 digest_reset: Optional[Mapping[str, Any]] = None) -> dict:
    """Evaluate a trained run (its best checkpoint's model, every output) on ``split``; write the overlay tiles
    (``<split>_predictions.npz``), then ``<split>_metrics.json``.

    ``grid_overrides`` (the grid's ``--set`` options) are stored with the metrics, so that a study record can be made
    from the run directory alone; ``digest_reset``: see :func:`config_digest`.
    """
    import numpy as np

    from axial_kd_tf.data import load_data
    from axial_kd_tf.inference import KerasPredictor, evaluate_split, metrics_payload
    from axial_kd_tf.rundir import load_run_config, load_run_model
    from axial_kd_tf.training import steps_per_epoch
    from axial_kd_tf.visualize import to_uint8_rgb

    if split not in SPLITS:
        raise UserError(f"split must be one of {', '.join(SPLITS)}, got '{split}'")
    t0 = time.time()
    cfg = load_run_config(run_dir)
    model = load_run_model(run_dir)
    data = load_data(cfg)
    images, masks = data.split(split)
    progress(f"[{split}] {run_dir}: {len(images)} {split} images")
    n = min(max(overlays, 0), len(images))
    cms = evaluate_split(KerasPredictor(model), images, masks, data.num_classes, cfg.train.batch_size,
                         ignore_index=cfg.distill.ignore_index, keep_predictions=n)
    payload = metrics_payload(cms, data.class_names, split=split)
    if n:
        arrays = {"image": np.stack([to_uint8_rgb(images[i]) for i in range(n)]),
                  "ground_truth": np.asarray(masks[:n]).astype(np.uint8)}
        for name, pred in cms["_predictions"].items():
            arrays[name] = np.asarray(pred).astype(np.uint8)
        buf = io.BytesIO()
        np.savez_compressed(buf, **arrays)
        atomic_write_bytes(run_dir / predictions_name(split), buf.getvalue())
    train_metrics = json.loads((run_dir / "metrics.json").read_text())
    payload.update(
        spec.to_dict(),
        run_dir=str(run_dir),
        **({"num_test_images": int(len(images))} if split == "test" else {}),
        num_images=int(len(images)),
        best_epoch=train_metrics.get("best_epoch"),
        epochs=train_metrics.get("epochs"),
        steps_per_epoch=steps_per_epoch(cfg, len(data.train_images)),
        val_miou={k: v.get("miou") for k, v in train_metrics.get("outputs", {}).items()},
        train_wall_time_s=train_metrics.get("train_wall_time_s"),
        total_wall_time_s=train_metrics.get("total_wall_time_s"),
        eval_wall_time_s=round(time.time() - t0, 1),
        trained_by_runner=trained_now,
        study=cfg.name,
        grid_overrides=list(grid_overrides),
        config_digest=config_digest(cfg.to_dict(), digest_reset),
        evaluated_at=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        **study.git_commit(),
    )
    atomic_write_json(run_dir / metrics_name(split), payload)
    return payload


def worker_main(payload_json: str) -> int:
    """Child-process entry: ``--_worker <json>`` with the run spec, its resolved config, the run directory and the
    evaluation options. With ``AXIAL_KD_CPUS`` set (``--parallel``), the process first pins itself to those CPUs."""
    cpus = pin_from_env()  # before TensorFlow is imported, so that its thread pools start on the share
    if cpus is not None:
        print(f"[worker] CPUs {','.join(map(str, cpus))}, {os.environ.get('TF_NUM_INTRAOP_THREADS')} intra-op / "
              f"{os.environ.get('TF_NUM_INTEROP_THREADS')} inter-op threads", flush=True)
    quiet.import_tensorflow()  # as quiet as the parent was told to be (--verbose)
    from axial_kd_tf.config import config_from_dict

    payload = json.loads(payload_json)
    spec = RunSpec.from_dict(payload["spec"])
    cfg = config_from_dict(payload["config"])
    options = {k: payload[k] for k in ("split", "grid_overrides", "digest_reset") if k in payload}
    try:
        execute_run(spec, cfg, Path(payload["run_dir"]), int(payload["overlays"]), **options)
    except KeyboardInterrupt:
        print(f"interrupted: {payload['run_dir']} resumes from its last epoch when the grid is rerun", flush=True)
        return 130
    return 0


class _Tee:
    """Progress callback for in-process runs: print and append to the run's log file."""

    def __init__(self, log: Path) -> None:
        log.parent.mkdir(parents=True, exist_ok=True)
        self.file = open(log, "a", encoding="utf-8")

    def __call__(self, line: str) -> None:
        print(line, flush=True)
        self.file.write(line + "\n")
        self.file.flush()

    def close(self) -> None:
        self.file.close()


def _log_header(item: PlannedRun) -> str:
    variant = item.spec.variant if item.spec.mode == "distill" else None
    overrides = f" overrides {json.dumps(variant.overrides_dict())}" if variant is not None else ""
    return (f"===== {time.strftime('%Y-%m-%d %H:%M:%S')} {item.spec.describe()}: {item.state} "
            f"({item.run_dir}){overrides}{'' if item.split == 'test' else f', {item.split} split'} =====")


def run_in_process(item: PlannedRun, overlays: int) -> tuple[bool, str]:
    tee = _Tee(item.log)
    tee.file.write(_log_header(item) + "\n")
    try:
        execute_run(item.spec, item.config, item.run_dir, overlays, progress=tee, **item.eval_options())
        return True, ""
    except UserError as exc:
        tee(f"error: {exc}")
        return False, f"error: {exc}"
    except Exception as exc:  # a crash in one run must not end the grid
        tee.file.write(traceback.format_exc())
        message = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
        print(f"crashed: {message}", flush=True)
        return False, f"crashed: {message}"
    finally:
        tee.close()
        import keras

        keras.backend.clear_session()
        gc.collect()


# The folder that holds the axial_kd_tf package: a worker imports this very copy, whatever its working directory.
PACKAGE_PARENT = Path(__file__).resolve().parents[2]


def worker_env(cpus: Optional[Sequence[int]] = None, device: Optional[str] = None) -> dict:
    """The environment of one worker process: its CPU share or GPU (``child_env``), unbuffered output, and
    :data:`PACKAGE_PARENT` first on ``PYTHONPATH``."""
    env = child_env(cpus, dict(os.environ, PYTHONUNBUFFERED="1"), device=device)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(PACKAGE_PARENT), env.get("PYTHONPATH", "")) if p)
    return env


def start_child(item: PlannedRun, overlays: int, done: "queue.Queue", key: Any,
                cpus: Optional[Sequence[int]] = None, prefix: str = "", device: Optional[str] = None
                ) -> StreamedProcess:
    """Start one grid point in ``python -m axial_kd_tf.experiments --_worker``; its output goes to the console
    (each line after ``prefix``) and the run's log; ``(key, return code)`` is put on ``done`` when it ends.
    ``cpus``: the child's CPU share (``--parallel``), None to leave its threads and affinity alone; ``device``: the
    one GPU it sees (``--devices``)."""
    payload = json.dumps({"spec": item.spec.to_dict(), "config": item.config.to_dict(), "run_dir": str(item.run_dir),
                          "overlays": overlays, **item.eval_options()})
    env = worker_env(cpus, device)
    return StreamedProcess(key, [sys.executable, "-m", "axial_kd_tf.experiments", "--_worker", payload], env,
                           item.log, _log_header(item), done, prefix=prefix)


def child_outcome(rc: Optional[int]) -> tuple[bool, str]:
    if rc == 0:
        return True, ""
    return False, f"killed by signal {-rc}" if rc is not None and rc < 0 else f"exit code {rc}"


def run_in_child(item: PlannedRun, overlays: int) -> tuple[bool, str]:
    """Run one grid point in a child process and wait for it (its output goes to the console and the log)."""
    done: queue.Queue = queue.Queue()
    child = start_child(item, overlays, done, key=0)
    try:
        _, rc = done.get()
    except BaseException:  # Ctrl-C: the child got SIGINT too; let it stop (its last words go to the log)
        child.stop()
        raise
    child.thread.join()
    return child_outcome(rc)



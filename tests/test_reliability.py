"""Runs that never lie and never get stuck (issue 9, part A): every fault a tester reproduced, one test each.

Silent failures (a diverged run, a bfloat16 run that cannot be exported, a configuration too large for the machine),
stuck runs (a full disk, a damaged backup or best.json, a failed export, two writers, ``kill -9``) and failures that
left junk or a traceback. The trainings are tiny baselines (8 images of 32², 3 epochs of 2 steps) shared through
module fixtures; ``docs/reliability.md`` lists the same faults with what happens and how to recover.
"""

from __future__ import annotations

import errno
import json
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import cv2
import h5py
import keras
import numpy as np
import pytest

from axial_kd_tf.cli import evaluate_main, export_main, train_main
from axial_kd_tf.config import load_config
from axial_kd_tf.distill import DistillationTrainer
from axial_kd_tf.errors import UserError
from axial_kd_tf.pipeline import train
from helpers import InterruptAfterEpoch

REPO = Path(__file__).resolve().parent.parent

#: A tiny CE-only run (compiles in seconds): 8 training images of 32², 3 epochs of 2 steps, no TensorBoard.
BASE = [
    "data.synthetic.image_size=32", "data.synthetic.train_samples=8", "data.synthetic.val_samples=4", "data.synthetic.test_samples=4",
    "model.options={base_filters: 4, depth: 2}", "distill.enabled=false", "teacher.max_span=32",
    "train.epochs=3", "train.steps_per_epoch=2", "train.batch_size=4", "train.jit_compile=false",
    "logging.tensorboard=false", "export.enabled=false", "export.verify_samples=2", "export.calibration_samples=4",
]
EXPORT = ["export.enabled=true", "export.variants=[float32]"]

_LOG_LINE = re.compile(
    r"^([IWEF]\d{4} |WARNING: All log messages before absl|WARNING:tensorflow:|To enable the following instructions|"
    r"\S+\.(cc|h):\d+\]|.*(oneDNN|cuda|TensorFlow binary is optimized))"
)


# ------------------------------------------------------------------------------------------------------ helpers
def _cfg(*extra: str):
    return load_config("quickstart", BASE + list(extra))


def _argv(run: Path, *overrides: str, config: str = "quickstart") -> list[str]:
    argv = ["--config", config, "--run-dir", str(run)]
    for o in BASE + list(overrides):
        argv += ["--set", o]
    return argv


def _single_error(stderr: str) -> str:
    """The one ``error:`` line on stderr (no traceback, nothing else a user would read)."""
    assert "Traceback" not in stderr, stderr
    lines = [ln for ln in stderr.splitlines() if ln.strip() and not _LOG_LINE.match(ln)]
    assert len(lines) == 1 and lines[0].startswith("error: "), stderr
    return lines[0]


def _fails(main, argv, capsys) -> str:
    """Run a CLI main in-process; it must exit 2 with one error line, which is returned."""
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    assert code == 2, captured.err
    return _single_error(captured.err)


def _succeeds(main, argv, capsys) -> str:
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    return captured.out


def _h5(path: Path) -> dict:
    out: dict = {}
    with h5py.File(path, "r") as f:
        f.visititems(lambda name, obj: out.__setitem__(name, obj[()]) if isinstance(obj, h5py.Dataset) else None)
    return out


def _assert_same_weights(a: Path, b: Path, context: str = "") -> None:
    """Bit-identical weights and optimizer state (every dataset of the two .weights.h5 files)."""
    x, y = _h5(a), _h5(b)
    assert x.keys() == y.keys(), context
    different = [k for k in x if not np.array_equal(x[k], y[k])]
    assert not different, f"{context}: {len(different)} of {len(x)} arrays differ, e.g. {different[:3]}"


def _history_epochs(run: Path) -> list[str]:
    """The epoch column of history.csv, as 0-based indices (whether the file numbers epochs from 0 or from 1)."""
    epochs = [int(r.split(",")[0]) for r in (run / "history.csv").read_text().strip().splitlines()[1:]]
    base = 1 if epochs and epochs[0] == 1 else 0
    return [str(e - base) for e in epochs]


def _tree(path: Path) -> dict:
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


def _copy(run: Path, tmp_path: Path) -> Path:
    target = tmp_path / "run"
    shutil.copytree(run, target)
    return target


def _newest_backup(run: Path) -> Path:
    files = sorted((run / "backup").glob("*.weights.h5"), key=lambda p: (p.stat().st_mtime_ns, p.name))
    assert files, f"no backup in {run}"
    return files[-1]


def _lock_of(pid: int) -> str:
    from axial_kd_tf.runlock import _process_start

    return json.dumps({"pid": pid, "host": socket.gethostname(), "start": _process_start(pid), "since": "earlier"})


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


# ------------------------------------------------------------------------------------------------------ fixtures
@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    """The uninterrupted run every resumed run must reproduce bit for bit (with a float32 export)."""
    run = tmp_path_factory.mktemp("ref") / "run"
    train(_cfg(*EXPORT), run, progress=lambda s: None)
    return run


@pytest.fixture(scope="module")
def interrupted(tmp_path_factory) -> Path:
    """The same run stopped after epoch 2 of 3 (backups of epochs 1 and 2 on disk). Copy it before use."""
    run = tmp_path_factory.mktemp("int") / "run"
    with pytest.raises(KeyboardInterrupt):
        train(_cfg(), run, extra_callbacks=(InterruptAfterEpoch(2),), progress=lambda s: None)
    return run


@pytest.fixture
def read_only_dir(tmp_path: Path):
    """A read-only tmpfs (needs root and mount); skipped where it cannot be mounted."""
    folder = tmp_path / "ro"
    folder.mkdir()
    if os.geteuid() != 0 or not shutil.which("mount"):
        pytest.skip("mounting a read-only tmpfs needs root")
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(folder)], capture_output=True)
    if done.returncode:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
    try:
        yield folder
    finally:
        subprocess.run(["umount", str(folder)], capture_output=True)


@pytest.fixture
def tiny_model_file(tmp_path: Path):
    """Save a tiny simple_unet with ``channels`` input channels as .keras; returns its path."""
    def make(channels: int) -> Path:
        from axial_kd_tf.models import build_network

        path = tmp_path / f"net{channels}.keras"
        build_network("simple_unet", num_classes=5, in_channels=channels, base_filters=4, depth=2).save(path)
        return path

    return make


TINY_DATA = ["data.synthetic.image_size=32", "data.synthetic.train_samples=4", "data.synthetic.val_samples=4", "data.synthetic.test_samples=4"]


# ============================================================================================== silent failure
def test_diverged_run_stops_at_once_exits_2_and_exports_nothing(tmp_path: Path, capsys):
    """lr 1e30: the loss is NaN at the second step. Before: exit 0, NaN checkpoints, a "verified" export."""
    run = tmp_path / "nan"
    line = _fails(train_main, _argv(run, "train.learning_rate=1e30", *EXPORT), capsys)
    assert "training diverged" in line and "epoch 1, step " in line and "optimizer step" in line
    assert "train.learning_rate" in line and "1e+30" in line
    assert not run.exists()  # no epoch finished: nothing worth keeping, and the corrected rerun needs no --overwrite


class _PoisonEpoch(keras.callbacks.Callback):
    """Simulates a divergence in epoch ``n`` (1-based): the first kernel becomes NaN when the epoch begins."""

    def __init__(self, n: int) -> None:
        super().__init__()
        self.n = n

    def on_epoch_begin(self, epoch, logs=None):
        if epoch + 1 == self.n:
            v = self.model.trainable_variables[0]
            v.assign(np.full(v.shape, np.nan, v.dtype))


def test_divergence_keeps_the_last_good_epoch_and_exports_nothing(tmp_path: Path):
    run = tmp_path / "run"
    with pytest.raises(UserError) as info:
        train(_cfg(*EXPORT), run, extra_callbacks=(_PoisonEpoch(2),), progress=lambda s: None)
    message = str(info.value)
    assert "training diverged" in message and "epoch 2, step 1/2 (optimizer step 3)" in message
    assert "epoch 1 are kept" in message and "\n" not in message
    assert _history_epochs(run) == ["0"]  # nothing of the bad epoch was written
    for path in (run / "backup" / "epoch-0001.weights.h5", run / "checkpoints" / "best.weights.h5",
                 run / "checkpoints" / "last.weights.h5"):
        assert all(np.all(np.isfinite(v)) for v in _h5(path).values() if np.issubdtype(v.dtype, np.floating)), path
    assert not (run / "export").exists() and not (run / "metrics.json").exists() and not (run / ".lock").exists()


def _network(kernel: float) -> keras.Model:
    init = keras.initializers.Constant(kernel)
    inputs = keras.Input((8, 8, 1))
    x = keras.layers.Conv2D(2, 1, kernel_initializer=init)(inputs)
    return keras.Model(inputs, keras.layers.Conv2D(2, 1, kernel_initializer=init)(x))


@pytest.mark.parametrize("kernel", [1e30, float("nan")], ids=["overflow", "nan-weights"])
def test_export_treats_non_finite_outputs_as_a_failure(tmp_path: Path, kernel: float):
    """Before: NaN against NaN "verified" with max |diff| 0 and 100 % argmax agreement."""
    from axial_kd_tf.export import export_network

    images = np.ones((2, 8, 8, 1), np.float32)
    with pytest.raises(UserError, match="NaN or infinite"):
        export_network(_network(kernel), tmp_path / "export", (8, 8, 1), verify_images=images, progress=None)
    assert not (tmp_path / "export").exists() or not any((tmp_path / "export").iterdir())


def test_bfloat16_run_trains_and_exports_every_variant(tmp_path: Path, capsys):
    """The CPU-scale configs train in bfloat16; before, the export failed with "Conv2D has no builtin kernel"."""
    run = tmp_path / "bf16"
    _succeeds(train_main, _argv(run, "train.mixed_precision=mixed_bfloat16", "train.epochs=1",
                                "export.enabled=true", "export.variants=[float32, float16, int8]"), capsys)
    report = json.loads((run / "export" / "export_report.json").read_text())["networks"]["student"]
    assert report["float32_copy"] is True
    assert set(report["variants"]) == {"float32", "float16", "int8"}
    assert report["variants"]["float32"]["max_abs_diff"] < 1e-4
    assert report["variants"]["float32"]["argmax_agreement"] == 1.0
    assert report["variants"]["int8"]["argmax_agreement"] > 0.9
    assert (run / "metrics.json").is_file()
    # python -m axial_kd_tf.export on the bf16 run works too.
    _succeeds(export_main, ["--run", run, "--variants", "float16"], capsys)
    assert (run / "export" / "student_float16.tflite").is_file()


def test_float32_copy_of_a_bfloat16_distillation_model():
    """Teacher head included: every layer computes in float32, same weights, outputs within bf16 rounding."""
    from axial_kd_tf.distill import build_distillation_model
    from axial_kd_tf.export import float32_copy
    from axial_kd_tf.models import build_network

    previous = keras.mixed_precision.global_policy().name
    keras.mixed_precision.set_global_policy("mixed_bfloat16")
    try:
        net = build_network("simple_unet", num_classes=3, in_channels=1, base_filters=4, depth=2)
        model = build_distillation_model(net, 3, teacher_kwargs=dict(hidden_dim=8, num_heads=2, max_span=16))
    finally:
        keras.mixed_precision.set_global_policy(previous)
    copy = float32_copy(model)
    assert copy is not model
    assert {layer.dtype_policy.compute_dtype for layer in copy._flatten_layers()} == {"float32"}
    for a, b in zip(model.weights, copy.weights):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    x = np.random.default_rng(0).random((2, 16, 16, 1)).astype(np.float32)
    want, got = model(x), copy(x)
    for key in ("student", "teacher"):
        np.testing.assert_allclose(np.asarray(got[key]), np.asarray(want[key]), atol=0.1)
    assert float32_copy(copy) is copy  # a float32 model is exported as it is


def test_memory_preflight_refuses_an_oversized_config_before_anything_exists(tmp_path: Path, capsys, monkeypatch):
    """A full-resolution teacher at 256² (the tester's covid case in small): one line naming the settings."""
    monkeypatch.setenv("AXIAL_KD_MEMORY_MB", "4000")
    run = tmp_path / "big"
    line = _fails(train_main, _argv(run, "distill.enabled=true", "data.synthetic.image_size=256", "teacher.pool_size=1",
                                    "teacher.max_span=256", "train.batch_size=8", "data.synthetic.train_samples=8"), capsys)
    assert "teacher.pool_size" in line and "train.batch_size" in line and "--force" in line and "GPU" in line
    assert "3.9 GB" in line
    assert not run.exists()


def test_memory_estimate_of_the_covid_config():
    """The unmodified covid config (ResNet-34 U-Net, pool-1 teacher, whole 512² validation slices) does not fit 16
    GB: the validation teacher alone is ~25 GB (estimate_teacher_mb), and --force only warns."""
    from axial_kd_tf.models import build_network
    from axial_kd_tf.preflight import MemoryEstimate, check_memory, estimate_memory

    cfg = load_config("covid")
    net = build_network("unet", encoder="resnet34", num_classes=4, in_channels=1, encoder_weights=None)
    estimate = estimate_memory(cfg, net, (256, 256), (512, 512))
    assert estimate.val_bytes > 24 * 2**30 and estimate.train_bytes > 8 * 2**30
    sixteen = MemoryEstimate(estimate.train_bytes, estimate.val_bytes, 16 * 2**30, "RAM", estimate.parts)
    with pytest.raises(UserError) as info:
        check_memory(cfg, sixteen, progress=lambda s: None)
    message = str(info.value)
    assert "validation" in message and "teacher.pool_size (now 1" in message and "data.tile_size" in message
    lines: list[str] = []
    check_memory(cfg, sixteen, force=True, progress=lines.append)
    assert lines[0].startswith("[memory]") and lines[1].startswith("warning: ") and "--force" in lines[1]


# ================================================================================================== stuck runs
def test_checkpoint_write_checks_free_space_first(tmp_path: Path, monkeypatch):
    import collections

    from axial_kd_tf import io_utils
    from axial_kd_tf.io_utils import DiskFullError
    from axial_kd_tf.rundir import save_weights_atomic

    model = _network(0.5)
    usage = collections.namedtuple("usage", "total used free")
    monkeypatch.setattr(io_utils.shutil, "disk_usage", lambda p: usage(10**9, 10**9 - 4096, 4096))
    target = tmp_path / "checkpoints" / "last.weights.h5"
    with pytest.raises(DiskFullError) as info:
        save_weights_atomic(model, target)
    assert str(target) in str(info.value) and "needs about" in str(info.value) and "4 KB free" in str(info.value)
    assert not target.parent.exists() or not any(target.parent.iterdir())


def test_disk_full_during_the_backup_is_one_line_and_resume_recovers(tmp_path: Path, reference: Path, capsys,
                                                                     monkeypatch):
    """Before: a segfault or an h5py traceback, a partial backup/latest.weights.h5, and --resume died on it."""
    calls = []
    original = DistillationTrainer.save_weights

    def disk_full_on_second_backup(self, filepath, *args, **kwargs):
        if f"{os.sep}backup{os.sep}" in str(filepath):
            calls.append(filepath)
            if len(calls) == 2:  # the backup of epoch 2: half a file, then ENOSPC
                Path(filepath).write_bytes(b"\x89HDF\r\n\x1a\n half a file")
                raise OSError(errno.ENOSPC, "No space left on device", str(filepath))
        return original(self, filepath, *args, **kwargs)

    monkeypatch.setattr(DistillationTrainer, "save_weights", disk_full_on_second_backup)
    run = tmp_path / "run"
    line = _fails(train_main, _argv(run), capsys)
    target = run / "backup" / "epoch-0002.weights.h5"
    assert "disk full" in line and str(target) in line and "needs about" in line
    assert sorted(p.name for p in (run / "backup").iterdir()) == ["epoch-0001.weights.h5"]  # no partial file
    monkeypatch.undo()
    out = _succeeds(train_main, _argv(run) + ["--resume"], capsys)
    assert "continuing" in out and "after epoch 1" in out
    assert _history_epochs(run) == ["0", "1", "2"]
    _assert_same_weights(run / "checkpoints" / "last.weights.h5", reference / "checkpoints" / "last.weights.h5",
                         "resumed after a full disk")


def test_resume_falls_back_to_the_newest_backup_that_loads(tmp_path: Path, interrupted: Path, reference: Path,
                                                           capsys):
    """A truncated newest backup (and the stale lock of the killed process): resume from the older one, say so."""
    run = _copy(interrupted, tmp_path)
    newest = _newest_backup(run)
    newest.write_bytes(newest.read_bytes()[: newest.stat().st_size // 2])
    (run / ".lock").write_text(_lock_of(_dead_pid()))
    out = _succeeds(train_main, _argv(run) + ["--resume"], capsys)
    assert "does not load" in out and "resuming from the backup of epoch 1" in out
    assert "took over the stale lock" in out
    assert _history_epochs(run) == ["0", "1", "2"]  # epoch 2's old row went, no duplicates
    _assert_same_weights(run / "checkpoints" / "last.weights.h5", reference / "checkpoints" / "last.weights.h5",
                         "resumed from the older backup")
    assert not (run / ".lock").exists() and not (run / "backup").exists()


@pytest.mark.parametrize("first", [0, 1], ids=["keras-0-based", "1-based"])
def test_truncate_history_keeps_the_committed_epochs(tmp_path: Path, first: int):
    """Rows of epochs that a resume trains again go (no duplicates), and a half-written last row too."""
    from axial_kd_tf.rundir import truncate_history

    path = tmp_path / "history.csv"
    path.write_text("epoch,loss\n" + "".join(f"{first + i},0.{i}\n" for i in range(3)) + f"{first + 3},0.")
    truncate_history(path, 2)
    assert path.read_text() == f"epoch,loss\n{first},0.0\n{first + 1},0.1\n"


def test_restore_backup_starts_afresh_when_no_backup_loads(tmp_path: Path):
    from axial_kd_tf.rundir import backup_path, restore_backup

    model = _network(0.5)
    model.compile(optimizer="adam", loss="mse")
    before = [np.asarray(w).copy() for w in model.weights]
    for epoch in (1, 2):
        backup_path(tmp_path, epoch).parent.mkdir(exist_ok=True)
        backup_path(tmp_path, epoch).write_bytes(b"\x89HDF\r\n\x1a\n truncated")
    lines: list[str] = []
    assert restore_backup(model, tmp_path, lines.append) == 0
    assert sum("does not load" in ln for ln in lines) == 2 and "starts again from epoch 1" in lines[-1]
    for a, b in zip(before, model.weights):
        np.testing.assert_array_equal(a, np.asarray(b))


def test_resume_with_a_garbage_best_json(tmp_path: Path, interrupted: Path, capsys):
    run = _copy(interrupted, tmp_path)
    (run / "checkpoints" / "best.json").write_text("{not json")
    out = _succeeds(train_main, _argv(run) + ["--resume"], capsys)
    assert "best.json" in out and "unreadable" in out
    best = json.loads((run / "checkpoints" / "best.json").read_text())
    assert 1 <= best["epoch"] <= 3 and json.loads((run / "metrics.json").read_text())["best_epoch"] in (1, 2, 3)


def test_a_finished_training_is_never_repeated(tmp_path: Path, capsys, monkeypatch):
    """Export fails after training (a full disk): --resume and the export command redo only what is missing."""
    import axial_kd_tf.pipeline as pipeline
    from axial_kd_tf.io_utils import DiskFullError

    def disk_full(*args, **kwargs):
        raise DiskFullError("disk full: writing 'export/student.tflite' needs about 1.0 MB, 0 KB free")

    monkeypatch.setattr(pipeline, "export_run", disk_full)
    run = tmp_path / "run"
    assert "disk full" in _fails(train_main, _argv(run, *EXPORT), capsys)
    assert _history_epochs(run) == ["0", "1", "2"] and not (run / "metrics.json").exists()
    monkeypatch.undo()
    _succeeds(export_main, ["--run", run], capsys)  # the export command on the finished run
    before = (run / "history.csv").read_bytes()
    out = _succeeds(train_main, _argv(run, *EXPORT) + ["--resume"], capsys)
    assert "finished earlier" in out and "not exported again" in out
    assert not any(ln.startswith("epoch ") for ln in out.splitlines())  # no epoch was trained again
    assert (run / "history.csv").read_bytes() == before
    assert (run / "metrics.json").is_file() and (run / "export" / "student.tflite").is_file()


def test_a_finished_run_of_an_older_version_is_not_retrained(tmp_path: Path, reference: Path, capsys):
    """A run whose export failed under the previous version has model.keras but no checkpoints/trained.json."""
    run = _copy(reference, tmp_path)
    for name in ("metrics.json", "checkpoints/trained.json"):
        (run / name).unlink()
    before = (run / "history.csv").read_bytes()
    out = _succeeds(train_main, _argv(run, *EXPORT) + ["--resume"], capsys)
    assert "finished earlier" in out and not any(ln.startswith("epoch ") for ln in out.splitlines())
    assert (run / "history.csv").read_bytes() == before and (run / "metrics.json").is_file()


def test_a_best_checkpoint_that_does_not_load_falls_back_to_the_last(tmp_path: Path, reference: Path, capsys):
    run = _copy(reference, tmp_path)
    (run / "metrics.json").unlink()
    best = run / "checkpoints" / "best.weights.h5"
    best.write_bytes(best.read_bytes()[:1000])
    out = _succeeds(train_main, _argv(run, *EXPORT) + ["--resume"], capsys)
    assert "does not load" in out and "using the last epoch's weights" in out
    assert json.loads((run / "metrics.json").read_text())["best_epoch"] == 3


def test_a_second_writer_gets_one_line(tmp_path: Path, interrupted: Path, reference: Path, capsys):
    """--resume while the first trainer still runs (a live PID holds the lock): refused, nothing touched."""
    run = _copy(interrupted, tmp_path)
    owner = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    try:
        (run / ".lock").write_text(_lock_of(owner.pid))
        before = _tree(run)
        line = _fails(train_main, _argv(run) + ["--resume"], capsys)
        assert f"process {owner.pid}" in line and "in use" in line
        assert _tree(run) == before
        line = _fails(train_main, _argv(run) + ["--overwrite"], capsys)  # not even --overwrite
        assert f"process {owner.pid}" in line and _tree(run) == before
        (reference / ".lock").write_text(_lock_of(owner.pid))
        try:
            assert f"process {owner.pid}" in _fails(export_main, ["--run", reference], capsys)
        finally:
            (reference / ".lock").unlink()
    finally:
        owner.kill()
        owner.wait()


def test_lock_takes_over_a_stale_lock_and_releases_its_own(tmp_path: Path):
    from axial_kd_tf.runlock import LOCK_NAME, RunLock

    (tmp_path / LOCK_NAME).write_text(_lock_of(pid := _dead_pid()))
    notes: list[str] = []
    with RunLock(tmp_path, notes.append):
        assert json.loads((tmp_path / LOCK_NAME).read_text())["pid"] == os.getpid()
        with pytest.raises(UserError, match=f"in use by process {os.getpid()}"):
            RunLock(tmp_path, notes.append).acquire()
    assert len(notes) == 1 and f"process {pid}" in notes[0] and "no longer runs" in notes[0]
    assert not (tmp_path / LOCK_NAME).exists()


class _InterruptAtStep(keras.callbacks.Callback):
    """Raise KeyboardInterrupt after optimizer step ``n`` (1-based), in the middle of an epoch."""

    def __init__(self, n: int) -> None:
        super().__init__()
        self.n, self.seen = n, 0

    def on_train_batch_end(self, batch, logs=None):
        self.seen += 1
        if self.seen == self.n:
            raise KeyboardInterrupt(f"interrupted after step {self.n}")


def test_interruption_mid_epoch_then_resume_gives_the_same_weights(tmp_path: Path, reference: Path):
    """The data stream continues where the finished epochs ended, so the replayed epoch is the same epoch.

    A random step after the first epoch (3..5 of 6), so that the resume continues from a backup (an interruption in
    epoch 1 restarts from scratch, which an uninterrupted run trivially matches)."""
    step = random.Random().randint(3, 5)
    run = tmp_path / "run"
    with pytest.raises(KeyboardInterrupt):
        train(_cfg(), run, extra_callbacks=(_InterruptAtStep(step),), progress=lambda s: None)
    train(_cfg(), run, resume=True, progress=lambda s: None)
    assert _history_epochs(run) == ["0", "1", "2"], step
    _assert_same_weights(run / "checkpoints" / "last.weights.h5", reference / "checkpoints" / "last.weights.h5",
                         f"interrupted after step {step}")


def test_rng_states_travel_with_the_weights(tmp_path: Path):
    """Dropout's seed generators are not in Keras' weights files; ours carry them so a replayed epoch is exact."""
    from axial_kd_tf.rundir import _seed_generators, load_weights, save_weights_atomic

    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3), keras.layers.Dropout(0.5, seed=1),
                              keras.layers.Dense(1)])
    model.compile(optimizer="adam", loss="mse")
    x, y = np.ones((8, 4), np.float32), np.ones((8, 1), np.float32)
    model.fit(x, y, epochs=2, verbose=0)
    save_weights_atomic(model, tmp_path / "state.weights.h5")
    saved = np.asarray(_seed_generators(model)[0].state.value).copy()
    model.fit(x, y, epochs=1, verbose=0)
    assert not np.array_equal(np.asarray(_seed_generators(model)[0].state.value), saved)
    load_weights(model, tmp_path / "state.weights.h5")
    np.testing.assert_array_equal(np.asarray(_seed_generators(model)[0].state.value), saved)


# ==================================================================================== failures that left junk
def _folders_root(tmp_path: Path, corrupt: bool) -> Path:
    root = tmp_path / "data"
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    rng = np.random.default_rng(0)
    for i in range(6):
        mask = (rng.random((32, 32)) > 0.5).astype(np.uint8) * 255
        cv2.imwrite(str(root / "images" / f"s{i}.png"), mask // 2 + 10)
        cv2.imwrite(str(root / "masks" / f"s{i}.png"), mask)
    if corrupt:
        (root / "images" / "s3.png").write_bytes(b"\x89PNG\r\n\x1a\n not an image")
    return root


@pytest.mark.parametrize("case", ["unknown-arch", "bad-data-root", "corrupt-image", "class-weights"])
def test_a_failed_new_run_leaves_no_run_directory(tmp_path: Path, capsys, case: str):
    """Before: <run-dir>/config.yaml stayed, and the corrected rerun was refused ("already exists")."""
    overrides = {
        "unknown-arch": ["model.arch=unetx", "model.options={}"],
        "bad-data-root": ["data.dataset=folders", f"data.root={tmp_path / 'missing'}", "data.value_map={0: 0}"],
        "corrupt-image": ["data.dataset=folders", f"data.root={_folders_root(tmp_path, True)}",
                          "data.value_map={0: 0, 255: 1}"],
        "class-weights": ["distill.class_weights=[1, 1]"],
    }[case]
    run = tmp_path / "new" / "nested" / "run"
    _fails(train_main, _argv(run, *overrides), capsys)
    assert not (tmp_path / "new").exists()


def test_a_new_run_failing_in_its_first_epoch_is_removed_but_a_resumed_one_is_kept(tmp_path: Path, interrupted,
                                                                                     capsys):
    run = tmp_path / "fresh"
    run.mkdir()  # an empty folder the user made: emptied again, not removed
    with pytest.raises(UserError):
        train(_cfg(), run, extra_callbacks=(_PoisonEpoch(1),), progress=lambda s: None)
    assert run.is_dir() and not any(run.iterdir())
    resumed = _copy(interrupted, tmp_path)
    with pytest.raises(UserError):
        train(_cfg(), resumed, resume=True, extra_callbacks=(_PoisonEpoch(3),), progress=lambda s: None)
    assert (resumed / "config.yaml").is_file() and (resumed / "backup" / "epoch-0002.weights.h5").is_file()


# ================================================================================ tracebacks become one line
def test_run_dir_under_proc(capsys):
    if not Path("/proc/self").is_dir():
        pytest.skip("no /proc")
    line = _fails(train_main, _argv(Path("/proc/axial_kd_x")), capsys)
    assert "/proc/axial_kd_x" in line


def test_a_file_where_the_run_directory_should_be(tmp_path: Path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert "is a file" in _fails(train_main, _argv(blocker), capsys)
    line = _fails(train_main, _argv(blocker / "run"), capsys)
    assert str(blocker) in line and "is a file" in line
    assert blocker.read_text() == "x"


def test_read_only_file_system_train_and_evaluate(read_only_dir: Path, tiny_model_file, capsys):
    line = _fails(train_main, _argv(read_only_dir / "run"), capsys)
    assert str(read_only_dir / "run") in line and "Read-only" in line
    model = tiny_model_file(1)
    line = _fails(evaluate_main, ["--model", model, "--config", "quickstart", *sum([["--set", o] for o in TINY_DATA],
                                                                                      []),
                                  "--out", read_only_dir / "eval"], capsys)
    assert str(read_only_dir / "eval") in line and "Read-only" in line


def test_image_size_that_the_network_cannot_take(tmp_path: Path, capsys):
    """simple_unet of depth 3 needs multiples of 8; before: a Concatenate shape error deep in Keras."""
    run = tmp_path / "run"
    line = _fails(train_main, _argv(run, "model.options={base_filters: 4, depth: 3}", "data.synthetic.image_size=100"), capsys)
    assert "'data.synthetic.image_size' is 100" in line and "multiple of 8" in line and "96 or 104" in line
    assert not run.exists()


def test_export_input_size_that_the_network_cannot_take(reference: Path, capsys):
    line = _fails(export_main, ["--run", reference, "--input-size", "102"], capsys)
    assert "102" in line and "multiple of 4" in line and "--input-size" in line and "100 or 104" in line


@pytest.mark.parametrize("error", [
    OSError(errno.EROFS, "Read-only file system", "/mnt/ro/run/history.csv"),
    OSError(errno.ENOSPC, "No space left on device", "/mnt/full/run/history.csv"),
    OSError(errno.ENOSPC, "No space left on device"),
], ids=["read-only", "disk-full", "disk-full-no-name"])
def test_os_errors_of_user_paths_are_one_line(capsys, monkeypatch, error: OSError):
    """The backstop behind the checks: an unwritable path met while running is still one line and exit 2."""
    import axial_kd_tf.pipeline as pipeline

    def fail(*args, **kwargs):
        raise error

    monkeypatch.setattr(pipeline, "train", fail)
    line = _fails(train_main, ["--config", "quickstart", "--run-dir", "unused"], capsys)
    assert ("disk full" if error.errno == errno.ENOSPC else "Read-only") in line
    assert error.filename is None or error.filename in line


def test_evaluating_a_3_channel_model_on_1_channel_data(tiny_model_file, capsys):
    model = tiny_model_file(3)
    line = _fails(evaluate_main, ["--model", model, "--config", "quickstart",
                                  *sum([["--set", o] for o in TINY_DATA], []), "--overlays", "0"], capsys)
    assert "3-channel" in line and "1 channel" in line
    assert not any(p.name.startswith("eval") for p in model.parent.iterdir())


# ================================================================================== slow: real kill, real disk
_CHILD = textwrap.dedent("""
    import os, signal, sys
    import keras
    from axial_kd_tf.cli import train_main

    run, kill_at, fill_after, argv = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4:]

    class Fault(keras.callbacks.Callback):
        steps = 0
        def on_train_batch_end(self, batch, logs=None):
            Fault.steps += 1
            if Fault.steps == kill_at:
                os.kill(os.getpid(), signal.SIGKILL)
        def on_epoch_end(self, epoch, logs=None):
            if fill_after != "-" and epoch == 0:  # fill the disk, leaving 16 KB, after epoch 1 was committed
                free = os.statvfs(fill_after).f_bavail * os.statvfs(fill_after).f_frsize
                with open(os.path.join(fill_after, "filler"), "wb") as f:
                    f.write(b"0" * max(free - 16 * 1024, 0))

    import axial_kd_tf.pipeline as pipeline
    original = pipeline.train
    def train(*args, **kwargs):
        kwargs["extra_callbacks"] = (Fault(),)
        return original(*args, **kwargs)
    pipeline.train = train
    sys.exit(train_main(argv))
""")


def _child(run: Path, argv: list, kill_at: int = 0, fill: Path | None = None) -> subprocess.CompletedProcess:
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", PYTHONPATH=str(REPO))
    return subprocess.run([sys.executable, "-c", _CHILD, str(run), str(kill_at), str(fill or "-"), *map(str, argv)],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=900)


@pytest.mark.slow
def test_kill_9_at_a_random_step_then_resume_gives_the_same_weights(tmp_path: Path):
    """A real SIGKILL (no cleanup at all: a stale lock, maybe a temporary file), then --resume in a new process."""
    step = random.Random().randint(3, 5)  # of 6, after the first epoch's backup
    plain, killed = tmp_path / "plain", tmp_path / "killed"
    assert _child(plain, _argv(plain)).returncode == 0
    done = _child(killed, _argv(killed), kill_at=step)
    assert done.returncode == -signal.SIGKILL, done.stderr[-2000:]
    assert (killed / ".lock").is_file()
    done = _child(killed, _argv(killed) + ["--resume"])
    assert done.returncode == 0, done.stderr[-2000:]
    _assert_same_weights(killed / "checkpoints" / "last.weights.h5", plain / "checkpoints" / "last.weights.h5",
                         f"killed after step {step}")
    assert _history_epochs(killed) == ["0", "1", "2"], step
    assert "took over the stale lock" in done.stdout


@pytest.mark.slow
def test_a_real_full_disk_is_one_line_and_resume_recovers(tmp_path: Path):
    """An 8 MB tmpfs filled after epoch 1: the next checkpoint is refused before writing (exit 2, one line)."""
    disk = tmp_path / "disk"
    disk.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(disk)],
                                           capture_output=True).returncode:
        pytest.skip("mounting a tmpfs needs root")
    try:
        run = disk / "run"
        done = _child(run, _argv(run), fill=disk)
        assert done.returncode == 2, done.stderr[-2000:]
        line = _single_error(done.stderr)
        assert "disk full" in line and str(run) in line and "needs about" in line
        assert not [p for p in run.rglob("*") if ".tmp" in p.name]
        (disk / "filler").unlink()
        done = _child(run, _argv(run) + ["--resume"])
        assert done.returncode == 0, done.stderr[-2000:]
        assert _history_epochs(run) == ["0", "1", "2"]
    finally:
        subprocess.run(["umount", str(disk)], capture_output=True)

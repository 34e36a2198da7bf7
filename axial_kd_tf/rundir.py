"""The run directory's safety net: one writer at a time, atomic checkpoints, resumable state.

* :class:`~axial_kd_tf.runlock.RunLock` (:mod:`axial_kd_tf.runlock`): one writer at a time; :func:`open_run_dir`
  takes it.
* :func:`save_weights_atomic` / :func:`load_weights`: ``.weights.h5`` files written to a temporary name, renamed when
  complete, with the free space checked first; the random-number states of the network (dropout) travel inside the
  same file, so a resumed epoch replays exactly.
* :class:`EpochBackup`: ``backup/epoch-NNNN.weights.h5`` at every epoch end (the two newest are kept), the commit
  point of an epoch; :func:`restore_backup` resumes from the newest backup that loads and says when it had to fall
  back.
* ``checkpoints/trained.json`` marks a finished training: a resumed run then only redoes what is missing.

Nothing here knows about the distillation model; :mod:`axial_kd_tf.training` and :mod:`axial_kd_tf.pipeline` wire it together.
"""

from __future__ import annotations

import contextlib
import csv
import io
import math
import os
import re
import shutil
from pathlib import Path
from typing import Callable, Iterator, Optional

import keras
import numpy as np

from axial_kd_tf.config import Config, load_config
from axial_kd_tf.errors import UserError
from axial_kd_tf.runlock import LOCK_NAME, RunLock, check_unlocked, lock_owner, owner_alive
from axial_kd_tf.io_utils import (
    atomic_write_json,
    atomic_write_text,
    atomic_write_with,
    check_writable_dir,
    is_temporary,
    read_json,
)

Progress = Callable[[str], None]

BACKUP_DIR = "backup"
TRAINED_MARKER = Path("checkpoints") / "trained.json"
_BACKUP_RE = re.compile(r"^epoch-(\d+)\.weights\.h5$")
_RNG_GROUP = "axial_kd_tf_rng"  # extra HDF5 group beside Keras' own; Keras ignores it when loading


# ------------------------------------------------------------------------------------------------ run directory
def is_empty_dir(path: Path) -> bool:
    """An existing folder with nothing in it but (possibly) a stale lock."""
    if not path.is_dir():
        return False
    if any(p.name != LOCK_NAME for p in path.iterdir()):
        return False
    info = lock_owner(path)
    return info is None or not owner_alive(info)


def check_location(run_dir: Path) -> None:
    """The run directory can be created (or written into): not a file, not under /proc, not read-only."""
    check_writable_dir(run_dir, "run directory")


def first_missing_ancestor(path: Path) -> Optional[Path]:
    """The topmost folder of ``path`` (itself included) that does not exist yet: what ``mkdir -p`` would create."""
    path = Path(os.path.abspath(path))
    top = None
    while not path.exists() and path != path.parent:
        top, path = path, path.parent
    return top


@contextlib.contextmanager
def open_run_dir(run_dir: Path, config_text: str, resuming: bool, overwrite: bool,
                 progress: Progress = print) -> Iterator[RunLock]:
    """Create (or reopen) and lock ``run_dir`` for one training; write ``config.yaml`` for a new run.

    If a new run fails before any epoch is committed (:func:`has_progress`), the folders this call created are
    removed again, so the corrected command can simply be rerun. An interrupted (Ctrl-C) run is kept for
    ``--resume``.
    """
    run_dir = Path(run_dir)
    created: Optional[Path] = None
    if not resuming:
        if overwrite and run_dir.exists():
            check_unlocked(run_dir)
            shutil.rmtree(run_dir)
        created = first_missing_ancestor(run_dir)
        try:
            run_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise UserError(f"cannot create run directory '{run_dir}': {exc.strerror or exc}") from None
    lock = RunLock(run_dir, progress).acquire()
    try:
        if not resuming:
            atomic_write_text(run_dir / "config.yaml", config_text)
        yield lock
    except BaseException as exc:
        if not resuming and not isinstance(exc, KeyboardInterrupt) and not has_progress(run_dir):
            lock.release()
            _remove_new_run(run_dir, created)
        raise
    finally:
        lock.release()


def _remove_new_run(run_dir: Path, created: Optional[Path]) -> None:
    """Remove what a failed new run wrote: the folders it created, or the contents of a folder that was empty."""
    if created is not None:
        shutil.rmtree(created, ignore_errors=True)
        return
    for entry in run_dir.iterdir():
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            with contextlib.suppress(OSError):
                entry.unlink()


def has_progress(run_dir: Path) -> bool:
    """A committed epoch backup or a finished training: something a resume would continue from."""
    backup = Path(run_dir) / BACKUP_DIR
    return (Path(run_dir) / TRAINED_MARKER).is_file() or (backup.is_dir() and any(
        _BACKUP_RE.match(p.name) or p.name == "latest.weights.h5" for p in backup.iterdir()))


def remove_temporaries(run_dir: Path) -> None:
    """Delete temporary files of writes a killed process never finished (``.<name>.<...>.tmp*``)."""
    for sub in (Path(run_dir), Path(run_dir) / "checkpoints", Path(run_dir) / BACKUP_DIR, Path(run_dir) / "export"):
        if sub.is_dir():
            for p in sub.iterdir():
                if is_temporary(p):
                    shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)


# --------------------------------------------------------------------------------------------- weights files
def _seed_generators(model: keras.Model) -> list:
    """Every ``SeedGenerator`` of the model's layers (dropout and friends), in a stable order."""
    seen, out = set(), []
    for layer in model._flatten_layers(include_self=True, recursive=True):
        for sg in getattr(layer, "_seed_generators", ()):
            if id(sg) not in seen:
                seen.add(id(sg))
                out.append(sg)
    return out


def state_nbytes(model: keras.Model) -> int:
    """Bytes of the model's weights and optimizer variables: the size of a ``.weights.h5`` file, about."""
    variables = list(model.weights)
    optimizer = getattr(model, "optimizer", None)
    if optimizer is not None:
        variables += list(optimizer.variables)
    return int(sum(math.prod(v.shape) * np.dtype(v.dtype).itemsize for v in variables))


def save_weights_atomic(model: keras.Model, path: Path) -> Path:
    """``model.save_weights(path)`` (weights and optimizer state) plus the RNG states, written atomically.

    The free space is checked first against the size of the file being replaced, or the variables' bytes.
    """
    import h5py

    path = Path(path)
    previous = path.stat().st_size if path.is_file() else 0
    needed = max(previous, int(state_nbytes(model) * 1.1) + 2**18)

    def write(tmp: Path) -> None:
        model.save_weights(str(tmp))
        generators = _seed_generators(model)
        if generators:
            with h5py.File(tmp, "a") as f:
                group = f.create_group(_RNG_GROUP)
                for i, sg in enumerate(generators):
                    group.create_dataset(str(i), data=np.asarray(keras.ops.convert_to_numpy(sg.state.value)))

    return atomic_write_with(path, write, suffix=".weights.h5", needed=needed)


def load_weights(model: keras.Model, path: Path) -> None:
    """Load a file written by :func:`save_weights_atomic` (or a plain ``save_weights`` file) into ``model``."""
    import h5py

    optimizer = getattr(model, "optimizer", None)
    if optimizer is not None and not optimizer.built:
        optimizer.build(model.trainable_variables)  # its variables must exist to receive the saved state
    model.load_weights(str(path))
    with h5py.File(path, "r") as f:
        if _RNG_GROUP in f:
            group = f[_RNG_GROUP]
            for i, sg in enumerate(_seed_generators(model)):
                if str(i) in group:
                    sg.state.assign(np.asarray(group[str(i)]))


def _short(exc: BaseException) -> str:
    first = str(exc).splitlines()[0] if str(exc) else ""
    return f"{type(exc).__name__}: {first[:160]}"


# ---------------------------------------------------------------------------------------------------- backups
def backup_path(run_dir: Path, epochs_done: int) -> Path:
    return Path(run_dir) / BACKUP_DIR / f"epoch-{epochs_done:04d}.weights.h5"


def list_backups(run_dir: Path) -> list[tuple[int, Path]]:
    """``(epochs done, file)`` of every backup, newest first; Keras' ``latest.weights.h5`` of older versions of
    this library counts with the epoch of its ``training_metadata.json``."""
    folder = Path(run_dir) / BACKUP_DIR
    if not folder.is_dir():
        return []
    found = []
    for p in folder.iterdir():
        m = _BACKUP_RE.match(p.name)
        if m:
            found.append((int(m.group(1)), p))
    legacy = folder / "latest.weights.h5"
    meta = read_json(folder / "training_metadata.json")
    if legacy.is_file() and isinstance(meta, dict) and isinstance(meta.get("epoch"), int):
        found.append((int(meta["epoch"]), legacy))
    return sorted(found, key=lambda item: item[0], reverse=True)


class EpochBackup(keras.callbacks.Callback):
    """Writes ``backup/epoch-NNNN.weights.h5`` (weights, optimizer and RNG state) at every epoch end.

    Put it after every other writer in the callback list: the backup of epoch N is the commit point that says
    "epoch N is complete" (checkpoints, best.json, history.csv and TensorBoard of that epoch are written before it).
    The two newest backups are kept, so a backup damaged on disk still leaves one to fall back to.
    """

    def __init__(self, run_dir: Path, keep: int = 2) -> None:
        super().__init__()
        self.run_dir, self.keep = Path(run_dir), keep

    def on_epoch_end(self, epoch: int, logs: Optional[dict] = None) -> None:
        old = list_backups(self.run_dir)
        for _, path in old[self.keep - 1:]:  # room for the new one first: peak disk use stays at `keep` files
            path.unlink(missing_ok=True)
        save_weights_atomic(self.model, backup_path(self.run_dir, epoch + 1))

    def remove(self) -> None:
        shutil.rmtree(self.run_dir / BACKUP_DIR, ignore_errors=True)


def restore_backup(model: keras.Model, run_dir: Path, progress: Progress = print) -> int:
    """Load the newest backup that loads into ``model``; return the number of epochs it completed (0: none).

    Falling back to an older backup, or to a fresh start when none loads, is said through ``progress``.
    """
    candidates = list_backups(run_dir)
    if not candidates:
        return 0
    optimizer = getattr(model, "optimizer", None)
    if optimizer is not None and not optimizer.built:
        optimizer.build(model.trainable_variables)
    variables = list(model.variables) + (list(optimizer.variables) if optimizer is not None else [])
    # A failed load may be partial. (Through a tensor: a mirrored variable does not convert to NumPy directly.)
    snapshot = [np.array(keras.ops.convert_to_numpy(keras.ops.convert_to_tensor(v))) for v in variables]
    for i, (epochs_done, path) in enumerate(candidates):
        try:
            load_weights(model, path)
        except Exception as exc:  # truncated / corrupt HDF5, a file of another model
            progress(f"note: backup '{path}' does not load ({_short(exc)}); trying an older one")
            continue
        if i:
            progress(f"note: resuming from the backup of epoch {epochs_done} ('{path.name}'), the newest that loads")
        return epochs_done
    for v, value in zip(variables, snapshot):
        v.assign(value)
    progress(f"note: no backup in '{Path(run_dir) / BACKUP_DIR}' loads; training starts again from epoch 1")
    return 0


# ----------------------------------------------------------------------------------------------- history.csv
def _row_epoch(line: str) -> Optional[int]:
    try:
        return int(next(csv.reader(io.StringIO(line)))[0])
    except (ValueError, IndexError, StopIteration):
        return None


def epoch_base(first_epoch: Optional[int]) -> int:
    """0 or 1: how ``history.csv`` numbers its first epoch (Keras' CSVLogger writes 0-based indices; a logger that
    numbers epochs as the console does writes 1). Read from the first row, which a resume always keeps."""
    return 1 if first_epoch == 1 else 0


def truncate_history(path: Path, epochs_done: int) -> None:
    """Keep the rows of ``history.csv`` of the first ``epochs_done`` epochs: a resumed run appends the epochs it
    trains, so rows of an epoch that is trained again must go first. Unparseable and unfinished rows go too."""
    path = Path(path)
    if not path.is_file():
        return
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        path.unlink(missing_ok=True)
        return
    lines = text.splitlines(keepends=True)
    if not lines:
        return
    rows = [(_row_epoch(line), line) for line in lines[1:]]
    base = epoch_base(rows[0][0] if rows else None)
    kept = [lines[0]] + [line for epoch, line in rows
                         if epoch is not None and epoch - base < epochs_done and line.endswith("\n")]
    if kept != lines:
        atomic_write_text(path, "".join(kept))


def history_rows(path: Path) -> list[dict]:
    """The rows of ``history.csv`` (empty when missing or unreadable)."""
    try:
        with open(path, newline="", encoding="utf-8") as f:
            return list(csv.DictReader(f))
    except (OSError, UnicodeDecodeError, csv.Error):
        return []


# ----------------------------------------------------------------------------------------------- trained marker
def read_trained(run_dir: Path, epochs: int) -> Optional[dict]:
    """``checkpoints/trained.json`` when it says that training finished ``epochs`` epochs; else None."""
    info = read_json(Path(run_dir) / TRAINED_MARKER)
    if isinstance(info, dict) and info.get("epochs") == epochs:
        return info
    return None


def write_trained(run_dir: Path, info: dict) -> None:
    atomic_write_json(Path(run_dir) / TRAINED_MARKER, info)


# ------------------------------------------------------------------------------------------------- a finished run
def load_run_config(run_dir: Path) -> Config:
    """The configuration a run was trained with (its ``config.yaml``)."""
    path = Path(run_dir) / "config.yaml"
    if not path.is_file():
        raise UserError(f"'{run_dir}' is not a run directory (no config.yaml); pass the folder train.py wrote")
    return load_config(path)


def load_run_model(run_dir: Path) -> keras.Model:
    """The trained two-output (or baseline) model of a finished run (its ``model.keras``)."""
    from axial_kd_tf.saving import load_model  # the zoo's modules register their classes when it is called

    path = Path(run_dir) / "model.keras"
    if not path.is_file():
        raise UserError(f"run '{run_dir}' has no model.keras (training did not finish); resume it with train.py --resume")
    return load_model(path)

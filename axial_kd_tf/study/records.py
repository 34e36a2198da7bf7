"""Study records: one JSON record per evaluated run (config overrides, per-class IoU and mIoU of student and teacher,
diagnostics), scrubbed of local paths, upserted by key so later sessions add seeds to the same file."""

from __future__ import annotations

import csv
import json
import math
import os
import re
import subprocess
import time
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence

from axial_kd_tf.errors import UserError
from axial_kd_tf.io_utils import atomic_write_json


# The paper's architecture order (= axial_kd_tf.models.ZOO, kept here so that reports need no TensorFlow import;
# tests/test_study.py checks they agree) and the names the tables show.
ARCH_ORDER = ("unet", "unetplusplus", "manet", "linknet", "fpn", "pspnet", "pan", "deeplabv3", "deeplabv3plus")
DISPLAY_NAMES = {
    "unet": "U-Net", "unetplusplus": "UNet++", "manet": "MA-Net", "linknet": "LinkNet", "fpn": "FPN",
    "pspnet": "PSPNet", "pan": "PAN", "deeplabv3": "DeepLabV3", "deeplabv3plus": "DeepLabV3+",
    "simple_unet": "simple U-Net",
}
BASELINE = "baseline"  # the variant name of the shared "without" runs
DEFAULT_DISTILL = "distill"  # the variant name of the distill runs of a grid without variants
SPLITS = ("val", "test")
# history.csv columns whose last value a record keeps (each may be absent), and the curves it keeps per epoch.
DIAGNOSTIC_COLUMNS = ("gate", "teacher_delta_l1", "val_teacher_delta_l1", "val_teacher_delta_share",
                      "val_argmax_disagreement", "distill_grad_share", "distill_grad_cosine", "distill_mask_share",
                      "distill_weight")
CURVE_COLUMNS = ("val_student_miou", "val_teacher_miou")
# Config keys that name something on this machine: left out of records (and of the runner's config digest).
LOCAL_KEYS = ("data.root", "data.cache_dir")
RECORD_KEY = ("study", "arch", "variant", "fold", "seed", "split")
COLLAPSE_STUDENT_BELOW = 0.01
COLLAPSE_BASELINE_ABOVE = 0.10


# ----------------------------------------------------------------------------------------------------- records
def git_commit(repo: Optional[Path] = None) -> dict:
    """``{"git_commit": sha or None, "git_dirty": bool or None}`` of the repository holding this package."""
    repo = repo or Path(__file__).resolve().parent.parent
    try:
        sha = subprocess.run(["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True, text=True,
                             timeout=10)
        if sha.returncode != 0:
            return {"git_commit": None, "git_dirty": None}
        status = subprocess.run(["git", "-C", str(repo), "status", "--porcelain", "--untracked-files=no"],
                                capture_output=True, text=True, timeout=10)
        dirty = bool(status.stdout.strip()) if status.returncode == 0 else None
        return {"git_commit": sha.stdout.strip() or None, "git_dirty": dirty}
    except (OSError, subprocess.SubprocessError):
        return {"git_commit": None, "git_dirty": None}


def _looks_like_local_path(text: str) -> bool:
    return os.path.isabs(text) or text.startswith("~") or bool(re.match(r"^[A-Za-z]:[\\/]", text))


def scrub(value: Any) -> Any:
    """Replace absolute paths of this machine inside ``value`` (strings, lists, mappings) by ``<local path>``."""
    if isinstance(value, str):
        return "<local path>" if _looks_like_local_path(value) else value
    if isinstance(value, list):
        return [scrub(v) for v in value]
    if isinstance(value, dict):
        return {k: scrub(v) for k, v in value.items()}
    return value


def scrub_overrides(overrides: Sequence[str]) -> list[str]:
    """``--set`` options for a record: machine-local keys (``data.root``) left out, absolute paths replaced."""
    out = []
    for item in overrides:
        key, sep, value = str(item).partition("=")
        if key.strip() in LOCAL_KEYS:
            continue
        out.append(f"{key}={scrub(value.strip())}" if sep else key)
    return out


def _number(value: Any) -> Optional[float]:
    try:
        v = float(value)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(v) or math.isinf(v) else v


def history_diagnostics(history_csv: Path) -> dict:
    """The last epoch's value of each :data:`DIAGNOSTIC_COLUMNS` column present, and the :data:`CURVE_COLUMNS` per
    epoch (rounded to 4 decimals). Epochs logged twice (a resumed run) count once, the later row winning."""
    if not history_csv.is_file():
        return {}
    try:
        with open(history_csv, newline="") as f:
            rows = list(csv.DictReader(f))
    except (OSError, csv.Error):
        return {}
    by_epoch: dict = {}
    for i, row in enumerate(rows):
        epoch = _number(row.get("epoch"))
        by_epoch[epoch if epoch is not None else i] = row
    rows = [by_epoch[k] for k in sorted(by_epoch)]
    if not rows:
        return {}
    out: dict = {}
    for col in DIAGNOSTIC_COLUMNS:
        if col in rows[-1]:
            out[col] = _number(rows[-1][col])
    for col in CURVE_COLUMNS:
        if col in rows[-1]:
            out[col] = [None if _number(r.get(col)) is None else round(_number(r.get(col)), 4) for r in rows]
    return out


def read_yaml(path: Path) -> dict:
    import yaml

    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError):
        return {}
    return raw if isinstance(raw, dict) else {}


def metrics_file(split: str) -> str:
    return f"{split}_metrics.json"


def build_record(run_dir: Path, root: Path, split: str, grid_overrides: Optional[Sequence[str]] = None) -> dict:
    """One study record from an evaluated run directory (``<split>_metrics.json``, ``metrics.json``,
    ``config.yaml``, ``history.csv``); ``root`` is the grid folder (``<out>/<name>``) ``run_dir`` is stored relative
    to. ``grid_overrides`` is used when the evaluation did not store the grid's ``--set`` options itself."""
    m = json.loads((run_dir / metrics_file(split)).read_text())
    cfg = read_yaml(run_dir / "config.yaml")
    train_cfg, model_cfg, teacher_cfg = (cfg.get(k) or {} for k in ("train", "model", "teacher"))
    variant = m.get("variant") or None
    mode = m["mode"]
    epochs = m.get("epochs", train_cfg.get("epochs"))
    spe = m.get("steps_per_epoch", train_cfg.get("steps_per_epoch"))
    overrides = m["grid_overrides"] if "grid_overrides" in m else (grid_overrides or [])
    try:
        rel = run_dir.resolve().relative_to(root.resolve()).as_posix()
    except ValueError:
        rel = run_dir.name  # not below the grid folder: keep the name only (never an absolute path)
    record = {
        "study": m.get("study") or cfg.get("name") or root.name,
        "arch": m["arch"],
        "mode": mode,
        "variant": BASELINE if mode == BASELINE else (variant["name"] if variant else DEFAULT_DISTILL),
        "overrides": scrub(variant["overrides"]) if variant and mode != BASELINE else {},
        "grid_overrides": scrub_overrides(overrides),
        "fold": m["fold"],
        "seed": m["seed"],
        "split": split,
        "iterations": epochs * spe if isinstance(epochs, int) and isinstance(spe, int) else None,
        "epochs": epochs,
        "steps_per_epoch": spe,
        "batch_size": train_cfg.get("batch_size"),
        "encoder": model_cfg.get("encoder"),
        "mixed_precision": train_cfg.get("mixed_precision"),
        "teacher_pool_size": teacher_cfg.get("pool_size"),
        "config_digest": m.get("config_digest"),
        "class_names": list(m["class_names"]),
        "num_images": m.get("num_images", m.get("num_test_images")),
        "outputs": {k: {"per_class_iou": dict(v["per_class_iou"]), "miou": v["miou"]}
                    for k, v in m["outputs"].items()},
        "best_epoch": m.get("best_epoch"),
        "val_miou": m.get("val_miou"),
        "diagnostics": history_diagnostics(run_dir / "history.csv"),
        "train_wall_time_s": m.get("train_wall_time_s"),
        "date": m.get("evaluated_at") or time.strftime(
            "%Y-%m-%dT%H:%M:%S%z", time.localtime((run_dir / metrics_file(split)).stat().st_mtime)),
        "git_commit": m.get("git_commit"),
        "git_dirty": m.get("git_dirty"),
        "run_dir": rel,
    }
    return record


def _sort_key(record: Mapping) -> tuple:
    return tuple("" if record.get(k) is None else (record[k] if isinstance(record[k], int) else str(record[k]))
                 for k in ("study", "split", "arch", "variant", "fold", "seed"))


def record_key(record: Mapping) -> tuple:
    return tuple(record.get(k) for k in RECORD_KEY)


def load_records(path: str | Path, missing_ok: bool = False) -> list[dict]:
    """The records of a JSON file (a list of objects with the key fields); one-line UserError otherwise."""
    p = Path(path)
    if not p.is_file():
        if missing_ok and not p.exists():
            return []
        raise UserError(f"records file '{path}' does not exist")
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise UserError(f"records file '{path}' is not valid JSON: {exc}") from None
    if not isinstance(data, list):
        raise UserError(f"records file '{path}' must hold a JSON list of run records")
    for i, rec in enumerate(data):
        if not isinstance(rec, dict) or any(k not in rec for k in RECORD_KEY + ("outputs",)):
            raise UserError(f"records file '{path}': entry {i} is not a run record (needs "
                            f"{', '.join(RECORD_KEY)} and outputs)")
    return data


def upsert_records(path: str | Path, new: Sequence[Mapping]) -> list[dict]:
    """Insert or replace ``new`` records (key: study, arch, variant, fold, seed, split) in the JSON list at ``path``;
    written sorted and atomically. Returns the file's records."""
    records = {record_key(r): dict(r) for r in load_records(path, missing_ok=True)}
    for r in new:
        records[record_key(r)] = dict(r)
    out = sorted(records.values(), key=_sort_key)
    atomic_write_json(path, out)
    return out

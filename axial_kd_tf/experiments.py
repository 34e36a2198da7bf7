"""The paper's protocol in one command: architectures × {without, with} × folds × seeds → IoU tables and overlays.

    python -m axial_kd_tf.experiments --config configs/paper/drosophila.yaml --archs all --folds 0-4 --seeds 1

Every run is an ordinary ``train.py`` run directory under ``<out>/<name>/runs/<arch>/<mode>/fold<f>-seed<s>/`` whose
configuration is the base config + ``--set`` overrides + ``model.arch``, ``distill.enabled`` (``baseline`` = false,
``distill`` = true), ``data.fold`` and ``train.seed``/``data.seed``. A run is trained (or resumed when it was
interrupted), then evaluated on the ``test`` split (``test_metrics.json``, ``test_predictions.npz``); a run that is
already evaluated is skipped, so rerunning the same command continues an interrupted grid. After every run the
aggregate under ``<out>/<name>/`` is rewritten (atomically): ``table.md``/``table.csv`` (the paper's layout, mean ± std
over folds × seeds), ``runs.json``, ``summary.json`` and ``overlays/<arch>_fold<f>_seed<s>.png``.

By default each run is trained in a child process (``python -m axial_kd_tf.experiments --_worker <spec>``), so its
memory is returned to the system and a crash or kill of one run does not end the grid; ``--in-process`` trains in
this process instead. See ``docs/experiments.md``.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import difflib
import gc
import hashlib
import io
import json
import math
import os
import subprocess
import sys
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Optional, Sequence

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from axial_kd_tf.cli import _Parser, _guard  # noqa: E402
from axial_kd_tf.errors import UserError  # noqa: E402
from axial_kd_tf.io_utils import atomic_write_bytes, atomic_write_json, atomic_write_text  # noqa: E402

MODES = ("baseline", "distill")
MODE_LABELS = {"baseline": "without", "distill": "with"}
FOLD_DATASETS = {"sstem": 5}  # datasets with a fold protocol -> number of folds
# Keys that define which run a directory holds: a finished run that differs here is in the wrong place.
IDENTITY_KEYS = ("model.arch", "distill.enabled", "data.dataset", "data.fold")
# Keys that vary across the grid by design (left out of a run's configuration digest).
GRID_KEYS = ("name", "model.arch", "distill.enabled", "data.fold", "train.seed", "data.seed")
DISPLAY_NAMES = {
    "unet": "U-Net", "unetplusplus": "UNet++", "manet": "MA-Net", "linknet": "LinkNet", "fpn": "FPN",
    "pspnet": "PSPNet", "pan": "PAN", "deeplabv3": "DeepLabV3", "deeplabv3plus": "DeepLabV3+",
    "simple_unet": "simple U-Net",
}
TEST_METRICS = "test_metrics.json"
TEST_PREDICTIONS = "test_predictions.npz"
Progress = Callable[[str], None]


# ------------------------------------------------------------------------------------------------------ the grid
@dataclass(frozen=True)
class RunSpec:
    arch: str
    mode: str  # "baseline" | "distill"
    fold: int
    seed: int

    @property
    def name(self) -> str:
        return f"fold{self.fold}-seed{self.seed}"

    def run_dir(self, root: Path) -> Path:
        return root / "runs" / self.arch / self.mode / self.name

    def log_path(self, root: Path) -> Path:
        return root / "logs" / f"{self.arch}_{self.mode}_{self.name}.log"

    def describe(self) -> str:
        return f"{self.arch} {self.mode} fold {self.fold} seed {self.seed}"

    def to_dict(self) -> dict:
        return {"arch": self.arch, "mode": self.mode, "fold": self.fold, "seed": self.seed}


def parse_int_list(text: str, what: str, low: int = 0, high: Optional[int] = None) -> list[int]:
    """``"0-4"`` → [0, 1, 2, 3, 4]; ``"0,2"`` → [0, 2]; ``"3"`` → [3]; ``"0-2,4"`` → [0, 1, 2, 4] (order kept, no repeats)."""
    values: list[int] = []
    bad = UserError(f"--{what} '{text}' must be a number, a range like 0-4, or a comma list like 0,2")
    for part in str(text).split(","):
        part = part.strip()
        if not part:
            raise bad
        lo_text, sep, hi_text = part.partition("-")
        try:
            lo = int(lo_text)
            hi = int(hi_text) if sep else lo
        except ValueError:
            raise bad from None
        if hi < lo:
            raise UserError(f"--{what} range '{part}' is empty (the end is below the start)")
        for v in range(lo, hi + 1):
            if v < low or (high is not None and v > high):
                limit = f"between {low} and {high}" if high is not None else f">= {low}"
                raise UserError(f"--{what} value {v} is out of range; it must be {limit}")
            if v not in values:
                values.append(v)
    return values


def _suggest(name: str, valid: Sequence[str]) -> str:
    match = difflib.get_close_matches(name, list(valid), n=1, cutoff=0.5)
    return f"; did you mean '{match[0]}'?" if match else ""


def resolve_archs(text: str, library: str = "native") -> list[str]:
    """``all`` = the paper's nine (``models.ZOO``); otherwise a comma list checked against the registry."""
    from axial_kd_tf.models import ZOO, available_architectures

    if library == "segmentation_models":
        from axial_kd_tf.models.sm_library import SM_ARCHS

        valid: Sequence[str] = SM_ARCHS
    else:
        valid = available_architectures()
    names = list(ZOO) if text.strip() == "all" else [a.strip() for a in text.split(",")]
    out: list[str] = []
    for name in names:
        if not name:
            raise UserError(f"--archs '{text}' has an empty name; pass 'all' or a comma list such as unet,fpn")
        if name not in valid:
            raise UserError(f"--archs: unknown architecture '{name}'{_suggest(name, valid)} "
                            f"(available: all, {', '.join(valid)})")
        if name not in out:
            out.append(name)
    return out


def resolve_modes(text: str) -> list[str]:
    out: list[str] = []
    for name in (m.strip() for m in text.split(",")):
        if name not in MODES:
            raise UserError(f"--modes: unknown mode '{name}'{_suggest(name, MODES)} (available: {', '.join(MODES)})")
        if name not in out:
            out.append(name)
    return out


def _get(raw: Mapping, dotted: str) -> Any:
    node: Any = raw
    for part in dotted.split("."):
        node = node.get(part) if isinstance(node, Mapping) else None
    return node


def _set(raw: dict, dotted: str, value: Any) -> None:
    parts = dotted.split(".")
    node = raw
    for part in parts[:-1]:
        node = node.setdefault(part, {})
    node[parts[-1]] = value


def run_config(base: dict, spec: RunSpec, set_fold: bool = True, set_seed: bool = True):
    """The run's :class:`Config`: base (already with ``--set`` overrides) + arch, mode, fold and seeds."""
    from axial_kd_tf.config import config_from_dict

    raw = json.loads(json.dumps(base))  # deep copy
    _set(raw, "model.arch", spec.arch)
    _set(raw, "distill.enabled", spec.mode == "distill")
    if set_fold:
        _set(raw, "data.fold", spec.fold)
    if set_seed:
        _set(raw, "train.seed", spec.seed)
        _set(raw, "data.seed", spec.seed)
    return config_from_dict(raw)


def config_digest(raw: Mapping) -> str:
    """Short hash of a run's configuration without the keys that vary across the grid by design."""
    raw = json.loads(json.dumps(raw))
    for key in GRID_KEYS:
        parts = key.split(".")
        node = raw
        for part in parts[:-1]:
            node = node.get(part, {}) if isinstance(node, dict) else {}
        if isinstance(node, dict):
            node.pop(parts[-1], None)
    return hashlib.sha1(json.dumps(raw, sort_keys=True).encode()).hexdigest()[:10]


# ------------------------------------------------------------------------------------------------ run states
def run_state(run_dir: Path) -> str:
    """``done`` (evaluated), ``evaluate`` (trained), ``resume`` (interrupted) or ``new``."""
    if (run_dir / TEST_METRICS).is_file():
        try:
            json.loads((run_dir / TEST_METRICS).read_text())
            return "done"
        except (OSError, ValueError):
            pass  # unreadable: evaluate again
    if (run_dir / "metrics.json").is_file() and (run_dir / "model.keras").is_file():
        return "evaluate"
    if not run_dir.exists() or (run_dir.is_dir() and not any(run_dir.iterdir())):
        return "new"
    if not (run_dir / "config.yaml").is_file():
        raise UserError(f"'{run_dir}' exists but is not a run directory (no config.yaml); move it away and rerun")
    if (run_dir / "metrics.json").is_file():
        raise UserError(f"run '{run_dir}' has metrics.json but no model.keras; delete the run directory to retrain it")
    return "resume"


@dataclass
class PlannedRun:
    spec: RunSpec
    config: Any  # Config
    run_dir: Path
    log: Path
    state: str
    note: str = ""


def check_existing(run_dir: Path, cfg, state: str) -> str:
    """Check an existing run directory against the configuration the grid expects.

    An interrupted run must have the identical configuration (it is resumed); a trained run must at least be the same
    architecture, mode, dataset and fold (it is only evaluated, with a note when other keys differ).
    """
    if state not in ("resume", "evaluate"):
        return ""
    from axial_kd_tf.config import first_difference, load_config

    saved = load_config(run_dir / "config.yaml").to_dict()
    expected = cfg.to_dict()
    diff = first_difference(saved, expected)
    if diff is None:
        return ""
    shown = f"'{diff}' ({_get(saved, diff)!r} in the run, {_get(expected, diff)!r} expected)"
    if state == "resume":
        raise UserError(f"cannot resume '{run_dir}': its config.yaml differs at {shown}; rerun with the same config "
                        "and --set options, or move the run directory away")
    for key in IDENTITY_KEYS:
        if _get(saved, key) != _get(expected, key):
            raise UserError(f"run '{run_dir}' holds another run: its config.yaml has {key}={_get(saved, key)!r}, "
                            f"expected {_get(expected, key)!r}; move it away")
    return f"trained with a config that differs at {shown}; evaluated as it is"


def plan_runs(base: dict, specs: Sequence[RunSpec], root: Path, set_fold: bool, set_seed: bool) -> list[PlannedRun]:
    plan = []
    for spec in specs:
        cfg = run_config(base, spec, set_fold, set_seed)
        run_dir = spec.run_dir(root)
        state = run_state(run_dir)
        note = check_existing(run_dir, cfg, state)
        plan.append(PlannedRun(spec, cfg, run_dir, spec.log_path(root), state, note))
    return plan


# --------------------------------------------------------------------------------------------- executing a run
def execute_run(spec: RunSpec, cfg, run_dir: Path, overlays: int, progress: Progress = print) -> dict:
    """Train (or resume) the run if needed, then evaluate it on the test split; returns ``test_metrics.json``."""
    state = run_state(run_dir)
    if state == "done":
        return json.loads((run_dir / TEST_METRICS).read_text())
    check_existing(run_dir, cfg, state)
    trained = False
    if state in ("new", "resume"):
        from axial_kd_tf.training import train

        if state == "resume":
            progress(f"[resume] {run_dir} was interrupted; continuing it")
        train(cfg, run_dir, resume=state == "resume", progress=progress)
        trained = True
    return evaluate_run(spec, run_dir, overlays, progress=progress, trained_now=trained)


def evaluate_run(spec: RunSpec, run_dir: Path, overlays: int, progress: Progress = print,
                 trained_now: bool = False) -> dict:
    """Evaluate a trained run on ``test`` (every output); write the overlay tiles, then ``test_metrics.json``."""
    import numpy as np

    from axial_kd_tf.data import load_data
    from axial_kd_tf.evaluation import evaluate_split, metrics_payload
    from axial_kd_tf.training import KerasPredictor, load_run_config, load_run_model
    from axial_kd_tf.visualize import to_uint8_rgb

    t0 = time.time()
    cfg = load_run_config(run_dir)
    model = load_run_model(run_dir)
    data = load_data(cfg)
    images, masks = data.split("test")
    progress(f"[test] {run_dir}: {len(images)} test images")
    n = min(max(overlays, 0), len(images))
    cms = evaluate_split(KerasPredictor(model), images, masks, data.num_classes, cfg.train.batch_size,
                         ignore_index=cfg.distill.ignore_index, keep_predictions=n)
    payload = metrics_payload(cms, data.class_names, split="test")
    if n:
        arrays = {"image": np.stack([to_uint8_rgb(images[i]) for i in range(n)]),
                  "ground_truth": np.asarray(masks[:n]).astype(np.uint8)}
        for name, pred in cms["_predictions"].items():
            arrays[name] = np.asarray(pred).astype(np.uint8)
        buf = io.BytesIO()
        np.savez_compressed(buf, **arrays)
        atomic_write_bytes(run_dir / TEST_PREDICTIONS, buf.getvalue())
    train_metrics = json.loads((run_dir / "metrics.json").read_text())
    payload.update(
        spec.to_dict(),
        run_dir=str(run_dir),
        num_test_images=int(len(images)),
        best_epoch=train_metrics.get("best_epoch"),
        epochs=train_metrics.get("epochs"),
        val_miou={k: v.get("miou") for k, v in train_metrics.get("outputs", {}).items()},
        train_wall_time_s=train_metrics.get("train_wall_time_s"),
        total_wall_time_s=train_metrics.get("total_wall_time_s"),
        eval_wall_time_s=round(time.time() - t0, 1),
        trained_by_runner=trained_now,
        config_digest=config_digest(cfg.to_dict()),
    )
    atomic_write_json(run_dir / TEST_METRICS, payload)
    return payload


def _worker(payload_json: str) -> int:
    """Child-process entry: ``--_worker <json>`` with the run spec, its resolved config and the run directory."""
    from axial_kd_tf.config import config_from_dict

    payload = json.loads(payload_json)
    spec = RunSpec(**payload["spec"])
    cfg = config_from_dict(payload["config"])
    try:
        execute_run(spec, cfg, Path(payload["run_dir"]), int(payload["overlays"]))
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
    return (f"===== {time.strftime('%Y-%m-%d %H:%M:%S')} {item.spec.describe()}: {item.state} "
            f"({item.run_dir}) =====")


def run_in_process(item: PlannedRun, overlays: int) -> tuple[bool, str]:
    tee = _Tee(item.log)
    tee.file.write(_log_header(item) + "\n")
    try:
        execute_run(item.spec, item.config, item.run_dir, overlays, progress=tee)
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


def run_in_child(item: PlannedRun, overlays: int) -> tuple[bool, str]:
    """Run one grid point in ``python -m axial_kd_tf.experiments --_worker``; its output goes to console and log."""
    payload = json.dumps({"spec": item.spec.to_dict(), "config": item.config.to_dict(), "run_dir": str(item.run_dir),
                          "overlays": overlays})
    package_parent = str(Path(__file__).resolve().parent.parent)
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    env["PYTHONPATH"] = os.pathsep.join(p for p in (package_parent, env.get("PYTHONPATH", "")) if p)
    item.log.parent.mkdir(parents=True, exist_ok=True)
    sys.stdout.flush()
    with open(item.log, "ab") as log:
        log.write((_log_header(item) + "\n").encode())
        log.flush()
        proc = subprocess.Popen([sys.executable, "-m", "axial_kd_tf.experiments", "--_worker", payload],
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env)
        try:
            assert proc.stdout is not None
            for raw in iter(proc.stdout.readline, b""):
                log.write(raw)
                log.flush()
                sys.stdout.write(raw.decode("utf-8", errors="replace"))
                sys.stdout.flush()
            rc = proc.wait()
        except BaseException:  # Ctrl-C: the child got SIGINT too; let it stop (its last words go to the log)
            try:
                rest, _ = proc.communicate(timeout=30)
                log.write(rest or b"")
                sys.stdout.write((rest or b"").decode("utf-8", errors="replace"))
            except BaseException:
                proc.kill()
                proc.wait()
            raise
    if rc == 0:
        return True, ""
    why = f"killed by signal {-rc}" if rc < 0 else f"exit code {rc}"
    return False, why


# ------------------------------------------------------------------------------------------------- aggregation
def _stats(values: Iterable[Optional[float]]) -> dict:
    """``{"mean", "std", "n"}`` over the defined values; std is the sample std (n − 1), None for n < 2."""
    vals = [float(v) for v in values if v is not None and not math.isnan(float(v))]
    n = len(vals)
    if not n:
        return {"mean": None, "std": None, "n": 0}
    mean = sum(vals) / n
    std = math.sqrt(sum((v - mean) ** 2 for v in vals) / (n - 1)) if n > 1 else None
    return {"mean": mean, "std": std, "n": n}


def row_specs(archs: Sequence[str]) -> list[dict]:
    """The paper's rows: per architecture "<Arch> without", "<Arch> with: student", "<Arch> with: teacher"."""
    rows = []
    for arch in archs:
        shown = DISPLAY_NAMES.get(arch, arch)
        rows += [
            {"label": f"{shown} without", "arch": arch, "mode": "baseline", "output": "student"},
            {"label": f"{shown} with: student", "arch": arch, "mode": "distill", "output": "student"},
            {"label": f"{shown} with: teacher", "arch": arch, "mode": "distill", "output": "teacher"},
        ]
    return rows


def aggregate_rows(runs: Sequence[Mapping], class_names: Sequence[str], archs: Sequence[str]) -> list[dict]:
    """Mean ± std over folds × seeds of every table row, from ``runs.json`` entries.

    ``delta_miou`` (rows "with: ...") is the paired difference to the "without" row of the same architecture, over the
    (fold, seed) pairs where both runs are evaluated.
    """
    rows = []
    for row in row_specs(archs):
        matching = [r for r in runs if r["arch"] == row["arch"] and r["mode"] == row["mode"]
                    and row["output"] in r.get("outputs", {})]
        outs = [r["outputs"][row["output"]] for r in matching]
        entry = dict(row)
        entry["n"] = len(matching)
        entry["per_class_iou"] = {c: _stats(o["per_class_iou"].get(c) for o in outs) for c in class_names}
        entry["miou"] = _stats(o["miou"] for o in outs)
        entry["runs"] = [f"{r['fold']}/{r['seed']}" for r in matching]
        if row["mode"] != "baseline":
            base = {(r["fold"], r["seed"]): r["outputs"]["student"]["miou"] for r in runs
                    if r["arch"] == row["arch"] and r["mode"] == "baseline" and "student" in r.get("outputs", {})}
            diffs = [r["outputs"][row["output"]]["miou"] - base[(r["fold"], r["seed"])] for r in matching
                     if base.get((r["fold"], r["seed"])) is not None and r["outputs"][row["output"]]["miou"] is not None]
            entry["delta_miou"] = _stats(diffs)
        rows.append(entry)
    return rows


def _cell(stats: Mapping) -> str:
    from axial_kd_tf.reporting import format_value

    return format_value((stats["mean"], stats["std"]) if stats["std"] is not None else stats["mean"])


def _delta_cell(stats: Optional[Mapping]) -> str:
    if not stats or stats["mean"] is None:
        return ""
    text = f"{round(100.0 * stats['mean'], 2) + 0.0:+.2f}"  # + 0.0: no "-0.00"
    return text + (f" ± {100.0 * stats['std']:.2f}" if stats["std"] is not None else "")


def table_cells(rows: Sequence[Mapping], class_names: Sequence[str]) -> tuple[list[str], list[list[str]]]:
    header = ["Model"] + [str(c) for c in class_names] + ["mIoU", "Δ mIoU", "n"]
    body = []
    for r in rows:
        body.append([r["label"]] + [_cell(r["per_class_iou"][c]) for c in class_names]
                    + [_cell(r["miou"]), _delta_cell(r.get("delta_miou")), str(r["n"])])
    return header, body


def format_markdown(rows: Sequence[Mapping], class_names: Sequence[str]) -> str:
    header, body = table_cells(rows, class_names)

    def esc(s: str) -> str:
        return s.replace("|", "\\|")

    lines = ["| " + " | ".join(esc(h) for h in header) + " |", "|" + "---|" + "---:|" * (len(header) - 1)]
    lines += ["| " + " | ".join(esc(c) for c in cells) + " |" for cells in body]
    return "\n".join(lines)


def format_text(rows: Sequence[Mapping], class_names: Sequence[str]) -> str:
    header, body = table_cells(rows, class_names)
    widths = [max(len(r[i]) for r in [header] + body) for i in range(len(header))]

    def line(cells: Sequence[str]) -> str:
        return "  ".join([cells[0].ljust(widths[0])] + [c.rjust(w) for c, w in zip(cells[1:], widths[1:])]).rstrip()

    return "\n".join([line(header), "  ".join("-" * w for w in widths)] + [line(c) for c in body])


def format_csv(rows: Sequence[Mapping], class_names: Sequence[str]) -> str:
    """One line per row; IoU columns in percent (mean, then ``<column>_std``), empty where undefined."""

    def pct(v: Optional[float]) -> str:
        return "" if v is None else f"{100.0 * v:.4f}"

    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    head = ["model", "arch", "mode", "output", "n"]
    for c in list(class_names) + ["mIoU"]:
        head += [c, f"{c}_std"]
    writer.writerow(head + ["delta_mIoU", "delta_mIoU_std", "delta_pairs"])
    for r in rows:
        line = [r["label"], r["arch"], r["mode"], r["output"], r["n"]]
        for s in [r["per_class_iou"][c] for c in class_names] + [r["miou"]]:
            line += [pct(s["mean"]), pct(s["std"])]
        d = r.get("delta_miou")
        line += [pct(d["mean"]), pct(d["std"]), d["n"]] if d else ["", "", ""]
        writer.writerow(line)
    return buf.getvalue()


def collect_runs(root: Path) -> list[dict]:
    """Every evaluated run under ``<root>/runs/<arch>/<mode>/fold<f>-seed<s>/`` as a compact ``runs.json`` entry."""
    runs = []
    for path in sorted((root / "runs").glob(f"*/*/fold*-seed*/{TEST_METRICS}")):
        try:
            m = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        runs.append({
            "arch": m["arch"], "mode": m["mode"], "fold": m["fold"], "seed": m["seed"],
            "run_dir": str(path.parent.relative_to(root)),
            "class_names": m["class_names"],
            "outputs": {k: {"per_class_iou": v["per_class_iou"], "miou": v["miou"]} for k, v in m["outputs"].items()},
            "val_miou": m.get("val_miou"), "best_epoch": m.get("best_epoch"), "epochs": m.get("epochs"),
            "train_wall_time_s": m.get("train_wall_time_s"), "total_wall_time_s": m.get("total_wall_time_s"),
            "eval_wall_time_s": m.get("eval_wall_time_s"), "config_digest": m.get("config_digest"),
        })
    return runs


def _arch_order(archs: Iterable[str]) -> list[str]:
    from axial_kd_tf.models import ZOO

    archs = list(dict.fromkeys(archs))
    return [a for a in ZOO if a in archs] + sorted(a for a in archs if a not in ZOO)


def write_overlays(root: Path, runs: Sequence[Mapping], class_names: Sequence[str]) -> list[Path]:
    """``overlays/<arch>_fold<f>_seed<s>.png``: per test tile input | GT | without | with: student | with: teacher."""
    import numpy as np

    from axial_kd_tf.visualize import overlay_panel, panel_legend, write_png

    keys = {(r["arch"], r["fold"], r["seed"]) for r in runs}
    written = []
    for arch, fold, seed in sorted(keys):
        name = f"fold{fold}-seed{seed}"
        base = root / "runs" / arch / "baseline" / name / TEST_PREDICTIONS
        dist = root / "runs" / arch / "distill" / name / TEST_PREDICTIONS
        done = [root / "runs" / arch / m / name / TEST_METRICS for m in MODES]
        if not (base.is_file() and dist.is_file() and all(p.is_file() for p in done)):
            continue
        out = root / "overlays" / f"{arch}_fold{fold}_seed{seed}.png"
        if out.is_file() and out.stat().st_mtime >= max(base.stat().st_mtime, dist.stat().st_mtime):
            continue
        with np.load(base) as b, np.load(dist) as d:
            n = min(len(b["student"]), len(d["student"]))
            panels = []
            for i in range(n):
                preds = {"without": b["student"][i], "with: student": d["student"][i]}
                if "teacher" in d.files:
                    preds["with: teacher"] = d["teacher"][i]
                panels.append(overlay_panel(b["image"][i], b["ground_truth"][i], preds, class_names))
        if not panels:
            continue
        rule = np.full((2, panels[0].shape[1], 3), 255, np.uint8)
        stacked: list = []
        for p in panels:
            stacked += [p, rule]
        stacked[-1] = panel_legend(class_names, width=panels[0].shape[1])
        write_png(out, np.concatenate(stacked, axis=0))
        written.append(out)
    return written


def write_aggregate(root: Path, archs: Sequence[str], meta: Mapping) -> dict:
    """Rewrite ``runs.json``, ``summary.json``, ``table.md``, ``table.csv`` and the overlays from the run folders."""
    runs = collect_runs(root)
    class_names = runs[0]["class_names"] if runs else []
    all_archs = _arch_order(list(archs) + [r["arch"] for r in runs])
    rows = aggregate_rows(runs, class_names, all_archs)
    digests = sorted({r["config_digest"] for r in runs if r.get("config_digest")})
    atomic_write_json(root / "runs.json", runs)
    summary = dict(meta, updated=time.strftime("%Y-%m-%d %H:%M:%S"), class_names=class_names,
                   runs_evaluated=len(runs), config_digests=digests, rows=rows)
    atomic_write_json(root / "summary.json", summary)
    notes = [
        "Cells: mean ± sample standard deviation (n − 1) over the evaluated folds × seeds, in %; one run: no ± part; "
        "— : no evaluated run (or the IoU is undefined in every run). n: runs in the row.",
        "Δ mIoU: paired difference to the row \"<Arch> without\" over the (fold, seed) pairs where both are evaluated, "
        "in percentage points (mean ± std over the pairs).",
    ]
    if len(digests) > 1:
        notes.append(f"**Warning:** the runs were trained with {len(digests)} different configurations besides arch, "
                     f"mode, fold and seed (config digests {', '.join(digests)} in runs.json).")
    grid = meta.get("grid", {})
    md = [
        f"# {meta.get('name', root.name)}: test IoU (%)",
        "",
        f"Config `{meta.get('config')}`" + (f" with {' '.join('`--set ' + s + '`' for s in meta['overrides'])}"
                                            if meta.get("overrides") else "")
        + f"; grid of the last invocation: archs {', '.join(grid.get('archs', []))}; modes "
        f"{', '.join(grid.get('modes', []))}; folds {', '.join(map(str, grid.get('folds', [])))}; seeds "
        f"{', '.join(map(str, grid.get('seeds', [])))}. {len(runs)} runs evaluated; updated {summary['updated']}.",
        "",
        format_markdown(rows, class_names),
        "",
    ] + "\n\n".join(notes).splitlines()
    atomic_write_text(root / "table.md", "\n".join(md) + "\n")
    atomic_write_text(root / "table.csv", format_csv(rows, class_names))
    if class_names:
        write_overlays(root, runs, class_names)
    return summary


# --------------------------------------------------------------------------------------------------------- CLI
def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{(seconds % 3600) // 60:02d}m"


def _miou_text(metrics: Mapping) -> str:
    parts = [f"{k} {v['miou'] * 100:.2f}" for k, v in metrics.get("outputs", {}).items() if v.get("miou") is not None]
    return ", ".join(parts) or "—"


def _work_kind(state: str) -> str:
    return "evaluate" if state == "evaluate" else "train"


def estimate_eta(kinds: Sequence[str], durations: Mapping[str, Sequence[float]]) -> Optional[float]:
    """Seconds left: each remaining run costs the mean duration of finished runs of its kind (train / evaluate).

    ``None`` when a remaining run needs training and no run has been trained in this invocation yet.
    """
    total = 0.0
    for kind in kinds:
        done = durations.get(kind) or []
        if not done:
            if kind == "train":
                return None
            continue  # evaluation-only runs take seconds; unknown ones add nothing
        total += sum(done) / len(done)
    return total


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="python -m axial_kd_tf.experiments",
                description="Train and evaluate the paper's grid: architectures × {without, with} × folds × seeds.")
    p.add_argument("--config", required=True, help="base YAML config (path or name under configs/)")
    p.add_argument("--archs", default=None,
                   help="'all' (the nine zoo architectures) or a comma list (default: the config's model.arch)")
    p.add_argument("--folds", default=None, help="e.g. 0-4, 0,2 or 3; sets data.fold (default: the config's)")
    p.add_argument("--seeds", default=None,
                   help="e.g. 1 or 1-3; sets train.seed and data.seed (default: the config's train.seed, unchanged)")
    p.add_argument("--modes", default="baseline,distill", help="baseline (without), distill (with); default both")
    p.add_argument("--out", default="results", help="results folder (default: results); runs go to <out>/<name>/")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="config override applied to every run (repeatable)")
    p.add_argument("--overlays", type=int, default=4, help="test tiles per overlay figure (default 4; 0: none)")
    p.add_argument("--dry-run", action="store_true", help="list the runs and their state, then exit")
    p.add_argument("--report-only", action="store_true",
                   help="rebuild table.md/.csv, runs.json and the overlays from the evaluated runs on disk; train nothing")
    p.add_argument("--in-process", action="store_true",
                   help="train in this process (default: one child process per run)")
    return p


def _main(argv: Optional[Sequence[str]]) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["--_worker"]:
        if len(argv) != 2:
            raise UserError("--_worker takes one JSON argument (internal use)")
        return _worker(argv[1])
    args = build_parser().parse_args(argv)
    if args.overlays < 0:
        raise UserError(f"--overlays must be >= 0, got {args.overlays}")

    from axial_kd_tf.config import load_config

    base_cfg = load_config(args.config, args.overrides)
    base = base_cfg.to_dict()
    archs = resolve_archs(args.archs if args.archs is not None else base_cfg.model.arch, base_cfg.model.library)
    modes = resolve_modes(args.modes)
    dataset = base_cfg.data.dataset
    n_folds = FOLD_DATASETS.get(dataset)
    if args.folds is None:
        folds = [base_cfg.data.fold]
    elif n_folds:
        folds = parse_int_list(args.folds, "folds", 0, n_folds - 1)
    else:
        folds = parse_int_list(args.folds, "folds", 0)
        if folds != [0]:
            raise UserError(f"--folds {args.folds}: dataset '{dataset}' has no folds (only "
                            f"{', '.join(FOLD_DATASETS)} has); pass --folds 0 or leave --folds out")
    seeds = parse_int_list(args.seeds, "seeds", 0) if args.seeds is not None else [base_cfg.train.seed]
    if dataset == "folders" and base_cfg.data.test_fraction == 0:
        raise UserError("runs are evaluated on the test split, but data.test_fraction is 0 (dataset: folders); "
                        "set e.g. --set data.test_fraction=0.2")
    specs = [RunSpec(a, m, f, s) for a in archs for f in folds for s in seeds for m in modes]
    root = Path(args.out) / base_cfg.name
    plan = plan_runs(base, specs, root, set_fold=args.folds is not None, set_seed=args.seeds is not None)
    meta = {"name": base_cfg.name, "config": str(args.config), "overrides": list(args.overrides),
            "grid": {"archs": archs, "modes": modes, "folds": folds, "seeds": seeds}}

    counts = {s: sum(p.state == s for p in plan) for s in ("new", "resume", "evaluate", "done")}
    total = len(plan)
    print(f"[grid] {total} runs (archs × modes × folds × seeds = {len(archs)} × {len(modes)} × {len(folds)} × "
          f"{len(seeds)}) "
          f"in {root}: {counts['new']} to train, {counts['resume']} to resume, {counts['evaluate']} to evaluate, "
          f"{counts['done']} already evaluated", flush=True)
    if args.dry_run:
        for i, item in enumerate(plan, 1):
            print(f"[run {i}/{total}] {item.spec.describe()}: {item.state:8s} {item.run_dir}"
                  + (f" (note: {item.note})" if item.note else ""))
        return 0

    if args.report_only:
        summary = write_aggregate(root, archs, meta)
        print(format_text(summary["rows"], summary["class_names"]))
        print(f"\n[grid] {summary['runs_evaluated']} evaluated runs on disk; tables: {root / 'table.md'}, "
              f"{root / 'table.csv'}")
        return 0

    write_aggregate(root, archs, meta)
    failures: list[str] = []
    # Durations per kind of work, so runs that are only evaluated do not shrink the ETA of runs still to train.
    durations: dict[str, list[float]] = {"train": [], "evaluate": []}
    try:
        for i, item in enumerate(plan, 1):
            print(f"[run {i}/{total}] {item.spec.describe()}", flush=True)
            if item.state == "done":
                print(f"[run {i}/{total}] skipped: already evaluated ({item.run_dir / TEST_METRICS})", flush=True)
                continue
            if item.note:
                print(f"[run {i}/{total}] note: {item.run_dir} was {item.note}", flush=True)
            t0 = time.time()
            ok, why = (run_in_process if args.in_process else run_in_child)(item, args.overlays)
            elapsed = time.time() - t0
            if ok:
                durations[_work_kind(item.state)].append(elapsed)
                metrics = json.loads((item.run_dir / TEST_METRICS).read_text())
                left = [p for p in plan[i:] if p.state != "done"]
                eta = estimate_eta([_work_kind(p.state) for p in left], durations)
                print(f"[run {i}/{total}] {item.spec.describe()} finished in {_duration(elapsed)}: test mIoU "
                      f"{_miou_text(metrics)} | {len(left)} runs left, ETA "
                      f"{'0s' if not left else _duration(eta) if eta is not None else 'unknown (no run trained yet)'}",
                      flush=True)
            else:
                failures.append(f"{item.run_dir} ({why}; log {item.log})")
                print(f"[run {i}/{total}] FAILED ({why}): run dir {item.run_dir}, log {item.log}; "
                      "going on with the next run", flush=True)
            write_aggregate(root, archs, meta)
    except KeyboardInterrupt:
        write_aggregate(root, archs, meta)
        raise

    summary = write_aggregate(root, archs, meta)
    print()
    print(format_text(summary["rows"], summary["class_names"]))
    print(f"\n[grid] {summary['runs_evaluated']} runs evaluated; tables: {root / 'table.md'}, {root / 'table.csv'}; "
          f"overlays: {root / 'overlays'}")
    if failures:
        print(f"{len(failures)} run(s) failed:", file=sys.stderr)
        for f in failures:
            print(f"  {f}", file=sys.stderr)
        return 1
    return 0


@_guard
def main(argv: Optional[Sequence[str]] = None) -> int:
    """CLI entry point (exit code 2 with one line ``error: ...`` on bad input, 1 when a run failed, 130 on Ctrl-C)."""
    try:
        return _main(argv)
    except KeyboardInterrupt:
        print("interrupted: rerun the same command to continue (evaluated runs are skipped, an interrupted run "
              "resumes from its last epoch)", file=sys.stderr)
        return 130


if __name__ == "__main__":
    with contextlib.suppress(BrokenPipeError):
        sys.exit(main())

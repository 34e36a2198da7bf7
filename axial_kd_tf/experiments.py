"""The paper's protocol in one command: architectures × {without, with} × folds × seeds → IoU tables and overlays.

    python -m axial_kd_tf.experiments --config configs/paper/drosophila.yaml --archs all --folds 0-4 --seeds 1

Every run is an ordinary ``train.py`` run directory under ``<out>/<name>/runs/<arch>/<mode>/fold<f>-seed<s>/`` whose
configuration is the base config + ``--set`` overrides + ``model.arch``, ``distill.enabled`` (``baseline`` = false,
``distill`` = true), ``data.fold`` and ``train.seed``/``data.seed``. A run is trained (or resumed when it was
interrupted), then evaluated on the ``test`` split (``test_metrics.json``, ``test_predictions.npz``); a run that is
already evaluated is skipped, so rerunning the same command continues an interrupted grid. After every run the
aggregate under ``<out>/<name>/`` is rewritten (atomically): ``table.md``/``table.csv`` (the paper's layout, mean ± std
over folds × seeds), ``runs.json``, ``summary.json`` and ``overlays/<arch>_fold<f>_seed<s>.png``.

Studies of the method's variants: ``--sweep KEY=V1,V2`` / ``--variants FILE.yaml`` give the distill runs named sets
of config overrides (``runs/<arch>/<variant>/fold<f>-seed<s>/``, one shared baseline), ``--split val`` evaluates and
tabulates the validation split instead (``val_metrics.json``, ``val_table.md``, ...), ``--record PATH`` upserts one
record per evaluated run into a JSON file for :mod:`axial_kd_tf.study`, and ``--parallel N`` runs N child processes
at once on disjoint CPU shares (:mod:`axial_kd_tf.parallel`).

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
import os
import queue
import sys
import time
import traceback
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Optional, Sequence

from axial_kd_tf import quiet  # noqa: E402  (sets TensorFlow's C++ log level before it loads)
from axial_kd_tf import study  # noqa: E402
from axial_kd_tf.cli import _Parser, _guard  # noqa: E402
from axial_kd_tf.errors import UserError  # noqa: E402
from axial_kd_tf.io_utils import atomic_write_bytes, atomic_write_json, atomic_write_text  # noqa: E402
from axial_kd_tf.parallel import StreamedProcess, child_env, console_lock, cpu_shares, pin_from_env  # noqa: E402
from axial_kd_tf.variants import GRID_KEYS, Variant, build_variants, validate_variants  # noqa: E402

MODES = ("baseline", "distill")
MODE_LABELS = {"baseline": "without", "distill": "with"}
FOLD_DATASETS = {"sstem": 5}  # datasets with a fold protocol -> number of folds
# Keys that define which run a directory holds: a finished run that differs here is in the wrong place.
IDENTITY_KEYS = ("model.arch", "distill.enabled", "data.dataset", "data.fold")
# GRID_KEYS (axial_kd_tf.variants): keys that vary across the grid by design (left out of a run's configuration
# digest, as are machine-local keys such as data.root: the digest identifies the same base config on any machine).
DIGEST_EXCLUDED = GRID_KEYS + study.LOCAL_KEYS
DISPLAY_NAMES = study.DISPLAY_NAMES
SPLITS = study.SPLITS
TEST_METRICS = "test_metrics.json"
TEST_PREDICTIONS = "test_predictions.npz"
Progress = Callable[[str], None]
ABSENT = "<absent from the base config>"  # config_digest's reset value of a key the base config lacks


def metrics_name(split: str = "test") -> str:
    """``test_metrics.json`` / ``val_metrics.json``: a run's evaluation of ``split``."""
    return study.metrics_file(split)


def predictions_name(split: str = "test") -> str:
    return f"{split}_predictions.npz"


def aggregate_prefix(split: str = "test") -> str:
    """File-name prefix of a split's aggregate files: none for test (the paper's tables), ``val_`` for val."""
    return "" if split == "test" else f"{split}_"


# ------------------------------------------------------------------------------------------------------ the grid
@dataclass(frozen=True)
class RunSpec:
    arch: str
    mode: str  # "baseline" | "distill"
    fold: int
    seed: int
    variant: Optional[Variant] = None  # distill runs of a study: the variant's overrides and folder

    @property
    def name(self) -> str:
        return f"fold{self.fold}-seed{self.seed}"

    @property
    def group(self) -> str:
        """The folder under ``runs/<arch>/``: the mode, or the variant's folder for a variant's distill run."""
        return self.variant.dirname if self.variant is not None and self.mode == "distill" else self.mode

    @property
    def variant_name(self) -> str:
        """``baseline``, ``distill`` (no variants) or the variant's name: the ``variant`` of the run's record."""
        return self.variant.name if self.variant is not None and self.mode == "distill" else self.mode

    @property
    def short(self) -> str:
        """Console prefix of the run's lines when several run at once."""
        return f"{self.arch}/{self.group}/{self.name}"

    def run_dir(self, root: Path) -> Path:
        return root / "runs" / self.arch / self.group / self.name

    def log_path(self, root: Path) -> Path:
        return root / "logs" / f"{self.arch}_{self.group}_{self.name}.log"

    def describe(self) -> str:
        shown = f" [{self.variant.name}]" if self.variant is not None and self.mode == "distill" else ""
        return f"{self.arch} {self.mode}{shown} fold {self.fold} seed {self.seed}"

    def to_dict(self) -> dict:
        out = {"arch": self.arch, "mode": self.mode, "fold": self.fold, "seed": self.seed}
        if self.variant is not None:
            out["variant"] = self.variant.to_dict()
        return out

    @classmethod
    def from_dict(cls, data: Mapping) -> "RunSpec":
        variant = data.get("variant")
        return cls(data["arch"], data["mode"], int(data["fold"]), int(data["seed"]),
                   Variant.from_dict(variant) if variant else None)


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


def _has(raw: Mapping, dotted: str) -> bool:
    node: Any = raw
    for part in dotted.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return False
        node = node[part]
    return True


def _pop(raw: dict, dotted: str) -> None:
    parts = dotted.split(".")
    node: Any = raw
    for part in parts[:-1]:
        node = node.get(part, {}) if isinstance(node, dict) else {}
    if isinstance(node, dict):
        node.pop(parts[-1], None)


def _set(raw: dict, dotted: str, value: Any) -> None:
    parts = dotted.split(".")
    node = raw
    for part in parts[:-1]:
        node = node.setdefault(part, {})
    node[parts[-1]] = value


def run_config(base: dict, spec: RunSpec, set_fold: bool = True, set_seed: bool = True):
    """The run's :class:`Config`: base (already with ``--set`` overrides) + the variant's overrides (distill runs of a
    study) + arch, mode, fold and seeds."""
    from axial_kd_tf.config import config_from_dict

    raw = json.loads(json.dumps(base))  # deep copy
    if spec.variant is not None and spec.mode == "distill":
        spec.variant.apply(raw)
    _set(raw, "model.arch", spec.arch)
    _set(raw, "distill.enabled", spec.mode == "distill")
    if set_fold:
        _set(raw, "data.fold", spec.fold)
    if set_seed:
        _set(raw, "train.seed", spec.seed)
        _set(raw, "data.seed", spec.seed)
    return config_from_dict(raw)


def config_digest(raw: Mapping, reset: Optional[Mapping[str, Any]] = None) -> str:
    """Short hash of a run's configuration without the keys that vary across the grid by design or name something on
    this machine (:data:`DIGEST_EXCLUDED`). ``reset`` maps a variant's keys to their base values first, so that every
    run of one base config has one digest whatever its variant (the variant's overrides are recorded separately)."""
    raw = json.loads(json.dumps(raw))
    for key, value in (reset or {}).items():
        if value == ABSENT:  # a key the base config does not have (e.g. inside model.options)
            _pop(raw, key)
        else:
            _set(raw, key, json.loads(json.dumps(value)))
    for key in DIGEST_EXCLUDED:
        _pop(raw, key)
    return hashlib.sha1(json.dumps(raw, sort_keys=True).encode()).hexdigest()[:10]


# ------------------------------------------------------------------------------------------------ run states
def run_state(run_dir: Path, split: str = "test") -> str:
    """``done`` (evaluated on ``split``), ``evaluate`` (trained), ``resume`` (interrupted) or ``new``."""
    done = run_dir / metrics_name(split)
    if done.is_file():
        try:
            json.loads(done.read_text())
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
    split: str = "test"
    grid_overrides: list = field(default_factory=list)  # the grid's --set options (stored with the evaluation)
    digest_reset: dict = field(default_factory=dict)  # the variant's keys -> base values (see config_digest)

    def eval_options(self) -> dict:
        """Keyword arguments of :func:`evaluate_run` beyond the spec and run directory."""
        return {"split": self.split, "grid_overrides": list(self.grid_overrides), "digest_reset": self.digest_reset}


def check_existing(run_dir: Path, cfg, state: str, identity: Sequence[str] = ()) -> str:
    """Check an existing run directory against the configuration the grid expects.

    An interrupted run must have the identical configuration (it is resumed); a trained run must at least be the same
    architecture, mode, dataset and fold — and variant overrides (``identity``) — (it is only evaluated, with a note
    when other keys differ).
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
    for key in tuple(IDENTITY_KEYS) + tuple(identity):
        if _get(saved, key) != _get(expected, key):
            raise UserError(f"run '{run_dir}' holds another run: its config.yaml has {key}={_get(saved, key)!r}, "
                            f"expected {_get(expected, key)!r}; move it away")
    return f"trained with a config that differs at {shown}; evaluated as it is"


def _variant_keys(spec: RunSpec) -> list[str]:
    """The config keys a distill run's variant sets (they identify the run like its arch and mode)."""
    return [k for k, _ in spec.variant.overrides] if spec.variant is not None and spec.mode == "distill" else []


def plan_runs(base: dict, specs: Sequence[RunSpec], root: Path, set_fold: bool, set_seed: bool,
              split: str = "test", grid_overrides: Sequence[str] = ()) -> list[PlannedRun]:
    plan = []
    for spec in specs:
        cfg = run_config(base, spec, set_fold, set_seed)
        run_dir = spec.run_dir(root)
        state = run_state(run_dir, split)
        keys = _variant_keys(spec)
        note = check_existing(run_dir, cfg, state, identity=keys)
        plan.append(PlannedRun(spec, cfg, run_dir, spec.log_path(root), state, note, split, list(grid_overrides),
                               {k: _get(base, k) if _has(base, k) else ABSENT for k in keys}))
    return plan


# --------------------------------------------------------------------------------------------- executing a run
def execute_run(spec: RunSpec, cfg, run_dir: Path, overlays: int, progress: Progress = print, split: str = "test",
                **eval_options: Any) -> dict:
    """Train (or resume) the run if needed, then evaluate it on ``split``; returns ``<split>_metrics.json``."""
    state = run_state(run_dir, split)
    if state == "done":
        return json.loads((run_dir / metrics_name(split)).read_text())
    check_existing(run_dir, cfg, state, identity=_variant_keys(spec))
    trained = False
    if state in ("new", "resume"):
        from axial_kd_tf.training import train

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
    from axial_kd_tf.evaluation import evaluate_split, metrics_payload
    from axial_kd_tf.training import KerasPredictor, load_run_config, load_run_model, steps_per_epoch
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


def _worker(payload_json: str) -> int:
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


def start_child(item: PlannedRun, overlays: int, done: "queue.Queue", key: Any,
                cpus: Optional[Sequence[int]] = None, prefix: str = "") -> StreamedProcess:
    """Start one grid point in ``python -m axial_kd_tf.experiments --_worker``; its output goes to the console
    (each line after ``prefix``) and the run's log; ``(key, return code)`` is put on ``done`` when it ends.
    ``cpus``: the child's CPU share (``--parallel``), None to leave its threads and affinity alone."""
    payload = json.dumps({"spec": item.spec.to_dict(), "config": item.config.to_dict(), "run_dir": str(item.run_dir),
                          "overlays": overlays, **item.eval_options()})
    package_parent = str(Path(__file__).resolve().parent.parent)
    env = child_env(cpus, dict(os.environ, PYTHONUNBUFFERED="1"))
    env["PYTHONPATH"] = os.pathsep.join(p for p in (package_parent, env.get("PYTHONPATH", "")) if p)
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


# ------------------------------------------------------------------------------------------------- aggregation
_stats = study.mean_std  # {"mean", "std", "n"} over the defined values; sample std (n − 1), None for n < 2


def row_specs(archs: Sequence[str], variants: Sequence[Optional[str]] = (None,)) -> list[dict]:
    """The paper's rows: per architecture "<Arch> without", "<Arch> with: student", "<Arch> with: teacher".

    ``variants``: the distill variants to show (None: the plain distill runs of a grid without variants); a named
    variant's rows read "<Arch> with [<variant>]: student" / "... teacher".
    """
    rows = []
    for arch in archs:
        shown = DISPLAY_NAMES.get(arch, arch)
        rows.append({"label": f"{shown} without", "arch": arch, "mode": "baseline", "output": "student"})
        for variant in variants:
            tag = f" [{variant}]" if variant is not None else ""
            for output in ("student", "teacher"):
                row = {"label": f"{shown} with{tag}: {output}", "arch": arch, "mode": "distill", "output": output}
                if variant is not None:
                    row["variant"] = variant
                rows.append(row)
    return rows


def aggregate_rows(runs: Sequence[Mapping], class_names: Sequence[str], archs: Sequence[str],
                   variants: Sequence[Optional[str]] = (None,)) -> list[dict]:
    """Mean ± std over folds × seeds of every table row, from ``runs.json`` entries.

    ``delta_miou`` (rows "with: ...") is the paired difference to the "without" row of the same architecture, over the
    (fold, seed) pairs where both runs are evaluated.
    """
    rows = []
    for row in row_specs(archs, variants):
        matching = [r for r in runs if r["arch"] == row["arch"] and r["mode"] == row["mode"]
                    and (row["mode"] == "baseline" or r.get("variant") == row.get("variant"))
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
    """One line per row; IoU columns in percent (mean, then ``<column>_std``), empty where undefined. A ``variant``
    column follows ``mode`` when a row belongs to a named variant."""

    def pct(v: Optional[float]) -> str:
        return "" if v is None else f"{100.0 * v:.4f}"

    with_variants = any(r.get("variant") is not None for r in rows)
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    head = ["model", "arch", "mode"] + (["variant"] if with_variants else []) + ["output", "n"]
    for c in list(class_names) + ["mIoU"]:
        head += [c, f"{c}_std"]
    writer.writerow(head + ["delta_mIoU", "delta_mIoU_std", "delta_pairs"])
    for r in rows:
        line = [r["label"], r["arch"], r["mode"]] + ([r.get("variant") or ""] if with_variants else []) \
            + [r["output"], r["n"]]
        for s in [r["per_class_iou"][c] for c in class_names] + [r["miou"]]:
            line += [pct(s["mean"]), pct(s["std"])]
        d = r.get("delta_miou")
        line += [pct(d["mean"]), pct(d["std"]), d["n"]] if d else ["", "", ""]
        writer.writerow(line)
    return buf.getvalue()


def collect_runs(root: Path, split: str = "test") -> list[dict]:
    """Every run under ``<root>/runs/<arch>/<mode or variant>/fold<f>-seed<s>/`` evaluated on ``split``, as a compact
    ``runs.json`` entry (``variant``: the variant's name, None for a plain baseline or distill run)."""
    runs = []
    for path in sorted((root / "runs").glob(f"*/*/fold*-seed*/{metrics_name(split)}")):
        try:
            m = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        variant = m.get("variant") if m.get("mode") == "distill" else None
        runs.append({
            "arch": m["arch"], "mode": m["mode"], "fold": m["fold"], "seed": m["seed"],
            **({"variant": variant["name"], "overrides": variant["overrides"]} if variant else {}),
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


def _variant_rows(variants: Sequence[Variant], runs: Sequence[Mapping]) -> list[Optional[str]]:
    """The distill variants the table shows: this invocation's (in order), then the others on disk (sorted); None (the
    plain distill runs) first when there are such runs or the grid has no variants."""
    on_disk = [r.get("variant") for r in runs if r["mode"] == "distill"]
    names: list[Optional[str]] = [None] if (not variants or None in on_disk) else []
    names += [v.name for v in variants]
    names += sorted({v for v in on_disk if v is not None and v not in names})
    return names


def write_overlays(root: Path, runs: Sequence[Mapping], class_names: Sequence[str], split: str = "test") -> list[Path]:
    """``overlays/<arch>_fold<f>_seed<s>.png`` (test; ``<split>_overlays/`` otherwise): per tile input | GT | without
    | with: student | with: teacher, once both runs are evaluated. A variant's figure is
    ``<arch>_<variant folder>_fold<f>_seed<s>.png``."""
    import numpy as np

    from axial_kd_tf.visualize import overlay_panel, panel_legend, write_png

    baselines = {(r["arch"], r["fold"], r["seed"]): r for r in runs if r["mode"] == "baseline"}
    written = []
    for r in sorted((r for r in runs if r["mode"] == "distill"), key=lambda r: (r["arch"], r["fold"], r["seed"],
                                                                                  r["run_dir"])):
        b_run = baselines.get((r["arch"], r["fold"], r["seed"]))
        if b_run is None:
            continue
        base = root / b_run["run_dir"] / predictions_name(split)
        dist = root / r["run_dir"] / predictions_name(split)
        if not (base.is_file() and dist.is_file()):
            continue
        tag = "" if r.get("variant") is None else f"_{Path(r['run_dir']).parent.name}"
        out = root / f"{aggregate_prefix(split)}overlays" / f"{r['arch']}{tag}_fold{r['fold']}_seed{r['seed']}.png"
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


def write_aggregate(root: Path, archs: Sequence[str], meta: Mapping, split: str = "test",
                    variants: Sequence[Variant] = ()) -> dict:
    """Rewrite ``runs.json``, ``summary.json``, ``table.md``, ``table.csv`` and the overlays of ``split`` from the run
    folders (``val_runs.json``, ``val_table.md``, ... and ``val_overlays/`` for the validation split)."""
    runs = collect_runs(root, split)
    class_names = runs[0]["class_names"] if runs else []
    all_archs = _arch_order(list(archs) + [r["arch"] for r in runs])
    rows = aggregate_rows(runs, class_names, all_archs, _variant_rows(variants, runs))
    digests = sorted({r["config_digest"] for r in runs if r.get("config_digest")})
    prefix = aggregate_prefix(split)
    atomic_write_json(root / f"{prefix}runs.json", runs)
    summary = dict(meta, updated=time.strftime("%Y-%m-%d %H:%M:%S"), class_names=class_names,
                   runs_evaluated=len(runs), config_digests=digests, rows=rows)
    atomic_write_json(root / f"{prefix}summary.json", summary)
    notes = [
        "Cells: mean ± sample standard deviation (n − 1) over the evaluated folds × seeds, in %; one run: no ± part; "
        "— : no evaluated run (or the IoU is undefined in every run). n: runs in the row.",
        "Δ mIoU: paired difference to the row \"<Arch> without\" over the (fold, seed) pairs where both are evaluated, "
        "in percentage points (mean ± std over the pairs).",
    ]
    shown_variants = {r["variant"]: r.get("overrides", {}) for r in runs if r.get("variant")}
    if shown_variants:
        notes.append("Variants (config overrides of their distill runs; the baseline is shared): " + "; ".join(
            f"[{name}] " + (", ".join(f"`{k}={json.dumps(v)}`" for k, v in over.items()) or "no overrides")
            for name, over in shown_variants.items()) + ".")
    if len(digests) > 1:
        notes.append(f"**Warning:** the runs were trained with {len(digests)} different configurations besides arch, "
                     f"mode, variant, fold and seed (config digests {', '.join(digests)} in {prefix}runs.json).")
    grid = meta.get("grid", {})
    md = [
        f"# {meta.get('name', root.name)}: {split} IoU (%)",
        "",
        f"Config `{meta.get('config')}`" + (f" with {' '.join('`--set ' + s + '`' for s in meta['overrides'])}"
                                            if meta.get("overrides") else "")
        + f"; grid of the last invocation: archs {', '.join(grid.get('archs', []))}; modes "
        f"{', '.join(grid.get('modes', []))}; folds {', '.join(map(str, grid.get('folds', [])))}; seeds "
        f"{', '.join(map(str, grid.get('seeds', [])))}"
        + (f"; variants {', '.join(grid['variants'])}" if grid.get("variants") else "")
        + f". {len(runs)} runs evaluated on the {split} split; updated {summary['updated']}.",
        "",
        format_markdown(rows, class_names),
        "",
    ] + "\n\n".join(notes).splitlines()
    atomic_write_text(root / f"{prefix}table.md", "\n".join(md) + "\n")
    atomic_write_text(root / f"{prefix}table.csv", format_csv(rows, class_names))
    if class_names:
        write_overlays(root, runs, class_names, split)
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


def estimate_eta(kinds: Sequence[str], durations: Mapping[str, Sequence[float]], parallel: int = 1,
                 running: Sequence[tuple[str, float]] = ()) -> Optional[float]:
    """Seconds left: each remaining run costs the mean duration of finished runs of its kind (train / evaluate).

    With ``parallel`` > 1 the remaining runs are laid out in order on that many slots, after the ``running`` ones
    (``(kind, seconds elapsed)``, each needing the rest of its kind's mean); the ETA is when the last slot is free.
    ``None`` when a remaining run needs training and no run has been trained in this invocation yet.
    """
    import heapq

    def cost(kind: str, elapsed: float = 0.0) -> Optional[float]:
        done = durations.get(kind) or []
        if not done:
            return None if kind == "train" else 0.0  # evaluation-only runs take seconds; unknown ones add nothing
        return max(sum(done) / len(done) - elapsed, 0.0)

    busy = [cost(kind, elapsed) for kind, elapsed in running]
    todo = [cost(kind) for kind in kinds]
    if any(c is None for c in busy + todo):
        return None
    slots = sorted(busy + [0.0] * max(int(parallel) - len(busy), 1 if not busy else 0))
    heapq.heapify(slots)
    for c in todo:
        heapq.heappush(slots, heapq.heappop(slots) + c)
    return max(slots) if slots else 0.0


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="python -m axial_kd_tf.experiments",
                description="Train and evaluate the paper's grid: architectures × {without, with} × folds × seeds.")
    p.add_argument("--config", required=True, help="base YAML config (path or name under configs/)")
    p.add_argument("--verbose", action="store_true", help="show TensorFlow's start-up and C++ log messages")
    p.add_argument("--archs", default=None,
                   help="'all' (the nine zoo architectures) or a comma list (default: the config's model.arch)")
    p.add_argument("--folds", default=None, help="e.g. 0-4, 0,2 or 3; sets data.fold (default: the config's)")
    p.add_argument("--seeds", default=None,
                   help="e.g. 1 or 1-3; sets train.seed and data.seed (default: the config's train.seed, unchanged)")
    p.add_argument("--modes", default="baseline,distill", help="baseline (without), distill (with); default both")
    p.add_argument("--out", default="results", help="results folder (default: results); runs go to <out>/<name>/")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="config override applied to every run (repeatable)")
    p.add_argument("--sweep", dest="sweeps", action="append", default=[], metavar="KEY=V1,V2,...",
                   help="distill variants: the cartesian product of all --sweep options (repeatable)")
    p.add_argument("--variants", default=None, metavar="FILE.yaml",
                   help="distill variants: a YAML mapping name: {dotted.key: value, ...}")
    p.add_argument("--split", default="test", choices=SPLITS,
                   help="evaluate and tabulate this split (default test; val to choose variants)")
    p.add_argument("--record", default=None, metavar="PATH.json",
                   help="upsert one study record per evaluated run into this JSON list (see axial_kd_tf.study)")
    p.add_argument("--parallel", type=int, default=1, metavar="N",
                   help="run up to N child processes at once, each on its own equal share of the CPUs (default 1)")
    p.add_argument("--overlays", type=int, default=4, help="tiles per overlay figure (default 4; 0: none)")
    p.add_argument("--dry-run", action="store_true", help="list the runs and their state, then exit")
    p.add_argument("--report-only", action="store_true",
                   help="rebuild table.md/.csv, runs.json and the overlays from the evaluated runs on disk (and, with "
                   "--record, their records); train nothing")
    p.add_argument("--in-process", action="store_true",
                   help="train in this process (default: one child process per run)")
    return p


@dataclass
class Grid:
    """A resolved invocation: where it lives, what runs, and how."""

    root: Path
    plan: list
    archs: list
    variants: list
    meta: dict
    split: str
    overrides: list


def _say(line: str = "", err: bool = False) -> None:
    """Print a console line, never in the middle of a child's line (--parallel)."""
    with console_lock:
        print(line, file=sys.stderr if err else sys.stdout, flush=True)


def resolve_grid(args: argparse.Namespace) -> Grid:
    """Check the arguments and plan every run; raises UserError before anything is trained."""
    from axial_kd_tf.config import load_config

    if args.overlays < 0:
        raise UserError(f"--overlays must be >= 0, got {args.overlays}")
    if args.parallel < 1:
        raise UserError(f"--parallel must be >= 1, got {args.parallel}")
    if args.parallel > 1 and args.in_process:
        raise UserError("--parallel runs child processes; it cannot be combined with --in-process")
    if args.parallel > 1:
        cpu_shares(args.parallel)  # enough CPUs for a share each
    if args.record is not None:
        if Path(args.record).is_dir():
            raise UserError(f"--record '{args.record}' is a directory; give a JSON file name")
        study.load_records(args.record, missing_ok=True)  # a corrupt records file fails now, not after a run

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
    if args.split == "test" and dataset == "folders" and base_cfg.data.test_fraction == 0:
        raise UserError("runs are evaluated on the test split, but data.test_fraction is 0 (dataset: folders); "
                        "set e.g. --set data.test_fraction=0.2")
    variants = build_variants(args.sweeps, args.variants)
    if variants and "distill" not in modes:
        raise UserError("--sweep/--variants give variants of the distill runs, but --modes has no distill")
    source = f"variants file '{args.variants}'" if args.variants and not args.sweeps else \
        ("--sweep" if not args.variants else f"--sweep and '{args.variants}'")
    validate_variants(base, variants, source)
    per_point = [(m, v) for m in modes for v in (variants if m == "distill" and variants else [None])]
    specs = [RunSpec(a, m, f, s, v) for a in archs for f in folds for s in seeds for m, v in per_point]
    root = Path(args.out) / base_cfg.name
    plan = plan_runs(base, specs, root, set_fold=args.folds is not None, set_seed=args.seeds is not None,
                     split=args.split, grid_overrides=args.overrides)
    meta = {"name": base_cfg.name, "config": str(args.config), "overrides": list(args.overrides),
            "split": args.split,
            "grid": {"archs": archs, "modes": modes, "folds": folds, "seeds": seeds,
                     **({"variants": [v.name for v in variants]} if variants else {})},
            **({"variants": [v.to_dict() for v in variants]} if variants else {})}
    return Grid(root, plan, archs, variants, meta, args.split, list(args.overrides))


def _aggregate(grid: Grid) -> dict:
    return write_aggregate(grid.root, grid.archs, grid.meta, grid.split, grid.variants)


def record_runs(path: str | Path, grid: Grid, run_dirs: Sequence[Path]) -> int:
    """Upsert the study records of evaluated runs (``<split>_metrics.json`` present) into ``path``."""
    recs = [study.build_record(d, grid.root, grid.split, grid.overrides) for d in run_dirs]
    if recs:
        study.upsert_records(path, recs)
    return len(recs)


def _next_event(events: "queue.Queue") -> tuple:
    while True:  # a timeout, so that Ctrl-C is seen while waiting
        try:
            return events.get(timeout=0.5)
        except queue.Empty:
            continue


def run_plan(grid: Grid, args: argparse.Namespace) -> list[str]:
    """Train and evaluate the planned runs, up to ``--parallel`` at once; returns the failures.

    After every run its record is upserted (``--record``) and the aggregate rewritten, both by this process only.
    """
    plan, total, split, parallel = grid.plan, len(grid.plan), grid.split, args.parallel
    shares: list = cpu_shares(parallel) if parallel > 1 else [None]
    free = list(range(len(shares)))
    pending = deque(enumerate(plan, 1))
    running: dict[int, tuple] = {}  # run number -> (item, start time, slot, child or None)
    events: queue.Queue = queue.Queue()
    failures: list[str] = []
    # Durations per kind of work, so runs that are only evaluated do not shrink the ETA of runs still to train.
    durations: dict[str, list[float]] = {"train": [], "evaluate": []}
    try:
        while pending or running:
            while pending and free:
                i, item = pending.popleft()
                _say(f"[run {i}/{total}] {item.spec.describe()}")
                if item.state == "done":
                    _say(f"[run {i}/{total}] skipped: already evaluated ({item.run_dir / metrics_name(split)})")
                    continue
                if item.note:
                    _say(f"[run {i}/{total}] note: {item.run_dir} was {item.note}")
                slot = free.pop(0)
                t0 = time.time()
                if args.in_process:
                    quiet.import_tensorflow()
                    running[i] = (item, t0, slot, None)
                    events.put((i, run_in_process(item, args.overlays)))
                else:
                    prefix = f"[{item.spec.short}] " if parallel > 1 else ""
                    running[i] = (item, t0, slot, start_child(item, args.overlays, events, i, shares[slot], prefix))
            if not running:
                break
            i, result = _next_event(events)
            item, t0, slot, child = running.pop(i)
            free = sorted(free + [slot])
            if child is not None:
                child.thread.join()
                result = child_outcome(result)
            ok, why = result
            elapsed = time.time() - t0
            if ok:
                durations[_work_kind(item.state)].append(elapsed)
                metrics = json.loads((item.run_dir / metrics_name(split)).read_text())
                if args.record:
                    record_runs(args.record, grid, [item.run_dir])
                left = [p for _, p in pending if p.state != "done"]
                busy = [(_work_kind(p.state), time.time() - t) for p, t, _, _ in running.values()]
                eta = estimate_eta([_work_kind(p.state) for p in left], durations, parallel, busy)
                n_left = len(left) + len(busy)
                eta_text = "0s" if not n_left else _duration(eta) if eta is not None else \
                    "unknown (no run trained yet)"
                _say(f"[run {i}/{total}] {item.spec.describe()} finished in {_duration(elapsed)}: {split} mIoU "
                     f"{_miou_text(metrics)} | {n_left} runs left"
                     + (f" ({len(busy)} running, {parallel} in parallel)" if parallel > 1 else "")
                     + f", ETA {eta_text}")
            else:
                failures.append(f"{item.run_dir} ({why}; log {item.log})")
                _say(f"[run {i}/{total}] FAILED ({why}): run dir {item.run_dir}, log {item.log}; "
                     "going on with the next run")
            _aggregate(grid)
    except BaseException:  # Ctrl-C (the children got SIGINT too) or an error: stop the children, keep the tables
        for _, _, _, child in running.values():
            if child is not None:
                child.stop()
        _aggregate(grid)
        raise
    return failures


def _main(argv: Optional[Sequence[str]]) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["--_worker"]:
        if len(argv) != 2:
            raise UserError("--_worker takes one JSON argument (internal use)")
        return _worker(argv[1])
    args = build_parser().parse_args(argv)
    # Sets the log level for this process and its workers, then imports TensorFlow quietly: resolving the
    # architectures imports the zoo, hence Keras and TensorFlow.
    quiet.import_tensorflow(args.verbose)
    grid = resolve_grid(args)
    plan, root, split = grid.plan, grid.root, grid.split
    prefix = aggregate_prefix(split)

    counts = {s: sum(p.state == s for p in plan) for s in ("new", "resume", "evaluate", "done")}
    total = len(plan)
    modes, n_var = grid.meta["grid"]["modes"], len(grid.variants)
    shape = (f"archs × modes × folds × seeds = {len(grid.archs)} × {len(modes)}" if not n_var else
             f"archs × (baseline + variants) × folds × seeds = {len(grid.archs)} × "
             f"({int('baseline' in modes)} + {n_var})")
    print(f"[grid] {total} runs ({shape} × {len(grid.meta['grid']['folds'])} × {len(grid.meta['grid']['seeds'])}) "
          f"in {root}: {counts['new']} to train, {counts['resume']} to resume, {counts['evaluate']} to evaluate, "
          f"{counts['done']} already evaluated" + (f" on the {split} split" if split != "test" else ""), flush=True)
    if args.dry_run:
        for i, item in enumerate(plan, 1):
            print(f"[run {i}/{total}] {item.spec.describe()}: {item.state:8s} {item.run_dir}"
                  + (f" (note: {item.note})" if item.note else ""))
        return 0

    if args.report_only:
        summary = _aggregate(grid)
        print(format_text(summary["rows"], summary["class_names"]))
        print(f"\n[grid] {summary['runs_evaluated']} evaluated runs on disk ({split} split); tables: "
              f"{root / (prefix + 'table.md')}, {root / (prefix + 'table.csv')}")
        if args.record:
            n = record_runs(args.record, grid, [root / r["run_dir"] for r in collect_runs(root, split)])
            print(f"[record] {n} records upserted into {args.record}")
        return 0

    _aggregate(grid)
    if args.record:  # runs evaluated earlier (e.g. before --record was used) get their records too
        record_runs(args.record, grid, [p.run_dir for p in plan if p.state == "done"])
    failures = run_plan(grid, args)
    summary = _aggregate(grid)
    print()
    print(format_text(summary["rows"], summary["class_names"]))
    print(f"\n[grid] {summary['runs_evaluated']} runs evaluated ({split} split); tables: {root / (prefix + 'table.md')}, "
          f"{root / (prefix + 'table.csv')}; overlays: {root / (prefix + 'overlays')}"
          + (f"; records: {args.record}" if args.record else ""))
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

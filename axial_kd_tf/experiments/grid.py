"""The grid of a protocol run: run specs, config overrides and digests, run states and the plan.

A run is ``<out>/<name>/runs/<arch>/<mode or variant>/fold<f>-seed<s>/``; its config is the base config + ``--set`` +
the grid keys (:class:`RunSpec`). :func:`plan_runs` decides per run: train, resume, evaluate or skip.
"""

from __future__ import annotations

import difflib
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Optional, Sequence

from axial_kd_tf import study
from axial_kd_tf.config import MOVED_KEYS, config_from_dict, first_difference, load_config
from axial_kd_tf.errors import UserError
from axial_kd_tf.typed_yaml import dotted_get as _get
from axial_kd_tf.typed_yaml import dotted_has as _has
from axial_kd_tf.typed_yaml import dotted_pop as _pop
from axial_kd_tf.typed_yaml import dotted_set as _set
from axial_kd_tf.variants import GRID_KEYS, Variant


MODES = ("baseline", "distill")
MODE_LABELS = {"baseline": "without", "distill": "with"}
FOLD_DATASETS = {"sstem": 5}  # datasets with a fold protocol -> number of folds
# Keys that define which run a directory holds: a finished run that differs here is in the wrong place.
IDENTITY_KEYS = ("model.arch", "distill.enabled", "data.dataset", "data.sstem.fold")
# GRID_KEYS (axial_kd_tf.variants): keys that vary across the grid by design (left out of a run's configuration
# digest, as are machine-local keys such as data.root: the digest identifies the same base config on any machine).
# train.distribute says how a run is executed, not what it trains (a mirrored step equals the one-device step).
DIGEST_EXCLUDED = GRID_KEYS + study.LOCAL_KEYS + ("train.distribute",)
# Keys added after records existed, left out at their default so the digests of earlier runs stay as they were.
DIGEST_OMITTED_AT_DEFAULT = {"train.sync_batchnorm": False}
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


def run_config(base: dict, spec: RunSpec, set_fold: bool = True, set_seed: bool = True):
    """The run's :class:`Config`: base (already with ``--set`` overrides) + the variant's overrides (distill runs of a
    study) + arch, mode, fold and seeds."""

    raw = json.loads(json.dumps(base))  # deep copy
    if spec.variant is not None and spec.mode == "distill":
        spec.variant.apply(raw)
    _set(raw, "model.arch", spec.arch)
    _set(raw, "distill.enabled", spec.mode == "distill")
    if set_fold:
        _set(raw, "data.sstem.fold", spec.fold)
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
    for old_name, new_name in MOVED_KEYS.items():  # hashed under the names earlier records were digested with
        if _has(raw, new_name):
            _set(raw, old_name, _pop(raw, new_name))
        section = new_name.rpartition(".")[0]
        if _get(raw, section) == {}:  # a sub-section the moves back (or the exclusions) emptied
            _pop(raw, section)
    for key, default in DIGEST_OMITTED_AT_DEFAULT.items():
        section, _, name = key.partition(".")
        if raw.get(section, {}).get(name, default) == default:
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


def variant_keys(spec: RunSpec) -> list[str]:
    """The config keys a distill run's variant sets (they identify the run like its arch and mode)."""
    return [k for k, _ in spec.variant.overrides] if spec.variant is not None and spec.mode == "distill" else []


def plan_runs(base: dict, specs: Sequence[RunSpec], root: Path, set_fold: bool, set_seed: bool,
              split: str = "test", grid_overrides: Sequence[str] = ()) -> list[PlannedRun]:
    plan = []
    for spec in specs:
        cfg = run_config(base, spec, set_fold, set_seed)
        run_dir = spec.run_dir(root)
        state = run_state(run_dir, split)
        keys = variant_keys(spec)
        note = check_existing(run_dir, cfg, state, identity=keys)
        plan.append(PlannedRun(spec, cfg, run_dir, spec.log_path(root), state, note, split, list(grid_overrides),
                               {k: _get(base, k) if _has(base, k) else ABSENT for k in keys}))
    return plan



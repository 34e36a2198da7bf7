"""Study records, paired statistics and reports for variants of the method.

A *study* is a grid of the protocol runner (``python -m axial_kd_tf.experiments``) with a shared baseline ("without",
``distill.enabled: false``) and one or more distillation *variants*. With ``--record PATH`` the runner upserts one
JSON record per evaluated run into PATH; records carry everything needed to compare variants, so a later session on
another machine can add seeds to the same file. From a records file this module computes

* per (arch, variant, output): n, mean ± sample std of mIoU and per-class IoU;
* the paired Δ mIoU against the baseline student of the same (arch, fold, seed), with a 95 % confidence interval
  from Student's t (n − 1 degrees of freedom), per architecture and pooled over architectures;
* a collapse check (a class whose student IoU is below 1 % while the paired baseline has more than 10 %);
* teacher vs student: mean |mIoU_teacher − mIoU_student| and the final validation argmax disagreement;

and writes them as Markdown tables, a PNG plot and a JSON summary; it also regenerates marked blocks
(``<!-- BEGIN generated:NAME -->`` … ``<!-- END generated:NAME -->``) in Markdown documents::

    python -m axial_kd_tf.study report --results docs/results/teacher_study.json --split val --md study.md --plot d.png
    python -m axial_kd_tf.study docs --results docs/results/teacher_study.json --split val --file docs/results.md

Nothing here imports TensorFlow or the runner's CLI (the runner imports this module).
"""

from __future__ import annotations

import contextlib
import csv
import json
import math
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Optional, Sequence

from axial_kd_tf.cli import _Parser, _guard
from axial_kd_tf.errors import UserError
from axial_kd_tf.io_utils import atomic_write_json, atomic_write_text, read_user_text

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
CONFIDENCE = 0.95


# ------------------------------------------------------------------------------------------- Student's t quantile
def _betacf(a: float, b: float, x: float) -> float:
    """Continued fraction of the incomplete beta function (modified Lentz; Numerical Recipes ``betacf``)."""
    tiny, eps = 1e-300, 1e-15
    qab, qap, qam = a + b, a + 1.0, a - 1.0
    c, d = 1.0, 1.0 - qab * x / qap
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 10000):
        m2 = 2 * m
        for aa in (m * (b - m) * x / ((qam + m2) * (a + m2)), -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))):
            d = 1.0 + aa * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + aa / c
            c = c if abs(c) > tiny else tiny
            h *= d * c
        if abs(d * c - 1.0) < eps:
            break
    return h


def betainc(a: float, b: float, x: float) -> float:
    """The regularised incomplete beta function I_x(a, b)."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    front = math.exp(math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x))
    if x < (a + 1.0) / (a + b + 2.0):  # the continued fraction converges fast here; use the symmetry otherwise
        return front * _betacf(a, b, x) / a
    return 1.0 - front * _betacf(b, a, 1.0 - x) / b


def t_cdf(t: float, df: float) -> float:
    """P(T ≤ t) for Student's t with ``df`` degrees of freedom (the normal distribution for df = inf)."""
    if math.isinf(df):
        return 0.5 * math.erfc(-t / math.sqrt(2.0))
    tail = 0.5 * betainc(df / 2.0, 0.5, df / (df + t * t))
    return 1.0 - tail if t > 0 else tail


def t_quantile(p: float, df: float) -> float:
    """The ``p`` quantile of Student's t with ``df`` > 0 degrees of freedom (bisection on :func:`t_cdf`).

    ``t_quantile(0.975, 1)`` = 12.706, ``(0.975, 10)`` = 2.228, ``(0.975, inf)`` = 1.960.
    """
    if not 0.0 < p < 1.0:
        raise ValueError(f"p must be in (0, 1), got {p}")
    if not df > 0:
        raise ValueError(f"df must be > 0, got {df}")
    if p == 0.5:
        return 0.0
    if p < 0.5:
        return -t_quantile(1.0 - p, df)
    lo, hi = 0.0, 1.0
    while t_cdf(hi, df) < p:
        lo, hi = hi, hi * 2.0
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        if t_cdf(mid, df) < p:
            lo = mid
        else:
            hi = mid
        if hi - lo <= 1e-13 * hi:
            break
    return 0.5 * (lo + hi)


def mean_std(values: Iterable[Optional[float]]) -> dict:
    """``{"mean", "std", "n"}`` of the defined values; std is the sample std (n − 1), None for n < 2."""
    vals = [float(v) for v in values if v is not None and not math.isnan(float(v))]
    n = len(vals)
    if not n:
        return {"mean": None, "std": None, "n": 0}
    mean = sum(vals) / n
    std = math.sqrt(sum((v - mean) ** 2 for v in vals) / (n - 1)) if n > 1 else None
    return {"mean": mean, "std": std, "n": n}


def mean_ci(values: Iterable[Optional[float]], level: float = CONFIDENCE) -> dict:
    """:func:`mean_std` plus the two-sided ``level`` confidence interval of the mean from Student's t (n − 1 dof):
    ``mean ± t_{(1+level)/2, n−1} · std / √n`` (``ci`` None for n < 2)."""
    out = mean_std(values)
    out["ci"] = None
    if out["n"] >= 2:
        half = t_quantile(0.5 + level / 2.0, out["n"] - 1) * out["std"] / math.sqrt(out["n"])
        out["ci"] = [out["mean"] - half, out["mean"] + half]
    return out


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


def _read_yaml(path: Path) -> dict:
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
    cfg = _read_yaml(run_dir / "config.yaml")
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


# --------------------------------------------------------------------------------------------------- statistics
def _arch_order(archs: Iterable[str]) -> list[str]:
    archs = set(archs)
    return [a for a in ARCH_ORDER if a in archs] + sorted(a for a in archs if a not in ARCH_ORDER)


def _variant_order(variants: Iterable[str]) -> list[str]:
    variants = set(variants)
    head = [v for v in (BASELINE, DEFAULT_DISTILL) if v in variants]
    return head + sorted(v for v in variants if v not in head)


def select_records(records: Sequence[Mapping], split: str, study: Optional[str] = None,
                   where: str = "the records") -> tuple[str, list[Mapping]]:
    """The records of one study and split; the study may be left out when the file holds only one."""
    studies = sorted({r["study"] for r in records})
    if study is None:
        if len(studies) > 1:
            raise UserError(f"{where} hold several studies ({', '.join(studies)}); pick one with --study")
        study = studies[0] if studies else ""
    elif study not in studies:
        raise UserError(f"{where} have no study '{study}' (studies: {', '.join(studies) or 'none'})")
    return study, [r for r in records if r["study"] == study and r["split"] == split]


def summarize(records: Sequence[Mapping], split: str, study: str = "") -> dict:
    """The statistics of one study's records of one split (see the module docstring); JSON-serialisable."""
    recs = [r for r in records if r["split"] == split and (not study or r["study"] == study)]
    class_names: list[str] = []
    for r in recs:
        class_names += [c for c in r.get("class_names", []) if c not in class_names]
    archs = _arch_order(r["arch"] for r in recs)
    variants = _variant_order(r["variant"] for r in recs)
    base = {(r["arch"], r["fold"], r["seed"]): r["outputs"]["student"] for r in recs
            if r["variant"] == BASELINE and "student" in r["outputs"]}

    groups = []
    for arch in archs:
        for variant in variants:
            runs = [r for r in recs if r["arch"] == arch and r["variant"] == variant]
            for output in ("student", "teacher"):
                outs = [r["outputs"][output] for r in runs if output in r["outputs"]]
                if not outs:
                    continue
                groups.append({
                    "arch": arch, "variant": variant, "output": output, "n": len(outs),
                    "miou": mean_std(o["miou"] for o in outs),
                    "per_class_iou": {c: mean_std(o["per_class_iou"].get(c) for o in outs) for c in class_names},
                })

    def paired(runs: Sequence[Mapping], output: str) -> list[dict]:
        pairs = []
        for r in runs:
            b = base.get((r["arch"], r["fold"], r["seed"]))
            out = r["outputs"].get(output)
            if b is None or out is None or b.get("miou") is None or out.get("miou") is None:
                continue
            pairs.append({"arch": r["arch"], "fold": r["fold"], "seed": r["seed"],
                          "delta": out["miou"] - b["miou"]})
        return pairs

    deltas, pooled = [], []
    for variant in variants:
        if variant == BASELINE:
            continue
        vruns = [r for r in recs if r["variant"] == variant]
        for output in ("student", "teacher"):
            all_pairs = paired(vruns, output)
            for arch in archs:
                pairs = [p for p in all_pairs if p["arch"] == arch]
                if pairs:
                    deltas.append(dict({"arch": arch, "variant": variant, "output": output},
                                       **mean_ci(p["delta"] for p in pairs), pairs=pairs))
            if all_pairs:
                pooled.append(dict({"variant": variant, "output": output},
                                   **mean_ci(p["delta"] for p in all_pairs),
                                   archs=_arch_order(p["arch"] for p in all_pairs)))

    cases = []
    for r in recs:
        if r["variant"] == BASELINE or "student" not in r["outputs"]:
            continue
        b = base.get((r["arch"], r["fold"], r["seed"]))
        if b is None:
            continue
        for c in class_names:
            s_iou, b_iou = r["outputs"]["student"]["per_class_iou"].get(c), b["per_class_iou"].get(c)
            if s_iou is not None and b_iou is not None and s_iou < COLLAPSE_STUDENT_BELOW and \
                    b_iou > COLLAPSE_BASELINE_ABOVE:
                cases.append({"arch": r["arch"], "variant": r["variant"], "fold": r["fold"], "seed": r["seed"],
                              "class": c, "student_iou": s_iou, "baseline_iou": b_iou})
    cases.sort(key=lambda c: (variants.index(c["variant"]), archs.index(c["arch"]), c["fold"], c["seed"],
                              class_names.index(c["class"])))
    collapse = {
        "student_below": COLLAPSE_STUDENT_BELOW, "baseline_above": COLLAPSE_BASELINE_ABOVE, "cases": cases,
        "per_variant": {v: {"cases": sum(c["variant"] == v for c in cases),
                            "runs": len({(c["arch"], c["fold"], c["seed"]) for c in cases if c["variant"] == v}),
                            "runs_checked": sum(1 for r in recs if r["variant"] == v
                                                and (r["arch"], r["fold"], r["seed"]) in base)}
                        for v in variants if v != BASELINE},
    }

    teacher = []
    for variant in variants:
        if variant == BASELINE:
            continue
        for arch in archs + [None]:
            runs = [r for r in recs if r["variant"] == variant and (arch is None or r["arch"] == arch)]
            gaps = [abs(r["outputs"]["teacher"]["miou"] - r["outputs"]["student"]["miou"]) for r in runs
                    if "teacher" in r["outputs"] and "student" in r["outputs"]
                    and r["outputs"]["teacher"].get("miou") is not None
                    and r["outputs"]["student"].get("miou") is not None]
            dis = [(r.get("diagnostics") or {}).get("val_argmax_disagreement") for r in runs]
            if not gaps and not any(d is not None for d in dis):
                continue
            teacher.append({"arch": arch or "all", "variant": variant, "n": len(gaps),
                            "abs_miou_gap": mean_std(gaps), "val_argmax_disagreement": mean_std(dis)})

    return {
        "study": study or (recs[0]["study"] if recs else ""), "split": split, "records": len(recs),
        "class_names": class_names, "archs": archs, "variants": variants,
        "config_digests": sorted({r["config_digest"] for r in recs if r.get("config_digest")}),
        "variant_overrides": {v: next((r.get("overrides", {}) for r in recs if r["variant"] == v), {})
                              for v in variants},
        "groups": groups, "deltas": deltas, "pooled": pooled, "collapse": collapse, "teacher_vs_student": teacher,
    }


# ----------------------------------------------------------------------------------------------------- Markdown
def _pct(v: Optional[float], signed: bool = False) -> str:
    if v is None:
        return "—"
    v = round(100.0 * v, 2) + 0.0  # + 0.0: no "-0.00"
    return f"{v:+.2f}" if signed else f"{v:.2f}"


def _mean_std_cell(s: Mapping) -> str:
    if s["mean"] is None:
        return "—"
    return _pct(s["mean"]) + (f" ± {_pct(s['std'])}" if s.get("std") is not None else "")


def delta_cell(s: Optional[Mapping]) -> str:
    """``+1.23 [-0.40, +2.86]`` (percentage points); no interval for one pair; empty without pairs."""
    if not s or s.get("mean") is None:
        return ""
    ci = s.get("ci")
    return _pct(s["mean"], True) + (f" [{_pct(ci[0], True)}, {_pct(ci[1], True)}]" if ci else "")


def _table(header: Sequence[str], rows: Sequence[Sequence[str]], left: int = 1, text_last: bool = False) -> str:
    """A Markdown table: the first ``left`` columns (and the last with ``text_last``) left-aligned, numbers right."""
    esc = lambda s: str(s).replace("|", "\\|")  # noqa: E731
    align = ["---" if i < left or (text_last and i == len(header) - 1) else "---:" for i in range(len(header))]
    lines = ["| " + " | ".join(esc(h) for h in header) + " |", "|" + "|".join(align) + "|"]
    lines += ["| " + " | ".join(esc(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def _arch_name(arch: str) -> str:
    return DISPLAY_NAMES.get(arch, arch)


def md_iou(summary: Mapping) -> str:
    """Per (arch, variant, output): mean ± std IoU per class and mIoU (%), n runs."""
    classes = summary["class_names"]
    rows = [[_arch_name(g["arch"]), g["variant"], g["output"], str(g["n"])]
            + [_mean_std_cell(g["per_class_iou"][c]) for c in classes] + [_mean_std_cell(g["miou"])]
            for g in summary["groups"]]
    return _table(["Model", "variant", "output", "n"] + list(classes) + ["mIoU"], rows, left=3)


def md_delta(summary: Mapping) -> str:
    """Paired Δ mIoU (pp) against the baseline student per (arch, variant): student and teacher, with 95 % CIs."""
    by = {(d["arch"], d["variant"], d["output"]): d for d in summary["deltas"]}
    rows = []
    for arch in summary["archs"]:
        for variant in summary["variants"]:
            s, t = by.get((arch, variant, "student")), by.get((arch, variant, "teacher"))
            if s or t:
                rows.append([_arch_name(arch), variant, str((s or t)["n"]),
                             delta_cell(s), _pct(s["std"]) if s and s["std"] is not None else "",
                             delta_cell(t)])
    return _table(["Model", "variant", "pairs", "Δ mIoU student [95 % CI]", "std", "Δ mIoU teacher [95 % CI]"],
                  rows, left=2)


def md_pooled(summary: Mapping) -> str:
    """Δ mIoU pooled over architectures (pairs over arch × fold × seed), per variant."""
    by = {(d["variant"], d["output"]): d for d in summary["pooled"]}
    rows = []
    for variant in summary["variants"]:
        s, t = by.get((variant, "student")), by.get((variant, "teacher"))
        if s or t:
            rows.append([variant, ", ".join(_arch_name(a) for a in (s or t)["archs"]), str((s or t)["n"]),
                         delta_cell(s), _pct(s["std"]) if s and s["std"] is not None else "", delta_cell(t)])
    return _table(["variant", "architectures", "pairs", "Δ mIoU student [95 % CI]", "std",
                   "Δ mIoU teacher [95 % CI]"], rows, left=2)


def md_collapse(summary: Mapping) -> str:
    """Per variant: the (run, class) pairs whose student IoU < 1 % while the paired baseline's is > 10 %."""
    col = summary["collapse"]
    rows = []
    for variant, counts in col["per_variant"].items():
        listed = [c for c in col["cases"] if c["variant"] == variant]
        rows.append([variant, str(counts["runs_checked"]), str(counts["runs"]), str(counts["cases"]),
                     "; ".join(f"{_arch_name(c['arch'])} f{c['fold']} s{c['seed']} {c['class']} "
                               f"{_pct(c['student_iou'])} (baseline {_pct(c['baseline_iou'])})" for c in listed)
                     or "—"])
    return _table(["variant", "runs checked", "runs with a collapse", "collapsed classes",
                   f"cases: student IoU < {100 * col['student_below']:g} %, baseline > "
                   f"{100 * col['baseline_above']:g} %"], rows, left=1, text_last=True)


def md_teacher(summary: Mapping) -> str:
    """Per (arch, variant) and over all architectures: mean |mIoU teacher − student| and final val disagreement."""
    rows = []
    for t in summary["teacher_vs_student"]:
        gap, dis = t["abs_miou_gap"], t["val_argmax_disagreement"]
        rows.append(["all" if t["arch"] == "all" else _arch_name(t["arch"]), t["variant"], str(t["n"]),
                     _mean_std_cell(gap), _mean_std_cell(dis) if dis["n"] else "—"])
    return _table(["Model", "variant", "runs", "|mIoU teacher − student| (pp)", "val argmax disagreement (%)"],
                  rows, left=2)


def md_overrides(summary: Mapping) -> str:
    """The variants and their config overrides."""
    rows = [[v, ", ".join(f"`{k}: {json.dumps(val)}`" for k, val in summary["variant_overrides"].get(v, {}).items())
             or ("`distill.enabled: false`" if v == BASELINE else "—")] for v in summary["variants"]]
    return _table(["variant", "overrides"], rows, left=2)


BLOCKS: dict[str, Callable[[Mapping], str]] = {
    "variants": md_overrides, "iou": md_iou, "delta": md_delta, "pooled": md_pooled, "collapse": md_collapse,
    "teacher": md_teacher,
}


# ------------------------------------------------------------------------------------ next to the paper's tables
PAPER_OUTPUTS = (("without", BASELINE, "student"), ("student", None, "student"), ("teacher", None, "teacher"))


def load_paper(path: str | Path, dataset: str) -> list[dict]:
    """The rows of one of the paper's tables (``docs/results/paper.json``: ``tables.<dataset>``)."""
    where = f"paper results file '{path}'"
    try:
        rows = json.loads(read_user_text(path, where))["tables"][dataset]
    except (ValueError, KeyError, TypeError):
        raise UserError(f"{where} has no table '{dataset}' (expected {{\"tables\": {{\"{dataset}\": [...]}}}})") \
            from None
    return rows


def _paper_lookup(paper: Sequence[Mapping]) -> dict:
    return {(r["arch"], r["output"]): r for r in paper}


def _ours(summary: Mapping, arch: str, variant: str, output: str) -> Optional[Mapping]:
    return next((g for g in summary["groups"] if (g["arch"], g["variant"], g["output"]) == (arch, variant, output)),
                None)


def md_paper(summary: Mapping, paper: Sequence[Mapping], method: str) -> str:
    """mIoU (%) per architecture, the paper's single runs next to ours (mean ± std over n runs), with each side's Δ
    against its own "without" (ours: paired, with the 95 % CI)."""
    pl = _paper_lookup(paper)
    deltas = {(d["arch"], d["output"]): d for d in summary["deltas"] if d["variant"] == method}
    archs = _arch_order(list(summary["archs"]) + [r["arch"] for r in paper])
    rows = []
    for arch in archs:
        pw = pl.get((arch, "without"))
        cells = [_arch_name(arch)]
        for label, _, _ in PAPER_OUTPUTS:
            pr = pl.get((arch, label))
            text = _pct(pr["miou"]) if pr else "—"
            if pr and pw and label != "without":
                text += f" ({_pct(pr['miou'] - pw['miou'], True)})"
            cells.append(text)
        ns = []
        for label, variant, output in PAPER_OUTPUTS:
            g = _ours(summary, arch, variant or method, output)
            ns.append(g["n"] if g else 0)
            text = _mean_std_cell(g["miou"]) if g else "—"
            d = deltas.get((arch, output)) if label != "without" else None
            cells.append(text + (f" ({delta_cell(d)})" if d else ""))
        cells.append("/".join(str(n) for n in ns))
        rows.append(cells)
    return _table(["Model", "paper: without", "paper: student (Δ)", "paper: teacher (Δ)", "ours: without",
                   f"ours [{method}]: student (Δ [95 % CI])", f"ours [{method}]: teacher (Δ [95 % CI])",
                   "n (ours)"], rows, left=1)


def md_paper_classes(summary: Mapping, paper: Sequence[Mapping], method: str) -> str:
    """Per-class IoU (%): for each architecture the paper's rows and ours (mean ± std), without / student / teacher."""
    pl = _paper_lookup(paper)
    classes = list(summary["class_names"]) or list(next(iter(paper), {}).get("per_class_iou", {}))
    archs = _arch_order(list(summary["archs"]) + [r["arch"] for r in paper])
    rows = []
    for arch in archs:
        for label, variant, output in PAPER_OUTPUTS:
            pr = pl.get((arch, label))
            if pr:
                rows.append([_arch_name(arch), f"paper: {label}", "1"]
                            + [_pct(pr["per_class_iou"].get(c)) for c in classes] + [_pct(pr["miou"])])
            g = _ours(summary, arch, variant or method, output)
            if g:
                rows.append([_arch_name(arch), f"ours: {label}", str(g["n"])]
                            + [_mean_std_cell(g["per_class_iou"].get(c, {"mean": None})) for c in classes]
                            + [_mean_std_cell(g["miou"])])
    return _table(["Model", "output", "n"] + classes + ["mIoU"], rows, left=2)


PAPER_BLOCKS: dict[str, Callable[[Mapping, Sequence[Mapping], str], str]] = {
    "paper": md_paper, "paper-classes": md_paper_classes,
}


def md_report(summary: Mapping) -> str:
    """All tables with headings and notes: the ``--md`` report."""
    s = summary
    digests = s["config_digests"]
    parts = [
        f"# Study {s['study']}: {s['split']} split",
        "",
        f"{s['records']} run records; architectures {', '.join(_arch_name(a) for a in s['archs'])}; variants "
        f"{', '.join(s['variants'])}. IoU in %, mean ± sample std (n − 1); Δ in percentage points against the "
        "baseline (\"without\") student of the same architecture, fold and seed, with the 95 % confidence interval "
        "of the mean from Student's t (n − 1 degrees of freedom; none for a single pair).",
    ]
    if len(digests) > 1:
        parts += ["", f"**Warning:** the records come from {len(digests)} base configurations (config digests "
                      f"{', '.join(digests)}); their runs differ in more than arch, variant, fold and seed."]
    for title, name in (("Variants", "variants"), ("IoU per output", "iou"), ("Δ mIoU per architecture", "delta"),
                        ("Δ mIoU pooled over architectures", "pooled"), ("Collapse check", "collapse"),
                        ("Teacher vs student", "teacher")):
        parts += ["", f"## {title}", "", BLOCKS[name](s)]
    return "\n".join(parts) + "\n"


# -------------------------------------------------------------------------------------------------------- plot
def plot_deltas(summary: Mapping, out: str | Path, output: str = "student") -> Path:
    """PNG: Δ mIoU (pp) with 95 % CI error bars per variant, one marker per architecture and the pooled one."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    variants = [v for v in summary["variants"] if v != BASELINE]
    archs = summary["archs"]
    series = [(_arch_name(a), {d["variant"]: d for d in summary["deltas"] if d["arch"] == a and d["output"] == output})
              for a in archs]
    series.append(("pooled", {d["variant"]: d for d in summary["pooled"] if d["output"] == output}))
    width = 0.8 / max(len(series), 1)
    fig, ax = plt.subplots(figsize=(max(4.0, 1.4 * len(variants) + 2.5), 4.0))
    markers = "osv^D<>ph*"
    for i, (label, by_variant) in enumerate(series):
        xs, ys, lo, hi = [], [], [], []
        for j, v in enumerate(variants):
            d = by_variant.get(v)
            if not d or d["mean"] is None:
                continue
            xs.append(j + (i - (len(series) - 1) / 2) * width)
            ys.append(100 * d["mean"])
            ci = d.get("ci")
            lo.append(100 * (d["mean"] - ci[0]) if ci else 0.0)
            hi.append(100 * (ci[1] - d["mean"]) if ci else 0.0)
        if not xs:
            continue
        pooled = label == "pooled"
        ax.errorbar(xs, ys, yerr=[lo, hi], fmt="D" if pooled else markers[i % len(markers)], capsize=3,
                    color="black" if pooled else None, ms=7 if pooled else 5, label=label)
    ax.axhline(0.0, color="grey", lw=0.8)
    ax.set_xticks(range(len(variants)))
    ax.set_xticklabels(variants, rotation=20, ha="right")
    ax.set_ylabel(f"Δ mIoU {output} vs baseline (pp)")
    ax.set_title(f"{summary['study']}: {summary['split']} split, 95 % CI (Student's t)")
    if variants:
        ax.legend(fontsize=8)
    from axial_kd_tf.plots import save_png

    return save_png(fig, out, dpi=120)


# --------------------------------------------------------------------------------------- learning curves
def run_curve(label: str, run_dir: str | Path) -> dict:
    """One run's validation mIoU per epoch (from ``history.csv``) with its schedule, for :func:`plot_curves`."""
    run_dir = Path(run_dir)
    cfg = _read_yaml(run_dir / "config.yaml") if (run_dir / "config.yaml").is_file() else {}
    if not cfg:
        raise UserError(f"'{run_dir}' is not a run directory (no readable config.yaml)")
    hist = history_diagnostics(run_dir / "history.csv")
    if not hist.get("val_student_miou"):
        raise UserError(f"run '{run_dir}' has no validation mIoU in history.csv; train it first")
    train, model = cfg.get("train", {}), cfg.get("model", {})
    steps = train.get("steps_per_epoch")
    metrics = json.loads((run_dir / "metrics.json").read_text()) if (run_dir / "metrics.json").is_file() else {}
    curve = hist["val_student_miou"]
    return {"label": label, "arch": model.get("arch"), "encoder": model.get("encoder"),
            "distill": bool(cfg.get("distill", {}).get("enabled")), "seed": train.get("seed"),
            "epochs": train.get("epochs"), "steps_per_epoch": steps,
            "iterations": (train.get("epochs") or 0) * (steps or 0) or None, "lr_schedule": train.get("lr_schedule"),
            "val_student_miou": curve, "best": max(v for v in curve if v is not None), "final": curve[-1],
            "train_wall_time_s": metrics.get("train_wall_time_s")}


def plot_curves(curves: Sequence[Mapping], out: str | Path, title: str = "") -> Path:
    """Validation mIoU against training iterations, one line per run (:func:`run_curve`)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from axial_kd_tf.plots import save_png

    fig, ax = plt.subplots(figsize=(7, 4))
    for c in curves:
        steps = c.get("steps_per_epoch") or 1
        xs = [(i + 1) * steps for i in range(len(c["val_student_miou"]))]
        ys = [None if v is None else 100 * v for v in c["val_student_miou"]]
        ax.plot(xs, ys, marker="o", ms=3, label=f"{c['label']}: final {100 * c['final']:.1f}, best "
                                                 f"{100 * c['best']:.1f}")
    ax.set_xlabel("training iterations")
    ax.set_ylabel("validation mIoU (%)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return save_png(fig, out, dpi=110)


# ------------------------------------------------------------------------------------------ generated doc blocks
_BLOCK_RE = re.compile(r"<!-- (BEGIN|END) generated:([^\s>]*) -->")
_BLOCK_NAME_RE = re.compile(r"[A-Za-z0-9_-]+(@[A-Za-z]+)?\Z")


def regenerate_blocks(text: str, render: Callable[[str], str], where: str = "the document") -> str:
    """Replace the text between ``<!-- BEGIN generated:NAME -->`` and ``<!-- END generated:NAME -->`` by
    ``render(NAME)``. Markers must pair up (no nesting); ``render`` raises KeyError for an unknown name."""
    out, pos, open_name = [], 0, None
    for m in _BLOCK_RE.finditer(text):
        kind, name = m.group(1), m.group(2)
        line = text.count("\n", 0, m.start()) + 1
        if kind == "BEGIN":
            if open_name is not None:
                raise UserError(f"{where} line {line}: block '{name}' starts inside block '{open_name}'; close it "
                                f"first with <!-- END generated:{open_name} -->")
            if not _BLOCK_NAME_RE.match(name):
                raise UserError(f"{where} line {line}: bad block name '{name}'; use NAME or NAME@SPLIT")
            try:
                content = render(name)
            except KeyError:
                raise UserError(f"{where} line {line}: unknown generated block '{name}' (known: "
                                f"{', '.join(list(BLOCKS) + list(PAPER_BLOCKS))}; optionally NAME@val or "
                                "NAME@test)") from None
            out.append(text[pos:m.end()])
            out.append("\n" + content.strip("\n") + "\n")
            open_name, pos = name, None
        else:
            if open_name != name:
                raise UserError(f"{where} line {line}: <!-- END generated:{name} --> without its BEGIN"
                                + (f" (block '{open_name}' is open)" if open_name else ""))
            pos, open_name = m.start(), None
    if open_name is not None:
        raise UserError(f"{where}: block '{open_name}' has no <!-- END generated:{open_name} -->")
    out.append(text[pos:])
    return "".join(out)


def update_docs(files: Sequence[str | Path], records: Sequence[Mapping], split: str, study: Optional[str],
                where: str = "the records", paper: Optional[Sequence[Mapping]] = None,
                method: Optional[str] = None) -> list[Path]:
    """Regenerate the marked blocks of each Markdown file from the records; files change only when their text does.

    The ``paper`` and ``paper-classes`` blocks put the paper's rows (``paper``, from :func:`load_paper`) next to ours,
    with the variant ``method`` as "with". Every file is rendered before any is written, so one bad block leaves
    every file as it was.
    """
    cache: dict[str, Mapping] = {}

    def summary_for(sp: str) -> Mapping:
        if sp not in cache:
            name, recs = select_records(records, sp, study, where)
            cache[sp] = summarize(recs, sp, name)
        return cache[sp]

    def render(block: str) -> str:
        name, _, sp = block.partition("@")
        sp = sp or split
        if (name not in BLOCKS and name not in PAPER_BLOCKS) or sp not in SPLITS:
            raise KeyError(block)
        if name in PAPER_BLOCKS and (paper is None or method is None):
            raise UserError(f"generated block '{block}' needs the paper's table and the method's variant: pass "
                            "--paper docs/results/paper.json and --method VARIANT")
        s = summary_for(sp)
        if not s["records"]:
            return f"_No {sp} records of study {s['study'] or study or '?'} yet._"
        return PAPER_BLOCKS[name](s, paper, method) if name in PAPER_BLOCKS else BLOCKS[name](s)

    new_texts = []
    for f in files:
        p = Path(f)
        text = read_user_text(p, f"document '{f}'")
        if not _BLOCK_RE.search(text):
            raise UserError(f"document '{f}' has no <!-- BEGIN generated:NAME --> block")
        new_texts.append((p, text, regenerate_blocks(text, render, where=f"document '{f}'")))
    changed = []
    for p, old, new in new_texts:
        if new != old:
            atomic_write_text(p, new)
            changed.append(p)
    return changed


# --------------------------------------------------------------------------------------------------------- CLI
def build_parser() -> _Parser:
    p = _Parser(prog="python -m axial_kd_tf.study",
                description="Statistics and reports of a study's run records (written by the runner's --record).")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)
    rep = sub.add_parser("report", help="tables, plot and JSON summary of one split")
    doc = sub.add_parser("docs", help="regenerate <!-- BEGIN generated:NAME --> blocks in Markdown files")
    for q in (rep, doc):
        q.add_argument("--results", required=True, help="records file (JSON list) written by --record")
        q.add_argument("--split", default="val", choices=SPLITS, help="which split's records (default: val)")
        q.add_argument("--study", default=None, help="study name (needed when the file holds several)")
    cur = sub.add_parser("curves", help="validation curves of runs of different schedules: JSON and PNG")
    cur.add_argument("--run", action="append", default=[], metavar="LABEL=RUN_DIR",
                     help="a run directory and its label (repeatable); without --run, --json is read and re-plotted")
    cur.add_argument("--json", required=True, help="the curves as JSON (written with --run, read without)")
    cur.add_argument("--plot", help="write the plot (PNG) here")
    cur.add_argument("--title", default="", help="plot title")
    rep.add_argument("--md", help="write the Markdown report here")
    rep.add_argument("--plot", help="write the Δ mIoU plot (PNG) here")
    rep.add_argument("--json", help="write the JSON summary here")
    doc.add_argument("--file", dest="files", action="append", required=True,
                     help="Markdown file with generated blocks (repeatable); blocks: "
                     + ", ".join(list(BLOCKS) + list(PAPER_BLOCKS)) + " (NAME@SPLIT picks a split)")
    doc.add_argument("--paper", help="the paper's tables (docs/results/paper.json), for the paper blocks")
    doc.add_argument("--dataset", default="sstem", help="which of the paper's tables (default: sstem)")
    doc.add_argument("--method", help="the variant shown as the method ('with') in the paper blocks")
    return p


def _main(argv: Optional[Sequence[str]]) -> int:
    args = build_parser().parse_args(list(sys.argv[1:] if argv is None else argv))
    if args.command == "curves":
        return _curves(args)
    records = load_records(args.results)
    where = f"records file '{args.results}'"
    if args.command == "docs":
        paper = load_paper(args.paper, args.dataset) if args.paper else None
        changed = update_docs(args.files, records, args.split, args.study, where, paper=paper, method=args.method)
        for f in args.files:
            print(f"[docs] {f}: {'updated' if Path(f) in changed else 'unchanged'}")
        return 0
    for flag in ("md", "plot", "json"):
        target = getattr(args, flag)
        if target is not None and Path(target).is_dir():
            raise UserError(f"--{flag} '{target}' is a directory; give a file name")
    study, recs = select_records(records, args.split, args.study, where)
    if not recs:
        raise UserError(f"{where} has no {args.split} records of study '{study}'")
    summary = summarize(recs, args.split, study)
    text = md_report(summary)
    print(text, end="")
    if args.md:
        atomic_write_text(args.md, text)
    if args.plot:
        plot_deltas(summary, args.plot)
    if args.json:
        atomic_write_json(args.json, dict(summary, generated=time.strftime("%Y-%m-%d %H:%M:%S")))
    return 0


def _curves(args: Any) -> int:
    if args.run:
        curves = []
        for item in args.run:
            label, sep, run_dir = item.partition("=")
            if not sep or not label or not run_dir:
                raise UserError(f"--run '{item}' must look like LABEL=RUN_DIR")
            curves.append(run_curve(label, run_dir))
        atomic_write_json(args.json, {"curves": curves})
    else:
        try:
            curves = json.loads(read_user_text(args.json, f"curves file '{args.json}'"))["curves"]
        except (ValueError, KeyError, TypeError):
            raise UserError(f"curves file '{args.json}' is not a curves file (a JSON object with 'curves')") from None
    for c in curves:
        print(f"{c['label']}: {c.get('iterations')} iterations, val mIoU final {100 * c['final']:.2f}, best "
              f"{100 * c['best']:.2f}")
    if args.plot:
        plot_curves(curves, args.plot, args.title)
    return 0


@_guard
def main(argv: Optional[Sequence[str]] = None) -> int:
    """CLI entry point: exit code 2 with one line ``error: ...`` on bad input."""
    return _main(argv)


if __name__ == "__main__":
    with contextlib.suppress(BrokenPipeError):
        sys.exit(main())

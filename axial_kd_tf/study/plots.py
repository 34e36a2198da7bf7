"""PNG figures of a study: paired Δ with confidence intervals, and validation learning curves."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Mapping, Sequence

from axial_kd_tf.errors import UserError
from axial_kd_tf.study.markdown import arch_name
from axial_kd_tf.study.records import BASELINE, read_yaml, history_diagnostics

# -------------------------------------------------------------------------------------------------------- plot
def plot_deltas(summary: Mapping, out: str | Path, output: str = "student") -> Path:
    """PNG: Δ mIoU (pp) with 95 % CI error bars per variant, one marker per architecture and the pooled one."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    variants = [v for v in summary["variants"] if v != BASELINE]
    archs = summary["archs"]
    series = [(arch_name(a), {d["variant"]: d for d in summary["deltas"] if d["arch"] == a and d["output"] == output})
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
    cfg = read_yaml(run_dir / "config.yaml") if (run_dir / "config.yaml").is_file() else {}
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

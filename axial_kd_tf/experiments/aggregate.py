"""Aggregating a grid's evaluated runs: mean ± std tables (Markdown, text, CSV), ``runs.json`` and overlays.
"""

from __future__ import annotations

import csv
import io
import json
import time
from pathlib import Path
from typing import Iterable, Mapping, Optional, Sequence

from axial_kd_tf import study
from axial_kd_tf.io_utils import atomic_write_json, atomic_write_text
from axial_kd_tf.variants import Variant
from axial_kd_tf.experiments.grid import DISPLAY_NAMES, aggregate_prefix, metrics_name, predictions_name


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



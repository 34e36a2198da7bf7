"""Markdown tables of a study summary, and ours next to the paper's Tables 1 and 2."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable, Mapping, Optional, Sequence

from axial_kd_tf.errors import UserError
from axial_kd_tf.io_utils import read_user_text
from axial_kd_tf.study.records import BASELINE, DISPLAY_NAMES
from axial_kd_tf.study.summary import arch_order

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


def arch_name(arch: str) -> str:
    return DISPLAY_NAMES.get(arch, arch)


def md_iou(summary: Mapping) -> str:
    """Per (arch, variant, output): mean ± std IoU per class and mIoU (%), n runs."""
    classes = summary["class_names"]
    rows = [[arch_name(g["arch"]), g["variant"], g["output"], str(g["n"])]
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
                rows.append([arch_name(arch), variant, str((s or t)["n"]),
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
            rows.append([variant, ", ".join(arch_name(a) for a in (s or t)["archs"]), str((s or t)["n"]),
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
                     "; ".join(f"{arch_name(c['arch'])} f{c['fold']} s{c['seed']} {c['class']} "
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
        rows.append(["all" if t["arch"] == "all" else arch_name(t["arch"]), t["variant"], str(t["n"]),
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
    archs = arch_order(list(summary["archs"]) + [r["arch"] for r in paper])
    rows = []
    for arch in archs:
        pw = pl.get((arch, "without"))
        cells = [arch_name(arch)]
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
    archs = arch_order(list(summary["archs"]) + [r["arch"] for r in paper])
    rows = []
    for arch in archs:
        for label, variant, output in PAPER_OUTPUTS:
            pr = pl.get((arch, label))
            if pr:
                rows.append([arch_name(arch), f"paper: {label}", "1"]
                            + [_pct(pr["per_class_iou"].get(c)) for c in classes] + [_pct(pr["miou"])])
            g = _ours(summary, arch, variant or method, output)
            if g:
                rows.append([arch_name(arch), f"ours: {label}", str(g["n"])]
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
        f"{s['records']} run records; architectures {', '.join(arch_name(a) for a in s['archs'])}; variants "
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

"""Summaries of a records file: per (arch, variant, output) mean ± std, paired Δ against the baseline with a
confidence interval, pooled Δ, collapse check and teacher-vs-student gaps."""

from __future__ import annotations

from typing import Iterable, Mapping, Optional, Sequence

from axial_kd_tf.errors import UserError
from axial_kd_tf.study.records import (
    ARCH_ORDER,
    BASELINE,
    COLLAPSE_BASELINE_ABOVE,
    COLLAPSE_STUDENT_BELOW,
    DEFAULT_DISTILL,
)
from axial_kd_tf.study.stats import mean_ci, mean_std

# --------------------------------------------------------------------------------------------------- statistics
def arch_order(archs: Iterable[str]) -> list[str]:
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
    archs = arch_order(r["arch"] for r in recs)
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
                                   archs=arch_order(p["arch"] for p in all_pairs)))

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

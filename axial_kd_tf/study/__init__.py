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

Nothing here imports TensorFlow or the runner (the runner imports this package). It reads one way:
:mod:`~axial_kd_tf.study.stats` and :mod:`~axial_kd_tf.study.records` → :mod:`~axial_kd_tf.study.summary` →
:mod:`~axial_kd_tf.study.markdown`, :mod:`~axial_kd_tf.study.plots` → :mod:`~axial_kd_tf.study.docs` →
:mod:`~axial_kd_tf.study.cli`.
"""

from axial_kd_tf.study.cli import main
from axial_kd_tf.study.docs import regenerate_blocks, update_docs
from axial_kd_tf.study.markdown import (
    delta_cell,
    load_paper,
    md_collapse,
    md_delta,
    md_iou,
    md_paper,
    md_paper_classes,
    md_pooled,
    md_report,
    md_teacher,
)
from axial_kd_tf.study.plots import plot_curves, plot_deltas, run_curve
from axial_kd_tf.study.records import (
    ARCH_ORDER,
    BASELINE,
    DISPLAY_NAMES,
    LOCAL_KEYS,
    RECORD_KEY,
    SPLITS,
    build_record,
    git_commit,
    load_records,
    metrics_file,
    record_key,
    scrub,
    scrub_overrides,
    upsert_records,
)
from axial_kd_tf.study.stats import betainc, mean_ci, mean_std, t_cdf, t_quantile
from axial_kd_tf.study.summary import select_records, summarize

__all__ = [
    "ARCH_ORDER", "BASELINE", "DISPLAY_NAMES", "LOCAL_KEYS", "RECORD_KEY", "SPLITS", "betainc", "build_record",
    "delta_cell", "git_commit", "load_paper", "load_records", "main", "md_collapse", "md_delta", "md_iou", "md_paper",
    "md_paper_classes", "md_pooled", "md_report", "md_teacher", "mean_ci", "mean_std", "metrics_file", "plot_curves",
    "plot_deltas", "record_key", "regenerate_blocks", "run_curve", "scrub", "scrub_overrides", "select_records",
    "summarize", "t_cdf", "t_quantile", "update_docs", "upsert_records",
]

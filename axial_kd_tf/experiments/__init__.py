"""The paper's protocol in one command: architectures × {without, with} × folds × seeds → IoU tables and overlays.

    python -m axial_kd_tf.experiments --config configs/paper/drosophila.yaml --archs all --folds 0-4 --seeds 1

Every run is an ordinary ``train.py`` run directory under ``<out>/<name>/runs/<arch>/<mode>/fold<f>-seed<s>/`` whose
configuration is the base config + ``--set`` overrides + ``model.arch``, ``distill.enabled`` (``baseline`` = false,
``distill`` = true), ``data.sstem.fold`` and ``train.seed``/``data.seed``. A run is trained (or resumed when it was
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

The package reads one way: :mod:`~axial_kd_tf.experiments.grid` (specs, configs, run states, the plan) →
:mod:`~axial_kd_tf.experiments.runner` (train and evaluate a run, here or in a child) and
:mod:`~axial_kd_tf.experiments.aggregate` (tables, overlays) → :mod:`~axial_kd_tf.experiments.cli` (the command).
"""

from axial_kd_tf.experiments.aggregate import aggregate_rows, collect_runs, format_csv, format_markdown, format_text
from axial_kd_tf.experiments.cli import build_parser, estimate_eta, main
from axial_kd_tf.experiments.grid import RunSpec, config_digest, parse_int_list, plan_runs, resolve_archs, resolve_modes

__all__ = [
    "RunSpec", "aggregate_rows", "build_parser", "collect_runs", "config_digest", "estimate_eta", "format_csv",
    "format_markdown", "format_text", "main", "parse_int_list", "plan_runs", "resolve_archs", "resolve_modes",
]


"""``python -m axial_kd_tf.experiments``: parse the grid, plan it, run it (in parallel), aggregate and record.
"""

from __future__ import annotations

import argparse
import json
import os
import queue
import sys
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Optional, Sequence

from axial_kd_tf import quiet  # sets TensorFlow's C++ log level before it loads
from axial_kd_tf import study
from axial_kd_tf.commands import Parser, guard
from axial_kd_tf.errors import UserError
from axial_kd_tf.parallel import console_lock, cpu_shares, gpu_slots
from axial_kd_tf.variants import build_variants, validate_variants
from axial_kd_tf.experiments.aggregate import collect_runs, format_text, write_aggregate
from axial_kd_tf.experiments.grid import (
    FOLD_DATASETS,
    RunSpec,
    SPLITS,
    aggregate_prefix,
    metrics_name,
    parse_int_list,
    plan_runs,
    resolve_archs,
    resolve_modes,
)
from axial_kd_tf.experiments.runner import worker_main, child_outcome, run_in_process, start_child


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
    p = Parser(prog="python -m axial_kd_tf.experiments",
                description="Train and evaluate the paper's grid: architectures × {without, with} × folds × seeds.")
    p.add_argument("--config", required=True, help="base YAML config (path or name under configs/)")
    p.add_argument("--verbose", action="store_true", help="show TensorFlow's start-up and C++ log messages")
    p.add_argument("--archs", default=None,
                   help="'all' (the nine zoo architectures) or a comma list (default: the config's model.arch)")
    p.add_argument("--folds", default=None, help="e.g. 0-4, 0,2 or 3; sets data.sstem.fold (default: the config's)")
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
    p.add_argument("--devices", default=None, metavar="0,1,2,3",
                   help="run one child per listed GPU at once, each seeing only its GPU (not with --parallel)")
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
    if args.devices is not None:
        if args.parallel > 1 or args.in_process:
            raise UserError("--devices runs one child process per GPU; it cannot be combined with --parallel or "
                            "--in-process")
        import tensorflow as tf

        args.gpus = gpu_slots(args.devices, len(tf.config.list_physical_devices("GPU")),
                              os.environ.get("CUDA_VISIBLE_DEVICES"))
        args.parallel = len(args.gpus)
    elif args.parallel > 1:
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
        folds = [base_cfg.data.sstem.fold]
    elif n_folds:
        folds = parse_int_list(args.folds, "folds", 0, n_folds - 1)
    else:
        folds = parse_int_list(args.folds, "folds", 0)
        if folds != [0]:
            raise UserError(f"--folds {args.folds}: dataset '{dataset}' has no folds (only "
                            f"{', '.join(FOLD_DATASETS)} has); pass --folds 0 or leave --folds out")
    seeds = parse_int_list(args.seeds, "seeds", 0) if args.seeds is not None else [base_cfg.train.seed]
    if args.split == "test" and dataset == "folders" and base_cfg.data.folders.test_fraction == 0:
        raise UserError("runs are evaluated on the test split, but data.folders.test_fraction is 0 (dataset: "
                        "folders); set e.g. --set data.folders.test_fraction=0.2")
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
    gpus = getattr(args, "gpus", None)  # --devices: one GPU per slot, CPUs left alone
    shares: list = [None] * len(gpus) if gpus else cpu_shares(parallel) if parallel > 1 else [None]
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
                    running[i] = (item, t0, slot, start_child(item, args.overlays, events, i, shares[slot], prefix,
                                                              device=gpus[slot] if gpus else None))
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
        return worker_main(argv[1])
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


@guard
def main(argv: Optional[Sequence[str]] = None) -> int:
    """CLI entry point (exit code 2 with one line ``error: ...`` on bad input, 1 when a run failed, 130 on Ctrl-C)."""
    try:
        return _main(argv)
    except KeyboardInterrupt:
        print("interrupted: rerun the same command to continue (evaluated runs are skipped, an interrupted run "
              "resumes from its last epoch)", file=sys.stderr)
        return 130

#!/usr/bin/env python
"""Cost of the Axial-Attention teacher: distillation mode vs the CE-only baseline, same student network.

    python benchmarks/teacher_overhead.py                       # config default teacher, 256², batch 8
    python benchmarks/teacher_overhead.py --sweep               # pool_size × positional encoding grid, + jit on/off
    python benchmarks/teacher_overhead.py --set teacher.pool_size=1 --no-jit --steps 5

For each mode (baseline = ``distill.enabled: false``, distillation = the config's teacher) it builds the model with
:func:`axial_kd_tf.training.build_model_from_config`, the trainer and optimizer exactly as ``train.py`` does, and runs
``trainer.fit`` on a fixed random batch (a repeated ``tf.data`` element, ``verbose=0``) for ``--warmup`` + ``--steps``
steps. A callback times every step (``on_train_batch_begin`` → ``on_train_batch_end``, the same compiled
``train_function`` call that ``fit`` makes in training); the first ``--warmup`` steps (tracing, XLA compilation,
optimizer-slot creation) are reported separately and excluded from the median / IQR.

Those sequential medians are minutes apart, so background load on a shared CPU can skew their ratio. A *paired*
phase follows the distillation mode (``--paired-steps``): a baseline trainer is built next to the distillation one
**in the same process** and the two alternate single steps through their compiled ``train_function`` in ABBA
order; the median of the per-pair ratios is the load-robust time ratio that decides the 1.25× target when it was
measured. Per-step process CPU time is recorded too (a second, time-slicing-insensitive view of the same ratio).

Memory: a background thread samples ``/proc/self/statm`` every ~5 ms, and the kernel's exact high-water mark
(``VmHWM``, reset through ``/proc/self/clear_refs``) is read too; the peak is the larger of the two. The reported
ΔRSS is that peak minus the RSS just before the mode's first step (after the model was built and compiled), so
the model weights are in the starting RSS and the delta is what training adds: optimizer slots, activations and
gradients, compilation. Modes run baseline first; before each, ``gc.collect()``, ``keras.backend.clear_session()``
and ``malloc_trim(0)``. That is not enough on its own: TensorFlow's oneDNN kernels and XLA keep large buffers *alive*
after their model is gone (~1–2 GB at 256², 6+ GB after a pool-1 teacher), and a later mode reuses them without
its RSS growing. So by default (``--isolation process``) each mode runs in a fresh worker process (this script with
``--worker``), and its ΔRSS cannot be masked by an earlier mode; ``--isolation none`` runs everything in this process
and flags modes that started above the first mode's RSS.

Writes ``--out`` (JSON, atomically) and the same table as Markdown next to it (``.md``).
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

_ROOT = Path(__file__).resolve().parent.parent
if str(_ROOT) not in sys.path:  # `python benchmarks/teacher_overhead.py` puts benchmarks/ on the path, not the root
    sys.path.insert(0, str(_ROOT))

import numpy as np  # noqa: E402

from axial_kd_tf.config import Config, load_config  # noqa: E402
from axial_kd_tf.errors import UserError  # noqa: E402
from axial_kd_tf.io_utils import atomic_write_json  # noqa: E402
from benchmarks._measure import (  # noqa: E402
    Built,
    MB,
    RssSampler,
    StepTimer,
    fmt,
    fmt_load,
    estimate_teacher_bytes,
    hwm_bytes,
    machine_info,
    malloc_trim,
    mem_available_bytes,
    random_batch,
    release_memory,
    reset_hwm,
    rss_bytes,
    summarize_times,
)
from benchmarks._common import (  # noqa: E402
    WorkerFailed,
    add_out_arg,
    add_set_arg,
    add_worker_args,
    run_main,
    run_script_worker,
    write_report,
)

TARGET_TIME_RATIO = 1.25
DEFAULT_OUT = Path("benchmarks/results/teacher_overhead.json")
DEFAULT_OPTIONS = '{"base_filters": 32, "depth": 4}'
DEFAULT_STEPS, DEFAULT_WARMUP = 10, 3
# --sweep without explicit --steps/--warmup: sized so that the 7-row grid at 256²/batch 8 finishes in < 15 min on
# a 2-core CPU (measured; see benchmarks/README.md).
SWEEP_STEPS, SWEEP_WARMUP, SWEEP_PAIRED = 2, 1, 4
SWEEP_POOL_SIZES = (1, 2, 4)
SWEEP_POSITIONAL = (True, False)

Log = Callable[[str], None]


# ------------------------------------------------------------------------------------------------------- memory


# -------------------------------------------------------------------------------------------------------- timing


# ---------------------------------------------------------------------------------------------------------- modes


def measure_mode(cfg: Config, label: str, images: np.ndarray, labels: np.ndarray, num_classes: int, warmup: int,
                 steps: int, log: Log = print, keep: bool = False) -> tuple[dict, Optional[Built]]:
    """Build model/trainer/optimizer like ``train.py`` and time ``warmup + steps`` fit steps on one batch.

    Returns the result and, with ``keep``, the built trainer (for the paired timing phase).
    """
    release_memory()
    rss_before_build = rss_bytes()
    built = Built(cfg, images, labels, num_classes, warmup + steps)
    n_student, n_total = built.student_params, built.total_params
    log(f"  [{label}] built in {built.build_s:.1f} s: {n_student:,} student + {n_total - n_student:,} teacher params, "
        f"jit_compile={cfg.train.jit_compile}, {cfg.train.mixed_precision}")
    gc.collect()
    malloc_trim()
    rss_start = rss_bytes()
    hwm_ok = reset_hwm()
    with RssSampler() as sampler:
        timer = StepTimer(warmup, steps, sampler, label, log)
        t_fit = time.perf_counter()
        built.trainer.fit(built.dataset, epochs=1, steps_per_epoch=warmup + steps, callbacks=[timer], verbose=0,
                          shuffle=False)
        fit_s = time.perf_counter() - t_fit
        timed_peak = max(sampler.take_peak(), (hwm_bytes() or 0) if (timer.hwm_ok or not warmup) else 0)
        samples = sampler.samples
    rss_end = rss_bytes()
    if warmup == 0:
        timer.warmup_peak, timer.rss_timed_start = timed_peak, rss_start
    peak = max(timer.warmup_peak, timed_peak)
    step_times = timer.times[warmup:]
    result = {
        "label": label,
        "distill_enabled": cfg.distill.enabled,
        "config": cfg.to_dict(),
        "student_params": n_student,
        "teacher_params": n_total - n_student,
        "total_params": n_total,
        "build_s": built.build_s,
        "fit_wall_s": fit_s,
        "warmup_times_s": timer.times[:warmup],
        "step_times_s": step_times,
        "time": summarize_times(step_times),
        "memory": {
            "rss_before_build_mb": rss_before_build / MB,
            "rss_start_mb": rss_start / MB,
            "rss_end_mb": rss_end / MB,
            "peak_rss_mb": peak / MB,
            "peak_delta_rss_mb": (peak - rss_start) / MB,
            "warmup_peak_delta_rss_mb": (timer.warmup_peak - rss_start) / MB,
            "timed_peak_delta_rss_mb": (timed_peak - rss_start) / MB,
            "rss_timed_start_mb": timer.rss_timed_start / MB,
            "timed_growth_mb": (timed_peak - timer.rss_timed_start) / MB,
            "rss_samples": samples,
            "vmhwm_used": bool(hwm_ok and timer.hwm_ok),
        },
    }
    m = result["memory"]
    log(f"  [{label}] median step {result['time']['median_s']:.3f} s (IQR {result['time']['iqr_s']:.3f}); "
        f"peak ΔRSS {m['peak_delta_rss_mb']:,.0f} MB over {m['rss_start_mb']:,.0f} MB "
        f"(of which during timed steps: {m['timed_growth_mb']:,.0f} MB), peak RSS {m['peak_rss_mb']:,.0f} MB")
    return result, (built if keep else None)


def paired_timing(baseline: Built, distill: Built, pairs: int, label: str, log: Log = print) -> dict:
    """Alternate single baseline and distillation steps in ABBA order (b d, d b, b d, ...), both trainers alive.

    Each pair's two steps are seconds apart, so background load mostly hits both alike; the median of the per-pair
    ratios distill / baseline is the load-robust time ratio. Process CPU time per step (all threads) is recorded too:
    its ratio is less sensitive to time-slicing by other processes (but counts spin-waiting of the thread pools).
    """
    wb, _ = baseline.step()
    wd, _ = distill.step()
    log(f"  [paired {label}] warm-up: baseline {wb:.3f} s, distill {wd:.3f} s")
    wall: dict[str, list[float]] = {"baseline": [], "distill": []}
    cpu: dict[str, list[float]] = {"baseline": [], "distill": []}
    ratios = []
    for i in range(pairs):
        order = (("baseline", baseline), ("distill", distill))
        if i % 2:
            order = order[::-1]
        for name, built in order:
            w, c = built.step()
            wall[name].append(w)
            cpu[name].append(c)
        ratios.append(wall["distill"][-1] / wall["baseline"][-1])
        log(f"  [paired {label}] pair {i + 1}/{pairs} ({'b d' if i % 2 == 0 else 'd b'}): baseline "
            f"{wall['baseline'][-1]:.3f} s, distill {wall['distill'][-1]:.3f} s, ratio {ratios[-1]:.3f} "
            f"(CPU {cpu['baseline'][-1]:.2f} / {cpu['distill'][-1]:.2f} s)")
    r = summarize_times(ratios)
    cpu_ratio = float(np.median(cpu["distill"]) / np.median(cpu["baseline"]))
    result = {
        "pairs": pairs,
        "order": "ABBA single steps",
        "baseline_step_times_s": wall["baseline"],
        "distill_step_times_s": wall["distill"],
        "baseline_cpu_times_s": cpu["baseline"],
        "distill_cpu_times_s": cpu["distill"],
        "pair_ratios": ratios,
        "baseline_time": summarize_times(wall["baseline"]),
        "distill_time": summarize_times(wall["distill"]),
        "ratio_median": r["median_s"],
        "ratio_iqr": r["iqr_s"],
        "cpu_time_ratio": cpu_ratio,
    }
    log(f"  [paired {label}] median pair ratio {result['ratio_median']:.3f} (IQR {result['ratio_iqr']:.3f}); "
        f"CPU-time ratio {cpu_ratio:.3f}")
    return result


# ------------------------------------------------------------------------------------------------------- configs
def _yaml_bool(v: bool) -> str:
    return "true" if v else "false"


def base_overrides(args: argparse.Namespace) -> list[str]:
    try:
        options = json.loads(args.options)
    except json.JSONDecodeError as exc:
        raise UserError(f"--options must be a JSON object, e.g. '{DEFAULT_OPTIONS}': {exc}") from None
    if not isinstance(options, dict):
        raise UserError(f"--options must be a JSON object, e.g. '{DEFAULT_OPTIONS}'")
    return [f"model.arch={args.arch}", f"model.options={json.dumps(options)}", *args.overrides]


def resolve_base_config(args: argparse.Namespace) -> tuple[Config, list[str]]:
    """The config every mode starts from, and the override list that produces it from ``--config``."""
    overrides = base_overrides(args)
    cfg = load_config(args.config, overrides)
    jit = cfg.train.jit_compile if args.jit is None else bool(args.jit)
    precision = args.precision or cfg.train.mixed_precision
    overrides += [
        f"data.synthetic.image_size={args.size}", "data.crop_size=null", f"train.batch_size={args.batch_size}",
        f"train.jit_compile={_yaml_bool(jit)}", f"train.mixed_precision={precision}", "distill.enabled=true",
    ]
    cfg = load_config(args.config, overrides)
    opts = cfg.model.options
    if cfg.model.library == "native" and cfg.model.arch == "simple_unet":
        depth = int(opts.get("depth", 3))
        if args.size % (2 ** depth):
            raise UserError(f"--size {args.size} must be a multiple of 2**depth = {2 ** depth} for simple_unet")
    return cfg, overrides


def describe_teacher(cfg: Config) -> str:
    t = cfg.teacher
    return (f"pool={t.pool_size} pe={'on' if t.use_positional_encoding else 'off'} "
            f"norm={'on' if t.use_normalization else 'off'} jit={'on' if cfg.train.jit_compile else 'off'}")


def variants(args: argparse.Namespace, base: Config) -> list[tuple[str, list[str]]]:
    """(name, extra overrides) for each distillation row."""
    if not args.sweep:
        return [(f"config ({describe_teacher(base)})", [])]
    rows = []
    for pool in SWEEP_POOL_SIZES:
        for pe in SWEEP_POSITIONAL:
            rows.append(("", [f"teacher.pool_size={pool}", f"teacher.use_positional_encoding={_yaml_bool(pe)}",
                              "teacher.use_normalization=true"]))
    rows.append(("config, jit flipped", [f"train.jit_compile={_yaml_bool(not base.train.jit_compile)}"]))
    return rows


# ----------------------------------------------------------------------------------------------------- reporting


def _fmt_time(mode: Optional[dict]) -> str:
    if not mode:
        return "—"
    t = mode["time"]
    return f"{t['median_s']:.3f} (IQR {t['iqr_s']:.3f})"


COLUMNS = ("variant", "baseline step s", "distill step s", "time ratio", "paired time ratio", "baseline peak ΔRSS MB",
           "distill peak ΔRSS MB", "memory ratio", "student params", "teacher params", "param ratio",
           f"time ≤ {TARGET_TIME_RATIO}×?")


def format_table(rows: Sequence[dict]) -> str:
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "|".join(["---"] + ["---:"] * (len(COLUMNS) - 2) + [":---:"]) + "|"]
    for r in rows:
        b, d = r.get("baseline"), r.get("distill")
        if r.get("skipped"):
            verdict = f"NOT MEASURED: {r['skipped']}"
        else:
            used = r["paired_time_ratio"] if r["target_ratio_used"] == "paired" else r["time_ratio"]
            verdict = "yes" if r["meets_time_target"] else f"**NO** ({used:.2f}×)"
            verdict += f" ({r['target_ratio_used']})"
            if r["target_ratio_used"] == "paired" and r["sequential_meets_time_target"] != r["meets_time_target"]:
                verdict += f"; sequential {r['time_ratio']:.2f}× {'meets' if r['sequential_meets_time_target'] else 'MISSES'}"
        cells = [
            r["variant"], _fmt_time(b), _fmt_time(d), fmt(r.get("time_ratio"), ".3f", "×"),
            fmt(r.get("paired_time_ratio"), ".3f", "×") + (f" (IQR {r['paired']['ratio_iqr']:.3f})" if r.get("paired") else ""),
            fmt(b["memory"]["peak_delta_rss_mb"] if b else None, ",.0f"),
            fmt(d["memory"]["peak_delta_rss_mb"] if d else None, ",.0f"),
            fmt(r.get("memory_ratio"), ".2f", "×"),
            fmt(r.get("student_params"), ","), fmt(r.get("teacher_params"), ","),
            fmt(r.get("param_ratio"), ".5f", "×"), verdict,
        ]
        lines.append("| " + " | ".join(str(c) for c in cells) + " |")
    return "\n".join(lines)


def _ratio(a: float, b: float) -> Optional[float]:
    return a / b if b > 0 and math.isfinite(a / b) else None


# ------------------------------------------------------------------------------------------------------ workers
def measure_variant(cfg: Config, bcfg: Config, label: str, images: np.ndarray, labels: np.ndarray, num_classes: int,
                    warmup: int, steps: int, paired: int, log: Log = print) -> dict:
    """Distillation mode (memory + sequential steps), then, in the same process, the paired timing phase."""
    distill, built = measure_mode(cfg, f"distill {label}", images, labels, num_classes, warmup, steps, log,
                                  keep=paired > 0)
    paired_result = None
    if built is not None:
        # Built after the distillation memory measurement, so it cannot affect it; no reseed (see Built).
        other = Built(bcfg, images, labels, num_classes, warmup + steps, reseed=False)
        log(f"  [paired {label}] baseline built next to the distillation trainer; compiled + 1 step in "
            f"{other.warm(1):.1f} s")
        paired_result = paired_timing(other, built, paired, label, log)
    return {"distill": distill, "paired": paired_result}


def run_worker(task: dict, log: Log) -> dict:
    """Run ``task`` in a fresh Python process (``--worker``); stream its progress lines to ``log``; return its result.

    A fresh process per mode is what makes the memory numbers trustworthy: TensorFlow's oneDNN kernels and XLA keep
    large buffers alive after a model is gone (not freed, so neither gc, clear_session nor malloc_trim returns them),
    and a later mode in the same process would reuse them without its RSS growing.
    """
    return run_script_worker(__file__, task, task["label"], log, prefix="teacher_overhead_")


def worker_main(spec_path: str, out_path: str) -> int:
    from axial_kd_tf.config import config_from_dict

    task = json.loads(Path(spec_path).read_text())
    images, labels = random_batch(task["batch_size"], task["size"], task["in_channels"], task["num_classes"],
                                  task["seed"])
    cfg = config_from_dict(task["config"])
    if task["kind"] == "baseline":
        result, _ = measure_mode(cfg, task["label"], images, labels, task["num_classes"], task["warmup"],
                                 task["steps"])
    else:
        result = measure_variant(cfg, config_from_dict(task["baseline_config"]), task["label"], images, labels,
                                 task["num_classes"], task["warmup"], task["steps"], task["paired"])
    (result if task["kind"] == "baseline" else result["distill"])["pid"] = os.getpid()
    atomic_write_json(out_path, result)
    return 0


# -------------------------------------------------------------------------------------------------------- driver
def run_benchmark(args: argparse.Namespace, log: Log = print) -> dict:
    """Run the benchmark described by parsed ``args`` (see :func:`parse_args`); write JSON + Markdown; return the JSON."""
    t_start = time.time()
    steps = args.steps if args.steps is not None else (SWEEP_STEPS if args.sweep else DEFAULT_STEPS)
    warmup = args.warmup if args.warmup is not None else (SWEEP_WARMUP if args.sweep else DEFAULT_WARMUP)
    paired = args.paired_steps if args.paired_steps is not None else (SWEEP_PAIRED if args.sweep else steps)
    if steps < 1 or warmup < 0 or paired < 0:
        raise UserError("--steps must be >= 1, --warmup and --paired-steps >= 0")
    if args.size < 8 or args.batch_size < 1 or args.num_classes < 2 or args.in_channels < 1:
        raise UserError("--size must be >= 8, --batch-size >= 1, --num-classes >= 2, --in-channels >= 1")
    base, overrides = resolve_base_config(args)
    isolated = args.isolation == "process"
    notes: list[str] = []
    if args.sweep and (args.steps is None or args.warmup is None or args.paired_steps is None):
        notes.append(f"--sweep uses {warmup} warm-up + {steps} timed + {paired} paired steps per mode (default run: "
                     f"{DEFAULT_WARMUP} + {DEFAULT_STEPS} + {DEFAULT_STEPS}) to finish in ~15 min on a quiet 2-core "
                     "CPU; fewer steps = noisier medians.")
    if paired:
        notes.append(f"'paired time ratio': baseline and distillation trainers in one process, {paired} pairs of "
                     "single steps in ABBA order, median of the per-pair ratios; background load hits both modes "
                     "alike. The target verdict uses it.")
    else:
        notes.append("No paired timing (--paired-steps 0): the target verdict uses the sequential ratio of medians, "
                     "which background load on the machine can bias.")
    if isolated:
        notes.append("Each mode's memory (and sequential steps) measured in a fresh worker process: TF's oneDNN/XLA "
                     "buffers outlive a model in-process and would mask a later mode's growth.")
    else:
        notes.append("--isolation none: all modes in this process; a later mode can reuse buffers TF keeps from an "
                     "earlier one, so its ΔRSS may read low (see 'retained_before_mb' in the JSON).")
    if args.sweep:
        notes.append("One baseline per jit setting is shared by every teacher variant with that setting "
                     "(the baseline does not depend on the teacher).")
    machine = machine_info()
    load = machine["loadavg_at_start"]
    log(f"[setup] {machine['cpu_model']}, {machine['usable_cores']} cores, TF {machine['tensorflow']}, "
        f"Keras {machine['keras']}; load average {fmt_load(load)}")
    log(f"[setup] {base.model.arch} {json.dumps(base.model.options)}, input {args.size}x{args.size}x{args.in_channels}, "
        f"batch {args.batch_size}, {args.num_classes} classes, {warmup} warm-up + {steps} timed steps per mode, "
        f"{paired} paired steps")
    for n in notes:
        log(f"[note] {n}")
    images, labels = (None, None) if isolated else random_batch(
        args.batch_size, args.size, args.in_channels, args.num_classes, args.seed)
    common = dict(size=args.size, batch_size=args.batch_size, in_channels=args.in_channels,
                  num_classes=args.num_classes, seed=args.seed, warmup=warmup, steps=steps, paired=paired)

    plan = []
    for name, extra in variants(args, base):
        cfg = load_config(args.config, overrides + extra)
        plan.append((name or describe_teacher(cfg), cfg))
    # Group by everything the baseline depends on (jit, precision), baseline first in each group.
    groups: dict[tuple, list] = {}
    for name, cfg in plan:
        groups.setdefault((cfg.train.jit_compile, cfg.train.mixed_precision), []).append((name, cfg))

    baselines: dict[str, dict] = {}
    rows: list[dict] = []
    total = len(plan) + len(groups)
    done = 0
    first_start_mb: Optional[float] = None

    def note_retained(result: dict) -> None:
        nonlocal first_start_mb
        m = result["memory"]
        if first_start_mb is None or isolated:
            m["retained_before_mb"] = 0.0
            first_start_mb = m["rss_start_mb"] if first_start_mb is None else first_start_mb
        else:
            m["retained_before_mb"] = max(0.0, m["rss_start_mb"] - first_start_mb)

    for (jit, precision), members in groups.items():
        key = f"jit={'on' if jit else 'off'} {precision}"
        done += 1
        log(f"[{done}/{total}] baseline ({key}), {time.time() - t_start:.0f} s elapsed")
        bcfg = load_config(args.config, overrides + [f"train.jit_compile={_yaml_bool(jit)}",
                                                     f"train.mixed_precision={precision}", "distill.enabled=false"])
        try:
            if isolated:
                baseline = run_worker(dict(common, kind="baseline", label=f"baseline {key}", config=bcfg.to_dict()),
                                      log)
            else:
                baseline, _ = measure_mode(bcfg, f"baseline {key}", images, labels, args.num_classes, warmup, steps,
                                           log)
        except WorkerFailed as exc:
            log(f"[{done}/{total}] {exc}")
            for name, cfg in members:
                rows.append(_failed_row(name, key, cfg, None, f"baseline failed: {exc}"))
            done += len(members)
            continue
        note_retained(baseline)
        assert baseline["teacher_params"] == 0, "baseline model must have no teacher"
        baselines[key] = baseline
        for name, cfg in members:
            done += 1
            need = estimate_teacher_bytes(cfg, args.batch_size, args.size)
            avail = mem_available_bytes()
            if args.memory_guard and avail is not None and need > 0.85 * avail:
                why = (f"skipped by the memory guard: est. teacher memory {need / 1024**3:.1f} GB > 85% of available {avail / 1024**3:.1f} GB "
                       "(rerun with --no-memory-guard to force)")
                log(f"[{done}/{total}] distillation {name}: {why}")
                rows.append(_failed_row(name, key, cfg, baseline, why))
                continue
            log(f"[{done}/{total}] distillation {name}, {time.time() - t_start:.0f} s elapsed")
            try:
                if isolated:
                    got = run_worker(dict(common, kind="distill", label=name, config=cfg.to_dict(),
                                          baseline_config=bcfg.to_dict()), log)
                else:
                    got = measure_variant(cfg, bcfg, name, images, labels, args.num_classes, warmup, steps, paired,
                                          log)
            except WorkerFailed as exc:
                log(f"[{done}/{total}] {exc}")
                rows.append(_failed_row(name, key, cfg, baseline, str(exc)))
                continue
            distill, paired_result = got["distill"], got["paired"]
            note_retained(distill)
            assert distill["student_params"] == baseline["student_params"], (
                f"student parameter count differs between modes: {distill['student_params']} vs "
                f"{baseline['student_params']}")
            assert distill["total_params"] == distill["student_params"] + distill["teacher_params"]
            time_ratio = _ratio(distill["time"]["median_s"], baseline["time"]["median_s"])
            primary = paired_result["ratio_median"] if paired_result else time_ratio
            row: dict[str, Any] = {
                "variant": name, "baseline_key": key, "teacher": dict(cfg.teacher.__dict__), "jit_compile": jit,
                "mixed_precision": precision, "baseline": baseline, "distill": distill, "paired": paired_result,
                "time_ratio": time_ratio,
                "paired_time_ratio": paired_result["ratio_median"] if paired_result else None,
                "memory_ratio": _ratio(distill["memory"]["peak_delta_rss_mb"], baseline["memory"]["peak_delta_rss_mb"]),
                "peak_rss_ratio": _ratio(distill["memory"]["peak_rss_mb"], baseline["memory"]["peak_rss_mb"]),
                "student_params": distill["student_params"],
                "teacher_params": distill["teacher_params"],
                "total_params": distill["total_params"],
                "param_ratio": distill["total_params"] / baseline["total_params"],
                "target_ratio_used": "paired" if paired_result else "sequential",
                "meets_time_target": primary is not None and primary <= TARGET_TIME_RATIO,
                "sequential_meets_time_target": time_ratio is not None and time_ratio <= TARGET_TIME_RATIO,
                "skipped": None,
            }
            verdict = "meets" if row["meets_time_target"] else "MISSES"
            log(f"[{done}/{total}] {name}: time ratio {fmt(time_ratio, '.3f', '×')} sequential, "
                f"{fmt(row['paired_time_ratio'], '.3f', '×')} paired ({verdict} the {TARGET_TIME_RATIO}× target), "
                f"memory ratio {fmt(row['memory_ratio'], '.2f', '×')}; {time.time() - t_start:.0f} s elapsed")
            rows.append(row)

    try:
        load_end: Optional[list] = list(os.getloadavg())
    except OSError:
        load_end = None
    machine["loadavg_at_end"] = load_end
    wall = time.time() - t_start
    table = format_table(rows)
    summary = []
    for r in rows:
        if r.get("meets_time_target") is False:
            used = r["paired_time_ratio"] if r["target_ratio_used"] == "paired" else r["time_ratio"]
            summary.append(f"TARGET MISSED: {r['variant']}: {r['target_ratio_used']} time ratio {used:.3f}× > "
                           f"{TARGET_TIME_RATIO}×")
        elif r.get("meets_time_target") and r.get("sequential_meets_time_target") is False:
            summary.append(f"NOTE: {r['variant']}: meets the target on the paired ratio but the sequential ratio "
                           f"{r['time_ratio']:.3f}× misses it")
        if r.get("paired"):
            c = r["paired"]["cpu_time_ratio"]
            summary.append(f"{r['variant']}: paired CPU-time ratio {c:.3f}×"
                           + ("" if c <= TARGET_TIME_RATIO else f" (above {TARGET_TIME_RATIO}×)"))
        if r.get("skipped"):
            summary.append(f"NOT MEASURED: {r['variant']}: {r['skipped']}")
        d = r.get("distill")
        if d and d["memory"].get("retained_before_mb", 0) > 100:
            summary.append(f"MEMORY CAVEAT: {r['variant']}: started {d['memory']['retained_before_mb']:,.0f} MB above "
                           "the first mode's RSS (buffers kept from earlier modes); its ΔRSS may read low")
    if rows and all(r.get("meets_time_target") for r in rows):
        summary.append(f"All rows meet the time-ratio target (≤ {TARGET_TIME_RATIO}×).")
    payload = {
        "benchmark": "teacher_overhead",
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "wall_time_s": wall,
        "target_time_ratio": TARGET_TIME_RATIO,
        "machine": machine,
        "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "resolved": {"steps": steps, "warmup": warmup, "paired_steps": paired, "isolation": args.isolation,
                     "overrides": overrides},
        "config": base.to_dict(),
        "notes": notes,
        "summary": summary,
        "baselines": baselines,
        "rows": [{k: v for k, v in r.items() if k != "baseline"} for r in rows],
        "table_markdown": table,
    }
    out = Path(args.out)
    header = [
        f"# Teacher overhead: distillation / baseline ({time.strftime('%Y-%m-%d %H:%M')})",
        "",
        f"- machine: {machine['cpu_model']}, {machine['usable_cores']} usable cores, "
        f"{fmt(machine['mem_total_gb'], '.0f')} GB RAM; TF {machine['tensorflow']}, Keras {machine['keras']}",
        f"- load average (1/5/15 min) at start {fmt_load(load)}, at end {fmt_load(load_end)}"
        f" ({machine['usable_cores']} cores; load above that means other processes competed for the CPU)",
        f"- network: {base.model.arch} {json.dumps(base.model.options)}; input {args.size}×{args.size}×{args.in_channels}, "
        f"batch {args.batch_size}, {args.num_classes} classes, {base.train.mixed_precision}",
        f"- {warmup} warm-up + {steps} timed steps per mode (median, IQR), {paired} paired steps, isolation "
        f"{args.isolation}; config {args.config}" + (f", --set {' '.join(args.overrides)}" if args.overrides else ""),
        f"- wall time {wall:.0f} s",
        *[f"- note: {n}" for n in notes],
        "",
        table,
        "",
        *summary,
    ]
    write_report(out, payload, "\n".join(header) + "\n", wall, log)
    return payload


def _failed_row(name: str, key: str, cfg: Config, baseline: Optional[dict], why: str) -> dict:
    return {
        "variant": name, "baseline_key": key, "teacher": dict(cfg.teacher.__dict__),
        "jit_compile": cfg.train.jit_compile, "mixed_precision": cfg.train.mixed_precision, "baseline": baseline,
        "distill": None, "paired": None, "time_ratio": None, "paired_time_ratio": None, "memory_ratio": None,
        "student_params": baseline["student_params"] if baseline else None, "teacher_params": None,
        "param_ratio": None, "target_ratio_used": None, "meets_time_target": None,
        "sequential_meets_time_target": None, "skipped": why,
    }


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="teacher_overhead.py",
        description="Training-step time, peak memory and parameters of distillation mode vs the CE-only baseline.")
    p.add_argument("--config", default="configs/quickstart.yaml", help="teacher/train config (default: %(default)s)")
    add_set_arg(p, "teacher.pool_size=1")
    p.add_argument("--arch", default="simple_unet", help="student network (default: %(default)s)")
    p.add_argument("--options", default=DEFAULT_OPTIONS, help="JSON model options (default: %(default)s)")
    p.add_argument("--size", type=int, default=256, help="square input size (default: %(default)s)")
    p.add_argument("--batch-size", type=int, default=8, help="(default: %(default)s)")
    p.add_argument("--in-channels", type=int, default=3, help="(default: %(default)s)")
    p.add_argument("--num-classes", type=int, default=5, help="(default: %(default)s)")
    p.add_argument("--precision", choices=("float32", "mixed_bfloat16", "mixed_float16"), default=None,
                   help="dtype policy (default: the config's train.mixed_precision)")
    p.add_argument("--jit", dest="jit", action="store_true", default=None, help="XLA-compile the train step")
    p.add_argument("--no-jit", dest="jit", action="store_false", help="do not XLA-compile the train step")
    p.add_argument("--steps", type=int, default=None,
                   help=f"timed steps per mode (default {DEFAULT_STEPS}; {SWEEP_STEPS} with --sweep)")
    p.add_argument("--warmup", type=int, default=None,
                   help=f"untimed warm-up steps per mode (default {DEFAULT_WARMUP}; {SWEEP_WARMUP} with --sweep)")
    p.add_argument("--paired-steps", type=int, default=None,
                   help="after the distillation mode, this many ABBA pairs of baseline/distill steps in the same "
                        f"process (default: --steps; {SWEEP_PAIRED} with --sweep)")
    p.add_argument("--sweep", action="store_true",
                   help="teacher pool_size {1,2,4} × positional encoding {on,off}, plus the config teacher with jit flipped")
    p.add_argument("--isolation", choices=("process", "none"), default="process",
                   help="'process' (default): measure each mode in a fresh worker process so memory kept by TF from "
                        "an earlier mode cannot mask a later one; 'none': everything in this process")
    p.add_argument("--no-memory-guard", dest="memory_guard", action="store_false",
                   help="run variants even when their estimated memory exceeds what is available")
    p.add_argument("--seed", type=int, default=0, help="seed of the random batch (default: %(default)s)")
    add_out_arg(p, DEFAULT_OUT)
    add_worker_args(p)
    return p.parse_args(argv)


def main(argv: Optional[Sequence[str]] = None) -> int:
    return run_main(parse_args(argv), run_benchmark, worker_main)


if __name__ == "__main__":
    sys.exit(main())

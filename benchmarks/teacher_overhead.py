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
import ctypes
import gc
import json
import math
import os
import platform
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

_ROOT = Path(__file__).resolve().parent.parent
if str(_ROOT) not in sys.path:  # `python benchmarks/teacher_overhead.py` puts benchmarks/ on the path, not the root
    sys.path.insert(0, str(_ROOT))

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from axial_kd_tf.config import Config, load_config  # noqa: E402
from axial_kd_tf.distill import student_network  # noqa: E402
from axial_kd_tf.errors import UserError  # noqa: E402
from axial_kd_tf.io_utils import atomic_write_json  # noqa: E402
from axial_kd_tf.training import build_model_from_config, make_optimizer, make_trainer  # noqa: E402
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
# Peak bytes the teacher adds to a training step, in units of one [B·W', heads, H', H'] similarity map per similarity
# term and axial pass. Measured ≈ 2.4 (pool 2, positional encoding, XLA, 256², batch 8: +1.9 GB over the baseline's
# ΔRSS); 3.0 leaves a margin. Used only by the out-of-memory guard (estimate_teacher_bytes).
TEACHER_MAPS_PER_TERM = 3.0
MB = 1024.0 * 1024.0

Log = Callable[[str], None]


# ------------------------------------------------------------------------------------------------------- memory
_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def rss_bytes() -> int:
    """Current resident set size of this process (``/proc/self/statm``, field 2)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * _PAGE
    except OSError:  # not Linux: fall back to the (peak) getrusage value
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _proc_kb(path: str, key: str) -> Optional[int]:
    try:
        with open(path) as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def hwm_bytes() -> Optional[int]:
    """The kernel's peak RSS since the last :func:`reset_hwm` (``VmHWM``)."""
    return _proc_kb("/proc/self/status", "VmHWM")


def reset_hwm() -> bool:
    """Reset ``VmHWM`` to the current RSS (Linux ≥ 4.0); False where not allowed."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def mem_available_bytes() -> Optional[int]:
    return _proc_kb("/proc/meminfo", "MemAvailable")


def malloc_trim() -> bool:
    """Return freed heap pages to the OS (glibc), so later growth shows up in RSS again."""
    try:
        return bool(ctypes.CDLL("libc.so.6").malloc_trim(0))
    except (OSError, AttributeError):
        return False


def release_memory() -> None:
    gc.collect()
    keras.backend.clear_session()
    gc.collect()
    malloc_trim()


class RssSampler:
    """Samples RSS every ``interval`` seconds in a daemon thread; :meth:`take_peak` returns and restarts the peak."""

    def __init__(self, interval: float = 0.005) -> None:
        self.interval = interval
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None
        self._peak = 0
        self.samples = 0

    def __enter__(self) -> "RssSampler":
        self._peak = rss_bytes()
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            r = rss_bytes()
            with self._lock:
                self.samples += 1
                if r > self._peak:
                    self._peak = r

    def take_peak(self) -> int:
        now = rss_bytes()
        with self._lock:
            peak = max(self._peak, now)
            self._peak = now
        return peak


# -------------------------------------------------------------------------------------------------------- timing
class StepTimer(keras.callbacks.Callback):
    """Times every ``fit`` step; switches the memory phase from warm-up to timed at step ``warmup``."""

    def __init__(self, warmup: int, steps: int, sampler: RssSampler, label: str, log: Log) -> None:
        super().__init__()
        self.warmup, self.steps, self.sampler, self.label, self.log = warmup, steps, sampler, label, log
        self.times: list[float] = []
        self.warmup_peak = 0
        self.rss_timed_start = 0
        self.hwm_ok = False
        self._t = 0.0

    def on_train_batch_begin(self, batch: int, logs: Optional[dict] = None) -> None:
        if batch == self.warmup:
            self.warmup_peak = max(self.sampler.take_peak(), hwm_bytes() or 0)
            self.hwm_ok = reset_hwm()
            self.rss_timed_start = rss_bytes()
        self._t = time.perf_counter()

    def on_train_batch_end(self, batch: int, logs: Optional[dict] = None) -> None:
        # Overriding this hook makes Keras dispatch callbacks synchronously with NumPy logs, so the step has finished.
        dt = time.perf_counter() - self._t
        self.times.append(dt)
        n = self.warmup + self.steps
        kind = "warm-up" if batch < self.warmup else "step"
        loss = (logs or {}).get("loss")
        loss_s = f", loss {float(loss):.4f}" if loss is not None else ""
        self.log(f"  [{self.label}] {kind} {batch + 1}/{n}: {dt:.3f} s{loss_s}, RSS {rss_bytes() / MB:,.0f} MB")


def summarize_times(times: Sequence[float]) -> dict:
    a = np.asarray(times, dtype=np.float64)
    q25, med, q75 = np.percentile(a, [25, 50, 75])
    return {"median_s": float(med), "q25_s": float(q25), "q75_s": float(q75), "iqr_s": float(q75 - q25),
            "min_s": float(a.min()), "max_s": float(a.max()), "mean_s": float(a.mean())}


# ---------------------------------------------------------------------------------------------------------- modes
def random_batch(batch: int, size: int, in_channels: int, num_classes: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    images = rng.random((batch, size, size, in_channels), dtype=np.float32)
    labels = rng.integers(0, num_classes, (batch, size, size), dtype=np.int32)
    return images, labels


class Built:
    """A model, its trainer (compiled like ``train.py``) and the repeated one-batch dataset."""

    def __init__(self, cfg: Config, images: np.ndarray, labels: np.ndarray, num_classes: int, total_steps: int,
                 reseed: bool = True) -> None:
        class_names = tuple(f"class{i}" for i in range(num_classes))
        previous_policy = keras.mixed_precision.global_policy().name
        keras.mixed_precision.set_global_policy(cfg.train.mixed_precision)
        try:
            if reseed:  # tf.random.set_seed makes every existing tf.function retrace (an XLA recompile with jit)
                keras.utils.set_random_seed(cfg.train.seed)
            t0 = time.perf_counter()
            self.model = build_model_from_config(cfg, num_classes, int(images.shape[-1]))
            self.trainer = make_trainer(cfg, self.model, class_names)
            self.trainer.compile(optimizer=make_optimizer(cfg, total_steps), jit_compile=cfg.train.jit_compile)
            self.student_params = int(student_network(self.model).count_params())
            self.total_params = int(self.model.count_params())
            self.dataset = tf.data.Dataset.from_tensors((images, labels)).repeat()
            self.build_s = time.perf_counter() - t0
        finally:
            keras.mixed_precision.set_global_policy(previous_policy)
        self._iterator: Any = None

    def warm(self, steps: int = 1) -> float:
        """``fit`` for ``steps`` steps (builds optimizer/metric state and compiles the train function); seconds."""
        t0 = time.perf_counter()
        self.trainer.fit(self.dataset, epochs=1, steps_per_epoch=steps, verbose=0, shuffle=False)
        return time.perf_counter() - t0

    def step(self) -> tuple[float, float]:
        """One more training step through the compiled ``train_function`` (as ``fit`` calls it): (wall s, CPU s)."""
        if self._iterator is None:
            self._iterator = iter(self.trainer.distribute_strategy.experimental_distribute_dataset(self.dataset))
        c0, t0 = time.process_time(), time.perf_counter()
        logs = self.trainer.train_function(self._iterator)
        {k: np.asarray(v) for k, v in logs.items()}  # pull the results, as fit's callbacks do
        return time.perf_counter() - t0, time.process_time() - c0


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
        f"data.image_size={args.size}", "data.crop_size=null", f"train.batch_size={args.batch_size}",
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
    return (f"pool={t.pool_size} pe={'on' if t.positional_encoding else 'off'} "
            f"norm={'on' if t.normalization else 'off'} jit={'on' if cfg.train.jit_compile else 'off'}")


def variants(args: argparse.Namespace, base: Config) -> list[tuple[str, list[str]]]:
    """(name, extra overrides) for each distillation row."""
    if not args.sweep:
        return [(f"config ({describe_teacher(base)})", [])]
    rows = []
    for pool in SWEEP_POOL_SIZES:
        for pe in SWEEP_POSITIONAL:
            rows.append(("", [f"teacher.pool_size={pool}", f"teacher.positional_encoding={_yaml_bool(pe)}",
                              "teacher.normalization=true"]))
    rows.append(("config, jit flipped", [f"train.jit_compile={_yaml_bool(not base.train.jit_compile)}"]))
    return rows


def estimate_teacher_bytes(cfg: Config, batch: int, size: int) -> float:
    """Rough peak of the teacher's training step: similarity-map sized tensors of both axial passes.

    A pass along an axis of length L' = ceil(size / pool) holds [B·L', heads, L', L'] maps for each of its similarity
    terms (3 with positional encoding, 1 without); forward, BN, softmax, skew and their gradients multiply that.
    """
    t = cfg.teacher
    s = math.ceil(size / t.pool_size)
    terms = 3 if t.positional_encoding else 1
    item = 2 if cfg.train.mixed_precision != "float32" else 4
    one_map = batch * s * t.num_heads * s * s * item
    return 2 * one_map * terms * TEACHER_MAPS_PER_TERM


# ----------------------------------------------------------------------------------------------------- reporting
def machine_info() -> dict:
    cpu = None
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    try:
        affinity = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        affinity = None
    try:
        load = list(os.getloadavg())
    except OSError:
        load = None
    total = _proc_kb("/proc/meminfo", "MemTotal")
    return {
        "cpu_model": cpu or platform.processor() or platform.machine(),
        "logical_cores": os.cpu_count(),
        "usable_cores": affinity,
        "mem_total_gb": total / 1024**3 if total else None,
        "mem_available_gb_at_start": (mem_available_bytes() or 0) / 1024**3,
        "loadavg_at_start": load,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "tensorflow": tf.__version__,
        "keras": keras.__version__,
        "numpy": np.__version__,
        "tf_intra_op_threads": tf.config.threading.get_intra_op_parallelism_threads(),
        "tf_inter_op_threads": tf.config.threading.get_inter_op_parallelism_threads(),
    }


def _fmt_time(mode: Optional[dict]) -> str:
    if not mode:
        return "—"
    t = mode["time"]
    return f"{t['median_s']:.3f} (IQR {t['iqr_s']:.3f})"


def _fmt(v: Optional[float], spec: str, suffix: str = "") -> str:
    return "—" if v is None or (isinstance(v, float) and not math.isfinite(v)) else f"{v:{spec}}{suffix}"


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
            r["variant"], _fmt_time(b), _fmt_time(d), _fmt(r.get("time_ratio"), ".3f", "×"),
            _fmt(r.get("paired_time_ratio"), ".3f", "×") + (f" (IQR {r['paired']['ratio_iqr']:.3f})" if r.get("paired") else ""),
            _fmt(b["memory"]["peak_delta_rss_mb"] if b else None, ",.0f"),
            _fmt(d["memory"]["peak_delta_rss_mb"] if d else None, ",.0f"),
            _fmt(r.get("memory_ratio"), ".2f", "×"),
            _fmt(r.get("student_params"), ","), _fmt(r.get("teacher_params"), ","),
            _fmt(r.get("param_ratio"), ".5f", "×"), verdict,
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
        f"Keras {machine['keras']}; load average {_fmt_load(load)}")
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
            log(f"[{done}/{total}] {name}: time ratio {_fmt(time_ratio, '.3f', '×')} sequential, "
                f"{_fmt(row['paired_time_ratio'], '.3f', '×')} paired ({verdict} the {TARGET_TIME_RATIO}× target), "
                f"memory ratio {_fmt(row['memory_ratio'], '.2f', '×')}; {time.time() - t_start:.0f} s elapsed")
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
        f"{_fmt(machine['mem_total_gb'], '.0f')} GB RAM; TF {machine['tensorflow']}, Keras {machine['keras']}",
        f"- load average (1/5/15 min) at start {_fmt_load(load)}, at end {_fmt_load(load_end)}"
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


def _fmt_load(load: Optional[list]) -> str:
    return "/".join(f"{x:.2f}" for x in load) if load else "n/a"


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

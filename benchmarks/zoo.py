#!/usr/bin/env python
"""The model zoo side by side: parameters, FLOPs, training-step time (baseline vs distillation), TFLite latency.

    python benchmarks/zoo.py                                   # all nine ZOO architectures, resnet34, 256², batch 8
    python benchmarks/zoo.py --archs unet linknet --steps 5    # a subset, more timed steps
    python benchmarks/zoo.py --encoder resnet18 --size 128 --set teacher.pool_size=4

For every architecture of :data:`axial_kd_tf.models.ZOO` (``--archs`` selects) with ``--encoder`` (resnet34):

* **parameters** of the student network (all weights, and the trainable ones, which are what SMP's pins count), and
  of the ``AxialTeacherHead`` the distillation mode adds;
* **forward FLOPs** of the student at batch 1: TF's profiler (``float_operation``) on the graph of
  ``tf.function(student).get_concrete_function([1, H, W, C])`` frozen with ``convert_variables_to_constants_v2``.
  Multiply and add count separately (a conv's FLOPs are 2·MACs); ops without registered statistics (ReLU, resize,
  pad, concat, ...) count 0;
* **training-step time** at ``--batch``: the baseline (``distill.enabled: false``, CE only) and the distillation mode
  (the ``--config`` teacher, ``--set`` overrides as in ``train.py``), each built, compiled
  (``jit_compile=train.jit_compile``) and optimised exactly as ``train.py`` does (``_measure.Built``). After
  ``--warmup`` ``fit`` steps (tracing + XLA compilation), ``--steps`` calls of the compiled ``train_function`` are
  timed on one fixed random batch; median of each mode and their ratio (distill / baseline);
* **TFLite float32 latency** of the student at ``[1, H, W, C]`` (``export.convert_tflite`` builtins only, then
  ``export.verify_tflite``: one warm-up invoke and the mean of ``--tflite-repeats`` single-threaded invokes, Python
  signature-runner overhead included) and its max |TFLite − Keras| on ``--tflite-images`` random images.

XLA fallback: when ``jit_compile`` is on but XLA cannot compile a train step (measured: the gradient of
``ResizeNearestNeighbor``, used by the nearest-upsampling decoders of unet, unetplusplus, manet and fpn, has no
XLA_CPU_JIT kernel), that mode is rebuilt and timed with ``jit_compile=False`` and the row says so
(``jit_fallback`` in the JSON, "timed without XLA" in the table); ``--no-jit-fallback`` records the failure instead.

Each architecture runs in a fresh worker process by default (``--isolation process``): TF keeps oneDNN/XLA buffers
of an earlier model alive, and a crash or an out-of-memory kill of one architecture then costs only its row.
A failing phase (build, FLOPs, TFLite, either training mode) is recorded in that row's ``errors`` and the rest of
the row and the remaining architectures still run.

Writes ``--out`` (JSON, atomically) and the same table as Markdown next to it (``.md``); ``run_benchmark(args)``
returns the JSON payload (used by ``tests/test_zoo_benchmark.py``).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

_ROOT = Path(__file__).resolve().parent.parent
if str(_ROOT) not in sys.path:  # `python benchmarks/zoo.py` puts benchmarks/ on the path, not the repo root
    sys.path.insert(0, str(_ROOT))

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from axial_kd_tf.config import Config, config_from_dict, load_config  # noqa: E402
from axial_kd_tf.distill import student_network, teacher_head  # noqa: E402
from axial_kd_tf.errors import UserError  # noqa: E402
from axial_kd_tf.export import convert_tflite, verify_tflite  # noqa: E402
from axial_kd_tf.io_utils import atomic_write_json  # noqa: E402
from axial_kd_tf.models import ZOO  # noqa: E402
from benchmarks._common import (  # noqa: E402
    WorkerFailed,
    add_out_arg,
    add_set_arg,
    add_worker_args,
    run_main,
    run_script_worker,
    write_report,
)
from benchmarks._measure import (  # noqa: E402
    MB,
    Built,
    fmt,
    fmt_load,
    hwm_bytes,
    machine_info,
    random_batch,
    release_memory,
    summarize_times,
)

DEFAULT_OUT = Path("benchmarks/results/zoo.json")
DEFAULT_ENCODER = "resnet34"
# The full default run (9 architectures × 2 trainers at 256², batch 8) must finish in < 30 min on a 2-core CPU.
# Measured (benchmarks/README.md): 1044 s with these defaults at load ~1.4; DeepLabV3 alone takes ~280 s (its
# XLA-compiled step is ~26 s). Other jobs on the cores slow steps ~1.9× (load 4-5), which can push it past 30 min.
DEFAULT_STEPS, DEFAULT_WARMUP = 3, 1
DEFAULT_TFLITE_REPEATS, DEFAULT_TFLITE_IMAGES = 3, 1
BUDGET_S = 30 * 60

Log = Callable[[str], None]

PHASES = ("build", "flops", "tflite", "baseline", "distill")


# --------------------------------------------------------------------------------------------------------- counts
def count_params(model: keras.Model) -> tuple[int, int]:
    """(all weights incl. BN statistics, trainable weights) of ``model``."""
    total = int(model.count_params())
    trainable = int(sum(int(np.prod(w.shape)) for w in model.trainable_weights))
    return total, trainable


def forward_flops(model: keras.Model, input_shape: Sequence[int]) -> int:
    """Forward FLOPs of ``model`` on one ``input_shape`` (H, W, C) image, from TF's profiler on the frozen graph.

    Counts what TF's flops registry knows (Conv2D, depthwise/transposed conv, MatMul, element-wise add/mul, pooling,
    ...); multiply and add are separate operations, so a convolution contributes 2·MACs.
    """
    from tensorflow.python.framework.convert_to_constants import convert_variables_to_constants_v2

    fn = tf.function(lambda x: model(x, training=False))
    concrete = fn.get_concrete_function(tf.TensorSpec([1, *input_shape], tf.float32))
    frozen = convert_variables_to_constants_v2(concrete)
    options = tf.compat.v1.profiler.ProfileOptionBuilder.float_operation()
    options["output"] = "none"  # no per-op dump on stdout
    profile = tf.compat.v1.profiler.profile(frozen.graph, options=options)
    return int(profile.total_float_ops)


def teacher_forward_flops(model: keras.Model, args: argparse.Namespace) -> int:
    """Forward FLOPs of the teacher head of ``model`` (the two-output network, or a trainer holding it as
    ``network``) on one image's ``[size, size, K]`` student logits, as :func:`forward_flops` counts them (BatchMatMul,
    MatMul and element-wise ops; softmax and resize count 0).

    With the student's count this gives the **FLOP floor** of the distillation/baseline ratio, ``1 + teacher /
    student``: what the step would cost if the head ran at the network's FLOP rate (training is about three forward
    passes for both).
    """
    head = teacher_head(getattr(model, "network", model))
    if head is None:
        raise ValueError("the distillation model has no AxialTeacherHead")
    logits = keras.Input((args.size, args.size, args.num_classes))
    return forward_flops(keras.Model(logits, head(logits)), (args.size, args.size, args.num_classes))


# -------------------------------------------------------------------------------------------------------- configs
def arch_overrides(arch: str, args: argparse.Namespace) -> list[str]:
    """``--set`` overrides, then the architecture and the input/batch settings of this benchmark (these win)."""
    return [
        *args.overrides,
        "model.library=native", f"model.arch={arch}", f"model.encoder={args.encoder}", "model.encoder_weights=null",
        "model.options={}", f"data.synthetic.image_size={args.size}", "data.crop_size=null",
        f"train.batch_size={args.batch}",
    ]


def mode_configs(arch: str, args: argparse.Namespace) -> tuple[Config, Config]:
    """(baseline config, distillation config) for ``arch``: identical except ``distill.enabled``."""
    base = arch_overrides(arch, args)
    return (load_config(args.config, base + ["distill.enabled=false"]),
            load_config(args.config, base + ["distill.enabled=true"]))


# ------------------------------------------------------------------------------------------------------- measuring
_NO_XLA_KERNEL = re.compile(r"No registered '(\w+)' OpKernel for (XLA_\w+) devices")


def xla_unsupported_op(exc: BaseException) -> Optional[str]:
    """The TF op XLA has no kernel for, when ``exc`` is a failed ``jit_compile`` (tf2xla) conversion; else None."""
    text = str(exc)
    m = _NO_XLA_KERNEL.search(text)
    if m:
        return f"{m.group(1)} ({m.group(2)})"
    return "unknown op" if "tf2xla conversion failed" in text else None


def _error(exc: BaseException) -> str:
    """One line: the exception type and its message, shortened (TF graph errors carry kilobytes of stack)."""
    op = xla_unsupported_op(exc)
    if op:
        return f"{type(exc).__name__}: XLA (jit_compile) has no kernel for {op}"
    text = " ".join(str(exc).split())
    text = text if len(text) <= 300 else text[:240] + " … " + text[-60:]
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _timed_step(built: Built, iterators: dict) -> tuple[float, float]:
    """One call of the trainer's compiled ``train_function`` (as ``fit`` makes it), results pulled: (wall s, CPU s).

    CPU s is this process's CPU time over the step (all threads): unlike the wall time it hardly moves when other
    jobs compete for the cores, so wall/CPU shows how much of the step was spent waiting for a core.
    """
    key = id(built)
    if key not in iterators:
        iterators[key] = iter(built.trainer.distribute_strategy.experimental_distribute_dataset(built.dataset))
    c0, t0 = time.process_time(), time.perf_counter()
    logs = built.trainer.train_function(iterators[key])
    {k: np.asarray(v) for k, v in logs.items()}
    return time.perf_counter() - t0, time.process_time() - c0


def time_steps(built: Built, steps: int, label: str, log: Log, digits: int = 3,
               iterators: Optional[dict] = None) -> tuple[list[float], list[float]]:
    """``steps`` timed calls (:func:`_timed_step`), one log line each: (wall s per step, CPU s per step).

    ``iterators`` continues the dataset iterators of earlier calls (default: fresh ones); ``label`` starts each log
    line and ``digits`` is the precision of the wall time in it.
    """
    iterators = {} if iterators is None else iterators
    times, cpu = [], []
    for i in range(steps):
        wall, c = _timed_step(built, iterators)
        times.append(wall)
        cpu.append(c)
        log(f"{label} step {i + 1}/{steps}: {wall:.{digits}f} s (CPU {c:.2f} s)")
    return times, cpu


def time_built(built: Built, label: str, warmup: int, steps: int, log: Log) -> dict:
    """``warmup`` fit steps (the first traces and XLA-compiles), then ``steps`` timed compiled ``train_function`` calls."""
    log(f"    [{label}] compiling + {warmup} warm-up step(s)")
    warm_s = built.warm(warmup)  # trainer.fit: builds optimizer/metric state, traces + compiles train_function
    log(f"    [{label}] compile + warm-up: {warm_s:.1f} s")
    times, cpu = time_steps(built, steps, f"    [{label}]", log)
    result = {
        "label": label,
        "total_params": built.total_params,
        "build_s": built.build_s,
        "compile_warmup_s": warm_s,
        "step_times_s": times,
        "step_cpu_s": cpu,
        "time": summarize_times(times),
        "cpu_median_s": float(np.median(cpu)),
    }
    log(f"    [{label}] median {result['time']['median_s']:.3f} s (IQR {result['time']['iqr_s']:.3f}), "
        f"CPU {result['cpu_median_s']:.2f} s")
    return result


def train_mode(cfg: Config, label: str, args: argparse.Namespace, images: np.ndarray, labels: np.ndarray,
               log: Log, built: Optional[Built] = None) -> tuple[dict, Built]:
    """Time one mode (``built`` reuses an already built trainer of ``cfg``).

    If XLA cannot compile the train step (an op without an XLA kernel) and ``--jit-fallback`` is on (default), the
    mode is rebuilt and timed with ``jit_compile=False``; the result says so (``jit_compile``, ``jit_fallback``).
    """
    if built is None:
        built = Built(cfg, images, labels, args.num_classes, args.warmup + args.steps)
        log(f"    [{label}] built + compiled in {built.build_s:.1f} s ({built.total_params:,} params, "
            f"jit_compile={cfg.train.jit_compile}, {cfg.train.mixed_precision})")
    try:
        result = time_built(built, label, args.warmup, args.steps, log)
        result.update(jit_compile=cfg.train.jit_compile, jit_fallback=None)
        return result, built
    except Exception as exc:  # noqa: BLE001
        op = xla_unsupported_op(exc)
        if not (op and cfg.train.jit_compile and args.jit_fallback):
            raise
    why = f"XLA (jit_compile) has no kernel for {op}"
    log(f"    [{label}] {why}: rebuilding with jit_compile=False (--no-jit-fallback to record a failure instead)")
    del built
    release_memory()
    nojit = config_from_dict({**cfg.to_dict(), "train": {**cfg.to_dict()["train"], "jit_compile": False}})
    built = Built(nojit, images, labels, args.num_classes, args.warmup + args.steps)
    result = time_built(built, label, args.warmup, args.steps, log)
    result.update(jit_compile=False, jit_fallback=why)
    return result, built


def measure_arch(arch: str, args: argparse.Namespace, prefix: str = "", log: Log = print) -> dict:
    """Every measurement of one architecture; a failing phase is recorded in ``errors`` and the others still run."""
    t0 = time.perf_counter()
    shape = (args.size, args.size, args.in_channels)
    errors: dict[str, str] = {}
    row = _empty_row(arch, args, errors)
    row["pid"] = os.getpid()

    def phase(name: str, what: str) -> None:
        log(f"{prefix} {arch}: {what} ({time.perf_counter() - t0:.0f} s into this arch)")

    def failed(name: str, exc: BaseException) -> None:
        errors[name] = _error(exc)
        log(f"{prefix} {arch}: {name} FAILED: {errors[name]}")
        if os.environ.get("ZOO_TRACEBACK"):
            traceback.print_exc()

    try:
        bcfg, dcfg = mode_configs(arch, args)
    except Exception as exc:  # noqa: BLE001 - bad --set/--config: every phase fails the same way
        for name in PHASES:
            errors[name] = _error(exc)
        row["wall_s"] = time.perf_counter() - t0
        return row
    images, labels = random_batch(args.batch, args.size, args.in_channels, args.num_classes, args.seed)

    # Baseline trainer first: its student is the network every per-network figure describes.
    baseline: Optional[Built] = None
    phase("build", "phase 1/5: build the baseline trainer, count parameters")
    release_memory()
    try:
        baseline = Built(bcfg, images, labels, args.num_classes, args.warmup + args.steps)
        student = student_network(baseline.model)
        row["student_params"], row["student_trainable_params"] = count_params(student)
        log(f"{prefix} {arch}: student {row['student_params']:,} params ({row['student_trainable_params']:,} "
            f"trainable), built + compiled in {baseline.build_s:.1f} s")
    except Exception as exc:  # noqa: BLE001
        failed("build", exc)
        for name in ("flops", "tflite", "baseline"):
            errors[name] = "skipped: the baseline model did not build"
    if baseline is not None:
        phase("flops", "phase 2/5: forward FLOPs at batch 1")
        try:
            t = time.perf_counter()
            row["flops"] = forward_flops(student, shape)
            row["gflops"] = row["flops"] / 1e9
            log(f"{prefix} {arch}: {row['gflops']:.2f} GFLOPs (batch 1, {time.perf_counter() - t:.1f} s)")
        except Exception as exc:  # noqa: BLE001
            failed("flops", exc)

        phase("tflite", "phase 3/5: TFLite float32 convert + latency")
        try:
            row["tflite"] = measure_tflite(student, shape, args, log=lambda m: log(f"{prefix} {arch}: {m}"))
        except Exception as exc:  # noqa: BLE001
            failed("tflite", exc)

        phase("baseline", f"phase 4/5: baseline training steps (CE only), {args.warmup} warm-up + {args.steps} timed")
        try:
            row["baseline"], baseline = train_mode(bcfg, "baseline", args, images, labels, log, built=baseline)
        except Exception as exc:  # noqa: BLE001
            failed("baseline", exc)
        del baseline, student
    release_memory()

    phase("distill", f"phase 5/5: distillation training steps ({describe_teacher(dcfg)}), "
                     f"{args.warmup} warm-up + {args.steps} timed")
    try:
        built = Built(dcfg, images, labels, args.num_classes, args.warmup + args.steps)
        log(f"    [distill] built + compiled in {built.build_s:.1f} s ({built.total_params:,} params, "
            f"jit_compile={dcfg.train.jit_compile}, {dcfg.train.mixed_precision})")
        n_student, n_student_trainable = count_params(student_network(built.model))
        n_total, n_total_trainable = count_params(built.model)
        row["teacher_params"] = n_total - n_student
        row["teacher_trainable_params"] = n_total_trainable - n_student_trainable
        try:
            row["teacher_flops"] = teacher_forward_flops(built.model, args)
            row["teacher_gflops"] = row["teacher_flops"] / 1e9
            if row["flops"]:
                row["flop_floor"] = 1.0 + row["teacher_flops"] / row["flops"]
        except Exception as exc:  # noqa: BLE001 - the timing below does not need the count
            errors["teacher_flops"] = _error(exc)
        if row["student_params"] is None:  # the baseline did not build: take the student from this model
            row["student_params"], row["student_trainable_params"] = n_student, n_student_trainable
        elif n_student != row["student_params"]:
            raise AssertionError(f"student parameter count differs between modes: {n_student:,} vs "
                                 f"{row['student_params']:,}")
        row["distill"], built = train_mode(dcfg, "distill", args, images, labels, log, built=built)
        del built
    except Exception as exc:  # noqa: BLE001
        failed("distill", exc)
    release_memory()

    if row["baseline"] and row["distill"]:
        b, d = row["baseline"]["time"]["median_s"], row["distill"]["time"]["median_s"]
        row["time_ratio"] = d / b if b > 0 else None
        bc, dc = row["baseline"]["cpu_median_s"], row["distill"]["cpu_median_s"]
        row["cpu_time_ratio"] = dc / bc if bc > 0 else None
    peak = hwm_bytes()
    row["peak_rss_mb"] = peak / MB if peak else None
    row["wall_s"] = time.perf_counter() - t0
    log(f"{prefix} {arch}: done in {row['wall_s']:.0f} s: {summary_line(row)}")
    return row


def measure_tflite(student: keras.Model, shape: tuple[int, int, int], args: argparse.Namespace, log: Log) -> dict:
    t = time.perf_counter()
    blob = convert_tflite(student, shape, "float32")
    convert_s = time.perf_counter() - t
    images = np.random.default_rng(args.seed + 1).random((args.tflite_images, *shape), dtype=np.float32)
    with tempfile.TemporaryDirectory(prefix="zoo_tflite_") as tmp:
        path = Path(tmp) / "student.tflite"
        path.write_bytes(blob)
        result = verify_tflite(student, path, images, latency_repeats=args.tflite_repeats)
    result["convert_s"] = convert_s
    result["latency_repeats"] = args.tflite_repeats
    log(f"TFLite {result['size_bytes'] / MB:.1f} MB, converted in {convert_s:.1f} s, {result['mean_latency_ms']:.1f} "
        f"ms/image (1 thread, {result['resolver']}), max|diff| vs Keras {result['max_abs_diff']:.2e}")
    return result


def describe_teacher(cfg: Config) -> str:
    t = cfg.teacher
    return (f"teacher pool={t.pool_size} hidden={t.hidden_dim} blocks={t.num_blocks} heads={t.num_heads} "
            f"pe={'on' if t.use_positional_encoding else 'off'} norm={'on' if t.use_normalization else 'off'}, "
            f"jit={'on' if cfg.train.jit_compile else 'off'}")


def summary_line(row: dict) -> str:
    parts = [f"{fmt(row.get('student_params'), ',')} params", f"{fmt(row.get('gflops'), '.2f')} GFLOPs",
             f"steps {fmt(_median(row.get('baseline')), '.2f')} / {fmt(_median(row.get('distill')), '.2f')} s",
             f"ratio {fmt(row.get('time_ratio'), '.2f', '×')}",
             f"TFLite {fmt((row.get('tflite') or {}).get('mean_latency_ms'), '.0f')} ms"]
    if row.get("errors"):
        parts.append(f"errors in {', '.join(row['errors'])}")
    return ", ".join(parts)


def _median(mode: Optional[dict]) -> Optional[float]:
    return mode["time"]["median_s"] if mode else None


# -------------------------------------------------------------------------------------------------------- workers
def run_worker(arch: str, args: argparse.Namespace, prefix: str, log: Log) -> dict:
    """:func:`measure_arch` in a fresh Python process (this script with ``--worker``); its progress is streamed."""
    task = {"arch": arch, "prefix": prefix, "args": _args_dict(args)}
    return run_script_worker(__file__, task, arch, log, prefix="zoo_bench_")


def worker_main(spec_path: str, out_path: str) -> int:
    task = json.loads(Path(spec_path).read_text())
    args = argparse.Namespace(**task["args"])
    row = measure_arch(task["arch"], args, task["prefix"])
    atomic_write_json(out_path, row)
    return 0


def _args_dict(args: argparse.Namespace) -> dict:
    return {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}


ROW_FIGURES = ("student_params", "student_trainable_params", "teacher_params", "teacher_trainable_params", "flops",
               "gflops", "teacher_flops", "teacher_gflops", "flop_floor", "baseline", "distill", "time_ratio",
               "cpu_time_ratio", "tflite")


def _empty_row(arch: str, args: argparse.Namespace, errors: dict[str, str]) -> dict[str, Any]:
    """A row with every figure still ``None`` (``measure_arch`` fills it in; a failed worker leaves it so)."""
    return {"arch": arch, "encoder": args.encoder, "errors": errors, **dict.fromkeys(ROW_FIGURES)}


def _failed_row(arch: str, args: argparse.Namespace, why: str) -> dict:
    return _empty_row(arch, args, {"worker": why})


# ------------------------------------------------------------------------------------------------------ reporting
COLUMNS = ("arch", "student params (trainable)", "teacher params", "GFLOPs (b=1)", "teacher GFLOPs (b=1)",
           "FLOP floor", "baseline step s", "distill step s", "distill / baseline", "CPU ratio", "TFLite ms (1 thr)",
           "TFLite max \\|diff\\|", "status")


def _fmt_step(mode: Optional[dict]) -> str:
    if not mode:
        return "—"
    t = mode["time"]
    return f"{t['median_s']:.2f} (IQR {t['iqr_s']:.2f})"


def format_table(rows: Sequence[dict]) -> str:
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "|".join([":---"] + ["---:"] * (len(COLUMNS) - 2) + [":---"]) + "|"]
    for r in rows:
        tfl = r.get("tflite") or {}
        errors = r.get("errors") or {}
        status = "ok" if not errors else "; ".join(f"**{k} failed**: {v[:120]}" for k, v in errors.items())
        fallback = jit_fallback_note(r)
        if fallback:
            status += f"; {fallback}"
        params = "—"
        if r.get("student_params") is not None:
            params = f"{r['student_params']:,} ({r['student_trainable_params']:,})"
        cells = [r["arch"], params, fmt(r.get("teacher_params"), ","), fmt(r.get("gflops"), ".2f"),
                 fmt(r.get("teacher_gflops"), ".2f"), fmt(r.get("flop_floor"), ".2f", "×"),
                 _fmt_step(r.get("baseline")), _fmt_step(r.get("distill")), fmt(r.get("time_ratio"), ".2f", "×"),
                 fmt(r.get("cpu_time_ratio"), ".2f", "×"), fmt(tfl.get("mean_latency_ms"), ".1f"),
                 fmt(tfl.get("max_abs_diff"), ".1e"), status]
        lines.append("| " + " | ".join(str(c).replace("|", "\\|") for c in cells) + " |")
    return "\n".join(lines)


def jit_fallback_note(row: dict) -> Optional[str]:
    """Which modes were timed without XLA because XLA could not compile them, or None."""
    modes = [m for m in ("baseline", "distill") if (row.get(m) or {}).get("jit_fallback")]
    if not modes:
        return None
    return f"{' + '.join(modes)} timed **without XLA**: {row[modes[0]]['jit_fallback']}"


# -------------------------------------------------------------------------------------------------------- driver
def parse_archs(values: Sequence[str]) -> list[str]:
    archs = [a.strip() for v in values for a in v.split(",") if a.strip()]
    unknown = [a for a in archs if a not in ZOO]
    if unknown:
        raise UserError(f"unknown architecture(s) {', '.join(unknown)} in --archs; the zoo is: {', '.join(ZOO)}")
    if not archs:
        raise UserError(f"--archs is empty; choose from: {', '.join(ZOO)}")
    return list(dict.fromkeys(archs))


def run_benchmark(args: argparse.Namespace, log: Log = print) -> dict:
    """Run the benchmark described by parsed ``args`` (see :func:`parse_args`); write JSON + Markdown; return the JSON."""
    t_start = time.time()
    archs = parse_archs(args.archs)
    if args.steps < 1 or args.warmup < 1:
        raise UserError("--steps must be >= 1 and --warmup >= 1 (the first step traces and compiles)")
    if args.size < 32 or args.batch < 1 or args.num_classes < 2 or args.in_channels < 1:
        raise UserError("--size must be >= 32, --batch >= 1, --num-classes >= 2, --in-channels >= 1")
    if args.tflite_repeats < 1 or args.tflite_images < 1:
        raise UserError("--tflite-repeats and --tflite-images must be >= 1")
    # Validate --config / --set once, up front (a typo should not cost nine failed rows).
    bcfg, dcfg = mode_configs(archs[0], args)
    isolated = args.isolation == "process"
    notes = [
        "GFLOPs: forward pass of the student at batch 1, counted by TF's profiler (float_operation) on the frozen "
        "graph; multiply and add count separately (2·MACs); ops without registered statistics (ReLU, resize, pad, "
        "concat) count 0. Teacher GFLOPs: the same count for the teacher head on one image's logits. FLOP floor: "
        "1 + teacher / student GFLOPs, the distill / baseline ratio if the head ran at the network's FLOP rate.",
        f"Step times: median of {args.steps} compiled train_function calls per mode after {args.warmup} warm-up fit "
        "step(s) (tracing + XLA compilation, in the JSON as compile_warmup_s); baseline = CE only, distill = "
        f"student + teacher ({describe_teacher(dcfg)}), loss CE + CE + MSE. The two modes run one after the other, "
        "so background load can move their ratio; benchmarks/teacher_overhead.py measures a paired ratio.",
        f"TFLite: float32, builtins only, [1, {args.size}, {args.size}, {args.in_channels}], mean of "
        f"{args.tflite_repeats} single-threaded invokes after one warm-up (signature-runner overhead included); "
        f"max|diff| = max |TFLite − Keras| logits on {args.tflite_images} random image(s).",
        "Params: all weights of the student incl. BatchNorm statistics, trainable ones in parentheses (what SMP's "
        "pins count); teacher params = AxialTeacherHead weights incl. its BN statistics.",
    ]
    if isolated:
        notes.append("Each architecture runs in a fresh worker process.")
    notes.append("CPU ratio: distill / baseline median process CPU time per step (all threads); it moves much less "
                 "than the wall-time ratio when other jobs share the cores.")
    machine = machine_info()
    load = machine["loadavg_at_start"]
    log(f"[setup] {machine['cpu_model']}, {machine['usable_cores']} cores, TF {machine['tensorflow']}, "
        f"Keras {machine['keras']}; load average {fmt_load(load)}")
    log(f"[setup] {len(archs)} architecture(s): {', '.join(archs)}; encoder {args.encoder}, input "
        f"{args.size}x{args.size}x{args.in_channels}, batch {args.batch}, {args.num_classes} classes, "
        f"{args.warmup} warm-up + {args.steps} timed steps per mode, {bcfg.train.mixed_precision}, "
        f"jit_compile={bcfg.train.jit_compile}; isolation {args.isolation}")

    rows: list[dict] = []
    loads: list[list[float]] = [load] if load else []
    for i, arch in enumerate(archs, 1):
        prefix = f"[arch {i}/{len(archs)}]"
        log(f"{prefix} {arch}: start, {time.time() - t_start:.0f} s elapsed, load average {fmt_load(_loadavg())}")
        try:
            if isolated:
                row = run_worker(arch, args, prefix, log)
            else:
                row = measure_arch(arch, args, prefix, log)
        except WorkerFailed as exc:
            log(f"{prefix} {arch}: {exc}")
            row = _failed_row(arch, args, str(exc))
        except Exception as exc:  # noqa: BLE001 - in-process: one architecture must not end the benchmark
            log(f"{prefix} {arch}: FAILED: {_error(exc)}")
            row = _failed_row(arch, args, _error(exc))
        row["loadavg_after"] = _loadavg()
        if row["loadavg_after"]:
            loads.append(row["loadavg_after"])
        rows.append(row)

    load_end = _loadavg()
    machine["loadavg_at_end"] = load_end
    wall = time.time() - t_start
    table = format_table(rows)
    summary = [f"FAILED: {r['arch']}: {k}: {v}" for r in rows for k, v in (r.get("errors") or {}).items()]
    summary += [f"NOTE: {r['arch']}: {jit_fallback_note(r)} (jit_compile=False)" for r in rows if jit_fallback_note(r)]
    if wall > BUDGET_S:
        summary.append(f"NOTE: wall time {wall / 60:.1f} min exceeds the {BUDGET_S // 60} min budget of the default "
                       "run on this machine (check the load average).")
    mean_load = [float(np.mean([x[k] for x in loads])) for k in range(3)] if loads else None
    payload = {
        "benchmark": "zoo",
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "wall_time_s": wall,
        "machine": machine,
        "loadavg_mean_of_samples": mean_load,
        "args": _args_dict(args),
        "resolved": {"archs": archs, "baseline_config": bcfg.to_dict(), "distill_config": dcfg.to_dict()},
        "notes": notes,
        "summary": summary,
        "rows": rows,
        "table_markdown": table,
    }
    out = Path(args.out)
    header = [
        f"# Model zoo: parameters, FLOPs, training step, TFLite ({time.strftime('%Y-%m-%d %H:%M')})",
        "",
        f"- machine: {machine['cpu_model']}, {machine['usable_cores']} usable cores, "
        f"{fmt(machine['mem_total_gb'], '.0f')} GB RAM; TF {machine['tensorflow']}, Keras {machine['keras']}",
        f"- load average (1/5/15 min) at start {fmt_load(load)}, at end {fmt_load(load_end)}, mean of the "
        f"per-architecture samples {fmt_load(mean_load)} ({machine['usable_cores']} cores; above that, other "
        "processes competed for the CPU)",
        f"- encoder {args.encoder}; input {args.size}×{args.size}×{args.in_channels}, batch {args.batch}, "
        f"{args.num_classes} classes, {bcfg.train.mixed_precision}, jit_compile={bcfg.train.jit_compile}, "
        f"optimizer {bcfg.train.optimizer}; {args.warmup} warm-up + {args.steps} timed steps per mode; config "
        f"{args.config}" + (f", --set {' '.join(args.overrides)}" if args.overrides else ""),
        f"- wall time {wall:.0f} s",
        *[f"- note: {n}" for n in notes],
        "",
        table,
        "",
        *summary,
    ]
    write_report(out, payload, "\n".join(header) + "\n", wall, log)
    return payload


def _loadavg() -> Optional[list]:
    try:
        return list(os.getloadavg())
    except OSError:
        return None


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="zoo.py",
        description="Parameters, FLOPs, training-step time (baseline vs distillation) and TFLite latency of the "
                    "model zoo.")
    p.add_argument("--archs", nargs="+", default=list(ZOO), metavar="ARCH",
                   help=f"architectures, space or comma separated (default: all of {', '.join(ZOO)})")
    p.add_argument("--encoder", default=DEFAULT_ENCODER, help="encoder of every architecture (default: %(default)s)")
    p.add_argument("--size", type=int, default=256, help="square input size (default: %(default)s)")
    p.add_argument("--batch", type=int, default=8, help="training batch size (default: %(default)s)")
    p.add_argument("--num-classes", type=int, default=5, help="(default: %(default)s)")
    p.add_argument("--in-channels", type=int, default=3, help="(default: %(default)s)")
    p.add_argument("--config", default="configs/quickstart.yaml",
                   help="teacher / train config (default: %(default)s); its model: section is replaced")
    add_set_arg(p, "teacher.pool_size=4")
    p.add_argument("--steps", type=int, default=DEFAULT_STEPS,
                   help="timed training steps per mode (default: %(default)s)")
    p.add_argument("--warmup", type=int, default=DEFAULT_WARMUP,
                   help="untimed warm-up fit steps per mode, the first compiles (default: %(default)s)")
    p.add_argument("--tflite-repeats", type=int, default=DEFAULT_TFLITE_REPEATS,
                   help="timed TFLite invokes (after one warm-up) (default: %(default)s)")
    p.add_argument("--tflite-images", type=int, default=DEFAULT_TFLITE_IMAGES,
                   help="random images for the TFLite vs Keras max|diff| (default: %(default)s)")
    p.add_argument("--no-jit-fallback", dest="jit_fallback", action="store_false",
                   help="record a failure when XLA cannot compile a train step, instead of timing it without XLA")
    p.add_argument("--isolation", choices=("process", "none"), default="process",
                   help="'process' (default): each architecture in a fresh worker process; 'none': all in this one")
    p.add_argument("--seed", type=int, default=0, help="seed of the random batch (default: %(default)s)")
    add_out_arg(p, DEFAULT_OUT)
    add_worker_args(p)
    return p.parse_args(argv)


def main(argv: Optional[Sequence[str]] = None) -> int:
    return run_main(parse_args(argv), run_benchmark, worker_main)


if __name__ == "__main__":
    sys.exit(main())

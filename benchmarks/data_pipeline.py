#!/usr/bin/env python
"""Does data loading keep up with training? Pipeline images/s against the training step rate.

    python benchmarks/data_pipeline.py                                  # configs/drosophila.yaml (real data)
    python benchmarks/data_pipeline.py --config configs/quickstart.yaml # offline, synthetic data
    python benchmarks/data_pipeline.py --config quickstart --set train.batch_size=16 --batches 100 --steps 20

For the config (``--config``, ``--set KEY=VALUE`` overrides as in ``train.py``; default ``configs/drosophila.yaml``
when it exists, else ``configs/quickstart.yaml``):

1. **dataset** -- :func:`axial_kd_tf.data.load_data` builds the :class:`~axial_kd_tf.data.DataBundle` (timed as
   ``load_s``: file decoding, synthetic generation, tiling).
2. **pipeline** -- ``bundle.train_dataset(train.batch_size, data.seed, data.crop_size, data.augment)``, the exact
   training input of ``train.py`` (seeded shuffle, random crops, flips, rot90, batching, prefetch), drained alone:
   ``--pipeline-warmup`` batches untimed (first shuffle buffer, AUTOTUNE ramp-up), then ``--batches`` batches timed
   back to back. images/s = batches × batch size / wall time (a crop counts as one image); process CPU time per batch
   is recorded too (what the pipeline takes from the cores that training also needs).
3. **training** -- for each mode (``baseline``: ``distill.enabled: false``; ``distill``: the config's teacher), the
   model, trainer and optimizer are built and compiled as ``train.py`` builds them (``_measure.Built``, with
   the zoo benchmark's XLA fallback). After ``--warmup`` ``fit`` steps (tracing, XLA compilation), ``--steps`` calls
   of the compiled ``train_function`` are timed on one fixed batch taken from the pipeline, so no input cost is in
   them: training images/s = batch size / median step time.
4. **headroom** = pipeline images/s / training images/s per mode; **"keeps up"** when ≥ 1 (the pipeline alone can
   produce batches at least as fast as the model alone consumes them).
5. **fed** (unless ``--no-fed``) -- the same compiled trainer then takes ``--steps`` steps from the real pipeline
   (one untimed step first), then ``--steps`` more on the fixed batch (A-B-A blocks, so a load change on a shared
   machine biases neither side; the fixed-batch numbers of steps 3-4 then cover both A blocks). The pipeline and
   training now share the cores; ``input stall`` = fed median step / fixed-batch median step − 1 is what input
   costs training in practice, on wall time and on process CPU time (all threads, tf.data's included). A wall
   stall without a CPU stall means other processes took the cores; headroom ≥ 1 with a real (CPU) stall means the
   pipeline competes with training for the CPU rather than being too slow on its own.

The distillation mode is skipped (a ``NOT MEASURED`` row, ``errors`` in the JSON) when the teacher's estimated
training memory (``_measure.estimate_teacher_bytes``) exceeds 85 % of the available memory, e.g. a pool-1
teacher on 256² crops at batch 8 (~18 GB); ``--no-memory-guard`` runs it anyway. A mode that fails is recorded the
same way and the other mode still runs.

Writes ``--out`` (JSON, atomically; default ``benchmarks/results/data_pipeline.json``) and the table as Markdown
next to it (``.md``); ``run_benchmark(parse_args([...]))`` returns the JSON payload
(``tests/test_data_pipeline_benchmark.py``).
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Callable, Optional, Sequence

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

_ROOT = Path(__file__).resolve().parent.parent
if str(_ROOT) not in sys.path:  # `python benchmarks/data_pipeline.py` puts benchmarks/ on the path, not the repo root
    sys.path.insert(0, str(_ROOT))

import numpy as np  # noqa: E402

from axial_kd_tf.config import Config, config_from_dict, load_config, resolve_config_path  # noqa: E402
from axial_kd_tf.data import DataBundle, load_data  # noqa: E402
from axial_kd_tf.errors import UserError  # noqa: E402
from benchmarks._common import add_out_arg, add_set_arg, run_main, write_report  # noqa: E402
from benchmarks._measure import (  # noqa: E402
    fmt_load,
    estimate_teacher_bytes,
    machine_info,
    mem_available_bytes,
    release_memory,
    summarize_times,
)
from benchmarks.zoo import _error, _loadavg, _timed_step, describe_teacher, time_steps, train_mode  # noqa: E402

DEFAULT_CONFIGS = ("configs/drosophila.yaml", "configs/quickstart.yaml")
OFFLINE_CONFIG = "configs/quickstart.yaml"
DEFAULT_OUT = Path("benchmarks/results/data_pipeline.json")
DEFAULT_BATCHES, DEFAULT_PIPELINE_WARMUP = 50, 5
DEFAULT_STEPS, DEFAULT_WARMUP = 10, 2
MODES = ("baseline", "distill")

Log = Callable[[str], None]


def default_config() -> str:
    """``configs/drosophila.yaml`` when it exists (real data), else the offline ``configs/quickstart.yaml``."""
    for name in DEFAULT_CONFIGS:
        if (_ROOT / name).is_file():
            return str(_ROOT / name)
    return OFFLINE_CONFIG


# ------------------------------------------------------------------------------------------------------ measuring
def time_pipeline(bundle: DataBundle, cfg: Config, batches: int, warmup: int, log: Log = print) -> dict:
    """Drain ``bundle.train_dataset`` (as ``train.py`` builds it): ``warmup`` untimed, then ``batches`` timed batches."""
    batch_size = cfg.train.batch_size
    t0 = time.perf_counter()
    dataset = bundle.train_dataset(batch_size, cfg.data.seed, cfg.data.crop_size, cfg.data.augment)
    iterator = iter(dataset)
    for _ in range(warmup):
        next(iterator)
    warm_s = time.perf_counter() - t0
    times: list[float] = []
    c0 = time.process_time()
    start = time.perf_counter()
    for _ in range(batches):
        t = time.perf_counter()
        x, _y = next(iterator)
        times.append(time.perf_counter() - t)
    seconds = time.perf_counter() - start
    cpu = time.process_time() - c0
    images = batches * batch_size
    result = {
        "batch_size": batch_size,
        "batch_shape": [int(d) for d in x.shape],
        "crop_size": cfg.data.crop_size,
        "augment": cfg.data.augment,
        "warmup_batches": warmup,
        "warmup_s": warm_s,
        "batches": batches,
        "images": images,
        "seconds": seconds,
        "images_per_s": images / seconds,
        "batch_times_s": times,
        "time": summarize_times(times),
        "cpu_s": cpu,
        "cpu_s_per_batch": cpu / batches,
    }
    log(f"[pipeline] {batches} batches of {list(x.shape)} in {seconds:.3f} s: {result['images_per_s']:,.1f} images/s "
        f"(median {result['time']['median_s'] * 1e3:.2f} ms per batch, CPU {result['cpu_s_per_batch'] * 1e3:.2f} ms "
        f"per batch; warm-up {warm_s:.2f} s)")
    return result


def mode_config(cfg: Config, mode: str) -> Config:
    raw = cfg.to_dict()
    raw["distill"]["enabled"] = mode == "distill"
    return config_from_dict(raw)


def time_training(cfg: Config, mode: str, bundle: DataBundle, batch: tuple[np.ndarray, np.ndarray], steps: int,
                  warmup: int, fed: bool, log: Log = print) -> dict:
    """Steps of ``mode`` on the fixed ``batch`` (compute only), then, with ``fed``, on the real pipeline."""
    mcfg = mode_config(cfg, mode)
    release_memory()
    opts = SimpleNamespace(num_classes=bundle.num_classes, warmup=warmup, steps=steps, jit_fallback=True)
    result, built = train_mode(mcfg, mode, opts, batch[0], batch[1], lambda m: log("  " + m.strip()))
    batch_size = int(batch[0].shape[0])
    median = result["time"]["median_s"]
    result.update(mode=mode, distill_enabled=mcfg.distill.enabled, batch_size=batch_size,
                  images_per_s=batch_size / median)
    log(f"[{mode}] fixed batch: median step {median:.4f} s = {result['images_per_s']:,.1f} images/s")
    if fed:
        # A-B-A blocks: fixed-batch steps (above), steps fed by the real pipeline, fixed-batch steps again, so that a
        # load change on the shared machine during the run biases neither side. The fed steps use the same compiled
        # trainer (same element spec, so no new trace is expected; the first fed step is untimed anyway: it starts
        # the pipeline's threads and fills its buffers).
        fixed_dataset = built.dataset
        built.dataset = bundle.train_dataset(cfg.train.batch_size, cfg.data.seed, cfg.data.crop_size, cfg.data.augment)
        iterators: dict = {}
        first, _ = _timed_step(built, iterators)
        times, cpu = time_steps(built, steps, f"  [{mode} fed]", log, digits=4, iterators=iterators)
        built.dataset, iterators = fixed_dataset, {}  # drops the pipeline's iterator before the fixed-batch steps
        after, after_cpu = time_steps(built, steps, f"  [{mode}] fixed batch again,", log, digits=4, iterators=iterators)
        result["fixed_before_s"], result["fixed_after_s"] = list(result["step_times_s"]), after
        result["step_times_s"] = result["step_times_s"] + after
        result["step_cpu_s"] = result["step_cpu_s"] + after_cpu
        result["time"] = summarize_times(result["step_times_s"])
        result["cpu_median_s"] = float(np.median(result["step_cpu_s"]))
        median = result["time"]["median_s"]
        result["images_per_s"] = batch_size / median
        fed_median, fed_cpu = float(np.median(times)), float(np.median(cpu))
        result["fed"] = {
            "first_step_s": first,
            "step_times_s": times,
            "step_cpu_s": cpu,
            "time": summarize_times(times),
            "cpu_median_s": fed_cpu,
            "images_per_s": batch_size / fed_median,
            "input_stall": fed_median / median - 1.0,
            "cpu_stall": fed_cpu / result["cpu_median_s"] - 1.0,
        }
        log(f"[{mode}] fixed batch before + after: median step {median:.4f} s = {result['images_per_s']:,.1f} images/s;"
            f" fed by the pipeline: median step {fed_median:.4f} s = {result['fed']['images_per_s']:,.1f} images/s, "
            f"input stall {result['fed']['input_stall']:+.1%} (wall), {result['fed']['cpu_stall']:+.1%} (CPU)")
    del built
    release_memory()
    return result


def headroom(pipeline_images_per_s: float, training_images_per_s: float) -> tuple[float, bool]:
    """(pipeline / training images/s, keeps up = ratio ≥ 1)."""
    ratio = pipeline_images_per_s / training_images_per_s
    return ratio, bool(ratio >= 1.0)


# ------------------------------------------------------------------------------------------------------ reporting
def _num(v: Optional[float], spec: str, suffix: str = "") -> str:
    return "—" if v is None or not math.isfinite(v) else f"{v:{spec}}{suffix}"


def format_table(payload: dict) -> str:
    p = payload["pipeline"]
    crop = f"crop {p['crop_size']}" if p["crop_size"] else "full images"
    rows = [
        "| what | images/s | s per batch (median) | headroom (pipeline / training) | verdict | fed by the pipeline: "
        "images/s | input stall, wall / CPU |",
        "|:---|---:|---:|---:|:---|---:|---:|",
        f"| data pipeline alone (batch {p['batch_size']}, {crop}, augment {'on' if p['augment'] else 'off'}) | "
        f"{p['images_per_s']:,.1f} | {p['time']['median_s']:.4f} | — | — | — | — |",
    ]
    for m in payload["modes"]:
        fed = m.get("fed")
        verdict = "keeps up" if m["keeps_up"] else "**does not keep up**"
        jit = " (timed without XLA)" if m.get("jit_fallback") else ""
        rows.append(
            f"| training, {m['mode']}{jit} | {m['images_per_s']:,.1f} | {m['time']['median_s']:.4f} | "
            f"{m['headroom']:,.2f}× | {verdict} | {_num(fed['images_per_s'] if fed else None, ',.1f')} | "
            f"{_num(fed['input_stall'] * 100 if fed else None, '+.0f', ' %')} / "
            f"{_num(fed['cpu_stall'] * 100 if fed else None, '+.0f', ' %')} |")
    for mode, why in payload.get("errors", {}).items():
        rows.append(f"| training, {mode} | — | — | — | NOT MEASURED: {why} | — | — |")
    return "\n".join(rows)


def _markdown(payload: dict, table: str) -> str:
    m, d = payload["machine"], payload["dataset"]
    lines = [
        f"# Data pipeline vs training step rate ({payload['created']})",
        "",
        f"- config {payload['config_path']}" + (f", --set {' '.join(payload['overrides'])}" if payload["overrides"]
                                                 else ""),
        f"- dataset {d['name']}: {d['train_images']} training images {d['image_shape']}, {d['num_classes']} classes, "
        f"loaded in {d['load_s']:.1f} s",
        f"- model {payload['model']}; {payload['teacher']}; {payload['mixed_precision']}",
        f"- machine: {m['cpu_model']}, {m['usable_cores']} usable cores; TF {m['tensorflow']}, Keras {m['keras']}; "
        f"load average (1/5/15 min) at start {fmt_load(m['loadavg_at_start'])}, at end "
        f"{fmt_load(m.get('loadavg_at_end'))}",
        f"- pipeline: {payload['pipeline']['warmup_batches']} warm-up + {payload['pipeline']['batches']} timed batches; "
        f"training: {payload['args']['warmup']} warm-up fit step(s) + {payload['args']['steps']} timed steps per mode "
        f"on a fixed batch" + ("" if payload["args"]["no_fed"] else ", then as many fed by the pipeline and as many on "
                                                              "the fixed batch again"),
        f"- wall time {payload['wall_time_s']:.0f} s",
        "",
        table,
        "",
        f"**Verdict: {payload['verdict']}.** Headroom = pipeline images/s ÷ training images/s (each measured alone); "
        "input stall = median step fed by the pipeline ÷ median step on a fixed batch − 1 (pipeline and training "
        "running together; fixed-batch steps before and after the fed ones). Wall stall without CPU stall = other "
        "processes took the cores (compare the load average with the cores), not input cost.",
    ]
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------------------------------------- driver
def run_benchmark(args: argparse.Namespace, log: Log = print) -> dict:
    """Run the benchmark for parsed ``args`` (see :func:`parse_args`); write JSON + Markdown; return the JSON."""
    t_start = time.time()
    if args.batches < 1 or args.pipeline_warmup < 0 or args.steps < 1 or args.warmup < 1:
        raise UserError("--batches and --steps must be >= 1, --pipeline-warmup >= 0, --warmup >= 1 (the first "
                        "training step traces and compiles)")
    modes = list(dict.fromkeys(args.modes))
    defaulted = args.config is None
    config_path = default_config() if defaulted else str(resolve_config_path(args.config))
    cfg = load_config(config_path, args.overrides)
    machine = machine_info()
    log(f"[setup] {machine['cpu_model']}, {machine['usable_cores']} cores, TF {machine['tensorflow']}; load average "
        f"{fmt_load(machine['loadavg_at_start'])}")
    log(f"[setup] config {config_path}; dataset '{cfg.data.dataset}', batch {cfg.train.batch_size}, crop "
        f"{cfg.data.crop_size}, augment {cfg.data.augment}; model {cfg.model.arch}, jit_compile={cfg.train.jit_compile}")

    t0 = time.perf_counter()
    try:
        bundle = load_data(cfg)
    except UserError as exc:
        if defaulted and Path(config_path).name != Path(OFFLINE_CONFIG).name:
            raise UserError(f"{exc} (default config {config_path}; pass --config {OFFLINE_CONFIG} to run offline on "
                            f"synthetic data)") from None
        raise
    load_s = time.perf_counter() - t0
    log(f"[data] {len(bundle.train_images)} training images {list(bundle.train_images.shape[1:])}, "
        f"{bundle.num_classes} classes, loaded in {load_s:.1f} s")

    pipeline = time_pipeline(bundle, cfg, args.batches, args.pipeline_warmup, log)
    x, y = next(iter(bundle.train_dataset(cfg.train.batch_size, cfg.data.seed, cfg.data.crop_size, cfg.data.augment)))
    fixed = (x.numpy(), y.numpy())

    results: list[dict] = []
    errors: dict[str, str] = {}
    for mode in modes:
        if mode == "distill" and args.memory_guard:
            side = max(int(d) for d in fixed[0].shape[1:3])
            need, avail = estimate_teacher_bytes(mode_config(cfg, mode), cfg.train.batch_size, side), mem_available_bytes()
            if avail is not None and need > 0.85 * avail:
                errors[mode] = (f"skipped by the memory guard: est. teacher memory {need / 1024**3:.1f} GB > 85% of "
                                f"available {avail / 1024**3:.1f} GB (a smaller crop or batch, a larger "
                                f"teacher.pool_size, or --no-memory-guard to force)")
                log(f"[{mode}] {errors[mode]}")
                continue
        log(f"[{mode}] building and compiling ({time.time() - t_start:.0f} s elapsed)")
        try:
            r = time_training(cfg, mode, bundle, fixed, args.steps, args.warmup, not args.no_fed, log)
        except UserError:
            raise
        except Exception as exc:  # noqa: BLE001 - one failing mode must not lose the other's numbers
            errors[mode] = _error(exc)
            log(f"[{mode}] FAILED: {errors[mode]}")
            continue
        r["headroom"], r["keeps_up"] = headroom(pipeline["images_per_s"], r["images_per_s"])
        log(f"[{mode}] headroom {r['headroom']:.2f}× -> {'keeps up' if r['keeps_up'] else 'does NOT keep up'}")
        results.append(r)

    machine["loadavg_at_end"] = _loadavg()
    if results:
        worst = min(results, key=lambda r: r["headroom"])
        keeps_up = all(r["keeps_up"] for r in results)
        verdict = (f"the pipeline keeps up (lowest headroom {worst['headroom']:.2f}× in {worst['mode']} mode)" if keeps_up
                   else f"the pipeline does NOT keep up with {worst['mode']} training (headroom {worst['headroom']:.2f}×)")
    else:
        keeps_up, verdict = None, "no training mode was measured"
    if results and errors:
        verdict += f"; {', '.join(errors)} mode not measured (see the table)"
    payload: dict[str, Any] = {
        "benchmark": "data_pipeline",
        "created": time.strftime("%Y-%m-%d %H:%M"),
        "wall_time_s": None,
        "config_path": config_path,
        "overrides": list(args.overrides),
        "args": {"batches": args.batches, "pipeline_warmup": args.pipeline_warmup, "steps": args.steps,
                 "warmup": args.warmup, "modes": modes, "no_fed": bool(args.no_fed)},
        "config": cfg.to_dict(),
        "model": f"{cfg.model.arch} {cfg.model.options}" + (f" ({cfg.model.encoder})" if cfg.model.encoder else ""),
        "teacher": describe_teacher(mode_config(cfg, "distill")),
        "mixed_precision": cfg.train.mixed_precision,
        "machine": machine,
        "dataset": {
            "name": cfg.data.dataset,
            "load_s": load_s,
            "train_images": int(len(bundle.train_images)),
            "image_shape": [int(d) for d in bundle.train_images.shape[1:]],
            "num_classes": bundle.num_classes,
        },
        "pipeline": pipeline,
        "modes": results,
        "errors": errors,
        "keeps_up": keeps_up,
        "verdict": verdict,
    }
    table = format_table(payload)
    payload["wall_time_s"] = time.time() - t_start
    payload["table_markdown"] = table
    write_report(Path(args.out), payload, _markdown(payload, table), payload["wall_time_s"], log)
    return payload


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="data_pipeline.py",
                                description="Training input pipeline images/s against the training step rate.")
    p.add_argument("--config", default=None,
                   help=f"config YAML or name (default: {DEFAULT_CONFIGS[0]} if it exists, else {DEFAULT_CONFIGS[1]})")
    add_set_arg(p, "train.batch_size=16")
    p.add_argument("--batches", type=int, default=DEFAULT_BATCHES, help="timed pipeline batches (default: %(default)s)")
    p.add_argument("--pipeline-warmup", type=int, default=DEFAULT_PIPELINE_WARMUP,
                   help="untimed pipeline batches first (default: %(default)s)")
    p.add_argument("--steps", type=int, default=DEFAULT_STEPS,
                   help="timed training steps per mode (and as many fed steps) (default: %(default)s)")
    p.add_argument("--warmup", type=int, default=DEFAULT_WARMUP,
                   help="untimed warm-up fit steps per mode, the first compiles (default: %(default)s)")
    p.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES), help="(default: both)")
    p.add_argument("--no-fed", action="store_true", help="skip the training steps fed by the real pipeline")
    p.add_argument("--no-memory-guard", dest="memory_guard", action="store_false",
                   help="time the distillation mode even when its estimated teacher memory exceeds 85%% of the "
                        "available memory")
    add_out_arg(p, DEFAULT_OUT)
    return p.parse_args(argv)


def main(argv: Optional[Sequence[str]] = None) -> int:
    return run_main(parse_args(argv), run_benchmark)


if __name__ == "__main__":
    sys.exit(main())

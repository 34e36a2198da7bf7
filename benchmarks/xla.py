#!/usr/bin/env python
"""XLA on or off: the training step of every zoo architecture with and without ``jit_compile``, per precision.

    python benchmarks/xla.py                                     # nine ZOO archs × float32, mixed_bfloat16, resnet34,
                                                                 # 256², batch 8, the distillation step of --config
    python benchmarks/xla.py --archs unet,fpn --precisions mixed_bfloat16 --steps 5
    python benchmarks/xla.py --mode baseline                     # the network alone (distill.enabled: false)

For every architecture (``--archs``) and precision (``--precisions``) the same training step is built twice exactly
as ``train.py`` builds it (``_measure.Built``: ``build_model_from_config``, ``make_trainer``,
``make_optimizer``, ``trainer.compile(jit_compile=...)``), once with ``train.jit_compile: false`` and once with
``true``; after ``--warmup`` ``fit`` steps (tracing, and XLA compilation when on) ``--steps`` calls of the compiled
``train_function`` are timed on one fixed random batch (``zoo.time_built``). A row gives both medians, the XLA
speed-up (off / on: above 1 means XLA is faster), the same ratio of process CPU time (steadier when other jobs share
the cores) and the warm-up time, which holds XLA's compilation (paid once per run and input shape). The last column
says which setting was faster; the configs' ``train.jit_compile`` defaults are for a person to set from a run on an
idle machine (timings under load are not comparable).

``--mode distill`` (default) times the distillation step (student + ``--config``'s teacher, loss CE + CE + MSE) that
``train.py`` runs; ``--mode baseline`` the network alone (CE). ``--options`` passes model options (JSON) to every
architecture, e.g. a shallower encoder for a quick check. A cell that fails (for example an op XLA cannot compile) is
recorded in the row's ``errors`` and the rest still run. Each architecture runs in a fresh worker process by default
(``--isolation process``), so memory and XLA caches of one do not carry into the next.

Writes ``--out`` (JSON, atomically) and the same table as Markdown next to it (``.md``); ``run_benchmark(args)``
returns the JSON payload.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import traceback
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

_ROOT = Path(__file__).resolve().parent.parent
if str(_ROOT) not in sys.path:  # `python benchmarks/xla.py` puts benchmarks/ on the path, not the repo root
    sys.path.insert(0, str(_ROOT))

import numpy as np  # noqa: E402

from axial_kd_tf.config import Config, load_config  # noqa: E402
from axial_kd_tf.errors import UserError  # noqa: E402
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
    Built,
    fmt,
    fmt_load,
    machine_info,
    random_batch,
    release_memory,
)
from benchmarks.zoo import _args_dict, _error, _loadavg, parse_archs, time_built  # noqa: E402

DEFAULT_OUT = Path("benchmarks/results/xla.json")
PRECISIONS = ("float32", "mixed_bfloat16", "mixed_float16")
MODES = ("distill", "baseline")

Log = Callable[[str], None]


# -------------------------------------------------------------------------------------------------------- configs
def cell_config(arch: str, precision: str, jit: bool, args: argparse.Namespace) -> Config:
    """``--config`` with ``--set``, then this benchmark's architecture, input, precision, XLA and mode (these win)."""
    return load_config(args.config, [
        *args.overrides,
        "model.library=native", f"model.arch={arch}", f"model.encoder={args.encoder}", "model.encoder_weights=null",
        f"model.options={json.dumps(parse_options(args.options))}", f"data.synthetic.image_size={args.size}",
        "data.crop_size=null", f"train.batch_size={args.batch}", f"train.mixed_precision={precision}",
        f"train.jit_compile={'true' if jit else 'false'}",
        f"distill.enabled={'true' if args.mode == 'distill' else 'false'}",
    ])


def parse_options(text: str) -> dict:
    """``--options``: a JSON object of model options."""
    try:
        options = json.loads(text)
    except json.JSONDecodeError as exc:
        raise UserError(f"--options must be a JSON object, e.g. '{{\"encoder_depth\": 3}}': {exc}") from None
    if not isinstance(options, dict):
        raise UserError("--options must be a JSON object, e.g. '{\"encoder_depth\": 3}'")
    return options


def parse_precisions(values: Sequence[str]) -> list[str]:
    precisions = [p.strip() for v in values for p in v.split(",") if p.strip()]
    unknown = [p for p in precisions if p not in PRECISIONS]
    if unknown or not precisions:
        raise UserError(f"--precisions must name one or more of {', '.join(PRECISIONS)}, got "
                        f"{', '.join(unknown) or 'nothing'}")
    return list(dict.fromkeys(precisions))


# ------------------------------------------------------------------------------------------------------- measuring
def measure_cell(arch: str, precision: str, jit: bool, args: argparse.Namespace, images: np.ndarray,
                 labels: np.ndarray, log: Log) -> dict:
    """Build the step with ``jit_compile=jit`` and time it (``zoo.time_built``)."""
    label = f"{precision}, XLA {'on' if jit else 'off'}"
    built = Built(cell_config(arch, precision, jit, args), images, labels, args.num_classes, args.warmup + args.steps)
    log(f"    [{label}] built in {built.build_s:.1f} s ({built.total_params:,} params)")
    try:
        return time_built(built, label, args.warmup, args.steps, log)
    finally:
        del built
        release_memory()


def measure_arch(arch: str, args: argparse.Namespace, prefix: str = "", log: Log = print) -> list[dict]:
    """One row per precision: the step without and with XLA; a failing cell is recorded in ``errors``."""
    images, labels = random_batch(args.batch, args.size, args.in_channels, args.num_classes, args.seed)
    rows = []
    for precision in args.precisions:
        t0 = time.perf_counter()
        row: dict[str, Any] = {"arch": arch, "precision": precision, "encoder": args.encoder, "mode": args.mode,
                               "off": None, "on": None, "errors": {}, "pid": os.getpid()}
        for jit, key in ((False, "off"), (True, "on")):
            log(f"{prefix} {arch} {precision}: XLA {key}")
            try:
                row[key] = measure_cell(arch, precision, jit, args, images, labels, log)
            except Exception as exc:  # noqa: BLE001 - one cell must not end the architecture
                row["errors"][key] = _error(exc)
                log(f"{prefix} {arch} {precision}: XLA {key} FAILED: {row['errors'][key]}")
                if os.environ.get("XLA_BENCH_TRACEBACK"):
                    traceback.print_exc()
        add_ratios(row)
        row["wall_s"] = time.perf_counter() - t0
        log(f"{prefix} {arch} {precision}: XLA speed-up {fmt(row['speedup'], '.2f', '×')} "
            f"(CPU {fmt(row['cpu_speedup'], '.2f', '×')})")
        rows.append(row)
    return rows


def add_ratios(row: dict) -> None:
    """``speedup`` = median step without XLA / with XLA (wall), ``cpu_speedup`` the same of CPU time, ``faster``."""
    off, on = row.get("off"), row.get("on")
    row["speedup"] = row["cpu_speedup"] = row["faster"] = None
    if off and on:
        row["speedup"] = off["time"]["median_s"] / on["time"]["median_s"]
        row["cpu_speedup"] = off["cpu_median_s"] / on["cpu_median_s"] if on["cpu_median_s"] > 0 else None
        row["faster"] = "XLA on" if row["speedup"] > 1 else "XLA off"


# -------------------------------------------------------------------------------------------------------- workers
def run_worker(arch: str, args: argparse.Namespace, prefix: str, log: Log) -> list[dict]:
    """:func:`measure_arch` in a fresh Python process (this script with ``--worker``); its progress is streamed."""
    task = {"arch": arch, "prefix": prefix, "args": _args_dict(args)}
    return run_script_worker(__file__, task, arch, log, prefix="xla_bench_")["rows"]


def worker_main(spec_path: str, out_path: str) -> int:
    task = json.loads(Path(spec_path).read_text())
    rows = measure_arch(task["arch"], argparse.Namespace(**task["args"]), task["prefix"])
    atomic_write_json(out_path, {"rows": rows})
    return 0


# ------------------------------------------------------------------------------------------------------ reporting
COLUMNS = ("arch", "precision", "step s, XLA off", "step s, XLA on", "XLA speed-up (off/on)", "CPU speed-up",
           "warm-up s off / on (on: + XLA compile)", "faster", "status")


def _fmt_step(cell: Optional[dict]) -> str:
    if not cell:
        return "—"
    return f"{cell['time']['median_s']:.3f} (IQR {cell['time']['iqr_s']:.3f})"


def format_table(rows: Sequence[dict]) -> str:
    align = [":---", ":---"] + ["---:"] * 5 + [":---", ":---"]
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "|".join(align) + "|"]
    for r in rows:
        warm = " / ".join(fmt((r.get(k) or {}).get("compile_warmup_s"), ".1f") for k in ("off", "on"))
        errors = r["errors"]
        status = "ok" if not errors else "; ".join(f"**XLA {k} failed**: {v[:120]}" for k, v in errors.items())
        cells = [r["arch"], r["precision"], _fmt_step(r.get("off")), _fmt_step(r.get("on")),
                 fmt(r.get("speedup"), ".2f", "×"), fmt(r.get("cpu_speedup"), ".2f", "×"), warm,
                 r.get("faster") or "—", status]
        lines.append("| " + " | ".join(str(c).replace("|", "\\|") for c in cells) + " |")
    return "\n".join(lines)


def _failed_rows(arch: str, args: argparse.Namespace, why: str) -> list[dict]:
    rows = []
    for precision in args.precisions:
        row = {"arch": arch, "precision": precision, "encoder": args.encoder, "mode": args.mode, "off": None,
               "on": None, "errors": {"worker": why}}
        add_ratios(row)
        rows.append(row)
    return rows


# -------------------------------------------------------------------------------------------------------- driver
def run_benchmark(args: argparse.Namespace, log: Log = print) -> dict:
    """Run the benchmark of parsed ``args`` (:func:`parse_args`), write JSON + Markdown, return the JSON payload."""
    t_start = time.time()
    archs = parse_archs(args.archs)
    args.precisions = parse_precisions(args.precisions)
    if args.steps < 1 or args.warmup < 1:
        raise UserError("--steps must be >= 1 and --warmup >= 1 (the first step traces and compiles)")
    if args.size < 32 or args.batch < 1 or args.num_classes < 2 or args.in_channels < 1:
        raise UserError("--size must be >= 32, --batch >= 1, --num-classes >= 2, --in-channels >= 1")
    cfg = cell_config(archs[0], args.precisions[0], True, args)  # a bad --config / --set / --options fails here
    machine = machine_info()
    load = machine["loadavg_at_start"]
    log(f"[setup] {machine['cpu_model']}, {machine['usable_cores']} cores, TF {machine['tensorflow']}, "
        f"Keras {machine['keras']}; load average {fmt_load(load)}")
    log(f"[setup] {', '.join(archs)} × {', '.join(args.precisions)} × XLA off/on; {args.mode} step, encoder "
        f"{args.encoder} {json.dumps(parse_options(args.options))}, input {args.size}x{args.size}x{args.in_channels}, "
        f"batch {args.batch}, {args.warmup} warm-up + {args.steps} timed steps per cell; isolation {args.isolation}")

    rows: list[dict] = []
    for i, arch in enumerate(archs, 1):
        prefix = f"[arch {i}/{len(archs)}]"
        log(f"{prefix} {arch}: start, {time.time() - t_start:.0f} s elapsed, load average {fmt_load(_loadavg())}")
        try:
            rows += run_worker(arch, args, prefix, log) if args.isolation == "process" else \
                measure_arch(arch, args, prefix, log)
        except Exception as exc:  # noqa: BLE001 - one architecture (or its worker) must not end the benchmark
            why = str(exc) if isinstance(exc, WorkerFailed) else _error(exc)
            log(f"{prefix} {arch}: FAILED: {why}")
            rows += _failed_rows(arch, args, why)

    load_end = _loadavg()
    machine["loadavg_at_end"] = load_end
    wall = time.time() - t_start
    table = format_table(rows)
    notes = [
        f"Step: {'distillation (student + teacher, CE + CE + MSE)' if args.mode == 'distill' else 'baseline (CE)'}, "
        "built and compiled as train.py does; median of the timed compiled train_function calls after the warm-up "
        "fit step(s).",
        "XLA speed-up = median step without XLA / with XLA (above 1: XLA is faster); CPU speed-up is the same ratio "
        "of process CPU time, which moves less when other jobs share the cores.",
        "Warm-up: the untimed fit step(s); with XLA on they hold its compilation, paid once per run and input shape.",
        "Timings taken while other processes load the cores are not comparable; set train.jit_compile defaults "
        "from a run on an idle machine.",
    ]
    payload = {
        "benchmark": "xla",
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "wall_time_s": wall,
        "machine": machine,
        "args": _args_dict(args),
        "resolved": {"archs": archs, "precisions": args.precisions, "config_xla_on": cfg.to_dict()},
        "notes": notes,
        "summary": [f"FAILED: {r['arch']} {r['precision']}: XLA {k}: {v}"
                    for r in rows for k, v in r["errors"].items()],
        "rows": rows,
        "table_markdown": table,
    }
    header = [
        f"# XLA on/off per architecture and precision ({time.strftime('%Y-%m-%d %H:%M')})",
        "",
        f"- machine: {machine['cpu_model']}, {machine['usable_cores']} usable cores; TF {machine['tensorflow']}, "
        f"Keras {machine['keras']}; load average at start {fmt_load(load)}, at end {fmt_load(load_end)}",
        f"- {args.mode} step, encoder {args.encoder} {json.dumps(parse_options(args.options))}, input "
        f"{args.size}×{args.size}×{args.in_channels}, batch {args.batch}, {args.num_classes} classes, {args.warmup} "
        f"warm-up + {args.steps} timed steps per cell, config {args.config}"
        + (f", --set {' '.join(args.overrides)}" if args.overrides else ""),
        f"- wall time {wall:.0f} s",
        *[f"- note: {n}" for n in notes],
        "",
        table,
        "",
        *payload["summary"],
    ]
    write_report(Path(args.out), payload, "\n".join(header) + "\n", wall, log)
    return payload


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="xla.py", description="Training-step time of the model zoo with XLA off and on, "
                                                           "per precision.")
    p.add_argument("--archs", nargs="+", default=list(ZOO), metavar="ARCH",
                   help=f"architectures, space or comma separated (default: all of {', '.join(ZOO)})")
    p.add_argument("--precisions", nargs="+", default=["float32", "mixed_bfloat16"], metavar="POLICY",
                   help=f"train.mixed_precision values, space or comma separated, of {', '.join(PRECISIONS)} "
                        "(default: float32 mixed_bfloat16)")
    p.add_argument("--mode", choices=MODES, default="distill",
                   help="'distill' (default): the distillation step; 'baseline': the network alone")
    p.add_argument("--encoder", default="resnet34", help="encoder of every architecture (default: %(default)s)")
    p.add_argument("--options", default="{}", help="model options (JSON) for every architecture (default: %(default)s)")
    p.add_argument("--size", type=int, default=256, help="square input size (default: %(default)s)")
    p.add_argument("--batch", type=int, default=8, help="training batch size (default: %(default)s)")
    p.add_argument("--num-classes", type=int, default=5, help="(default: %(default)s)")
    p.add_argument("--in-channels", type=int, default=3, help="(default: %(default)s)")
    p.add_argument("--config", default="configs/quickstart.yaml",
                   help="teacher / train config (default: %(default)s); its model: section is replaced")
    add_set_arg(p, "teacher.pool_size=2")
    p.add_argument("--steps", type=int, default=3, help="timed training steps per cell (default: %(default)s)")
    p.add_argument("--warmup", type=int, default=1,
                   help="untimed warm-up fit steps per cell, the first compiles (default: %(default)s)")
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

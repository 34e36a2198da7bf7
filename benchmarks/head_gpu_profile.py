#!/usr/bin/env python
"""The teacher head alone on a CUDA GPU through Keras' torch backend: step time, peak memory, and where the time goes.

    KERAS_BACKEND=torch python benchmarks/head_gpu_profile.py OUT_DIR [--sizes 256,512] [--profile 256-1-float32]

``AxialTeacherHead`` (Axial-DeepLab's position-sensitive axial attention, Wang et al., ECCV 2020, Eq. 4, on the
student's logits as in "Improving segmentation accuracy with self-distillation") with 5 classes, one attention head,
``--hidden-dim`` channels and ``--num-blocks`` axial blocks (default: the library's default head, 32 and 2; issue 10's
"before" figures were measured with 16 and 1), on random ``[batch, size, size, 5]`` logits (batch 8 up to 512², 2
above), pool 1 and 2, float32 and Keras' ``mixed_bfloat16``. One step = forward in training mode + ``torch.autograd.grad`` of the mean squared output over the
head's weights (no optimizer: the head's own cost). 3 warm-up + 10 timed steps, each followed by
``torch.cuda.synchronize()``; the median is reported. Peak memory is ``torch.cuda.max_memory_allocated()`` above what
was allocated before the cell. For each ``--profile`` cell (``size-pool-precision``) a ``torch.profiler`` table of 3
steps sorted by self CUDA time is printed and written to ``OUT_DIR/prof_<cell>.txt``.

Writes ``OUT_DIR/head.json`` (one row per cell) and prints a Markdown table. Needs a CUDA device (torch only, no
TensorFlow): ``benchmarks/teacher_gpu.py`` is the whole-network benchmark on any backend.
"""

from __future__ import annotations

import argparse
import inspect
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("KERAS_BACKEND", "torch")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import keras  # noqa: E402
import torch  # noqa: E402

from axial_kd_tf.errors import UserError  # noqa: E402
from axial_kd_tf.io_utils import atomic_write_json  # noqa: E402
from axial_kd_tf.layers import AxialTeacherHead  # noqa: E402
from benchmarks._common import run_main  # noqa: E402


def measure(size: int, pool: int, precision: str, profile_dir: Path | None, hidden_dim: int, num_blocks: int) -> dict:
    keras.config.set_dtype_policy("mixed_bfloat16" if precision == "bfloat16" else "float32")
    keras.utils.set_random_seed(0)
    batch = 8 if size <= 512 else 2
    row = dict(size=size, pool=pool, precision=precision, batch=batch, hidden_dim=hidden_dim, num_blocks=num_blocks)
    head = AxialTeacherHead(5, hidden_dim=hidden_dim, num_blocks=num_blocks, pool_size=pool)
    x = torch.randn(batch, size, size, 5, device="cuda")
    head.build(tuple(x.shape))
    params = [v.value for v in head.trainable_variables]

    def step() -> None:
        y = head(x, training=True)
        torch.autograd.grad((y.float() ** 2).mean(), params)

    torch.cuda.synchronize()
    torch.cuda.empty_cache()
    before = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    try:
        for _ in range(3):
            step()
        torch.cuda.synchronize()
        times = []
        for _ in range(10):
            start = time.perf_counter()
            step()
            torch.cuda.synchronize()
            times.append(time.perf_counter() - start)
        row.update(ms=1e3 * statistics.median(times), peak_gib=(torch.cuda.max_memory_allocated() - before) / 2**30)
        if profile_dir is not None:
            from torch.profiler import ProfilerActivity, profile

            with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
                for _ in range(3):
                    step()
                torch.cuda.synchronize()
            table = prof.key_averages().table(sort_by="self_cuda_time_total", row_limit=30,
                                              max_name_column_width=60)
            (profile_dir / f"prof_{size}-{pool}-{precision}.txt").write_text(table)
            print(table)
    except torch.OutOfMemoryError:
        row["error"] = "out of memory"
    return row


def _cell(row: dict) -> str:
    what = "OOM | OOM" if "error" in row else f"{row['ms']:.1f} | {row['peak_gib']:.2f}"
    return f"| {row['size']}² ×{row['batch']} | {row['pool']} | {row['precision']} | {what} |"


def run_profile(args: argparse.Namespace) -> list[dict]:
    """Measure (and profile) every cell of ``args``; write ``OUT_DIR/head.json``, print the table, return the rows."""
    try:
        sizes = [int(s) for s in args.sizes.split(",")]
    except ValueError:
        raise UserError(f"--sizes takes whole numbers, comma separated, got {args.sizes}") from None
    if not torch.cuda.is_available():
        raise UserError("no CUDA device: this profile needs a GPU (benchmarks/teacher_gpu.py runs anywhere)")
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    profiled = set(args.profile.split(","))
    rows = []
    for size in sizes:
        for pool in (1, 2):
            for precision in ("float32", "bfloat16"):
                cell = f"{size}-{pool}-{precision}"
                rows.append(measure(size, pool, precision, out if cell in profiled else None, args.hidden_dim,
                                    args.num_blocks))
                torch.cuda.empty_cache()
    atomic_write_json(out / "head.json", rows)
    print("| input | pool | precision | head step ms | head peak GiB |\n|---:|---:|:---|---:|---:|")
    print("\n".join(_cell(r) for r in rows))
    return rows


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("out_dir")
    p.add_argument("--sizes", default="256,512", help="comma separated (default: %(default)s)")
    p.add_argument("--profile", default="256-1-float32",
                   help="cells to profile, size-pool-precision, comma separated (default: %(default)s)")
    head = inspect.signature(AxialTeacherHead).parameters  # the library's default head, not a copy of its numbers
    p.add_argument("--hidden-dim", type=int, default=head["hidden_dim"].default,
                   help="teacher.hidden_dim (default: %(default)s)")
    p.add_argument("--num-blocks", type=int, default=head["num_blocks"].default,
                   help="teacher.num_blocks (default: %(default)s)")
    return run_main(p.parse_args(), run_profile)


if __name__ == "__main__":
    sys.exit(main())

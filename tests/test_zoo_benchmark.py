"""Smoke test of benchmarks/zoo.py: two architectures at a tiny size, in this process, without XLA (fast)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from axial_kd_tf.models import build_network
from helpers import load_benchmark

ROOT = Path(__file__).resolve().parent.parent
ARCHS = ("unet", "pspnet")  # pspnet: the cheapest graph to trace (keeps the test well under a minute)
ENCODER, K, C = "resnet18", 5, 3


@pytest.mark.slow  # ≈ 3.5 min on 2 cores: keeps the default suite under its 20-minute budget
def test_zoo_benchmark_two_archs(tmp_path: Path) -> None:
    bench = load_benchmark("zoo")
    out = tmp_path / "zoo.json"
    lines: list[str] = []
    # jit off: XLA compilation alone would take minutes on a 2-core CPU (the default run uses the config's jit).
    args = bench.parse_args([
        "--archs", *ARCHS, "--encoder", ENCODER, "--size", "64", "--batch", "2", "--steps", "1", "--warmup", "1",
        "--num-classes", str(K), "--in-channels", str(C), "--config", str(ROOT / "configs" / "quickstart.yaml"),
        "--set", "train.jit_compile=false", "--isolation", "none", "--tflite-repeats", "1", "--out", str(out),
    ])
    result = bench.run_benchmark(args, log=lines.append)

    assert out.is_file() and out.with_suffix(".md").is_file()
    saved = json.loads(out.read_text())
    assert saved["benchmark"] == "zoo" and saved["machine"]["tensorflow"]
    assert [r["arch"] for r in saved["rows"]] == list(ARCHS)
    md = out.with_suffix(".md").read_text()
    assert "| arch |" in md and all(f"| {a} |" in md for a in ARCHS)
    assert any("[arch 1/2]" in line and "phase" in line for line in lines)  # progress is reported

    for row in result["rows"]:
        assert row["errors"] == {}, row["errors"]
        net = build_network(row["arch"], encoder=ENCODER, num_classes=K, in_channels=C)
        assert row["student_params"] == net.count_params()
        assert row["student_trainable_params"] == sum(int(np.prod(w.shape)) for w in net.trainable_weights)
        assert row["teacher_params"] > 0 and 0 < row["teacher_trainable_params"] <= row["teacher_params"]
        assert row["flops"] > 0 and row["gflops"] == pytest.approx(row["flops"] / 1e9)
        assert row["teacher_flops"] > 0 and row["flop_floor"] == pytest.approx(1 + row["teacher_flops"] / row["flops"])
        for mode in ("baseline", "distill"):
            assert len(row[mode]["step_times_s"]) == 1 and row[mode]["time"]["median_s"] > 0
            assert row[mode]["jit_compile"] is False and row[mode]["jit_fallback"] is None
        for key in ("time_ratio", "cpu_time_ratio"):
            assert row[key] is not None and math.isfinite(row[key]) and row[key] > 0, key
        tfl = row["tflite"]
        assert tfl["mean_latency_ms"] > 0 and math.isfinite(tfl["max_abs_diff"]) and tfl["max_abs_diff"] < 1e-3


@pytest.mark.parametrize("hidden_dim,num_blocks,pool_size", [(16, 1, 1), (32, 2, 2)])
def test_teacher_flops_count_the_attention_maps(hidden_dim: int, num_blocks: int, pool_size: int) -> None:
    """The teacher's count holds the five L×L contractions of every axial pass (q·k with its offset column, q·r^q,
    k·r^k, a·v, a·r^v: ``2·N·L²·(2·(3·d_k + 1) + 4·d_v)`` FLOPs per pass, N = rows, L = the axis), plus the small
    per-pixel projections, and scales with the head's size as that formula says."""
    import keras

    from axial_kd_tf.layers import AxialTeacherHead

    bench = load_benchmark("zoo")
    size, k = 32, 4
    logits = keras.Input((size, size, k))
    head = AxialTeacherHead(k, hidden_dim=hidden_dim, num_blocks=num_blocks, pool_size=pool_size)
    net = keras.Model(logits, [logits, head(logits)])
    args = bench.parse_args(["--size", str(size), "--num-classes", str(k)])
    counted = bench.teacher_forward_flops(net, args)
    assert bench.teacher_forward_flops(type("Trainer", (), {"network": net})(), args) == counted
    side = size // pool_size
    d_k, d_v = hidden_dim // 2, hidden_dim
    maps = 2 * num_blocks * side * side**2 * (2 * (3 * d_k + 1) + 4 * d_v)  # two passes per block
    per_pixel = 2 * num_blocks * side**2 * hidden_dim * (2 * d_k + d_v) * 2  # the qkv projections of the passes
    assert maps + per_pixel <= counted <= 1.25 * (maps + per_pixel)


def test_zoo_benchmark_rejects_unknown_arch(tmp_path: Path) -> None:
    bench = load_benchmark("zoo")
    args = bench.parse_args(["--archs", "unet,resnet", "--out", str(tmp_path / "z.json")])
    with pytest.raises(bench.UserError, match="unknown architecture"):
        bench.run_benchmark(args, log=lambda _m: None)
    assert not (tmp_path / "z.json").exists()


@pytest.mark.slow
def test_zoo_benchmark_worker_process_and_jit_fallback(tmp_path: Path) -> None:
    """The default path: a worker process per architecture, jit_compile=True, which unet's keras.ops resizes now
    compile with (before issue 10 both modes fell back to jit_compile=False) (~1-2 min)."""
    bench = load_benchmark("zoo")
    out = tmp_path / "zoo.json"
    lines: list[str] = []
    args = bench.parse_args([
        "--archs", "unet", "--encoder", ENCODER, "--size", "64", "--batch", "2", "--steps", "1", "--warmup", "1",
        "--config", str(ROOT / "configs" / "quickstart.yaml"), "--set", "train.jit_compile=true",
        "--tflite-repeats", "1", "--out", str(out),
    ])
    result = bench.run_benchmark(args, log=lines.append)
    (row,) = result["rows"]
    assert row["errors"] == {} and row["pid"] != bench.os.getpid()
    assert any("[baseline]" in line for line in lines)  # the worker's progress is streamed back
    for mode in ("baseline", "distill"):
        assert row[mode]["jit_compile"] is True and row[mode]["jit_fallback"] is None
    assert "without XLA" not in out.with_suffix(".md").read_text()

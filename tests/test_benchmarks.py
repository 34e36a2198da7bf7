"""Smoke tests of benchmarks/teacher_overhead.py at a tiny size (no XLA, so they run in seconds)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from helpers import load_benchmark

ROOT = Path(__file__).resolve().parent.parent


TINY = ["--size", "32", "--batch-size", "2", "--steps", "2", "--warmup", "1", "--paired-steps", "2",
        "--options", '{"base_filters": 4, "depth": 2}', "--no-jit"]


def _check(result: dict, out: Path) -> None:
    assert out.is_file() and out.with_suffix(".md").is_file()
    saved = json.loads(out.read_text())
    assert saved["rows"] and saved["machine"]["tensorflow"] and saved["config"]["model"]["options"]["depth"] == 2
    md = out.with_suffix(".md").read_text()
    assert "| variant |" in md and "time ratio" in md

    (row,) = result["rows"]
    baseline = result["baselines"][row["baseline_key"]]
    distill = row["distill"]
    assert baseline["student_params"] == distill["student_params"] == row["student_params"] > 0
    assert baseline["teacher_params"] == 0
    assert row["teacher_params"] > 0
    assert distill["total_params"] == distill["student_params"] + distill["teacher_params"]
    assert row["param_ratio"] == pytest.approx(distill["total_params"] / baseline["total_params"])
    for key in ("time_ratio", "memory_ratio", "param_ratio"):
        assert row[key] is not None and math.isfinite(row[key]) and row[key] > 0, key
    assert len(distill["step_times_s"]) == 2 and len(distill["warmup_times_s"]) == 1
    assert all(t > 0 for t in distill["step_times_s"] + baseline["step_times_s"])
    assert isinstance(row["meets_time_target"], bool)
    assert distill["config"]["distill"]["enabled"] and not baseline["config"]["distill"]["enabled"]
    assert distill["config"]["train"]["jit_compile"] is False
    paired = row["paired"]
    assert len(paired["baseline_step_times_s"]) == len(paired["distill_step_times_s"]) == 2
    assert math.isfinite(row["paired_time_ratio"]) and row["paired_time_ratio"] > 0
    assert row["target_ratio_used"] == "paired"


def test_teacher_overhead_tiny_in_process(tmp_path: Path) -> None:
    """The whole benchmark in this process (fast path)."""
    bench = load_benchmark("teacher_overhead")
    out = tmp_path / "overhead.json"
    args = bench.parse_args(["--config", str(ROOT / "configs" / "quickstart.yaml"), *TINY, "--isolation", "none",
                             "--out", str(out)])
    _check(bench.run_benchmark(args, log=lambda msg: None), out)


@pytest.mark.slow
def test_teacher_overhead_tiny_worker_processes(tmp_path: Path) -> None:
    """The default path: each mode in a fresh worker process (two more TensorFlow start-ups, ~30-60 s)."""
    bench = load_benchmark("teacher_overhead")
    out = tmp_path / "overhead.json"
    lines: list[str] = []
    args = bench.parse_args(["--config", str(ROOT / "configs" / "quickstart.yaml"), *TINY, "--out", str(out)])
    result = bench.run_benchmark(args, log=lines.append)
    _check(result, out)
    assert any("[distill" in line for line in lines)  # worker progress is streamed back
    assert result["baselines"][result["rows"][0]["baseline_key"]]["pid"] != result["rows"][0]["distill"]["pid"]

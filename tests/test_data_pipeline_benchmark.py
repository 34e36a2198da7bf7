"""Smoke test of benchmarks/data_pipeline.py on a tiny synthetic config, in this process, without XLA."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from axial_kd_tf.errors import UserError
from helpers import load_benchmark

ROOT = Path(__file__).resolve().parent.parent
TINY = ["--config", str(ROOT / "configs" / "quickstart.yaml"),
        "--set", "data.synthetic.image_size=32", "--set", "data.synthetic.train_samples=6", "--set", "data.synthetic.val_samples=2",
        "--set", "data.synthetic.test_samples=2", "--set", "data.crop_size=16", "--set", "train.batch_size=2",
        "--set", "train.jit_compile=false", "--set", "model.options={base_filters: 4, depth: 2}",
        "--batches", "3", "--pipeline-warmup", "1", "--steps", "2", "--warmup", "1"]


@pytest.fixture(scope="module")
def bench():
    return load_benchmark("data_pipeline")


def test_data_pipeline_benchmark_tiny(bench, tmp_path: Path) -> None:
    out = tmp_path / "res" / "dp.json"
    lines: list[str] = []
    result = bench.run_benchmark(bench.parse_args([*TINY, "--out", str(out)]), log=lines.append)

    saved = json.loads(out.read_text())
    assert saved["benchmark"] == "data_pipeline" and saved["modes"] and not saved["errors"]
    assert saved["config"]["train"]["batch_size"] == 2 and saved["dataset"]["name"] == "synthetic"
    assert saved["dataset"]["train_images"] == 6 and saved["dataset"]["image_shape"] == [32, 32, 1]

    p = result["pipeline"]
    assert p["batches"] == 3 and len(p["batch_times_s"]) == 3 and p["images"] == 6
    assert p["batch_shape"] == [2, 16, 16, 1]
    assert p["images_per_s"] == pytest.approx(p["images"] / p["seconds"])
    assert p["seconds"] >= sum(p["batch_times_s"]) * 0.999 and p["cpu_s_per_batch"] >= 0

    assert [m["mode"] for m in result["modes"]] == ["baseline", "distill"]
    for m in result["modes"]:
        assert m["distill_enabled"] == (m["mode"] == "distill")
        assert len(m["step_times_s"]) == 4 and all(t > 0 for t in m["step_times_s"])  # fixed batch before + after
        assert m["step_times_s"] == m["fixed_before_s"] + m["fixed_after_s"]
        assert m["images_per_s"] == pytest.approx(2 / float(np.median(m["step_times_s"])))
        assert m["headroom"] == pytest.approx(p["images_per_s"] / m["images_per_s"])
        assert m["keeps_up"] == (m["headroom"] >= 1.0) and math.isfinite(m["headroom"])
        fed = m["fed"]
        assert len(fed["step_times_s"]) == 2
        assert fed["images_per_s"] == pytest.approx(2 / float(np.median(fed["step_times_s"])))
        assert fed["input_stall"] == pytest.approx(np.median(fed["step_times_s"]) / np.median(m["step_times_s"]) - 1)
        assert fed["cpu_stall"] == pytest.approx(np.median(fed["step_cpu_s"]) / np.median(m["step_cpu_s"]) - 1)
    assert result["keeps_up"] == all(m["keeps_up"] for m in result["modes"])
    assert saved["modes"][0]["headroom"] == pytest.approx(result["modes"][0]["headroom"])

    md = out.with_suffix(".md").read_text()
    assert "| data pipeline alone (batch 2, crop 16, augment on) |" in md
    assert "| training, baseline |" in md and "| training, distill |" in md and "Verdict:" in md
    assert ("keeps up" in md) and any(line.startswith("[pipeline]") for line in lines)


def test_headroom_and_arguments(bench, tmp_path: Path) -> None:
    assert bench.headroom(300.0, 100.0) == (pytest.approx(3.0), True)
    assert bench.headroom(50.0, 100.0) == (pytest.approx(0.5), False)
    assert bench.headroom(100.0, 100.0)[1] is True
    with pytest.raises(UserError, match="--warmup >= 1"):
        bench.run_benchmark(bench.parse_args([*TINY, "--warmup", "0", "--out", str(tmp_path / "x.json")]))
    with pytest.raises(UserError, match="unknown config key 'data.nope'"):
        bench.run_benchmark(bench.parse_args([*TINY, "--set", "data.nope=1", "--out", str(tmp_path / "x.json")]))
    assert bench.parse_args([]).config is None and bench.default_config().endswith(".yaml")

"""Smoke tests of benchmarks/xla.py (XLA on/off per architecture and precision).

Argument checks run in the default tier; a measuring run compiles XLA even at the smallest size (about 10
CPU-seconds), so it is marked ``slow``.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from helpers import load_benchmark


@pytest.mark.parametrize("argv,message", [
    (["--archs", "unet,resnet"], "unknown architecture"),
    (["--precisions", "float64"], "--precisions must name one or more of float32"),
    (["--options", "[1]"], "--options must be a JSON object"),
])
def test_xla_benchmark_rejects_bad_arguments(tmp_path: Path, argv: list, message: str) -> None:
    bench = load_benchmark("xla")
    args = bench.parse_args([*argv, "--out", str(tmp_path / "x.json")])
    with pytest.raises(bench.UserError, match=message):
        bench.run_benchmark(args, log=lambda _m: None)
    assert not (tmp_path / "x.json").exists()


@pytest.mark.slow
def test_xla_benchmark_times_a_step_with_xla_off_and_on(tmp_path: Path) -> None:
    bench = load_benchmark("xla")
    out = tmp_path / "xla.json"
    lines: list[str] = []
    args = bench.parse_args([
        "--archs", "unet", "--precisions", "float32", "--mode", "baseline", "--encoder", "resnet18",
        "--options", json.dumps({"encoder_depth": 3, "decoder_channels": [16, 8, 8]}), "--size", "32", "--batch", "2",
        "--steps", "1", "--warmup", "1", "--in-channels", "1", "--isolation", "none", "--out", str(out),
    ])
    result = bench.run_benchmark(args, log=lines.append)
    (row,) = result["rows"]
    assert row["errors"] == {} and (row["arch"], row["precision"], row["mode"]) == ("unet", "float32", "baseline")
    for key in ("off", "on"):
        assert row[key]["time"]["median_s"] > 0 and row[key]["compile_warmup_s"] > 0
    assert math.isfinite(row["speedup"]) and row["faster"] in ("XLA on", "XLA off")
    assert json.loads(out.read_text())["rows"][0]["arch"] == "unet"
    assert "| unet | float32 |" in out.with_suffix(".md").read_text()

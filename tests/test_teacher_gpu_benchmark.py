"""benchmarks/teacher_gpu.py: the teacher's cost through whichever Keras backend is installed (issue 10, part 4).

No GPU here: the runs are tiny CPU runs that check the plumbing (every backend's compiled step, rows, ratios, JSON
and Markdown, a failing cell staying in its row), not speed. The TensorFlow run is in this process (its backend);
the torch run is the command line in a subprocess under ``KERAS_BACKEND=torch``. Process isolation and JAX are in
the ``slow`` tier.
"""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import ROOT, load_benchmark

TINY = ["--small", "--sizes", "32", "--precisions", "float32", "--steps", "2", "--warmup", "1"]


@pytest.mark.parametrize("argv,message", [
    (["--archs", "unet,resnet"], "--archs must name architectures of the zoo"),
    (["--sizes", "256", "100"], "--sizes must be multiples of 32"),
    (["--sizes", "big"], "--sizes takes whole numbers"),
    (["--pools", "0"], "--pools needs one or more numbers >= 1"),
    (["--precisions", "float16"], "--precisions must name one or more of float32, bfloat16"),
    (["--options", "[1]"], "--options must be a JSON object"),
    (["--steps", "0"], "--steps must be >= 1"),
    (["--hidden-dim", "6", "--num-heads", "4"], "--hidden-dim (6) must be divisible by --num-heads (4)"),
    (["--num-blocks", "0"], "--num-classes must be >= 2 and --in-channels, --hidden-dim, --num-heads, --num-blocks"),
])
def test_bad_arguments_exit_2_with_one_line(tmp_path: Path, capsys, argv: list, message: str) -> None:
    bench = load_benchmark("teacher_gpu")
    out = tmp_path / "t.json"
    assert bench.main([*argv, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {message}") and err.count("\n") == 1, err
    assert not out.exists()


@pytest.mark.parametrize("argv,hidden,blocks", [([], 32, 2), (["--hidden-dim", "16", "--num-blocks", "1"], 16, 1)])
def test_the_timed_teacher_is_the_default_head_or_the_one_asked_for(argv: list, hidden: int, blocks: int) -> None:
    """Without flags the benchmark times the library's default head (hidden 32, two blocks since the teacher
    study); ``--hidden-dim 16 --num-blocks 1`` is the head issue 10's first figures were measured with."""
    from axial_kd_tf.distill import teacher_head
    from axial_kd_tf.layers import AxialTeacherHead

    bench = load_benchmark("teacher_gpu")
    args = bench.resolve_args(bench.parse_args([*TINY, *argv]))
    model, params = bench.build_model("unet", 32, 2, args)
    head = teacher_head(model)
    assert (head.hidden_dim, head.num_blocks, head.pool_size) == (hidden, blocks, 2)
    assert params == head.count_params()
    if not argv:
        default = AxialTeacherHead(5)
        assert (default.hidden_dim, default.num_blocks) == (hidden, blocks)


@pytest.mark.parametrize("exc,oom", [
    (RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB"), True),  # torch.cuda.OutOfMemoryError's text
    (RuntimeError("RESOURCE_EXHAUSTED: Out of memory while trying to allocate 8589934592 bytes."), True),  # XLA/JAX
    (RuntimeError("OOM when allocating tensor with shape[2,1024,1024,1024]"), True),  # TensorFlow
    (MemoryError(), True),
    (ValueError("Input 0 of layer 'ROOM' is incompatible"), False),
])
def test_out_of_memory_errors_of_each_backend_are_recognised(exc: Exception, oom: bool) -> None:
    message = load_benchmark("teacher_gpu")._error(exc)
    assert message.startswith("out of memory: ") == oom and "\n" not in message


def _check_payload(payload: dict, out: Path, backend: str, pools: list[int]) -> None:
    assert payload["device"]["backend"] == backend and payload["device"]["accelerator"] is False
    assert [(r["arch"], r["size"], r["batch"], r["precision"], r["pool"]) for r in payload["rows"]] == [
        ("unet", 32, 2, "float32", p) for p in pools]
    assert json.loads(out.read_text())["rows"] == json.loads(json.dumps(payload["rows"]))
    md = out.with_suffix(".md").read_text()
    assert ("| arch | input | precision | pool | base step ms | with teacher ms | ratio | "
            "peak memory base → teacher |") in md  # the columns


def test_finished_cells_are_saved_before_the_run_ends(tmp_path: Path, monkeypatch) -> None:
    """A run stopped in its third cell (a lent GPU's time limit) leaves the two finished cells in
    ``OUT.partial.json``; a run that ends writes its report and removes that file."""
    bench = load_benchmark("teacher_gpu")
    seen: list[dict] = []

    def measure(cell, args, device, log):  # no network is built: only the bookkeeping is under test
        if len(seen) == 2 and stop:
            raise KeyboardInterrupt
        seen.append(cell)
        return {**cell, "error": f"out of memory: fake {len(seen)}"}

    monkeypatch.setattr(bench, "measure_cell", measure)
    out = tmp_path / "tg.json"
    argv = [*TINY, "--pools", "1", "2", "--isolation", "none", "--out", str(out)]
    stop = True
    with pytest.raises(KeyboardInterrupt):
        bench.run_benchmark(bench.parse_args(argv), log=lambda line: None)
    partial = json.loads((tmp_path / "tg.partial.json").read_text())
    assert partial["partial"] is True and partial["cells_total"] == 3 and not out.exists()
    assert [(c["pool"], c["error"]) for c in partial["cells"]] == [(None, "out of memory: fake 1"),
                                                                  (1, "out of memory: fake 2")]
    seen.clear()
    stop = False
    payload = bench.run_benchmark(bench.parse_args(argv), log=lambda line: None)
    assert out.exists() and not (tmp_path / "tg.partial.json").exists() and len(payload["rows"]) == 2


@pytest.mark.slow  # ~60 s under load; the OOM patterns are checked in the default tier above
def test_tensorflow_run_reports_an_out_of_memory_cell_in_its_row(tmp_path: Path, monkeypatch) -> None:
    bench = load_benchmark("teacher_gpu")
    real_build = bench.build_model

    def build(arch, size, pool, args):  # what a too-large pool-1 teacher does on a GPU
        if pool == 1:
            raise RuntimeError("CUDA out of memory. Tried to allocate 8.00 GiB (GPU 0; 139.80 GiB total capacity)")
        return real_build(arch, size, pool, args)

    monkeypatch.setattr(bench, "build_model", build)
    out = tmp_path / "tf.json"
    lines: list[str] = []
    payload = bench.run_benchmark(bench.parse_args([*TINY, "--pools", "1", "2", "--isolation", "none",
                                                    "--out", str(out)]), log=lines.append)
    _check_payload(payload, out, "tensorflow", [1, 2])
    oom, ok = payload["rows"]
    assert oom["teacher"]["error"].startswith("out of memory: RuntimeError: CUDA out of memory")
    assert oom["ratio"] is None and oom["base"]["error"] is None
    assert ok["teacher"]["error"] is None and ok["ratio"] > 0
    assert ok["teacher"]["teacher_params"] > 0 and ok["base"]["teacher_params"] == 0
    assert ok["teacher"]["params"] == ok["base"]["params"] + ok["teacher"]["teacher_params"]
    assert len(ok["teacher"]["times_s"]) == 2 and ok["teacher"]["peak_bytes"] is None  # CPU: n/a
    md = out.with_suffix(".md").read_text()
    assert "| unet | 32² ×2 | float32 | 1 |" in md and "| OOM | — |" in md
    assert "| unet | 32² ×2 | float32 | 2 |" in md and "FAILED: unet 32² float32 pool 1: out of memory" in md
    assert any("teacher pool 1: FAILED: out of memory" in line for line in lines)


def _cli(backend: str, argv: list[str], timeout: int = 600) -> subprocess.CompletedProcess:
    env = dict(os.environ, KERAS_BACKEND=backend, OMP_NUM_THREADS="1", TF_CPP_MIN_LOG_LEVEL="2")
    return subprocess.run([sys.executable, str(ROOT / "benchmarks" / "teacher_gpu.py"), *argv], env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout)


def test_torch_backend_run_end_to_end(tmp_path: Path) -> None:
    import torch  # noqa: F401  (a test requirement: fails rather than skips without it)
    out = tmp_path / "torch.json"
    proc = _cli("torch", [*TINY, "--pools", "2", "--isolation", "none", "--out", str(out)])
    assert proc.returncode == 0, proc.stderr[-3000:]
    payload = json.loads(out.read_text())
    _check_payload(payload, out, "torch", [2])
    (row,) = payload["rows"]
    assert row["ratio"] > 0 and row["base"]["error"] is None and row["teacher"]["error"] is None
    assert row["teacher"]["teacher_params"] > 0 and len(row["base"]["times_s"]) == 2
    assert "| unet | 32² ×2 | float32 | 2 |" in proc.stdout and "KERAS_BACKEND=torch" in proc.stdout


@pytest.mark.slow
@pytest.mark.parametrize("backend,precisions", [("torch", ["float32", "bfloat16"]), ("jax", ["bfloat16"])])
def test_process_isolated_run(tmp_path: Path, backend: str, precisions: list) -> None:
    """Each cell in its own worker process (the default), two pools; JAX compiles every cell (~90 s each here)."""
    importlib.import_module(backend)  # torch and jax are test requirements: fail rather than skip
    out = tmp_path / f"{backend}.json"
    proc = _cli(backend, ["--small", "--sizes", "32", "--steps", "1", "--precisions", *precisions, "--out", str(out)],
                timeout=1800)
    assert proc.returncode == 0, proc.stderr[-3000:]
    payload = json.loads(out.read_text())
    assert payload["device"]["backend"] == backend
    assert len(payload["rows"]) == 2 * len(precisions) and all(r["ratio"] > 0 for r in payload["rows"])
    pids = {r["base"]["pid"] for r in payload["rows"]} | {r["teacher"]["pid"] for r in payload["rows"]}
    assert len(pids) == 3 * len(precisions)  # (no teacher, pool 1, pool 2) per precision, one process each


def test_head_profile_needs_a_gpu(tmp_path: Path) -> None:
    """benchmarks/head_gpu_profile.py (CUDA only) ends with one line ``error: ...`` on stderr (as every benchmark) and
    exit code 2 on a machine without a GPU, and writes nothing."""
    import torch  # noqa: F401  (a test requirement)
    env = dict(os.environ, KERAS_BACKEND="torch", CUDA_VISIBLE_DEVICES="", TF_CPP_MIN_LOG_LEVEL="2")
    out = tmp_path / "profile"
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "head_gpu_profile.py"), str(out)], env=env,
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert proc.stdout == "" and proc.stderr.strip().splitlines()[-1:] == [
        "error: no CUDA device: this profile needs a GPU (benchmarks/teacher_gpu.py runs anywhere)"]
    assert not out.exists()

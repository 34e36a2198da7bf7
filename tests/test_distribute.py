"""train.distribute (issue 12): input sharding, configuration errors, synchronized BatchNorm and its export, and — in
fresh processes, since logical CPU devices and multi-worker collectives must be set up before TensorFlow starts its
devices — one MirroredStrategy step against one device, a two-worker MultiWorkerMirroredStrategy run, and a resume
under ``mirrored`` after a kill (tests/distributed_script.py)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from axial_kd_tf.config import load_config
from axial_kd_tf.data.pipeline import build_dataset
from axial_kd_tf.distribute import (
    Distribution,
    check_batch_size,
    eval_steps,
    make_distribution,
    resolve_jit,
    synchronize_batchnorm,
)
from axial_kd_tf.errors import UserError

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = Path(__file__).resolve().parent / "distributed_script.py"


def _fake(mode: str, replicas: int, workers: int = 1) -> Distribution:
    return Distribution(SimpleNamespace(num_replicas_in_sync=replicas), mode, num_workers=workers)  # type: ignore


# ------------------------------------------------------------------------------------------------ input sharding
def _batches(ds, n: int) -> list[list[bytes]]:
    return [[img.tobytes() for img in x.numpy()] for x, _ in ds.take(n)]


@pytest.mark.parametrize("skip", [0, 16])
def test_worker_shards_are_disjoint_and_make_up_the_global_batches(skip):
    """Two workers' k-th batches (4 images each) never share an image and together are the one-device k-th batch
    (8 images), crops and flips included; also after a resume's skip."""
    rng = np.random.default_rng(0)
    images = rng.normal(size=(12, 10, 10, 1)).astype(np.float32)
    masks = rng.integers(0, 3, (12, 10, 10)).astype(np.uint8)
    kw = dict(training=True, seed=3, crop_size=8, augment=True, repeat=True, skip=skip)
    single = _batches(build_dataset(images, masks, 8, **kw), 4)
    shards = [_batches(build_dataset(images, masks, 4, shard=(2, i), **kw), 4) for i in range(2)]
    for k in range(4):
        a, b = set(shards[0][k]), set(shards[1][k])
        assert len(a) == len(b) == 4 and not a & b
        assert sorted(a | b) == sorted(single[k])


def test_evaluation_shards_cover_every_image_once():
    images = np.arange(5, dtype=np.float32).reshape(5, 1, 1, 1) * np.ones((5, 4, 4, 1), np.float32)
    masks = np.zeros((5, 4, 4), np.uint8)
    seen = [x.numpy()[:, 0, 0, 0].tolist() for i in range(2)
            for x, _ in build_dataset(images, masks, 2, training=False, shard=(2, i))]
    assert sorted(v for batch in seen for v in batch) == [0, 1, 2, 3, 4]
    with pytest.raises(UserError, match="shard"):
        build_dataset(images, masks, 2, training=False, shard=(2, 2))


def test_eval_steps_count_the_largest_worker():
    assert eval_steps(_fake("none", 1), 32, 8) is None
    assert eval_steps(_fake("mirrored", 2), 4, 4) == 1      # 2 images per replica, one step
    assert eval_steps(_fake("mirrored", 2), 33, 8) == 5     # 9 per-replica batches of 4 over 2 replicas
    assert eval_steps(_fake("multi_worker", 2, 2), 33, 8) == 5  # 17 images on one worker in batches of 4


# ------------------------------------------------------------------------------------------------ configuration
def test_config_keys_are_checked():
    cfg = load_config("quickstart", ["train.distribute=mirrored", "train.sync_batchnorm=true"])
    assert (cfg.train.distribute, cfg.train.sync_batchnorm) == ("mirrored", True)
    assert load_config("quickstart").train.distribute == "none"
    with pytest.raises(UserError, match="'train.distribute'.*did you mean 'mirrored'"):
        load_config("quickstart", ["train.distribute=mirored"])
    with pytest.raises(UserError, match="'train.sync_batchnorm' must be true or false"):
        load_config("quickstart", ["train.sync_batchnorm=yes please"])


def test_batch_must_split_over_the_replicas():
    check_batch_size(8, _fake("mirrored", 2))
    with pytest.raises(UserError, match=r"'train.batch_size' \(7\) must be a multiple of the 2 replicas"):
        check_batch_size(7, _fake("mirrored", 2))


def test_multi_worker_needs_a_valid_tf_config(monkeypatch):
    monkeypatch.delenv("TF_CONFIG", raising=False)
    with pytest.raises(UserError, match="TF_CONFIG is not set"):
        make_distribution("multi_worker")
    monkeypatch.setenv("TF_CONFIG", "{not json")
    with pytest.raises(UserError, match="TF_CONFIG must be JSON"):
        make_distribution("multi_worker")
    monkeypatch.setenv("TF_CONFIG", json.dumps({"cluster": {"worker": ["a:1"], "ps": ["b:2"]},
                                                "task": {"type": "ps", "index": 0}}))
    with pytest.raises(UserError, match="parameter servers are not supported"):
        make_distribution("multi_worker")


def test_bad_cpu_device_count(monkeypatch):
    monkeypatch.setenv("AXIAL_KD_CPU_DEVICES", "two")
    with pytest.raises(UserError, match="AXIAL_KD_CPU_DEVICES must be a positive integer"):
        make_distribution("mirrored")


def test_multi_worker_cli_needs_run_dir(capsys):
    from axial_kd_tf.cli import train_main

    assert train_main(["--config", "quickstart", "--set", "train.distribute=multi_worker"]) == 2
    assert "needs --run-dir" in capsys.readouterr().err


def test_jit_compile_is_turned_off_under_a_strategy():
    lines: list = []
    assert resolve_jit(True, _fake("mirrored", 2), lines.append) is False
    assert len(lines) == 1 and "jit_compile is off" in lines[0]
    assert resolve_jit(True, _fake("none", 1), lines.append) is True and len(lines) == 1


def test_synchronized_batchnorm_exports_the_same_builtin_ops(tmp_path):
    """synchronized=True acts in training only: the exported student has the same builtin op sequence."""
    from axial_kd_tf.export import convert as ex
    from axial_kd_tf.export.litert import tflite_operator_sequence
    from axial_kd_tf.models import build_network

    seqs = []
    for sync in (False, True):
        net = build_network("simple_unet", num_classes=3, in_channels=1, base_filters=4, depth=2)
        if sync:
            assert synchronize_batchnorm(net) == sum(type(l).__name__ == "BatchNormalization" for l in net.layers) > 0
        images = np.random.default_rng(0).random((2, 16, 16, 1), dtype=np.float32)
        ex.export_network(net, tmp_path / str(sync), (16, 16, 1), verify_images=images, saved_model=False,
                          progress=None)
        seqs.append(tflite_operator_sequence((tmp_path / str(sync) / "student.tflite").read_bytes()))
    assert seqs[0] == seqs[1]
    assert not any(op.startswith(ex.CUSTOM_OP_PREFIX) or "Flex" in op for op in seqs[1])


def test_axial_attention_holds_one_synchronized_flag():
    """AxialAttention's flag is its folded BatchNorms' flag: set before build it reaches them, set on the layer
    after build it moves them, and synchronize_batchnorm (which sets only BatchNorms) shows in its get_config."""
    import keras

    from axial_kd_tf.layers import AxialAttention

    def norms(layer):
        return [layer.qkv_norm.synchronized, layer.similarity_norm.synchronized, layer.output_norm.synchronized]

    early = AxialAttention(axis="height", num_heads=1, key_dim=2, value_dim=2, max_span=4, synchronized=True)
    early.build((None, 4, 4, 3))
    assert norms(early) == [True] * 3 and early.get_config()["synchronized"] is True
    early.synchronized = False
    assert norms(early) == [False] * 3 and early.get_config()["synchronized"] is False

    inputs = keras.Input((4, 4, 3))
    layer = AxialAttention(axis="width", num_heads=1, key_dim=2, value_dim=2, max_span=4)
    model = keras.Model(inputs, layer(inputs))
    assert layer.get_config()["synchronized"] is False
    assert synchronize_batchnorm(model) == 3
    assert norms(layer) == [True] * 3 and layer.get_config()["synchronized"] is True


# ------------------------------------------------------------------------------------------ fresh processes
def _env(**extra: str) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("TF_CONFIG", "AXIAL_KD_CPU_DEVICES")}
    env.update(TF_CPP_MIN_LOG_LEVEL="3", PYTHONUNBUFFERED="1", **extra)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)
    return env


def _result(stdout: str) -> dict:
    lines = [line for line in stdout.splitlines() if line.startswith("RESULT ")]
    assert lines, stdout[-3000:]
    return json.loads(lines[-1][len("RESULT "):])


class _Processes:
    """Fresh processes run from threads, so that independent ones share the machine's cores: most of their time is
    TensorFlow tracing the training graphs, which keeps one core busy. Whatever is still running at the end is
    killed."""

    def __init__(self, workers: int) -> None:
        self.pool = ThreadPoolExecutor(max_workers=workers)
        self.live: list[subprocess.Popen] = []

    def run(self, args: list, env: dict, timeout: float = 600) -> subprocess.CompletedProcess:
        proc = subprocess.Popen([str(a) for a in args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                env=env)
        self.live.append(proc)
        try:
            out, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, err = proc.communicate()
        return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)

    def close(self) -> None:
        for proc in self.live:
            if proc.poll() is None:
                proc.kill()
        self.pool.shutdown(wait=True)


@pytest.fixture(scope="module")
def mirrored_processes(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SimpleNamespace]:
    """The two MirroredStrategy scenarios (2 logical CPUs), started together the first time a test asks: the step
    equivalence, and the resume chain (a run killed after epoch 1 of 2, what it left, then ``--resume``)."""
    procs = _Processes(workers=2)
    env = _env(AXIAL_KD_CPU_DEVICES="2")
    run = tmp_path_factory.mktemp("resume") / "run"
    base = [sys.executable, SCRIPT, "train", run, run.parent / "w.npz", "--set", "train.distribute=mirrored", "--set",
            "train.epochs=2", "--set", "train.steps_per_epoch=2"]

    def resume_chain() -> SimpleNamespace:
        killed = procs.run(base + ["--kill-after", "1"], env)
        left = SimpleNamespace(backup=sorted(p.name for p in (run / "backup").glob("epoch-0001*")),
                               metrics=(run / "metrics.json").exists())
        resumed = procs.run(base + ["--resume"], env) if killed.returncode == -9 else None
        return SimpleNamespace(killed=killed, left=left, resumed=resumed, run=run)

    yield SimpleNamespace(equivalence=procs.pool.submit(procs.run, [sys.executable, SCRIPT, "equivalence"], env),
                          resume=procs.pool.submit(resume_chain))
    procs.close()


def test_mirrored_step_equals_one_device(mirrored_processes):
    """Global batch 8: one SGD step on 2 replicas (4 images each, BatchNorm synchronized, the teacher head's too)
    equals one step on one device; without synchronization the BatchNorm statistics (and so the step) differ, so the
    test can fail."""
    proc = mirrored_processes.equivalence.result()
    assert proc.returncode == 0, proc.stderr[-3000:]
    r = _result(proc.stdout)
    assert r["replicas"] == 2
    assert r["update_size"] > 1e-2  # the step moved the weights
    assert r["sync_max_diff"] < 1e-4 and r["sync_loss_diff"] < 1e-5, r
    assert r["unsync_max_diff"] > 1e-3, r
    assert r["diag_diff"] < 1e-5, r  # gradient diagnostics under the strategy
    # One AxialAttention pass (the teacher head's layer, every term on) split over the replicas: synchronized, its
    # output, weight gradients and the moving statistics of its folded BatchNorms (closed-form similarity moments
    # included) are the one-device ones; unsynchronized they are not.
    for what in ("output", "grad", "stats"):
        assert r[f"axial_sync_{what}_diff"] < 1e-4, (what, r)
        assert r[f"axial_unsync_{what}_diff"] > 1e-3, (what, r)


def test_resume_under_mirrored_after_a_kill(mirrored_processes):
    """SIGKILL after epoch 1 of 2 under mirrored (2 logical CPUs), then --resume: epoch 2 only is trained."""
    chain = mirrored_processes.resume.result()
    killed, resumed, run = chain.killed, chain.resumed, chain.run
    assert killed.returncode == -9, killed.stdout[-2000:] + killed.stderr[-2000:]
    assert chain.left.backup and not chain.left.metrics, chain.left
    assert resumed.returncode == 0, resumed.stdout[-2000:] + resumed.stderr[-2000:]
    assert "continuing" in resumed.stdout and "after epoch 1" in resumed.stdout
    assert [r.split(",")[0] for r in (run / "history.csv").read_text().splitlines()[1:]] == ["1", "2"]
    assert json.loads((run / "metrics.json").read_text())["epochs"] == 2


def _free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def test_two_workers_train_the_quickstart(tmp_path):
    """MultiWorkerMirroredStrategy, 2 worker processes on 127.0.0.1: both finish, only the chief writes (worker 1's
    --run-dir is never created), and both end with the same weights."""
    cluster = {"worker": [f"127.0.0.1:{p}" for p in _free_ports(2)]}
    procs = []
    for i in range(2):
        env = _env(TF_CONFIG=json.dumps({"cluster": cluster, "task": {"type": "worker", "index": i}}))
        args = [sys.executable, str(SCRIPT), "train", str(tmp_path / f"run{i}"), str(tmp_path / f"w{i}.npz"),
                "--set", "train.distribute=multi_worker", "--set", "train.epochs=2", "--set",
                "train.steps_per_epoch=2", "--set", "export.enabled=true"]
        procs.append(subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env))
    outs = []
    for p in procs:
        try:
            outs.append(p.communicate(timeout=600)[0])
        except subprocess.TimeoutExpired:
            for q in procs:
                q.kill()
            raise
    assert [p.returncode for p in procs] == [0, 0], "\n".join(o[-2000:] for o in outs)
    assert _result(outs[0])["chief"] and not _result(outs[1])["chief"]
    chief = tmp_path / "run0"
    for name in ("metrics.json", "history.csv", "student.keras", "export/student.tflite", "checkpoints/best.json"):
        assert (chief / name).exists(), name
    assert [r.split(",")[0] for r in (chief / "history.csv").read_text().splitlines()[1:]] == ["1", "2"]
    assert not (tmp_path / "run1").exists()
    w0, w1 = np.load(tmp_path / "w0.npz"), np.load(tmp_path / "w1.npz")
    assert len(w0.files) == len(w1.files) > 0
    assert max(float(np.abs(w0[k] - w1[k]).max()) for k in w0.files) < 1e-6


# ------------------------------------------------------------------------------- the grid on several GPUs
def test_gpu_slots_and_child_environment():
    from axial_kd_tf.parallel import child_env, gpu_slots

    assert gpu_slots("0,2", 4) == ["0", "2"]
    assert gpu_slots("1", 3, parent="4,5,6") == ["5"]  # indices count the GPUs this process sees
    for text, visible, message in [("0,0", 4, "distinct"), ("a", 4, "comma list"), ("3", 2, "sees 2 GPU(s) (0-1)"),
                                   ("0", 0, "use --parallel N")]:
        with pytest.raises(UserError, match=message.replace("(", r"\(").replace(")", r"\)")):
            gpu_slots(text, visible)
    assert child_env(None, {"A": "1"}, device="3") == {"A": "1", "CUDA_VISIBLE_DEVICES": "3"}


def test_devices_flag_errors(capsys):
    from axial_kd_tf.experiments.cli import main

    assert main(["--config", "quickstart", "--devices", "0", "--parallel", "2", "--dry-run"]) == 2
    assert "cannot be combined with --parallel" in capsys.readouterr().err
    if not __import__("tensorflow").config.list_physical_devices("GPU"):
        assert main(["--config", "quickstart", "--devices", "0", "--dry-run"]) == 2
        assert "sees 0 GPU(s); on a CPU machine use --parallel N" in capsys.readouterr().err


def test_grid_runs_at_once_on_separate_gpus(tmp_path, monkeypatch):
    """--devices 0,1: at most two children at once, each started with one GPU, both GPUs used, every run once."""
    import queue
    import threading

    from axial_kd_tf.experiments import cli as ex

    args = ex.build_parser().parse_args(["--config", "quickstart", "--seeds", "1-3", "--out", str(tmp_path)])
    grid = ex.resolve_grid(args)
    args.gpus, args.parallel = ["0", "1"], 2
    started, busy, peak = [], set(), []

    def fake_child(item, overlays, done: queue.Queue, key, cpus=None, prefix="", device=None):
        assert cpus is None and device not in busy
        busy.add(device)
        started.append((item.run_dir, device))
        peak.append(len(busy))
        (item.run_dir).mkdir(parents=True, exist_ok=True)
        (item.run_dir / "test_metrics.json").write_text(json.dumps({"outputs": {}}))

        def finish() -> None:
            busy.discard(device)
            done.put((key, 0))

        timer = threading.Timer(0.05, finish)
        timer.start()
        return SimpleNamespace(thread=timer, stop=lambda: None)

    monkeypatch.setattr(ex, "start_child", fake_child)
    monkeypatch.setattr(ex, "_aggregate", lambda grid: {})
    assert ex.run_plan(grid, args) == []
    assert len(started) == len(grid.plan) == 6 and len({d for d, _ in started}) == 6
    assert {dev for _, dev in started} == {"0", "1"} and max(peak) == 2


def test_config_digest_ignores_the_distribution():
    """Earlier runs keep their digest: train.distribute is left out, train.sync_batchnorm at its default too."""
    from axial_kd_tf.experiments.grid import config_digest

    raw = load_config("quickstart").to_dict()
    old = json.loads(json.dumps(raw))
    del old["train"]["distribute"], old["train"]["sync_batchnorm"]  # a run written before issue 12
    mirrored = load_config("quickstart", ["train.distribute=mirrored"]).to_dict()
    assert config_digest(raw) == config_digest(old) == config_digest(mirrored)
    assert config_digest(load_config("quickstart", ["train.sync_batchnorm=true"]).to_dict()) != config_digest(raw)

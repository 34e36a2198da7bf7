"""The benchmarks' measuring kit: process memory (RSS, high-water mark, available memory), step timing, the
model-and-trainer builder that times steps exactly as ``train.py`` trains, and machine information for the JSON.

Used by ``teacher_overhead.py``, ``zoo.py``, ``xla.py`` and ``data_pipeline.py``.
"""

from __future__ import annotations

import ctypes
import gc
import math
import os
import platform
import threading
import time
from typing import Any, Callable, Optional, Sequence

import keras
import numpy as np
import tensorflow as tf

from axial_kd_tf.config import Config
from axial_kd_tf.distill import student_network
from axial_kd_tf.training import build_model_from_config, make_optimizer, make_trainer

Log = Callable[[str], None]

# Peak bytes the teacher adds to a training step, in units of one [B·W', heads, H', H'] similarity map per similarity
# term and axial pass. Measured ≈ 2.4 (pool 2, positional encoding, XLA, 256², batch 8: +1.9 GB over the baseline's
# ΔRSS); 3.0 leaves a margin. Used only by the out-of-memory guard (estimate_teacher_bytes).
TEACHER_MAPS_PER_TERM = 3.0


MB = 1024.0 * 1024.0


_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def rss_bytes() -> int:
    """Current resident set size of this process (``/proc/self/statm``, field 2)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * _PAGE
    except OSError:  # not Linux: fall back to the (peak) getrusage value
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _proc_kb(path: str, key: str) -> Optional[int]:
    try:
        with open(path) as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def hwm_bytes() -> Optional[int]:
    """The kernel's peak RSS since the last :func:`reset_hwm` (``VmHWM``)."""
    return _proc_kb("/proc/self/status", "VmHWM")


def reset_hwm() -> bool:
    """Reset ``VmHWM`` to the current RSS (Linux ≥ 4.0); False where not allowed."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def mem_available_bytes() -> Optional[int]:
    return _proc_kb("/proc/meminfo", "MemAvailable")


def malloc_trim() -> bool:
    """Return freed heap pages to the OS (glibc), so later growth shows up in RSS again."""
    try:
        return bool(ctypes.CDLL("libc.so.6").malloc_trim(0))
    except (OSError, AttributeError):
        return False


def release_memory() -> None:
    gc.collect()
    keras.backend.clear_session()
    gc.collect()
    malloc_trim()


class RssSampler:
    """Samples RSS every ``interval`` seconds in a daemon thread; :meth:`take_peak` returns and restarts the peak."""

    def __init__(self, interval: float = 0.005) -> None:
        self.interval = interval
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None
        self._peak = 0
        self.samples = 0

    def __enter__(self) -> "RssSampler":
        self._peak = rss_bytes()
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            r = rss_bytes()
            with self._lock:
                self.samples += 1
                if r > self._peak:
                    self._peak = r

    def take_peak(self) -> int:
        now = rss_bytes()
        with self._lock:
            peak = max(self._peak, now)
            self._peak = now
        return peak


class StepTimer(keras.callbacks.Callback):
    """Times every ``fit`` step; switches the memory phase from warm-up to timed at step ``warmup``."""

    def __init__(self, warmup: int, steps: int, sampler: RssSampler, label: str, log: Log) -> None:
        super().__init__()
        self.warmup, self.steps, self.sampler, self.label, self.log = warmup, steps, sampler, label, log
        self.times: list[float] = []
        self.warmup_peak = 0
        self.rss_timed_start = 0
        self.hwm_ok = False
        self._t = 0.0

    def on_train_batch_begin(self, batch: int, logs: Optional[dict] = None) -> None:
        if batch == self.warmup:
            self.warmup_peak = max(self.sampler.take_peak(), hwm_bytes() or 0)
            self.hwm_ok = reset_hwm()
            self.rss_timed_start = rss_bytes()
        self._t = time.perf_counter()

    def on_train_batch_end(self, batch: int, logs: Optional[dict] = None) -> None:
        # Overriding this hook makes Keras dispatch callbacks synchronously with NumPy logs, so the step has finished.
        dt = time.perf_counter() - self._t
        self.times.append(dt)
        n = self.warmup + self.steps
        kind = "warm-up" if batch < self.warmup else "step"
        loss = (logs or {}).get("loss")
        loss_s = f", loss {float(loss):.4f}" if loss is not None else ""
        self.log(f"  [{self.label}] {kind} {batch + 1}/{n}: {dt:.3f} s{loss_s}, RSS {rss_bytes() / MB:,.0f} MB")


def summarize_times(times: Sequence[float]) -> dict:
    a = np.asarray(times, dtype=np.float64)
    q25, med, q75 = np.percentile(a, [25, 50, 75])
    return {"median_s": float(med), "q25_s": float(q25), "q75_s": float(q75), "iqr_s": float(q75 - q25),
            "min_s": float(a.min()), "max_s": float(a.max()), "mean_s": float(a.mean())}


def random_batch(batch: int, size: int, in_channels: int, num_classes: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    images = rng.random((batch, size, size, in_channels), dtype=np.float32)
    labels = rng.integers(0, num_classes, (batch, size, size), dtype=np.int32)
    return images, labels


class Built:
    """A model, its trainer (compiled like ``train.py``) and the repeated one-batch dataset."""

    def __init__(self, cfg: Config, images: np.ndarray, labels: np.ndarray, num_classes: int, total_steps: int,
                 reseed: bool = True) -> None:
        class_names = tuple(f"class{i}" for i in range(num_classes))
        previous_policy = keras.mixed_precision.global_policy().name
        keras.mixed_precision.set_global_policy(cfg.train.mixed_precision)
        try:
            if reseed:  # tf.random.set_seed makes every existing tf.function retrace (an XLA recompile with jit)
                keras.utils.set_random_seed(cfg.train.seed)
            t0 = time.perf_counter()
            self.model = build_model_from_config(cfg, num_classes, int(images.shape[-1]))
            self.trainer = make_trainer(cfg, self.model, class_names)
            self.trainer.compile(optimizer=make_optimizer(cfg, total_steps), jit_compile=cfg.train.jit_compile)
            self.student_params = int(student_network(self.model).count_params())
            self.total_params = int(self.model.count_params())
            self.dataset = tf.data.Dataset.from_tensors((images, labels)).repeat()
            self.build_s = time.perf_counter() - t0
        finally:
            keras.mixed_precision.set_global_policy(previous_policy)
        self._iterator: Any = None

    def warm(self, steps: int = 1) -> float:
        """``fit`` for ``steps`` steps (builds optimizer/metric state and compiles the train function); seconds."""
        t0 = time.perf_counter()
        self.trainer.fit(self.dataset, epochs=1, steps_per_epoch=steps, verbose=0, shuffle=False)
        return time.perf_counter() - t0

    def step(self) -> tuple[float, float]:
        """One more training step through the compiled ``train_function`` (as ``fit`` calls it): (wall s, CPU s)."""
        if self._iterator is None:
            self._iterator = iter(self.trainer.distribute_strategy.experimental_distribute_dataset(self.dataset))
        c0, t0 = time.process_time(), time.perf_counter()
        logs = self.trainer.train_function(self._iterator)
        {k: np.asarray(v) for k, v in logs.items()}  # pull the results, as fit's callbacks do
        return time.perf_counter() - t0, time.process_time() - c0


def estimate_teacher_bytes(cfg: Config, batch: int, size: int) -> float:
    """Rough peak of the teacher's training step: similarity-map sized tensors of both axial passes.

    A pass along an axis of length L' = ceil(size / pool) holds [B·L', heads, L', L'] maps for each of its similarity
    terms (3 with positional encoding, 1 without); forward, BN, softmax, skew and their gradients multiply that.
    """
    t = cfg.teacher
    s = math.ceil(size / t.pool_size)
    terms = 3 if t.use_positional_encoding else 1
    item = 2 if cfg.train.mixed_precision != "float32" else 4
    one_map = batch * s * t.num_heads * s * s * item
    return 2 * one_map * terms * TEACHER_MAPS_PER_TERM


def machine_info() -> dict:
    cpu = None
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    try:
        affinity = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        affinity = None
    try:
        load = list(os.getloadavg())
    except OSError:
        load = None
    total = _proc_kb("/proc/meminfo", "MemTotal")
    return {
        "cpu_model": cpu or platform.processor() or platform.machine(),
        "logical_cores": os.cpu_count(),
        "usable_cores": affinity,
        "mem_total_gb": total / 1024**3 if total else None,
        "mem_available_gb_at_start": (mem_available_bytes() or 0) / 1024**3,
        "loadavg_at_start": load,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "tensorflow": tf.__version__,
        "keras": keras.__version__,
        "numpy": np.__version__,
        "tf_intra_op_threads": tf.config.threading.get_intra_op_parallelism_threads(),
        "tf_inter_op_threads": tf.config.threading.get_inter_op_parallelism_threads(),
    }


def fmt(v: Optional[float], spec: str, suffix: str = "") -> str:
    return "—" if v is None or (isinstance(v, float) and not math.isfinite(v)) else f"{v:{spec}}{suffix}"


def fmt_load(load: Optional[list]) -> str:
    return "/".join(f"{x:.2f}" for x in load) if load else "n/a"

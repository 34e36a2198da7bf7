#!/usr/bin/env python
"""The teacher's cost on a GPU, through whichever Keras backend is installed (TensorFlow, JAX or PyTorch).

    KERAS_BACKEND=torch python benchmarks/teacher_gpu.py         # or jax / tensorflow; unet-resnet34 at 256², 512²
                                                                 # and 1024², pool 1 and 2, float32 and bfloat16
    KERAS_BACKEND=jax python benchmarks/teacher_gpu.py --archs unet,deeplabv3plus --sizes 512 --precisions bfloat16
    KERAS_BACKEND=torch python benchmarks/teacher_gpu.py --small # a smoke test (tiny network, 64², CPU is fine)

A zoo network (``axial_kd_tf.models.build_network``) is trained with and without ``AxialTeacherHead`` on its logits
(the method of "Improving segmentation accuracy with self-distillation", Hotta lab; the head is Axial-DeepLab's
position-sensitive axial attention, Eq. 4), one fixed random batch, loss :func:`axial_kd_tf.losses.
self_distillation_loss` at the library's defaults (CE + CE + T²·KL on the pixels the teacher gets right; CE alone
without the teacher). The training step is each backend's own compiled form:

* ``torch``: the Keras model *is* a ``torch.nn.Module``; eager autograd and ``torch.optim.Adam`` over its parameters
  (what a PyTorch user writes; cuDNN autotuning on, TF32 matmuls allowed like the other two backends' defaults);
* ``jax``: ``jax.jit`` of ``stateless_call`` + ``jax.value_and_grad`` + ``keras.optimizers.Adam.stateless_apply``,
  state donated (one XLA executable per step);
* ``tensorflow``: ``tf.function`` of a ``GradientTape`` step with ``keras.optimizers.Adam`` (``--tf-xla``: XLA).

Per cell (architecture × input size × precision × {no teacher, pool 1, pool 2, ...}): ``--warmup`` untimed steps
(tracing, compilation, autotuning), then ``--steps`` steps timed one by one with a device synchronisation after each
(``torch.cuda.synchronize``, ``jax.block_until_ready``, ``tf.test.experimental.sync_devices``); the median is
reported. Peak device memory of the cell (weights, optimizer state, activations, workspace) from
``torch.cuda.max_memory_allocated``, JAX's ``memory_stats()['peak_bytes_in_use']`` or TensorFlow's
``get_memory_info('GPU:0')['peak']``; "n/a" on a CPU. ``bfloat16`` is Keras' ``mixed_bfloat16`` policy (float32
weights and loss, bfloat16 compute).

Each cell runs in a fresh worker process (``--isolation process``, the default): JAX's peak memory cannot be reset
within a process, and an out-of-memory error (or a host OOM kill) then costs one cell, reported in its row, not the
run. Writes ``--out`` (JSON, atomically; default ``benchmarks/results/teacher_gpu_<backend>.json``) and the table as
Markdown next to it; ``run_benchmark(args)`` returns the JSON payload.
"""

from __future__ import annotations

import argparse
import gc
import inspect
import json
import os
import platform
import random
import re
import statistics
import sys
import time
import traceback
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# Allocate device memory as needed, not up front, so the peak figures are the cell's own and a parent process and
# its worker can share the GPU (JAX preallocates 75 % and TensorFlow all of it by default).
os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
os.environ.setdefault("TF_FORCE_GPU_ALLOW_GROWTH", "true")

_ROOT = Path(__file__).resolve().parent.parent
if str(_ROOT) not in sys.path:  # `python benchmarks/teacher_gpu.py` puts benchmarks/ on the path, not the repo root
    sys.path.insert(0, str(_ROOT))

import keras  # noqa: E402
import numpy as np  # noqa: E402

from axial_kd_tf.errors import UserError  # noqa: E402
from axial_kd_tf.io_utils import atomic_write_json  # noqa: E402
from axial_kd_tf.layers import AxialTeacherHead  # noqa: E402
from axial_kd_tf.losses import self_distillation_loss  # noqa: E402
from axial_kd_tf.models import ZOO, build_network  # noqa: E402
from benchmarks._common import (  # noqa: E402
    WorkerFailed,
    add_out_arg,
    add_worker_args,
    run_main,
    run_script_worker,
    write_report,
)

BACKENDS = ("tensorflow", "jax", "torch")
PRECISIONS = {"float32": "float32", "bfloat16": "mixed_bfloat16"}
DEFAULT_SIZES = (256, 512, 1024)
SMALL = dict(sizes=[64], batch=2, steps=2, warmup=1, encoder="resnet18")
GiB = 1024**3

Log = Callable[[str], None]


# ------------------------------------------------------------------------------------------------------ arguments
def _split(values: Sequence[str]) -> list[str]:
    return [v.strip() for value in values for v in str(value).split(",") if v.strip()]


def _ints(values: Sequence[str], flag: str, minimum: int) -> list[int]:
    try:
        ints = [int(v) for v in _split(values)]
    except ValueError:
        raise UserError(f"{flag} takes whole numbers (space or comma separated), got {' '.join(values)}") from None
    if not ints or min(ints) < minimum:
        raise UserError(f"{flag} needs one or more numbers >= {minimum}, got {' '.join(values) or 'nothing'}")
    return list(dict.fromkeys(ints))


def backend() -> str:
    """The Keras backend of this process, checked: it must be one that trains."""
    name = keras.backend.backend()
    if name not in BACKENDS:
        raise UserError(f"KERAS_BACKEND={name} cannot train a network; set KERAS_BACKEND to one of "
                        f"{', '.join(BACKENDS)}")
    return name


def resolve_args(args: argparse.Namespace) -> argparse.Namespace:
    """Check and normalise the parsed arguments in place (``--small`` fills what was not given); one-line errors."""
    if args.small:
        for key, value in SMALL.items():
            if getattr(args, key) is None:
                setattr(args, key, value)
    args.archs = _split(args.archs)
    unknown = [a for a in args.archs if a not in ZOO]
    if unknown or not args.archs:
        raise UserError(f"--archs must name architectures of the zoo ({', '.join(ZOO)}), got "
                        f"{', '.join(unknown) or 'nothing'}")
    args.archs = list(dict.fromkeys(args.archs))
    args.sizes = _ints(args.sizes if args.sizes is not None else [str(s) for s in DEFAULT_SIZES], "--sizes", 32)
    bad = [s for s in args.sizes if s % 32]
    if bad:
        raise UserError(f"--sizes must be multiples of 32 (every zoo network's input multiple divides 32), got "
                        f"{', '.join(map(str, bad))}")
    args.pools = _ints(args.pools, "--pools", 1)
    args.precisions = list(dict.fromkeys(_split(args.precisions)))
    unknown = [p for p in args.precisions if p not in PRECISIONS]
    if unknown or not args.precisions:
        raise UserError(f"--precisions must name one or more of {', '.join(PRECISIONS)}, got "
                        f"{', '.join(unknown) or 'nothing'}")
    args.steps = 20 if args.steps is None else args.steps
    args.warmup = 5 if args.warmup is None else args.warmup
    if args.steps < 1 or args.warmup < 1:
        raise UserError("--steps must be >= 1 and --warmup >= 1 (the first step traces and compiles)")
    if args.batch is not None and args.batch < 1:
        raise UserError(f"--batch must be >= 1, got {args.batch}")
    if args.num_classes < 2 or min(args.in_channels, args.hidden_dim, args.num_heads, args.num_blocks) < 1:
        raise UserError("--num-classes must be >= 2 and --in-channels, --hidden-dim, --num-heads, --num-blocks >= 1")
    if args.hidden_dim % args.num_heads:
        raise UserError(f"--hidden-dim ({args.hidden_dim}) must be divisible by --num-heads ({args.num_heads})")
    args.encoder = args.encoder or "resnet34"
    try:
        options = json.loads(args.options)
    except json.JSONDecodeError as exc:
        raise UserError(f"--options must be a JSON object, e.g. '{{\"encoder_depth\": 3}}': {exc}") from None
    if not isinstance(options, dict):
        raise UserError("--options must be a JSON object, e.g. '{\"encoder_depth\": 3}'")
    args.options = json.dumps(options)
    args.backend = backend()
    if args.tf_xla and args.backend != "tensorflow":
        raise UserError(f"--tf-xla applies to KERAS_BACKEND=tensorflow only (this run: {args.backend}); JAX always "
                        "compiles with XLA")
    return args


def batch_for(size: int, args: argparse.Namespace) -> int:
    """``--batch``, or the issue's batch per size: 8 up to 512², 2 above (as the H200 probe measured)."""
    return args.batch if args.batch is not None else (8 if size <= 512 else 2)


def model_options(arch: str, args: argparse.Namespace) -> dict:
    """``--options`` over, in ``--small`` mode, the architecture's tiny variant (``TINY_OPTIONS`` of the tests'
    ``tests/helpers.py``, which has the one table of the zoo's test settings)."""
    if not args.small:
        return json.loads(args.options)
    from tests.helpers import TINY_OPTIONS  # the repository root is on sys.path (see the top of this file)

    return {**TINY_OPTIONS[arch], **json.loads(args.options)}


# ---------------------------------------------------------------------------------------------------------- model
def build_model(arch: str, size: int, pool: Optional[int], args: argparse.Namespace) -> tuple[keras.Model, int]:
    """``image → [student]`` or ``image → [student, teacher]`` (float32 outputs), and the head's parameter count.

    The same two-output layout as ``distill.build_distillation_model`` (which lives with the TensorFlow trainer),
    built with a static input size because JAX and PyTorch trace concrete shapes."""
    net = build_network(arch, encoder=args.encoder, num_classes=args.num_classes, in_channels=args.in_channels,
                        encoder_weights=None, **model_options(arch, args))
    inputs = keras.Input((size, size, args.in_channels), name="image")
    student = keras.layers.Activation("linear", dtype="float32", name="student")(net(inputs))
    outputs = [student]
    head_params = 0
    if pool is not None:
        head = AxialTeacherHead(args.num_classes, hidden_dim=args.hidden_dim, num_heads=args.num_heads,
                                num_blocks=args.num_blocks, pool_size=pool, name="axial_teacher_head")
        outputs.append(keras.layers.Activation("linear", dtype="float32", name="teacher")(head(student)))
        head_params = head.count_params()
    return keras.Model(inputs, outputs, name=f"{arch}_{'teacher' if pool else 'base'}"), head_params


def loss_of(labels: Any, outputs: Sequence[Any]) -> Any:
    """The library's loss (``self_distillation_loss``'s defaults) with a teacher, CE alone without."""
    if not isinstance(outputs, (list, tuple)):  # a one-output functional model returns its tensor
        outputs = [outputs]
    return self_distillation_loss(labels, outputs[0], outputs[1] if len(outputs) > 1 else None)[0]


# ------------------------------------------------------------------------------------------- per-backend training
class Device:
    """The backend's device: its name, synchronisation and peak-memory counter (None on a CPU)."""

    def __init__(self, name: str) -> None:
        self.backend = name
        self._jax_first = True

    def describe(self) -> dict:
        info: dict[str, Any] = {"backend": self.backend, "keras": keras.__version__}
        if self.backend == "torch":
            import torch

            cuda = torch.cuda.is_available()
            info.update(framework=f"torch {torch.__version__}", accelerator=cuda,
                        device=torch.cuda.get_device_name() if cuda else "cpu",
                        tf32_matmul=torch.backends.cuda.matmul.allow_tf32,
                        cudnn_benchmark=torch.backends.cudnn.benchmark)
        elif self.backend == "jax":
            import jax

            dev = jax.devices()[0]
            info.update(framework=f"jax {jax.__version__}", accelerator=dev.platform != "cpu",
                        device=f"{dev.platform}: {getattr(dev, 'device_kind', str(dev))}")
        else:
            import tensorflow as tf

            gpus = tf.config.list_physical_devices("GPU")
            name = tf.config.experimental.get_device_details(gpus[0]).get("device_name", "GPU") if gpus else "cpu"
            info.update(framework=f"tensorflow {tf.__version__}", accelerator=bool(gpus), device=name)
        return info

    def setup(self) -> None:
        if self.backend == "torch":
            import torch

            if torch.cuda.is_available():
                # TF32 tensor cores for float32 matmuls, as JAX and TensorFlow use by default (convolutions already
                # allow it in PyTorch), and cuDNN autotuning for the fixed shapes.
                torch.backends.cuda.matmul.allow_tf32 = True
                torch.backends.cudnn.allow_tf32 = True
                torch.backends.cudnn.benchmark = True

    def sync(self, state: Any = None) -> None:
        if self.backend == "torch":
            import torch

            if torch.cuda.is_available():
                torch.cuda.synchronize()
        elif self.backend == "jax":
            import jax

            jax.block_until_ready(state)
        else:
            import tensorflow as tf

            if tf.config.list_logical_devices("GPU"):
                tf.test.experimental.sync_devices()

    def reset_peak(self) -> None:
        if self.backend == "torch":
            import torch

            if torch.cuda.is_available():
                torch.cuda.reset_peak_memory_stats()
        elif self.backend == "tensorflow":
            import tensorflow as tf

            if tf.config.list_logical_devices("GPU"):
                tf.config.experimental.reset_memory_stats("GPU:0")

    def peak_bytes(self) -> tuple[Optional[int], Optional[str]]:
        """The peak since :meth:`reset_peak`, or ``(None, why)``."""
        if self.backend == "torch":
            import torch

            if not torch.cuda.is_available():
                return None, "CPU"
            return int(torch.cuda.max_memory_allocated()), None
        if self.backend == "jax":
            import jax

            dev = jax.devices()[0]
            if dev.platform == "cpu":
                return None, "CPU"
            first, self._jax_first = self._jax_first, False
            if not first:  # JAX's peak counter cannot be reset: only a process's first cell has its own
                return None, "JAX peak is per process (use --isolation process)"
            stats = dev.memory_stats() or {}
            peak = stats.get("peak_bytes_in_use")
            return (int(peak), None) if peak is not None else (None, "no memory_stats on this device")
        import tensorflow as tf

        if not tf.config.list_logical_devices("GPU"):
            return None, "CPU"
        return int(tf.config.experimental.get_memory_info("GPU:0")["peak"]), None

    def release(self) -> None:
        gc.collect()
        keras.backend.clear_session()
        gc.collect()
        if self.backend == "torch":
            import torch

            if torch.cuda.is_available():
                torch.cuda.empty_cache()


def make_step(model: keras.Model, images: np.ndarray, labels: np.ndarray, device: Device,
              args: argparse.Namespace) -> Callable[[], float]:
    """One training step of ``model`` on the fixed batch, as the backend compiles it; returns the loss (synced)."""
    name = device.backend
    if name == "torch":
        import torch

        x, y = keras.ops.convert_to_tensor(images), keras.ops.convert_to_tensor(labels)  # on Keras' device
        optimizer = torch.optim.Adam([v.value for v in model.trainable_variables], lr=1e-3)

        def torch_step() -> float:
            loss = loss_of(y, model(x, training=True))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            device.sync()
            return float(loss.detach())

        return torch_step

    optimizer = keras.optimizers.Adam(1e-3)
    optimizer.build(model.trainable_variables)
    if name == "jax":
        import jax

        x, y = jax.numpy.asarray(images), jax.numpy.asarray(labels)

        def loss_fn(trainable: list, fixed: list, x: Any, y: Any) -> tuple:
            outputs, fixed = model.stateless_call(trainable, fixed, x, training=True)
            return loss_of(y, outputs), fixed

        grad_fn = jax.value_and_grad(loss_fn, has_aux=True)

        def train(state: tuple, x: Any, y: Any) -> tuple:
            trainable, fixed, opt_vars = state
            (loss, fixed), grads = grad_fn(trainable, fixed, x, y)
            trainable, opt_vars = optimizer.stateless_apply(opt_vars, grads, trainable)
            return loss, (trainable, fixed, opt_vars)

        jitted = jax.jit(train, donate_argnums=0)
        state = [([v.value for v in model.trainable_variables], [v.value for v in model.non_trainable_variables],
                  [v.value for v in optimizer.variables])]

        def jax_step() -> float:
            loss, state[0] = jitted(state[0], x, y)
            device.sync((loss, state[0]))
            return float(loss)

        return jax_step

    import tensorflow as tf

    x, y = tf.constant(images), tf.constant(labels)

    @tf.function(jit_compile=bool(args.tf_xla))
    def train(x: Any, y: Any) -> Any:
        with tf.GradientTape() as tape:
            loss = loss_of(y, model(x, training=True))
        variables = model.trainable_variables
        optimizer.apply(tape.gradient(loss, variables), variables)
        return loss

    def tf_step() -> float:
        loss = train(x, y)
        device.sync()
        return float(loss)

    return tf_step


# ------------------------------------------------------------------------------------------------------ measuring
def seed_all(seed: int, name: str) -> None:
    """Seed Keras' initialisers (drawn through Python's ``random``), NumPy and torch. Not keras.utils.set_random_seed:
    it imports TensorFlow wherever TensorFlow is installed, also under the jax and torch backends."""
    random.seed(seed)
    np.random.seed(seed)
    if name == "torch":
        import torch

        torch.manual_seed(seed)


# torch.cuda.OutOfMemoryError ("CUDA out of memory"), XLA's RESOURCE_EXHAUSTED (JAX), TensorFlow's
# ResourceExhaustedError / "OOM when allocating".
_OOM = re.compile(r"OutOfMemory|out of memory|RESOURCE_EXHAUSTED|ResourceExhausted|\bOOM\b", re.IGNORECASE)


def _error(exc: BaseException) -> str:
    """One line; out-of-memory errors of the three backends (and the host's) start with ``out of memory``."""
    text = " ".join(str(exc).split())
    text = text if len(text) <= 300 else text[:240] + " … " + text[-60:]
    kind = type(exc).__name__
    if isinstance(exc, MemoryError) or _OOM.search(f"{kind} {text}"):
        return f"out of memory: {kind}: {text}"
    return f"{kind}: {text}" if text else kind


def measure_cell(cell: dict, args: argparse.Namespace, device: Device, log: Log) -> dict:
    """Build, warm up and time one cell (``pool`` None = the network alone); errors are recorded, not raised."""
    arch, size, batch, precision, pool = cell["arch"], cell["size"], cell["batch"], cell["precision"], cell["pool"]
    result: dict[str, Any] = {**cell, "error": None, "pid": os.getpid()}
    rng = np.random.default_rng(args.seed)
    images = rng.standard_normal((batch, size, size, args.in_channels)).astype("float32")
    labels = rng.integers(0, args.num_classes, (batch, size, size)).astype("int32")
    keras.config.set_dtype_policy(PRECISIONS[precision])
    model = step = None
    try:
        seed_all(args.seed, device.backend)
        device.reset_peak()
        t0 = time.perf_counter()
        model, head_params = build_model(arch, size, pool, args)
        result.update(params=model.count_params(), teacher_params=head_params, build_s=time.perf_counter() - t0)
        step = make_step(model, images, labels, device, args)
        t0 = time.perf_counter()
        for _ in range(args.warmup):
            loss = step()
        result["warmup_s"] = time.perf_counter() - t0
        times = []
        for _ in range(args.steps):
            t0 = time.perf_counter()
            loss = step()
            times.append(time.perf_counter() - t0)
        q = statistics.quantiles(times, n=4) if len(times) > 1 else [times[0]] * 3
        result.update(times_s=times, median_s=statistics.median(times), iqr_s=q[2] - q[0], loss=loss)
        result["peak_bytes"], result["peak_note"] = device.peak_bytes()
        if not np.isfinite(loss):
            result["error"] = f"loss is {loss}"
    except Exception as exc:  # noqa: BLE001 - one cell (e.g. out of memory) must not end the run
        result["error"] = _error(exc)
        if os.environ.get("TEACHER_GPU_TRACEBACK"):
            traceback.print_exc()
    finally:
        del model, step
        keras.config.set_dtype_policy("float32")
        device.release()
    what = "no teacher" if pool is None else f"teacher pool {pool}"
    if result["error"]:
        log(f"    {what}: FAILED: {result['error']}")
    else:
        peak = result["peak_bytes"]
        log(f"    {what}: {1e3 * result['median_s']:.1f} ms/step (IQR {1e3 * result['iqr_s']:.1f}), warm-up "
            f"{result['warmup_s']:.1f} s, peak {'n/a' if peak is None else f'{peak / GiB:.2f} GiB'}")
    return result


def worker_main(spec_path: str, out_path: str) -> int:
    """One cell in this fresh process (``--isolation process``); the device description comes back with it."""
    task = json.loads(Path(spec_path).read_text())
    args = argparse.Namespace(**task["args"])
    device = Device(backend())
    device.setup()
    result = measure_cell(task["cell"], args, device, print)
    atomic_write_json(out_path, {"result": result, "device": device.describe()})
    return 0


def cells_of(args: argparse.Namespace) -> list[dict]:
    """Every measurement: per architecture, size and precision the network alone, then with each teacher pool."""
    return [dict(arch=arch, size=size, batch=batch_for(size, args), precision=precision, pool=pool)
            for arch in args.archs for size in args.sizes for precision in args.precisions
            for pool in (None, *args.pools)]


def rows_of(cells: Sequence[dict], args: argparse.Namespace) -> list[dict]:
    """One row per architecture, size, precision and pool: the shared no-teacher cell and that pool's cell."""
    by_key = {(c["arch"], c["size"], c["precision"], c["pool"]): c for c in cells}
    rows = []
    for arch in args.archs:
        for size in args.sizes:
            for precision in args.precisions:
                base = by_key[(arch, size, precision, None)]
                for pool in args.pools:
                    teacher = by_key[(arch, size, precision, pool)]
                    ok = not base["error"] and not teacher["error"]
                    mem = ok and base.get("peak_bytes") and teacher.get("peak_bytes")
                    rows.append({
                        "arch": arch, "encoder": args.encoder, "size": size, "batch": base["batch"],
                        "precision": precision, "pool": pool, "base": base, "teacher": teacher,
                        "ratio": teacher["median_s"] / base["median_s"] if ok else None,
                        "memory_ratio": teacher["peak_bytes"] / base["peak_bytes"] if mem else None,
                    })
    return rows


# ------------------------------------------------------------------------------------------------------ reporting
COLUMNS = ("arch", "input", "precision", "pool", "base step ms", "with teacher ms", "ratio",
           "peak memory base → teacher")


def _ms(cell: dict) -> str:
    if cell["error"]:
        return "OOM" if cell["error"].startswith("out of memory") else "failed"
    return f"{1e3 * cell['median_s']:.1f} (IQR {1e3 * cell['iqr_s']:.1f})"


def _gib(cell: dict) -> str:
    if cell["error"]:
        return "OOM" if cell["error"].startswith("out of memory") else "—"
    return "n/a" if cell.get("peak_bytes") is None else f"{cell['peak_bytes'] / GiB:.2f} GiB"


def format_table(rows: Sequence[dict]) -> str:
    align = [":---", "---:", ":---", "---:", "---:", "---:", "---:", "---:"]
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "|".join(align) + "|"]
    for r in rows:
        base, teacher = _gib(r["base"]), _gib(r["teacher"])
        memory = "n/a" if base == teacher == "n/a" else f"{base} → {teacher}"
        if r["memory_ratio"] is not None:
            memory += f" ({r['memory_ratio']:.2f}×)"
        cells = [r["arch"], f"{r['size']}² ×{r['batch']}", r["precision"], r["pool"], _ms(r["base"]),
                 _ms(r["teacher"]), "—" if r["ratio"] is None else f"{r['ratio']:.2f}×", memory]
        lines.append("| " + " | ".join(str(c).replace("|", "\\|") for c in cells) + " |")
    return "\n".join(lines)


def machine_info() -> dict:
    """The host (the device is described by the process that measures)."""
    cpu = None
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.lower().startswith("model name")), None)
    except OSError:
        pass
    try:
        load = list(os.getloadavg())
    except OSError:
        load = None
    return {"cpu_model": cpu or platform.processor() or platform.machine(), "logical_cores": os.cpu_count(),
            "platform": platform.platform(), "python": platform.python_version(), "numpy": np.__version__,
            "loadavg_at_start": load}


# --------------------------------------------------------------------------------------------------------- driver
def run_benchmark(args: argparse.Namespace, log: Log = print) -> dict:
    """Run the benchmark of parsed ``args`` (:func:`parse_args`), write JSON + Markdown, return the JSON payload."""
    t_start = time.time()
    args = resolve_args(args)
    out = Path(args.out) if args.out else Path(f"benchmarks/results/teacher_gpu_{args.backend}.json")
    cells = cells_of(args)
    machine = machine_info()
    log(f"[setup] KERAS_BACKEND={args.backend}, Keras {keras.__version__}; {machine['cpu_model']}; "
        f"{len(cells)} cells: {', '.join(args.archs)} ({args.encoder}) × {', '.join(f'{s}²' for s in args.sizes)} × "
        f"{', '.join(args.precisions)} × no teacher / pool {', '.join(map(str, args.pools))}; {args.warmup} warm-up + "
        f"{args.steps} timed steps per cell; isolation {args.isolation}")
    device = Device(args.backend)
    described: Optional[dict] = None
    if args.isolation == "none":  # a process-isolated run never touches the device here
        device.setup()
        described = device.describe()
    results: list[dict] = []
    args_json = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
    # Each finished cell is saved at once, so a run stopped by a time limit (a lent GPU's minutes) keeps what it measured.
    partial = out.with_suffix(".partial.json")
    for i, cell in enumerate(cells, 1):
        if results:
            atomic_write_json(partial, {"benchmark": "teacher_gpu", "partial": True, "cells_total": len(cells),
                                        "args": args_json, "device": described, "cells": results})
        what = "no teacher" if cell["pool"] is None else f"teacher pool {cell['pool']}"
        log(f"[cell {i}/{len(cells)}] {cell['arch']} {cell['size']}² ×{cell['batch']} {cell['precision']}, {what} "
            f"({time.time() - t_start:.0f} s elapsed)")
        if args.isolation == "none":
            results.append(measure_cell(cell, args, device, log))
            continue
        task = {"cell": cell, "args": {k: v for k, v in vars(args).items()}}
        try:
            got = run_script_worker(__file__, task, f"cell {i}", log, prefix="teacher_gpu_")
            results.append(got["result"])
            described = described or got["device"]
        except WorkerFailed as exc:
            why = str(exc)
            why = f"out of memory: {why}" if "SIGKILL" in why else why
            log(f"    FAILED: {why}")
            results.append({**cell, "error": why})
    rows = rows_of(results, args)
    wall = time.time() - t_start
    try:
        machine["loadavg_at_end"] = list(os.getloadavg())
    except OSError:
        machine["loadavg_at_end"] = None
    table = format_table(rows)
    notes = [
        f"Step: {args.backend} ({STEP_KIND[args.backend](args)}); one fixed random batch; Adam 1e-3; loss "
        "axial_kd_tf.losses.self_distillation_loss at the library defaults with the teacher, CE alone without.",
        "Times: median (IQR) over the timed steps, each followed by a device synchronisation, after the warm-up "
        "steps (tracing / compilation / autotuning, in the JSON as warmup_s). ratio = with teacher / base.",
        "Peak memory: the device's peak allocation during the cell (model build, warm-up and timed steps); n/a on a "
        "CPU. bfloat16 = Keras' mixed_bfloat16 policy.",
    ]
    failures = [f"FAILED: {c['arch']} {c['size']}² {c['precision']} "
                f"{'no teacher' if c['pool'] is None else 'pool ' + str(c['pool'])}: {c['error']}"
                for c in results if c["error"]]
    payload = {
        "benchmark": "teacher_gpu",
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "wall_time_s": wall,
        "machine": machine,
        "device": described,
        "args": args_json,
        "notes": notes,
        "summary": failures,
        "rows": rows,
        "table_markdown": table,
    }
    dev = described or {}
    header = [
        f"# The teacher's cost per training step, KERAS_BACKEND={args.backend} ({time.strftime('%Y-%m-%d %H:%M')})",
        "",
        f"- device: {dev.get('device', 'unknown')} ({dev.get('framework', args.backend)}, Keras {keras.__version__}); "
        f"host {machine['cpu_model']}",
        f"- {', '.join(args.archs)} with encoder {args.encoder}{' (tiny variants)' if args.small else ''}, options "
        f"{args.options}, "
        f"{args.in_channels} input channel(s), {args.num_classes} classes; teacher hidden {args.hidden_dim}, "
        f"{args.num_blocks} block(s), "
        f"{args.num_heads} head(s); {args.warmup} warm-up + {args.steps} timed steps per cell; wall time {wall:.0f} s",
        *[f"- note: {n}" for n in notes],
        "",
        table,
        "",
        *failures,
    ]
    write_report(out, payload, "\n".join(header) + "\n", wall, log)
    partial.unlink(missing_ok=True)
    return payload


STEP_KIND: dict[str, Callable[[argparse.Namespace], str]] = {
    "torch": lambda a: "eager autograd, torch.optim.Adam",
    "jax": lambda a: "jax.jit of stateless_call + value_and_grad + Adam.stateless_apply",
    "tensorflow": lambda a: f"tf.function{' with XLA' if a.tf_xla else ''}, GradientTape, keras Adam",
}


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="teacher_gpu.py", description="Training-step time and peak device memory of a "
                                "zoo network with and without the teacher, on the Keras backend of KERAS_BACKEND.")
    p.add_argument("--archs", nargs="+", default=["unet"], metavar="ARCH",
                   help=f"zoo architectures, space or comma separated, of {', '.join(ZOO)} (default: unet)")
    p.add_argument("--encoder", default=None, help="encoder (default: resnet34; resnet18 with --small)")
    p.add_argument("--options", default="{}", help="model options (JSON) for every architecture (default: {})")
    p.add_argument("--sizes", nargs="+", default=None, metavar="N",
                   help="square input sizes, multiples of 32 (default: 256 512 1024; 64 with --small)")
    p.add_argument("--batch", type=int, default=None,
                   help="batch size for every size (default: 8 up to 512², 2 above; 2 with --small)")
    p.add_argument("--pools", nargs="+", default=["1", "2"], metavar="P", help="teacher pool sizes (default: 1 2)")
    p.add_argument("--precisions", nargs="+", default=["float32", "bfloat16"], metavar="P",
                   help="float32 and/or bfloat16 (Keras mixed_bfloat16) (default: both)")
    p.add_argument("--steps", type=int, default=None, help="timed steps per cell (default: 20; 2 with --small)")
    p.add_argument("--warmup", type=int, default=None,
                   help="untimed steps per cell, the first compiles (default: 5; 1 with --small)")
    p.add_argument("--num-classes", type=int, default=5, help="(default: %(default)s)")
    p.add_argument("--in-channels", type=int, default=1, help="(default: %(default)s, grey-scale EM / CT)")
    head = inspect.signature(AxialTeacherHead).parameters  # the library's default head, not a copy of its numbers
    p.add_argument("--hidden-dim", type=int, default=head["hidden_dim"].default,
                   help="teacher.hidden_dim (default: %(default)s, the library's; issue 10's first figures: 16)")
    p.add_argument("--num-blocks", type=int, default=head["num_blocks"].default,
                   help="teacher.num_blocks (default: %(default)s, the library's; issue 10's first figures: 1)")
    p.add_argument("--num-heads", type=int, default=1, help="teacher.num_heads (default: %(default)s)")
    p.add_argument("--tf-xla", action="store_true", help="KERAS_BACKEND=tensorflow: compile the step with XLA")
    p.add_argument("--small", action="store_true",
                   help="smoke test: the architectures' tiny variants (resnet18, tests/helpers.py TINY_OPTIONS), 64², batch 2, "
                        "1 warm-up + 2 timed steps (each can still be set)")
    p.add_argument("--isolation", choices=("process", "none"), default="process",
                   help="'process' (default): each cell in a fresh worker process; 'none': all in this one")
    p.add_argument("--seed", type=int, default=0, help="(default: %(default)s)")
    add_out_arg(p, Path("benchmarks/results/teacher_gpu_<backend>.json"))
    p.set_defaults(out=None)
    add_worker_args(p)
    return p.parse_args(argv)


def main(argv: Optional[Sequence[str]] = None) -> int:
    return run_main(parse_args(argv), run_benchmark, worker_main)


if __name__ == "__main__":
    sys.exit(main())

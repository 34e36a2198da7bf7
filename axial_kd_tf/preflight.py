"""Checks that run before a training starts (and before its run directory exists): input sizes and memory.

* :func:`check_input_sizes`: every size the network will see (training crops, validation images, the export input)
  is a multiple of the network's output stride, or one line names the key to change and the nearest valid values.
* :func:`check_memory`: an estimate of the training step's and the validation pass's peak memory against what the
  machine has; over it, one line names the settings to change (``--force`` turns it into a warning).

The estimates build on :func:`axial_kd_tf.inference.memory.estimate_teacher_mb` (the axial teacher's attention maps) and
:func:`axial_kd_tf.inference.memory.student_bytes_per_pixel` (the network's activations). They are estimates: the factors
below were calibrated on this project's 2-core CPU (docs/reliability.md) and err on the generous side, so that a
configuration that fits is not refused.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass
from typing import Callable, Optional

import numpy as np

from axial_kd_tf.config import Config
from axial_kd_tf.errors import UserError
from axial_kd_tf.inference.memory import estimate_teacher_mb, network_multiple, student_bytes_per_pixel
from axial_kd_tf.io_utils import format_bytes

Progress = Callable[[str], None]

#: A training step holds about this many times the teacher's inference peak (forward tensors kept for the backward
#: pass, their gradients, BatchNorm copies). Measured ≈ 2.1 (pool 2, 256², batch 8, benchmarks/README.md).
TEACHER_TRAIN_FACTOR = 2.5
#: A training step holds about this many times the student's summed activations (kept for the backward pass, plus
#: their gradients). Measured ≈ 2.6 (LinkNet/ResNet-18, 256², batch 8, bf16: 2.4 GB RSS).
STUDENT_TRAIN_FACTOR = 3.0
#: TensorFlow's runtime, the compiled functions, the tf.data buffers: a fixed share.
BASE_BYTES = 800 * 2**20


@dataclass
class MemoryEstimate:
    """Estimated peak bytes of one training step and of one validation batch, and what the machine has."""

    train_bytes: float
    val_bytes: float
    available_bytes: Optional[float]
    where: str  # "RAM" / "GPU memory"
    parts: dict

    @property
    def peak_bytes(self) -> float:
        return max(self.train_bytes, self.val_bytes)

    def line(self) -> str:
        have = f"{format_bytes(self.available_bytes)} {self.where} available" if self.available_bytes else \
            f"{self.where} not known"
        return (f"[memory] estimated peak: training step {format_bytes(self.train_bytes)}, validation "
                f"{format_bytes(self.val_bytes)}; {have}")


# ------------------------------------------------------------------------------------------------ input sizes
def _nearest(value: int, multiple: int) -> str:
    low = value // multiple * multiple
    options = [v for v in (low, low + multiple) if v >= multiple]
    return " or ".join(str(v) for v in options)


def size_error(what: str, value: int, multiple: int, arch: str) -> UserError:
    return UserError(f"{what} is {value}, but {arch} needs sizes that are a multiple of {multiple} (its output "
                     f"stride); use {_nearest(value, multiple)}")


def network_size_multiple(network) -> int:
    """The multiple every input side must be (1: any size); 1 when it cannot be determined."""
    return network_multiple(network, default=1)


def check_input_sizes(cfg: Config, network, train_hw: tuple[int, int], val_hw: Optional[tuple[int, int]]) -> int:
    """Raise one :class:`UserError` naming the config key when a size the network will see is not a multiple of
    its output stride (the error a U-Net without padding gives deep inside Keras is a Concatenate shape mismatch).
    Returns the multiple."""
    multiple = network_size_multiple(network)
    if multiple <= 1:
        return multiple
    arch = cfg.model.arch
    d = cfg.data
    if d.crop_size:
        sizes = [("data.crop_size", d.crop_size)]
    elif d.dataset == "synthetic":
        sizes = [("data.synthetic.image_size", d.synthetic.image_size)]
    else:
        sizes = [("the training image height (set data.crop_size)", train_hw[0]),
                 ("the training image width (set data.crop_size)", train_hw[1])]
    if val_hw is not None:
        if d.tile_size:
            sizes.append(("data.tile_size", d.tile_size))
        elif d.dataset == "synthetic":
            sizes.append(("data.synthetic.image_size", d.synthetic.image_size))
        else:
            sizes += [("the validation image height (set data.tile_size)", val_hw[0]),
                      ("the validation image width (set data.tile_size)", val_hw[1])]
    if cfg.export.enabled and cfg.export.input_size:  # otherwise the export uses the training size checked above
        sizes.append(("export.input_size", cfg.export.input_size))
    for what, value in sizes:
        if value % multiple:
            raise size_error(f"config key '{what}'" if what.startswith(("data.", "export.")) else what,
                             int(value), multiple, arch)
    return multiple


# -------------------------------------------------------------------------------------------------------- memory
def _meminfo_bytes(key: str) -> Optional[int]:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def _cgroup_free_bytes() -> Optional[int]:
    """Room left under a cgroup v2 memory limit (containers), None without a limit."""
    try:
        limit = open("/sys/fs/cgroup/memory.max").read().strip()
        if limit == "max":
            return None
        return int(limit) - int(open("/sys/fs/cgroup/memory.current").read().strip())
    except (OSError, ValueError):
        return None


def _gpu_memory_bytes() -> Optional[int]:
    """Total memory of the first NVIDIA GPU (``nvidia-smi``), None when unknown."""
    exe = shutil.which("nvidia-smi")
    if not exe:
        return None
    try:
        out = subprocess.run([exe, "--query-gpu=memory.total", "--format=csv,noheader,nounits"], capture_output=True,
                             text=True, timeout=10).stdout
        return int(float(out.strip().splitlines()[0]) * 2**20)
    except (OSError, ValueError, IndexError, subprocess.SubprocessError):
        return None


def available_memory() -> tuple[Optional[int], str]:
    """``(bytes, where)``: the first GPU's memory when TensorFlow sees one, else the RAM that is available now
    (``MemAvailable``, capped by a cgroup limit). ``AXIAL_KD_MEMORY_MB`` overrides it (tests, shared machines)."""
    override = os.environ.get("AXIAL_KD_MEMORY_MB")
    if override:
        try:
            return int(float(override) * 2**20), "RAM"
        except ValueError:
            raise UserError(f"AXIAL_KD_MEMORY_MB must be a number of MB, got {override!r}") from None
    import tensorflow as tf

    if tf.config.list_physical_devices("GPU"):
        return _gpu_memory_bytes(), "GPU memory"
    values = [v for v in (_meminfo_bytes("MemAvailable"), _cgroup_free_bytes()) if v is not None]
    return (min(values) if values else None), "RAM"


def estimate_memory(cfg: Config, network, train_hw: tuple[int, int], val_hw: Optional[tuple[int, int]],
                    data_bytes: int = 0, multiple: int = 1) -> MemoryEstimate:
    """Estimated peak of a training step (batch ``train.batch_size`` of ``train_hw`` crops) and of a validation
    batch (the same batch of ``val_hw`` images, inference only), teacher and student together."""
    batch = cfg.train.batch_size
    bytes_per_float = 4 if cfg.train.mixed_precision == "float32" else 2
    per_pixel = student_bytes_per_pixel(network, max(multiple, 1)) or 0.0
    k = int(network.outputs[0].shape[-1])
    t = cfg.teacher

    def teacher(hw: tuple[int, int]) -> float:
        if not cfg.distill.enabled:
            return 0.0
        return estimate_teacher_mb(hw[0], hw[1], batch, num_heads=t.num_heads, pool_size=t.pool_size,
                                   hidden_dim=t.hidden_dim, key_dim=t.key_dim, num_classes=k,
                                   use_positional_encoding=t.use_positional_encoding,
                                   bytes_per_float=bytes_per_float) * 2**20

    parts = {
        "teacher_train": teacher(train_hw) * TEACHER_TRAIN_FACTOR * t.num_blocks,
        "student_train": per_pixel * train_hw[0] * train_hw[1] * batch * STUDENT_TRAIN_FACTOR,
        "teacher_val": teacher(val_hw) if val_hw else 0.0,
        "student_val": per_pixel * val_hw[0] * val_hw[1] * batch if val_hw else 0.0,
        "base": float(BASE_BYTES + data_bytes),
    }
    available, where = available_memory()
    return MemoryEstimate(
        train_bytes=parts["base"] + parts["teacher_train"] + parts["student_train"],
        val_bytes=parts["base"] + parts["teacher_val"] + parts["student_val"],
        available_bytes=available, where=where, parts=parts,
    )


def check_memory(cfg: Config, estimate: MemoryEstimate, force: bool = False, progress: Progress = print) -> None:
    """Print the estimate; raise one :class:`UserError` (a warning with ``force``) when it exceeds what is there."""
    progress(estimate.line())
    if not estimate.available_bytes or estimate.peak_bytes <= estimate.available_bytes:
        return
    phase = "training step" if estimate.train_bytes >= estimate.val_bytes else "validation"
    teacher_share = (estimate.parts["teacher_train"] if phase == "training step" else estimate.parts["teacher_val"])
    fixes = []
    if cfg.distill.enabled and teacher_share > 0.3 * estimate.peak_bytes:
        fixes.append(f"raise teacher.pool_size (now {cfg.teacher.pool_size}; doubling it cuts the teacher's memory about 8x)")
    fixes.append(f"lower train.batch_size (now {cfg.train.batch_size}; validation uses it too)")
    if phase == "validation":
        fixes.append("validate on tiles (data.tile_size)")
    else:
        fixes.append("train on smaller crops (data.crop_size)")
    if estimate.where == "RAM":
        fixes.append("use a GPU")
    message = (f"this configuration needs about {format_bytes(estimate.peak_bytes)} for its {phase}, but only "
               f"{format_bytes(estimate.available_bytes)} of {estimate.where} is available; " + ", ".join(fixes)
               + " (or pass --force to start anyway)")
    if not force:
        raise UserError(message)
    progress(f"warning: {message.replace(' (or pass --force to start anyway)', '')}; starting anyway (--force)")


def data_nbytes(*arrays: np.ndarray) -> int:
    """Bytes of the arrays that tf.data copies into its tensors."""
    return int(sum(np.asarray(a).nbytes for a in arrays))

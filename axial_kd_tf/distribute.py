"""Training on several devices or hosts (``train.distribute``) with TensorFlow's own strategies.

* ``none``: the default strategy (one device).
* ``mirrored``: :class:`tf.distribute.MirroredStrategy` over this host's GPUs, or, without a GPU, over its logical CPU
  devices (``AXIAL_KD_CPU_DEVICES=N`` splits the CPU into N of them; what the tests and docs/distributed.md use).
* ``multi_worker``: :class:`tf.distribute.MultiWorkerMirroredStrategy`; the cluster and this process's place in it
  come from the ``TF_CONFIG`` environment variable (one process per host, all started with the same command).
* ``auto``: ``mirrored`` when more than one GPU is visible, else ``none``.

What this module adds to the strategies, and why:

* **Input sharding** (:func:`distributed_dataset`): each worker builds its own pipeline through
  ``distribute_datasets_from_function`` with auto-sharding off, keeping the elements ``i, i + W, i + 2W, ...`` of the
  one global stream (:func:`axial_kd_tf.data.pipeline.build_dataset`, ``shard=``). The shuffle is seeded, so every
  worker computes the same order; the shard is taken before the augmentation (whose randomness is keyed by the
  element's global index), so workers never see the same sample in a step, and the union of their batches is the
  single-device global batch.
* **Writes by the chief only** (:attr:`Distribution.is_chief`): the other workers write their checkpoints, history and
  TensorBoard files into a private temporary folder that is deleted afterwards (they must still save: reading the
  metrics' ``ON_READ`` variables is a collective every worker joins), and export nothing.
* **Resume**: every worker restores the same epoch backup of the run directory (it must be on a filesystem every worker
  sees); :func:`agree` checks it.

The trainer itself (:class:`axial_kd_tf.distill.DistillationTrainer`) divides each replica's mean loss by the number
of replicas before the gradient (Keras' optimizer sums the replicas' gradients), and its confusion matrices are summed
across replicas when read.
"""

from __future__ import annotations

import contextlib
import json
import os
from dataclasses import dataclass
from typing import Any, Callable, Optional

import keras
import tensorflow as tf

from axial_kd_tf.errors import UserError

MODES = ("none", "auto", "mirrored", "multi_worker")
CPU_DEVICES_ENV = "AXIAL_KD_CPU_DEVICES"
Progress = Callable[[str], None]


@dataclass
class Distribution:
    """The strategy of a run and this process's place in it."""

    strategy: tf.distribute.Strategy
    mode: str  # none | mirrored | multi_worker (``auto`` resolved)
    is_chief: bool = True
    worker_index: int = 0
    num_workers: int = 1

    @property
    def num_replicas(self) -> int:
        return int(self.strategy.num_replicas_in_sync)

    @property
    def distributed(self) -> bool:
        return self.mode != "none"

    def scope(self) -> contextlib.AbstractContextManager:
        """The strategy's scope (variables created inside are mirrored); a no-op for ``none``."""
        return self.strategy.scope() if self.distributed else contextlib.nullcontext()

    def describe(self) -> str:
        if not self.distributed:
            return "one device"
        devices = ", ".join(getattr(self.strategy.extended, "worker_devices", ()) or ())
        where = f"worker {self.worker_index} of {self.num_workers}{' (chief)' if self.is_chief else ''}, "
        return (f"{self.mode}: {where if self.mode == 'multi_worker' else ''}{self.num_replicas} replica(s) in sync"
                + (f" on {devices}" if devices else ""))


def resolve_mode(requested: str) -> str:
    """``auto`` → ``mirrored`` when more than one GPU is visible, else ``none``; the other modes as they are."""
    if requested not in MODES:
        raise UserError(f"config key 'train.distribute' must be one of {', '.join(MODES)}, got {requested!r}")
    if requested != "auto":
        return requested
    return "mirrored" if len(tf.config.list_physical_devices("GPU")) > 1 else "none"


def configure_cpu_devices() -> int:
    """Split the CPU into ``$AXIAL_KD_CPU_DEVICES`` logical devices (before TensorFlow starts its devices); returns
    the number of logical CPUs it asks for (1 when the variable is unset). Starts nothing: listing the logical
    devices would start TensorFlow's devices, after which the multi-worker collectives cannot be configured."""
    text = os.environ.get(CPU_DEVICES_ENV, "").strip()
    if not text:
        return 1
    try:
        n = int(text)
        if n < 1:
            raise ValueError
    except ValueError:
        raise UserError(f"{CPU_DEVICES_ENV} must be a positive integer (logical CPU devices), got {text!r}") from None
    cpu = tf.config.list_physical_devices("CPU")[0]
    current = tf.config.get_logical_device_configuration(cpu)
    if current is not None and len(current) == n:
        return n
    try:
        tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * n)
    except RuntimeError:  # the devices are initialised already (something ran a TensorFlow op first)
        raise UserError(f"{CPU_DEVICES_ENV}={n} came too late: TensorFlow had started its devices; set it in the "
                        "environment of the command") from None
    return n


def make_distribution(requested: str, progress: Progress = print) -> Distribution:
    """The :class:`Distribution` for ``train.distribute``. Call it before anything runs a TensorFlow op: logical CPU
    devices and the multi-worker collectives can only be configured before TensorFlow starts its devices."""
    mode = resolve_mode(requested)
    if mode == "none":
        return Distribution(tf.distribute.get_strategy(), "none")
    if mode == "mirrored":
        gpus = tf.config.list_physical_devices("GPU")
        if gpus:
            strategy = tf.distribute.MirroredStrategy()
        else:
            configure_cpu_devices()
            cpus = [d.name for d in tf.config.list_logical_devices("CPU")]
            # Without GPUs MirroredStrategy() takes CPU:0 only; name the logical CPUs to mirror over them.
            strategy = tf.distribute.MirroredStrategy(cpus)
        dist = Distribution(strategy, "mirrored")
        if dist.num_replicas == 1:
            progress(f"note: train.distribute is mirrored but only one device is visible; set {CPU_DEVICES_ENV}=2 "
                     "on a CPU-only machine to mirror over two logical CPUs")
        return dist
    return _multi_worker(progress)


def _multi_worker(progress: Progress) -> Distribution:
    raw = os.environ.get("TF_CONFIG", "").strip()
    if not raw:
        raise UserError("config key 'train.distribute' is multi_worker but TF_CONFIG is not set; give every worker "
                        "its TF_CONFIG (docs/distributed.md)")
    try:
        tf_config = json.loads(raw)
        cluster, task = tf_config["cluster"], tf_config["task"]
        task_type, task_index = str(task["type"]), int(task["index"])
        workers = list(cluster.get("worker", []))
        chiefs = list(cluster.get("chief", []))
    except (ValueError, KeyError, TypeError, AttributeError):
        raise UserError("TF_CONFIG must be JSON like {\"cluster\": {\"worker\": [\"host1:port\", ...]}, "
                        "\"task\": {\"type\": \"worker\", \"index\": 0}}") from None
    if task_type not in ("chief", "worker") or not workers + chiefs:
        raise UserError(f"TF_CONFIG: task type {task_type!r} is not a worker or chief of its cluster "
                        "(parameter servers are not supported)")
    configure_cpu_devices()
    options = tf.distribute.experimental.CommunicationOptions(
        implementation=tf.distribute.experimental.CommunicationImplementation.AUTO)
    strategy = tf.distribute.MultiWorkerMirroredStrategy(communication_options=options)
    # The chief is the "chief" task, or worker 0 in a cluster without one (TensorFlow's own convention).
    is_chief = task_type == "chief" or (task_type == "worker" and task_index == 0 and not chiefs)
    index = task_index if task_type == "worker" and not chiefs else (0 if task_type == "chief" else task_index + 1)
    dist = Distribution(strategy, "multi_worker", is_chief=is_chief, worker_index=index,
                        num_workers=len(workers) + len(chiefs))
    progress(f"[distribute] {dist.describe()}")
    return dist


def check_batch_size(batch_size: int, dist: Distribution) -> None:
    """The global batch must split evenly over the replicas (every replica takes the same share)."""
    n = dist.num_replicas
    if batch_size % n:
        raise UserError(f"config key 'train.batch_size' ({batch_size}) must be a multiple of the {n} replicas of "
                        f"train.distribute={dist.mode} (the global batch is split evenly)")


def resolve_jit(requested: bool, dist: Distribution, progress: Progress = print) -> bool:
    """XLA (``train.jit_compile``) is turned off under a strategy: MirroredStrategy with jit_compile fails on this
    stack (TensorFlow 2.21, Keras 3)."""
    if requested and dist.distributed:
        progress(f"note: train.jit_compile is off under train.distribute={dist.mode} (XLA fails with "
                 "MirroredStrategy on TensorFlow 2.21); training without XLA")
        return False
    return requested


def distributed_dataset(dist: Distribution, make: Callable[[int, Optional[tuple[int, int]]], tf.data.Dataset],
                        global_batch: int) -> Any:
    """The input of ``fit``: ``make(batch_size, shard)`` builds one pipeline (``shard`` = ``(count, index)`` or None).

    Without a strategy: ``make(global_batch, None)``. Under one: each worker's pipeline (one per worker) yields
    per-replica batches of its shard, auto-sharding off (the shard is explicit, see the module docstring).
    """
    if not dist.distributed:
        return make(global_batch, None)
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.OFF

    def dataset_fn(context: tf.distribute.InputContext) -> tf.data.Dataset:
        per_replica = context.get_per_replica_batch_size(global_batch)
        shard = (context.num_input_pipelines, context.input_pipeline_id) if context.num_input_pipelines > 1 else None
        return make(per_replica, shard).with_options(options)

    return dist.strategy.distribute_datasets_from_function(dataset_fn)


def agree(dist: Distribution, value: int, what: str) -> None:
    """Check that every worker holds the same ``value`` (e.g. the epoch restored on resume); a UserError otherwise."""
    if dist.mode != "multi_worker":
        return

    @tf.function
    def spread() -> tuple:
        def replica() -> tuple:
            ctx = tf.distribute.get_replica_context()
            v = tf.constant(float(value), tf.float64)
            mean = ctx.all_reduce(tf.distribute.ReduceOp.MEAN, v)  # (SUM and MEAN are the only reductions)
            return mean, ctx.all_reduce(tf.distribute.ReduceOp.SUM, tf.square(v - mean))
        out = dist.strategy.run(replica)
        return tuple(dist.strategy.experimental_local_results(x)[0] for x in out)

    mean, squares = (float(x) for x in spread())
    if squares > 0:
        raise UserError(f"the workers disagree on {what} (this one: {value}, mean over the workers: {mean:g}); every "
                        "worker must see the run directory (a shared filesystem) to resume a multi_worker run")


def scale_loss(loss: Any) -> Any:
    """A replica's mean loss divided by the replicas in sync: Keras' TF optimizer *sums* the replicas' gradients, so
    the sum is then the gradient of the global-batch mean (identity without a strategy)."""
    n = tf.distribute.get_strategy().num_replicas_in_sync
    return loss / tf.cast(n, loss.dtype) if n > 1 else loss


def synchronize_batchnorm(network: Any) -> int:
    """Make every ``BatchNormalization`` layer of ``network`` (nested models and the teacher head's axial passes
    included) compute its batch statistics over the global batch (``synchronized=True``); returns how many. The flag
    only acts in training under a strategy, so inference, the saved ``.keras`` network and the TFLite export are
    unchanged. :class:`~axial_kd_tf.layers.AxialAttention` honours it on its folded BatchNorms, the closed-form
    similarity moments included."""
    layers = batchnorm_layers(network)  # AxialAttention's folded BatchNorms included: they hold its flag
    for layer in layers:
        layer.synchronized = True
    return len(layers)


def batchnorm_layers(model: Any) -> list:
    """Every ``BatchNormalization`` layer of ``model``, nested models included."""
    return [layer for layer in model._flatten_layers(include_self=False, recursive=True)
            if isinstance(layer, keras.layers.BatchNormalization)]


def eval_steps(dist: Distribution, num_images: int, global_batch: int) -> Optional[int]:
    """Steps of one pass over an evaluation split under ``dist`` (None without a strategy: Keras counts them).

    Each worker holds at most ``ceil(n / workers)`` images in per-replica batches dealt to its local replicas; the
    workers step together (one with fewer batches gets empty ones), so the pass takes the largest worker's count.
    Given to ``fit``, it keeps Keras from expecting the per-worker pipeline's own batch count.
    """
    if not dist.distributed or num_images == 0:
        return None
    per_replica = global_batch // dist.num_replicas
    local_replicas = max(dist.num_replicas // dist.num_workers, 1)
    per_worker = _ceil_div(num_images, dist.num_workers)
    return max(1, _ceil_div(_ceil_div(per_worker, per_replica), local_replicas))


def _ceil_div(a: int, b: int) -> int:
    return -(-a // b)


class AverageBatchNormStatistics(keras.callbacks.Callback):
    """At every epoch end, set each BatchNormalization's moving mean and variance to their mean over the replicas.

    Keras 3 creates them with no aggregation, so under a strategy every replica keeps the statistics of its own share
    of the batch (and the workers' saved networks would differ). The moving mean is an exponential average, so the
    mean of the replicas' is exactly that of the global batch means; the moving variance misses the spread of the
    replicas' means (``train.sync_batchnorm`` makes both exact for the student). Put it before every writer.
    """

    def __init__(self, strategy: tf.distribute.Strategy) -> None:
        super().__init__()
        self.strategy = strategy
        self._average: Optional[Callable] = None

    def on_epoch_end(self, epoch: int, logs: Optional[dict] = None) -> None:
        if self._average is None:
            variables = [v for layer in batchnorm_layers(self.model)
                         for v in (layer.moving_mean, layer.moving_variance)]

            def replica() -> None:
                ctx = tf.distribute.get_replica_context()
                means = ctx.all_reduce(tf.distribute.ReduceOp.MEAN, [tf.identity(v.value) for v in variables])
                for v, mean in zip(variables, means):
                    v.assign(mean)  # no aggregation: each replica sets its own copy, all to the same value

            def average() -> None:
                self.strategy.run(replica)

            self._average = tf.function(average) if variables else (lambda: None)
        self._average()

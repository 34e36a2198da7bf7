"""Child processes of tests/test_distribute.py (logical CPU devices and multi-worker collectives must be set up before
TensorFlow starts its devices, so each scenario runs in a fresh process).

    python tests/distributed_script.py equivalence
    python tests/distributed_script.py train RUN_DIR OUT.npz [--kill-after N] [--resume] [--set KEY=VALUE ...]

``equivalence`` prints one JSON line; ``train`` runs :func:`axial_kd_tf.pipeline.train` with ``AXIAL_KD_CPU_DEVICES``
and ``TF_CONFIG`` as the environment gives them, and saves the trained network's weights to ``OUT.npz``.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402

# The teacher without its relative-position terms: TensorFlow's tracing of the training graphs under a strategy is
# most of these processes' time, and the positional terms' synchronized moments are checked on the layer itself
# (axial_layer_check, every term on) rather than in each trained network.
TINY = [
    "data.synthetic.image_size=16", "data.synthetic.train_samples=16", "data.synthetic.val_samples=4",
    "data.synthetic.test_samples=4", "model.options={base_filters: 4, depth: 2}", "teacher.hidden_dim=4",
    "teacher.max_span=16", "teacher.pool_size=1", "teacher.use_positional_encoding=false", "train.batch_size=8",
    "train.jit_compile=false", "logging.num_images=1", "logging.verbose=0",
    "export.verify_samples=2", "export.calibration_samples=2", "export.enabled=false",
]


def weights_of(model: keras.Model) -> list:
    return [np.asarray(keras.ops.convert_to_numpy(w)) for w in model.weights]


def equivalence() -> dict:
    """One SGD step, global batch 8: one device against MirroredStrategy over 2 logical CPUs (4 images each)."""
    from axial_kd_tf.config import load_config
    from axial_kd_tf.distribute import distributed_dataset, make_distribution
    from axial_kd_tf.training import prepare

    # SGD: Adam would hide a wrong gradient scale (it is invariant to it). The teacher head keeps its folded
    # BatchNorms, so the synchronized step must also sum its closed-form similarity moments over the replicas.
    common = TINY + ["train.optimizer=sgd", "train.learning_rate=0.5", "train.lr_schedule=constant",
                     "train.steps_per_epoch=1", "train.epochs=1"]
    dist = make_distribution("mirrored")  # first: splits the CPU into AXIAL_KD_CPU_DEVICES logical devices
    quiet = lambda line: None  # noqa: E731
    results: dict = {"replicas": dist.num_replicas}

    def one_step(setup, d) -> tuple:
        cfg_batch = 8
        ds = distributed_dataset(d, lambda b, shard: setup.data.train_dataset(
            b, 0, None, True, shard=shard, global_batch=cfg_batch), cfg_batch)
        hist = setup.trainer.fit(ds, epochs=1, steps_per_epoch=1, verbose=0)
        return weights_of(setup.trainer), float(hist.history["loss"][0])

    from axial_kd_tf.distribute import Distribution
    import tensorflow as tf

    single = prepare(load_config("quickstart", common + ["train.sync_batchnorm=true"]), progress=quiet,
                     dist=Distribution(tf.distribute.get_strategy(), "none"))
    start = weights_of(single.trainer)
    probe = single.data.train_images[:4], single.data.train_masks[:4].astype("int32")
    diag_single = single.trainer.gradient_diagnostics(*probe)
    w_single, loss_single = one_step(single, single.dist)
    for sync in (True, False):
        mirrored = prepare(load_config("quickstart", common + [f"train.sync_batchnorm={str(sync).lower()}",
                                                                "train.distribute=mirrored"]), progress=quiet, dist=dist)
        for var, value in zip(mirrored.trainer.weights, start):
            var.assign(value)
        if sync:
            diag = mirrored.trainer.gradient_diagnostics(*probe)
            results["diag_diff"] = max(abs(diag[k] - diag_single[k]) for k in diag_single)
        w, loss = one_step(mirrored, dist)
        key = "sync" if sync else "unsync"
        results[f"{key}_max_diff"] = max(float(np.max(np.abs(a - b))) for a, b in zip(w, w_single))
        results[f"{key}_loss_diff"] = abs(loss - loss_single)
    results["update_size"] = max(float(np.max(np.abs(a - b))) for a, b in zip(w_single, start))
    results.update(axial_layer_check(dist.strategy))
    return results


def axial_layer_check(strategy) -> dict:
    """One ``AxialAttention`` pass in training on a batch of 4, on one device and split 2 + 2 over the strategy's
    replicas: the output, the summed weight gradients (relative to the largest gradient entry) and the moving
    statistics of all three folded BatchNorms (the similarity one from the closed-form moments), as largest absolute
    differences from the one-device values, with ``synchronized`` on and off."""
    import tensorflow as tf

    from axial_kd_tf.layers.axial_attention import AxialAttention

    rng = np.random.default_rng(0)
    x = (rng.normal(size=(4, 6, 5, 3)) * [1.0, 3.0, 0.5] + [0.0, 2.0, -1.0]).astype("float32")
    w = rng.normal(size=(4, 6, 5, 4)).astype("float32")
    kwargs = dict(axis="height", num_heads=2, key_dim=2, value_dim=2, max_span=8, use_positional_encoding=True,
                  use_normalization=True)  # every term and all three BatchNorms, whatever the defaults become

    def forward(layer, xs, ws):
        with tf.GradientTape() as tape:
            y = layer(xs, training=True)
            loss = tf.reduce_sum(tf.cast(y, "float32") * ws)
        return y, [tf.convert_to_tensor(g) for g in tape.gradient(loss, layer.trainable_weights)]  # dense tables

    def stats(layer) -> list:
        bns = (layer.qkv_norm, layer.similarity_norm, layer.output_norm)
        return [np.asarray(v) for bn in bns for v in (bn.moving_mean, bn.moving_variance)]

    ref = AxialAttention(synchronized=True, **kwargs)
    ref.build(x.shape)
    init = [np.asarray(v) for v in ref.weights]
    y_ref, g_ref = forward(ref, tf.constant(x), tf.constant(w))
    y_ref, g_ref, s_ref = np.asarray(y_ref), [np.asarray(g) for g in g_ref], stats(ref)
    out: dict = {}
    n = strategy.num_replicas_in_sync
    share = len(x) // n
    for sync in (True, False):
        with strategy.scope():
            layer = AxialAttention(synchronized=sync, **kwargs)
            layer.build(x.shape)
        for var, value in zip(layer.weights, init):
            var.assign(value)
        part = lambda a: strategy.experimental_distribute_values_from_function(  # noqa: E731
            lambda ctx: tf.constant(a[ctx.replica_id_in_sync_group * share:(ctx.replica_id_in_sync_group + 1) * share]))
        ys, gs = strategy.run(tf.function(lambda xs, ws: forward(layer, xs, ws)), args=(part(x), part(w)))
        y = np.concatenate([np.asarray(t) for t in strategy.experimental_local_results(ys)])
        g = [np.asarray(strategy.reduce(tf.distribute.ReduceOp.SUM, t, axis=None)) for t in gs]
        replica_stats = [[np.asarray(v) for v in strategy.experimental_local_results(var)]
                         for bn in (layer.qkv_norm, layer.similarity_norm, layer.output_norm)
                         for var in (bn.moving_mean, bn.moving_variance)]
        key = "axial_sync" if sync else "axial_unsync"
        out[f"{key}_output_diff"] = float(np.max(np.abs(y - y_ref)))
        scale = max(float(np.max(np.abs(b))) for b in g_ref)  # some weights' gradients are round-off sized
        out[f"{key}_grad_diff"] = max(float(np.max(np.abs(a - b))) for a, b in zip(g, g_ref)) / scale
        out[f"{key}_stats_diff"] = max(float(np.max(np.abs(r - s))) for rs, s in zip(replica_stats, s_ref) for r in rs)
    return out


class _Kill(keras.callbacks.Callback):
    """A real crash: SIGKILL this process after epoch ``n`` is committed (after the epoch backup)."""

    def __init__(self, n: int) -> None:
        super().__init__()
        self.n = n

    def on_epoch_end(self, epoch: int, logs=None) -> None:
        if epoch + 1 == self.n:
            os.kill(os.getpid(), signal.SIGKILL)


class _SaveWeights(keras.callbacks.Callback):
    def __init__(self, path: str) -> None:
        super().__init__()
        self.path = path

    def on_train_end(self, logs=None) -> None:
        np.savez(self.path, *weights_of(self.model))


def train(args: argparse.Namespace) -> dict:
    from axial_kd_tf.config import load_config
    from axial_kd_tf.pipeline import train as run

    cfg = load_config("quickstart", TINY + list(args.set))
    callbacks = [_SaveWeights(args.out)] + ([_Kill(args.kill_after)] if args.kill_after else [])
    metrics = run(cfg, args.run_dir, resume=args.resume, progress=lambda line: print(line, flush=True),
                  extra_callbacks=tuple(callbacks))
    return {"chief": bool(metrics), "best_epoch": metrics.get("best_epoch")}


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("scenario", choices=("equivalence", "train"))
    parser.add_argument("run_dir", nargs="?")
    parser.add_argument("out", nargs="?")
    parser.add_argument("--kill-after", type=int, default=0)
    parser.add_argument("--resume", action="store_true")
    parser.add_argument("--set", action="append", default=[])
    args = parser.parse_args()
    result = equivalence() if args.scenario == "equivalence" else train(args)
    print("RESULT " + json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

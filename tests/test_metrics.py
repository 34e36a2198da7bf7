"""Confusion-matrix IoU: NumPy reference, streaming Keras metric (eager / tf.function / XLA) and fit() logs."""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import tensorflow as tf  # noqa: E402

from axial_kd_tf.errors import UserError  # noqa: E402
from axial_kd_tf.metrics import ConfusionMatrixIoU, confusion_matrix_np, iou_from_confusion  # noqa: E402

NAMES = ["membrane", "mito", "synapse", "glia", "intracellular"]


def _brute_force_cm(t, p, k, ignore=None):
    cm = np.zeros((k, k), dtype=np.int64)
    for a, b in zip(np.ravel(t), np.ravel(p)):
        if ignore is not None and a == ignore:
            continue
        cm[a, b] += 1
    return cm


def _onehot_logits(labels, k, rng=None):
    """Logits whose argmax is ``labels`` (noise added so it is not a plain one-hot)."""
    rng = rng or np.random.default_rng(0)
    logits = rng.normal(size=labels.shape + (k,)).astype(np.float32)
    np.put_along_axis(logits, labels[..., None].astype(np.int64), 10.0, axis=-1)
    return logits


# ------------------------------------------------------------------------------------------------ NumPy reference
def test_hand_computed_example():
    t = np.array([[0, 0, 1], [1, 2, 2]])
    p = np.array([[0, 1, 1], [1, 2, 0]])
    cm = confusion_matrix_np(t, p, 3)
    np.testing.assert_array_equal(cm, [[1, 1, 0], [0, 2, 0], [1, 0, 1]])
    assert cm.dtype == np.int64
    iou, miou = iou_from_confusion(cm)
    # class0: tp1 / (row2 + col2 - 1) = 1/3; class1: 2/(2+3-2) = 2/3; class2: 1/(2+1-1) = 1/2
    np.testing.assert_allclose(iou, [1 / 3, 2 / 3, 1 / 2])
    assert miou == pytest.approx((1 / 3 + 2 / 3 + 1 / 2) / 3)


def test_matches_brute_force_on_random_data():
    rng = np.random.default_rng(1)
    for k in (2, 5, 7):
        t = rng.integers(0, k, size=(3, 9, 11))
        p = rng.integers(0, k, size=(3, 9, 11))
        np.testing.assert_array_equal(confusion_matrix_np(t, p, k), _brute_force_cm(t, p, k))


def test_ignore_index():
    rng = np.random.default_rng(2)
    t = rng.integers(0, 4, size=(2, 8, 8))
    t[0, :3] = 255
    p = rng.integers(0, 4, size=t.shape)
    cm = confusion_matrix_np(t, p, 4, ignore_index=255)
    np.testing.assert_array_equal(cm, _brute_force_cm(t, p, 4, ignore=255))
    assert cm.sum() == np.sum(t != 255)
    with pytest.raises(UserError, match="255"):
        confusion_matrix_np(t, p, 4)  # 255 is out of range without ignore_index
    with pytest.raises(UserError, match="y_pred"):
        confusion_matrix_np(t, np.full_like(p, 4), 4, ignore_index=255)


def test_nan_for_absent_classes_and_excluded_from_mean():
    t = np.array([0, 0, 1, 1])
    p = np.array([0, 1, 1, 1])  # class 2: absent from both; class 3: predicted never, true never
    iou, miou = iou_from_confusion(confusion_matrix_np(t, p, 4))
    assert iou[0] == pytest.approx(0.5) and iou[1] == pytest.approx(2 / 3)
    assert np.isnan(iou[2]) and np.isnan(iou[3])
    assert miou == pytest.approx((0.5 + 2 / 3) / 2)  # nanmean, not /4
    # predicted-but-absent class is defined (IoU 0) and counts
    iou2, miou2 = iou_from_confusion(confusion_matrix_np(np.array([0, 0]), np.array([0, 1]), 2))
    np.testing.assert_allclose(iou2, [0.5, 0.0])
    assert miou2 == pytest.approx(0.25)
    # nothing at all -> all NaN, mIoU NaN
    iou3, miou3 = iou_from_confusion(np.zeros((3, 3)))
    assert np.all(np.isnan(iou3)) and np.isnan(miou3)


def test_dataset_level_accumulation_is_not_batch_average():
    # batch A: class 0 dominates and is right; batch B: few pixels, mostly wrong
    ta, pa = np.array([0] * 90 + [1] * 10), np.array([0] * 90 + [1] * 10)
    tb, pb = np.array([0] * 2 + [1] * 8), np.array([1] * 2 + [0] * 8)
    cm = confusion_matrix_np(ta, pa, 2) + confusion_matrix_np(tb, pb, 2)
    _, miou_acc = iou_from_confusion(cm)
    _, miou_cat = iou_from_confusion(confusion_matrix_np(np.r_[ta, tb], np.r_[pa, pb], 2))
    assert miou_acc == pytest.approx(miou_cat)
    per_batch = [iou_from_confusion(confusion_matrix_np(t, p, 2))[1] for t, p in ((ta, pa), (tb, pb))]
    assert per_batch == [pytest.approx(1.0), pytest.approx(0.0)]
    assert miou_acc == pytest.approx((90 / 100 + 10 / 20) / 2)  # 0.7
    assert abs(miou_acc - np.mean(per_batch)) > 0.15  # 0.7 vs 0.5

    # the Keras metric accumulates the same way
    m = ConfusionMatrixIoU(2)
    for t, p in ((ta, pa), (tb, pb)):
        m.update_state(t[None, None], _onehot_logits(p[None, None], 2))
    np.testing.assert_array_equal(m.confusion_matrix(), cm)
    assert float(m.result()["miou"]) == pytest.approx(miou_acc)


# ------------------------------------------------------------------------------------------------ Keras metric
def _random_batches(k, n=3, shape=(2, 6, 7), ignore=None, seed=3):
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        t = rng.integers(0, k, size=shape).astype(np.int32)
        if ignore is not None:
            t[rng.random(shape) < 0.2] = ignore
        out.append((t, rng.normal(size=shape + (k,)).astype(np.float32)))
    return out


@pytest.mark.parametrize("mode", ["eager", "graph", "xla"])
def test_keras_metric_matches_numpy(mode):
    k = 5
    batches = _random_batches(k, ignore=255)
    m = ConfusionMatrixIoU(k, class_names=NAMES, prefix="student_", ignore_index=255)
    assert m.cm.dtype == "float64"
    update = m.update_state
    if mode != "eager":
        update = tf.function(m.update_state, jit_compile=(mode == "xla"))
    for t, logits in batches:
        update(tf.constant(t), tf.constant(logits))
    ts = np.concatenate([b[0] for b in batches])
    ps = np.concatenate([b[1].argmax(-1) for b in batches])
    expected = confusion_matrix_np(ts, ps, k, ignore_index=255)
    np.testing.assert_array_equal(m.confusion_matrix(), expected)

    res = m.result()
    assert list(res) == ["student_miou"] + [f"student_iou_{n}" for n in NAMES]
    iou, miou = iou_from_confusion(expected)
    assert float(res["student_miou"]) == pytest.approx(miou, rel=1e-6)
    for n, v in zip(NAMES, iou):
        assert float(res[f"student_iou_{n}"]) == pytest.approx(v, rel=1e-6)
    if mode == "xla":  # result() compiles too
        res_x = tf.function(m.result, jit_compile=True)()
        assert float(res_x["student_miou"]) == pytest.approx(miou, rel=1e-6)


def test_keras_metric_nan_reset_and_label_channel():
    m = ConfusionMatrixIoU(4)
    t = np.array([[[0, 0], [1, 1]]], dtype=np.int32)[..., None]  # [B, H, W, 1] accepted
    p = np.array([[[0, 1], [1, 1]]])
    m.update_state(t, _onehot_logits(p, 4))
    res = {k: float(v) for k, v in m.result().items()}
    assert res["iou_class0"] == pytest.approx(0.5) and res["iou_class1"] == pytest.approx(2 / 3)
    assert np.isnan(res["iou_class2"]) and np.isnan(res["iou_class3"])
    assert res["miou"] == pytest.approx((0.5 + 2 / 3) / 2)
    m.reset_state()
    assert m.confusion_matrix().sum() == 0
    assert all(np.isnan(float(v)) for v in m.result().values())  # empty -> all NaN, mIoU NaN too


def test_keras_metric_get_config_round_trip():
    m = ConfusionMatrixIoU(3, class_names=["a", "b", "c"], prefix="teacher_", ignore_index=7, name="teacher_iou")
    cfg = m.get_config()
    assert cfg["num_classes"] == 3 and cfg["class_names"] == ["a", "b", "c"]
    assert cfg["prefix"] == "teacher_" and cfg["ignore_index"] == 7 and cfg["name"] == "teacher_iou"
    m2 = ConfusionMatrixIoU.from_config(cfg)
    assert m2.get_config() == cfg
    m3 = keras.metrics.deserialize(keras.metrics.serialize(m))
    assert isinstance(m3, ConfusionMatrixIoU) and m3.get_config() == cfg


def test_keras_metric_rejects_bad_class_names():
    with pytest.raises(UserError, match="num_classes"):
        ConfusionMatrixIoU(3, class_names=["a", "b"])
    with pytest.raises(UserError, match="unique"):
        ConfusionMatrixIoU(2, class_names=["a", "a"])


class TwoHeadNet(keras.Model):
    """Tiny student/teacher segmentation net with a custom train_step updating two ConfusionMatrixIoU metrics."""

    def __init__(self, k, names):
        super().__init__()
        self.student_head = keras.layers.Conv2D(k, 1)
        self.teacher_head = keras.layers.Conv2D(k, 1)
        self.loss_tracker = keras.metrics.Mean(name="loss")
        self.student_iou = ConfusionMatrixIoU(k, names, prefix="student_", name="student_iou")
        self.teacher_iou = ConfusionMatrixIoU(k, names, prefix="teacher_", name="teacher_iou")
        self.ce = keras.losses.SparseCategoricalCrossentropy(from_logits=True)

    def call(self, x):
        return {"student": self.student_head(x), "teacher": self.teacher_head(x)}

    @property
    def metrics(self):
        return [self.loss_tracker, self.student_iou, self.teacher_iou]

    def train_step(self, data):
        x, y = data
        with tf.GradientTape() as tape:
            out = self(x, training=True)
            loss = self.ce(y, out["student"]) + self.ce(y, out["teacher"])
        grads = tape.gradient(loss, self.trainable_variables)
        self.optimizer.apply_gradients(zip(grads, self.trainable_variables))
        self.loss_tracker.update_state(loss)
        self.student_iou.update_state(y, out["student"])
        self.teacher_iou.update_state(y, out["teacher"])
        logs = {}
        for m in self.metrics:
            r = m.result()
            logs.update(r if isinstance(r, dict) else {m.name: r})
        return logs


@pytest.mark.parametrize("jit", [False, True])
def test_fit_history_has_per_class_keys(jit):
    k = 5
    rng = np.random.default_rng(4)
    x = rng.normal(size=(8, 8, 8, 3)).astype(np.float32)
    y = rng.integers(0, k, size=(8, 8, 8)).astype(np.int32)
    model = TwoHeadNet(k, NAMES)
    model.compile(optimizer=keras.optimizers.SGD(0.01), jit_compile=jit)
    hist = model.fit(x, y, batch_size=4, epochs=1, verbose=0)
    keys = set(hist.history)
    suffixes = ["miou"] + [f"iou_{n}" for n in NAMES]
    assert keys == {"loss"} | {f"{p}{s}" for p in ("student_", "teacher_") for s in suffixes}
    for prefix in ("student_", "teacher_"):
        assert f"{prefix}miou" in keys
        for n in NAMES:
            assert f"{prefix}iou_{n}" in keys
    assert "loss" in keys
    # the epoch's logs come from a matrix accumulated over all 8 images (2 batches)
    assert model.student_iou.confusion_matrix().sum() == y.size
    _, miou = iou_from_confusion(model.student_iou.confusion_matrix())
    assert hist.history["student_miou"][0] == pytest.approx(miou, rel=1e-5)


_MIRRORED_SCRIPT = r"""
import os
os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"
import numpy as np, tensorflow as tf
tf.config.set_logical_device_configuration(
    tf.config.list_physical_devices("CPU")[0], [tf.config.LogicalDeviceConfiguration()] * 2)
from axial_kd_tf.metrics import ConfusionMatrixIoU, confusion_matrix_np
strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
rng = np.random.default_rng(0)
y = rng.integers(0, 3, (8, 5, 5)).astype(np.int32)
logits = rng.normal(size=(8, 5, 5, 3)).astype(np.float32)
with strategy.scope():
    m = ConfusionMatrixIoU(3)
ds = strategy.experimental_distribute_dataset(tf.data.Dataset.from_tensor_slices((y, logits)).batch(4))
step = tf.function(lambda a, b: strategy.run(m.update_state, args=(a, b)))
for a, b in ds:
    step(a, b)
assert strategy.num_replicas_in_sync == 2
np.testing.assert_array_equal(m.confusion_matrix(), confusion_matrix_np(y, logits.argmax(-1), 3))
m.reset_state()
assert m.confusion_matrix().sum() == 0
print("OK")
"""


def test_mirrored_strategy_sums_replicas(tmp_path):
    """The float64 ON_READ/SUM state is summed across replicas (2 logical CPUs, fresh process)."""
    import subprocess
    import sys
    from pathlib import Path

    script = tmp_path / "mirrored.py"
    script.write_text(_MIRRORED_SCRIPT)
    root = Path(__file__).resolve().parents[1]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(root), os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120, env=env)
    assert proc.returncode == 0 and "OK" in proc.stdout, proc.stderr[-2000:]

"""XLA (``jit_compile=True``) trains every zoo architecture on CPU, in float32 and mixed_bfloat16 (issue 10, part 2).

The zoo's resizes are keras.ops (``blocks.Resize``): nearest upsampling by an integer factor is a repeat, other sizes
and bilinear resizes gather rows and columns. XLA had no CPU kernel for the old ``ResizeNearestNeighborGrad``, and
under mixed_bfloat16 the float32 output of ``ResizeBilinear`` broke the gradient's dtypes. These tests pin

* that the keras.ops resizes give exactly the values of TensorFlow's ``ResizeNearestNeighbor`` / ``ResizeBilinear``
  (the ops the zoo used before, so trained weights and exported students keep their outputs), eagerly and in graphs
  of unknown size, and the same gradients (eager, and compiled by XLA);
* one XLA-compiled training step per architecture, on the tiny variants of ``helpers.ZOO_SPECS`` (the same blocks, a
  fraction of XLA's compile time, which is still 6–15 CPU-seconds a network here). The default tier compiles the
  network's own step in float32 for the four nearest-upsampling decoders that failed before, and the distillation
  step (student + teacher, ``DistillationTrainer`` as ``train.py`` compiles it) of the quickstart's small U-Net under
  mixed_bfloat16; the ``slow`` tier adds the float32 step of the other five and the mixed_bfloat16 distillation step
  of all nine.
"""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf

from axial_kd_tf.distill import DistillationTrainer, build_distillation_model
from axial_kd_tf.models import ZOO, build_network
from axial_kd_tf.models.blocks import Resize, resize_bilinear, resize_nearest
from axial_kd_tf.xla import xla_unsupported_ops
from helpers import TINY_CLASSES as K, build_tiny, tiny_size


def _old_resize(x: tf.Tensor, size: tuple, interpolation: str, align_corners: bool) -> tf.Tensor:
    """What ``blocks.Resize`` called before (TensorFlow's raw resize ops, cast back to the input dtype)."""
    op = tf.raw_ops.ResizeBilinear if interpolation == "bilinear" else tf.raw_ops.ResizeNearestNeighbor
    half_pixel = interpolation == "bilinear" and not align_corners
    out = op(images=x, size=size, align_corners=align_corners, half_pixel_centers=half_pixel)
    return tf.cast(out, x.dtype)


SIZES = [((4, 5), (8, 10)), ((3, 3), (9, 9)), ((7, 5), (13, 11)), ((1, 1), (6, 7)), ((5, 6), (5, 6)),
         ((8, 8), (5, 3)), ((25, 13), (50, 26)), ((4, 7), (13, 100))]


@pytest.mark.parametrize("interpolation,align_corners",
                         [("nearest", False), ("nearest", True), ("bilinear", False), ("bilinear", True)])
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_resize_equals_tensorflows_resize_ops(interpolation, align_corners, dtype):
    """Up, down, identity and non-integer ratios: bit-identical values, eagerly and with unknown sizes."""
    fn = resize_bilinear if interpolation == "bilinear" else resize_nearest
    dynamic = tf.function(lambda x, like: fn(x, (tf.shape(like)[1], tf.shape(like)[2]), align_corners),
                          input_signature=[tf.TensorSpec((None, None, None, 3), dtype),
                                           tf.TensorSpec((None, None, None, 1), dtype)])
    rng = np.random.default_rng(0)
    for (h, w), size in SIZES:
        x = tf.cast(rng.standard_normal((2, h, w, 3)).astype("float32"), dtype)
        want = _old_resize(x, size, interpolation, align_corners).numpy()
        got = fn(x, size, align_corners)
        assert got.dtype == x.dtype
        np.testing.assert_array_equal(got.numpy(), want, err_msg=f"{(h, w)} -> {size}")
        np.testing.assert_array_equal(dynamic(x, tf.zeros((1, *size, 1), dtype)).numpy(), want,
                                      err_msg=f"unknown sizes, {(h, w)} -> {size}")


@pytest.mark.parametrize("scale", [2, 3, 4])
@pytest.mark.parametrize("interpolation,align_corners", [("nearest", False), ("bilinear", True)])
def test_resize_layer_by_scale_equals_the_old_op(scale, interpolation, align_corners):
    """``Resize(scale)`` (nearest: a repeat, also when the sizes are unknown) and ``Resize()(x, like=...)``."""
    x = tf.constant(np.random.default_rng(1).standard_normal((2, 5, 7, 4)).astype("float32"))
    layer = Resize(scale, interpolation, align_corners=align_corners)
    want = _old_resize(x, (5 * scale, 7 * scale), interpolation, align_corners).numpy()
    np.testing.assert_array_equal(layer(x).numpy(), want)
    dynamic = tf.function(layer, input_signature=[tf.TensorSpec((None, None, None, 4), tf.float32)])
    np.testing.assert_array_equal(dynamic(x).numpy(), want)
    like = tf.zeros((1, 5 * scale, 7 * scale, 1))
    to_like = Resize(interpolation=interpolation, align_corners=align_corners)
    np.testing.assert_array_equal(to_like(x, like=like).numpy(), want)


@pytest.mark.parametrize("interpolation,align_corners", [("nearest", False), ("bilinear", True), ("bilinear", False)])
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_resize_gradient_matches_the_old_op_and_compiles_with_xla(interpolation, align_corners, dtype):
    """The gradient equals the old op's (eager) and XLA compiles it on this device (the old nearest one did not)."""
    rng = np.random.default_rng(2)
    x = tf.cast(rng.standard_normal((2, 6, 5, 3)).astype("float32"), dtype)
    cases = [((12, 10), Resize(2, interpolation, align_corners=align_corners)),
             ((13, 7), Resize(interpolation=interpolation, align_corners=align_corners))]
    for size, layer in cases:
        weights = tf.constant(rng.standard_normal((2, *size, 3)).astype("float32"))
        like = tf.zeros((1, *size, 1), dtype)

        def grad(resize, x=x, weights=weights):
            with tf.GradientTape() as tape:
                tape.watch(x)
                loss = tf.reduce_sum(tf.cast(resize(x), tf.float32) * weights)
            return tape.gradient(loss, x)

        def new(t, layer=layer, like=like):
            return layer(t) if layer.scale else layer(t, like=like)

        want = grad(lambda t: _old_resize(t, size, interpolation, align_corners))
        tol = dict(rtol=1e-6, atol=1e-6) if dtype == "float32" else dict(rtol=1e-2, atol=1e-2)
        np.testing.assert_allclose(tf.cast(grad(new), tf.float32), tf.cast(want, tf.float32), **tol)
        compiled = tf.function(lambda: grad(new), jit_compile=True)()
        assert compiled.dtype == x.dtype
        np.testing.assert_allclose(tf.cast(compiled, tf.float32), tf.cast(want, tf.float32), **tol)


def _xla_train_step(arch: str, teacher: bool, **options) -> None:
    """One ``jit_compile=True`` training step: the network alone (Keras ``fit`` step, CE, SGD), or with the teacher
    (``DistillationTrainer``, as ``train.py`` compiles it). Raises if XLA cannot compile it."""
    keras.utils.set_random_seed(0)
    net = build_tiny(arch) if not options else build_network(arch, num_classes=K, in_channels=1, **options)
    if teacher:
        model = build_distillation_model(net, K, teacher_kwargs=dict(hidden_dim=8, pool_size=2))
        trainer = DistillationTrainer(model, K)
        trainer.compile(optimizer=keras.optimizers.SGD(0.1), jit_compile=True)
    else:
        trainer = net
        trainer.compile(optimizer=keras.optimizers.SGD(0.1), jit_compile=True,
                        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    size = tiny_size(arch) if not options else 32
    rng = np.random.default_rng(0)
    x = rng.random((2, size, size, 1), dtype=np.float32)
    y = (x[..., 0] * K).astype("int32").clip(0, K - 1)
    first = next(w for w in net.trainable_weights if len(w.shape) == 4)  # the first conv kernel
    before = first.numpy()
    logs = trainer.train_on_batch(x, y, return_dict=True)
    assert np.isfinite(float(logs["loss"]))
    # The gradient reached the first conv through every decoder resize.
    assert not np.array_equal(first.numpy(), before) and np.isfinite(first.numpy()).all()


# The four whose step XLA could not compile on CPU before (nearest upsampling) run in the default tier; the five
# with bilinear resizes only compiled before too (their resize gradient is covered above), so they are slow.
NEAREST = ("unet", "unetplusplus", "manet", "fpn")


@pytest.mark.parametrize("dtype_policy", ["float32"], indirect=True)
@pytest.mark.parametrize("arch", [a if a in NEAREST else pytest.param(a, marks=pytest.mark.slow) for a in ZOO])
def test_xla_train_step_float32(arch, dtype_policy):
    _xla_train_step(arch, teacher=False)


@pytest.mark.parametrize("dtype_policy", ["mixed_bfloat16"], indirect=True)
def test_xla_distillation_step_with_the_teacher(dtype_policy):
    """The quickstart's step (simple_unet + teacher) under mixed_bfloat16, which the teacher's bilinear resize broke
    (the float32 head under XLA: tests/test_axial_attention.py)."""
    _xla_train_step("simple_unet", teacher=True, base_filters=4, depth=2)


@pytest.mark.slow
@pytest.mark.parametrize("dtype_policy", ["mixed_bfloat16"], indirect=True)
@pytest.mark.parametrize("arch", ZOO)
def test_xla_distillation_step_mixed_bfloat16(arch, dtype_policy):
    """Every architecture with the teacher under mixed_bfloat16 (about 10–20 CPU-seconds of XLA compilation each)."""
    _xla_train_step(arch, teacher=True)


def test_train_py_keeps_xla_on_for_the_zoo():
    """``train.jit_compile`` no longer falls back for the nearest-upsampling decoders (U-Net stands for all four)."""
    assert xla_unsupported_ops(build_tiny("unet"), (32, 32, 1)) is None

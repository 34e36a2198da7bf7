"""The layers and the model zoo run on Keras' JAX backend and compute what they do on TensorFlow (issue 10, part 3).

Training through ``train.py`` stays on TensorFlow; ``axial_kd_tf.layers`` and ``axial_kd_tf.models`` are keras.ops
only. This process uses TensorFlow, so the JAX side runs in one subprocess (``KERAS_BACKEND=jax``, this file run as
a script). Both sides build the same networks (the tiny variants of ``helpers.ZOO_SPECS``: resnet18, depth 3–4, 32²/64²) and
the two layers, with the TensorFlow side's weights copied over, and compute on the same input:

* the inference-mode output and the gradients of ``sum(output · r)`` for every trainable weight and the input
  (TensorFlow: ``GradientTape``; JAX: ``jax.jit(jax.value_and_grad(...))`` of ``stateless_call``), compared;
* for the layers also in training mode (the axial attention's BatchNorm from batch statistics). The networks are
  compared in inference mode only: their training mode differs by dropout (random on each backend) and Keras' own
  BatchNorm, while the zoo's own code (resizes, size checks, PSP pooling, PAB) has no training branch.

XLA compiles one program per subject on the JAX side; the subprocess runs XLA at optimisation level 0, which cuts
its compile time severalfold without changing float32 results beyond the tolerance.

The JAX process must not import TensorFlow, and the zoo's static input-size checks raise the same one-line
``UserError`` there.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import keras
import numpy as np
import pytest

from axial_kd_tf.models import ZOO
from helpers import TINY_CLASSES as K, build_tiny, random_weights, tiny_size

LAYERS = ("axial_attention", "teacher_head")
REPO = Path(__file__).resolve().parent.parent
BATCH = 2


# ------------------------------------------------------------------------------------------------ shared by both sides
def build_subject(name: str) -> keras.Model:
    """A zoo network's tiny variant, or one of the layers in a functional model (output channels = input channels)."""
    if name in ZOO:
        return build_tiny(name)
    from axial_kd_tf.layers import AxialAttention, AxialTeacherHead

    if name == "axial_attention":
        inputs = keras.Input((None, None, 4))
        return keras.Model(inputs, AxialAttention("width", num_heads=2, key_dim=4, value_dim=2, max_span=8)(inputs))
    inputs = keras.Input((None, None, K))
    head = AxialTeacherHead(K, hidden_dim=8, num_heads=2, pool_size=2, gate_init=0.5, num_blocks=2, detach_input=False)
    return keras.Model(inputs, head(inputs))


def subject_input(name: str) -> tuple[np.ndarray, np.ndarray]:
    """``(x, r)``: the input and the weights of the scalar loss ``sum(output · r)``."""
    rng = np.random.default_rng(sum(map(ord, name)))
    if name in ZOO:
        size, channels, out = tiny_size(name), 1, K
    else:
        size, channels = 12, 4 if name == "axial_attention" else K
        out = channels
    x = rng.standard_normal((BATCH, size, size + (0 if name in ZOO else 2), channels)).astype("float32")
    r = rng.standard_normal(x.shape[:3] + (out,)).astype("float32")
    return x, r


# ---------------------------------------------------------------------------------------------------- the JAX side
def _jax_worker(work: Path) -> None:
    """Load each subject's weights, compute, write ``jax.npz`` and ``jax.json`` into ``work``."""
    import jax
    import jax.numpy as jnp

    from axial_kd_tf.errors import UserError

    assert keras.backend.backend() == "jax", keras.backend.backend()
    weights = np.load(work / "weights.npz")
    out: dict[str, np.ndarray] = {}
    meta: dict[str, Any] = {}
    for name in LAYERS + ZOO:
        model = build_subject(name)
        model.set_weights([weights[f"{name}/{i}"] for i in range(len(model.weights))])
        x, r = subject_input(name)
        for training in (False, True) if name in LAYERS else (False,):
            trainable = [v.value for v in model.trainable_variables]
            fixed = [v.value for v in model.non_trainable_variables]

            def loss_fn(trainable: list, x: Any, fixed: list = fixed, training: bool = training) -> tuple:
                y, new_fixed = model.stateless_call(trainable, fixed, x, training=training)
                return jnp.sum(jnp.asarray(y, "float32") * r), (y, new_fixed)

            step = jax.jit(jax.value_and_grad(loss_fn, argnums=(0, 1), has_aux=True))
            (loss, (y, _)), (grads, grad_x) = step(trainable, jnp.asarray(x))
            key = f"{name}/{'train' if training else 'eval'}"
            out[f"{key}/y"] = np.asarray(y)
            out[f"{key}/x"] = np.asarray(grad_x)
            for i, g in enumerate(grads):
                out[f"{key}/g{i}"] = np.asarray(g)
            out[f"{key}/loss"] = np.asarray(loss)
    try:
        build_subject("pspnet")(np.zeros((1, 28, 32, 1), "float32"))
        meta["size_error"] = None
    except UserError as exc:
        meta["size_error"] = [type(exc).__name__, str(exc)]
    meta["tensorflow_imported"] = "tensorflow" in sys.modules
    np.savez(work / "jax.npz", **out)
    (work / "jax.json").write_text(json.dumps(meta))


# ------------------------------------------------------------------------------------------- the TensorFlow side
def _tf_reference(model: keras.Model, x: np.ndarray, r: np.ndarray, training: bool) -> dict[str, Any]:
    import tensorflow as tf

    xt = tf.constant(x)
    with tf.GradientTape() as tape:
        tape.watch(xt)
        y = model(xt, training=training)
        loss = tf.reduce_sum(tf.cast(y, tf.float32) * r)
    grads = tape.gradient(loss, model.trainable_variables + [xt])
    grads = [tf.convert_to_tensor(g).numpy() for g in grads]  # gathers give IndexedSlices
    return {"y": y.numpy(), "g": grads[:-1], "x": grads[-1], "loss": float(loss)}


@pytest.fixture(scope="module")
def backends(tmp_path_factory) -> dict[str, Any]:
    """Build every subject here (TensorFlow), run the JAX worker once on the same weights, return both sides."""
    work = tmp_path_factory.mktemp("backends")
    weights: dict[str, np.ndarray] = {}
    reference: dict[str, dict] = {}
    for seed, name in enumerate(LAYERS + ZOO):
        keras.utils.set_random_seed(seed)
        model = build_subject(name)
        if name in LAYERS:
            random_weights(model, seed)
        for i, value in enumerate(model.get_weights()):
            weights[f"{name}/{i}"] = value
        x, r = subject_input(name)
        reference[name] = {"eval": _tf_reference(model, x, r, training=False)}
        if name in LAYERS:
            reference[name]["train"] = _tf_reference(model, x, r, training=True)
    np.savez(work / "weights.npz", **weights)
    flags = "--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true"
    env = dict(os.environ, KERAS_BACKEND="jax", JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="2",
               XLA_FLAGS=f"{os.environ.get('XLA_FLAGS', '')} {flags}".strip(),
               PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.run([sys.executable, str(Path(__file__).resolve()), str(work)], env=env, cwd=REPO,
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return {"tf": reference, "jax": dict(np.load(work / "jax.npz")),
            "meta": json.loads((work / "jax.json").read_text())}


def _close(got: np.ndarray, want: np.ndarray, what: str, scale: float) -> None:
    """float32 on two backends (oneDNN vs XLA kernels, other summation orders): equal to ~1e-4 of ``scale``."""
    assert got.shape == want.shape, (what, got.shape, want.shape)
    np.testing.assert_allclose(got, want, rtol=1e-3, atol=2e-4 * scale, err_msg=what)


def _compare(backends: dict, name: str, mode: str) -> None:
    """Output, input gradient and weight gradients; a weight gradient's tolerance scales with the largest one (a
    gradient that is zero in exact arithmetic, e.g. of a bias before a softmax, is rounding noise on both sides)."""
    want, got = backends["tf"][name][mode], backends["jax"]
    key = f"{name}/{mode}"
    _close(got[f"{key}/y"], want["y"], f"{key} output", float(np.abs(want["y"]).max()))
    _close(got[f"{key}/x"], want["x"], f"{key} input gradient", float(np.abs(want["x"]).max()))
    assert len([k for k in got if k.startswith(f"{key}/g")]) == len(want["g"])
    scale = max(float(np.abs(g).max()) for g in want["g"])
    for i, g in enumerate(want["g"]):
        _close(got[f"{key}/g{i}"], g, f"{key} gradient {i}", scale)
    assert np.abs(want["x"]).max() > 0  # the comparison is not of zeros


def test_jax_process_never_imports_tensorflow(backends):
    assert backends["meta"]["tensorflow_imported"] is False


@pytest.mark.parametrize("mode", ["eval", "train"])
@pytest.mark.parametrize("name", LAYERS)
def test_layers_match_tensorflow_under_jax(backends, name, mode):
    _compare(backends, name, mode)


@pytest.mark.parametrize("arch", ZOO)
def test_zoo_forward_and_backward_match_tensorflow_under_jax(backends, arch):
    _compare(backends, arch, "eval")


def test_static_size_check_is_a_one_line_user_error_under_jax(backends):
    kind, message = backends["meta"]["size_error"]
    assert kind == "InputSizeError" and "\n" not in message
    assert message.startswith("pspnet needs input height and width divisible by 8") and "28x32" in message


if __name__ == "__main__":  # the JAX side: KERAS_BACKEND=jax python tests/test_backends.py WORKDIR
    _jax_worker(Path(sys.argv[1]))

"""examples/torch_self_distillation.py: the teacher head and the loss on a plain PyTorch network (issue 10, part 5).

One subprocess runs under ``KERAS_BACKEND=torch`` (this file as a script, as tests/test_backends.py does for JAX): it
imports the TensorFlow-free modules first and records whether TensorFlow came with them, then trains the example's
student and head for a few steps at 32², records the loss parts, which head weights received gradients and moved,
and the head's output on a fixed input, with the weights it had. This process (TensorFlow) builds the same head from
its config, loads those weights and computes the same outputs. The worker also runs README.md's PyTorch block.
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from helpers import python_block

REPO = Path(__file__).resolve().parent.parent
EXAMPLE = REPO / "examples" / "torch_self_distillation.py"
K, STEPS = 3, 10
README_PRELUDE = """
import torch
class MySegNet(torch.nn.Module):
    def __init__(self, num_classes):
        super().__init__()
        self.conv = torch.nn.Conv2d(1, num_classes, 3, padding=1)
    def forward(self, x):
        return self.conv(x)
_g = torch.Generator().manual_seed(0)
loader = [(torch.randn(2, 1, 16, 16, generator=_g), torch.randint(0, 5, (2, 16, 16), generator=_g)) for _ in range(3)]
"""
HEAD_ARGS = ("num_classes", "hidden_dim", "num_heads", "key_dim", "max_span", "use_positional_encoding",
             "use_normalization", "pool_size", "detach_input", "residual", "gate_init", "gate_trainable", "num_blocks")


def _load_example():
    spec = importlib.util.spec_from_file_location("torch_self_distillation_under_test", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _torch_worker(work: Path) -> None:
    """The torch side: write ``torch.json`` and ``torch.npz`` into ``work``."""
    import axial_kd_tf.layers  # noqa: F401
    import axial_kd_tf.losses  # noqa: F401
    import axial_kd_tf.models  # noqa: F401

    meta: dict = {"tensorflow_after_imports": "tensorflow" in sys.modules}
    import keras
    import torch

    ex = _load_example()
    meta["backend"] = keras.backend.backend()
    net, head = ex.build(num_classes=K, pool_size=2, seed=0)
    assert isinstance(head, torch.nn.Module)
    trainable = {v.path: v.value for v in head.trainable_weights}
    before = {name: p.detach().clone() for name, p in trainable.items()}
    meta["history"] = ex.train(net, head, steps=STEPS, batch=4, size=32, lr=3e-3, log=lambda _m: None)
    # Gradients of the last step (train_step zeroes them before each backward, so these are that step's).
    meta["grad_abs_max"] = {n: None if p.grad is None else float(p.grad.abs().max()) for n, p in trainable.items()}
    meta["change_abs_max"] = {n: float((p.detach() - before[n]).abs().max()) for n, p in trainable.items()}
    images, _ = ex.synthetic_batch(2, 32, K, torch.Generator().manual_seed(5))
    meta["prediction_shape"] = list(ex.predict(net, images).shape)

    z = np.random.default_rng(0).standard_normal((2, 12, 16, K)).astype("float32")
    out = {f"w{i}": w for i, w in enumerate(head.get_weights())}
    with torch.no_grad():
        out["eval"] = keras.ops.convert_to_numpy(head(torch.from_numpy(z), training=False))
        out["train"] = keras.ops.convert_to_numpy(head(torch.from_numpy(z), training=True))
    out["z"] = z
    meta["tensorflow_at_end"] = "tensorflow" in sys.modules
    # The constructor arguments, read back (not head.get_config(): Keras' serialisation imports TensorFlow wherever
    # it is installed, which would cost this process seconds and hide an import of our own).
    meta["config"] = {k: getattr(head, k) for k in HEAD_ARGS}
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        meta["bad_size"] = [ex.main(["--size", "7"]), err.getvalue().strip()]

    # The README's PyTorch block, with a network and a loader of three batches for its placeholders.
    namespace: dict = {}
    exec(README_PRELUDE + python_block('os.environ["KERAS_BACKEND"] = "torch"'), namespace)  # noqa: S102
    meta["readme"] = {"loss": float(namespace["loss"].detach()), "gate": float(namespace["head"].gate.value.detach()),
                      "parts": sorted(namespace["parts"])}
    np.savez(work / "torch.npz", **out)
    (work / "torch.json").write_text(json.dumps(meta))


@pytest.fixture(scope="module")
def torch_run(tmp_path_factory) -> dict:
    import torch  # noqa: F401  (a test requirement: fails rather than skips without it)
    work = tmp_path_factory.mktemp("torch_example")
    env = dict(os.environ, KERAS_BACKEND="torch", TF_CPP_MIN_LOG_LEVEL="2",
               PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.run([sys.executable, str(Path(__file__).resolve()), str(work)], env=env, cwd=REPO,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return {"meta": json.loads((work / "torch.json").read_text()), "arrays": dict(np.load(work / "torch.npz"))}


def test_layers_losses_and_models_import_without_tensorflow_under_torch(torch_run):
    meta = torch_run["meta"]
    assert meta["backend"] == "torch"
    assert meta["tensorflow_after_imports"] is False and meta["tensorflow_at_end"] is False


def test_the_example_trains_student_and_teacher(torch_run):
    meta = torch_run["meta"]
    losses = [h["loss"] for h in meta["history"]]
    assert len(losses) == STEPS and all(np.isfinite(losses))
    assert np.mean(losses[-3:]) < 0.85 * np.mean(losses[:3]), losses
    # The default loss: the two CE terms start equal (zero gate: the teacher starts as the student).
    first = meta["history"][0]
    assert first["teacher_ce"] == pytest.approx(first["student_ce"], rel=1e-5)
    assert first["loss"] == pytest.approx(first["ce_loss"] + first["weighted_distill"], rel=1e-6)
    # Every trainable weight of the head got a non-zero gradient and moved (the gate first, the branch once the
    # gate is off zero).
    assert meta["grad_abs_max"] and all(g is not None and g > 0 for g in meta["grad_abs_max"].values()), \
        meta["grad_abs_max"]
    assert all(c > 0 for c in meta["change_abs_max"].values()), meta["change_abs_max"]
    assert meta["prediction_shape"] == [2, 32, 32]


@pytest.mark.parametrize("mode", ["eval", "train"])
def test_the_head_computes_under_torch_what_it_computes_under_tensorflow(torch_run, mode):
    import keras

    from axial_kd_tf.layers import AxialTeacherHead

    assert keras.backend.backend() == "tensorflow"
    arrays = torch_run["arrays"]
    head = AxialTeacherHead(**torch_run["meta"]["config"])
    head.build((None, None, None, K))
    head.set_weights([arrays[f"w{i}"] for i in range(len(head.weights))])
    assert abs(float(head.gate.numpy())) > 1e-3  # trained: the attention branch contributes
    want = keras.ops.convert_to_numpy(head(arrays["z"], training=mode == "train"))
    np.testing.assert_allclose(arrays[mode], want, rtol=1e-5, atol=1e-5)
    assert np.abs(want - arrays["z"]).max() > 1e-3  # the teacher is not the identity here


def test_the_readme_pytorch_block_trains_the_head(torch_run):
    readme = torch_run["meta"]["readme"]
    assert np.isfinite(readme["loss"]) and readme["gate"] != 0.0  # the optimizer holds the head's weights
    assert {"student_ce", "teacher_ce", "distill_loss", "loss"} <= set(readme["parts"])


def test_the_example_rejects_a_bad_size_in_one_line(torch_run):
    code, err = torch_run["meta"]["bad_size"]
    assert code == 2 and err.startswith("error: --size must be an even number") and "\n" not in err


if __name__ == "__main__":  # the torch side: KERAS_BACKEND=torch python tests/test_torch_example.py WORKDIR
    _torch_worker(Path(sys.argv[1]))

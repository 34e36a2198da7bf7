"""README.md's JAX block ("Using the teacher from PyTorch or JAX") runs as written, on a tiny U-Net.

A subprocess under ``KERAS_BACKEND=jax`` executes the block with the network shrunk (``helpers.TINY_OPTIONS``, 32²
instead of resnet34 at 256²) and a random batch for its ``images`` / ``labels``, takes three more steps on the same
batch and reports the losses and whether TensorFlow was imported. Marked ``slow``: XLA compiles the whole training step (about
a minute on a loaded 2-core CPU). The PyTorch block runs in tests/test_torch_example.py.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from helpers import README, TINY_OPTIONS, python_block, substitute

PRELUDE = """import numpy as np
images = np.random.default_rng(0).random((2, 32, 32, 1), dtype=np.float32)
labels = np.random.default_rng(1).integers(0, 5, (2, 32, 32)).astype("int32")
"""
EPILOGUE = """
first = float(loss)
for _ in range(3):
    loss, state = train_step(state, images, labels)
import json, sys
print("RESULT " + json.dumps({"first": first, "last": float(loss), "tensorflow": "tensorflow" in sys.modules}))
"""


@pytest.mark.slow
def test_the_readme_jax_block_trains():
    code = substitute(python_block('os.environ["KERAS_BACKEND"] = "jax"'), {
        'build_network("unet", encoder="resnet34", num_classes=5, in_channels=1)':
            f'build_network("unet", encoder="resnet18", num_classes=5, in_channels=1, **{TINY_OPTIONS["unet"]!r})',
        "keras.Input((256, 256, 1))": "keras.Input((32, 32, 1))",
    })
    env = dict(os.environ, KERAS_BACKEND="jax", JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="2",
               PYTHONPATH=os.pathsep.join([str(README.parent), os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.run([sys.executable, "-c", PRELUDE + code + EPILOGUE], env=env, cwd=README.parent,
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(next(line[7:] for line in proc.stdout.splitlines() if line.startswith("RESULT ")))
    assert result["tensorflow"] is False
    assert 0 < result["last"] < result["first"], result

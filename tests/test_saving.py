"""``.keras`` files of zoo models reload in a *fresh* process (where nothing has imported the zoo's layer modules)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from axial_kd_tf.config import config_from_dict
from axial_kd_tf.errors import UserError
from axial_kd_tf.saving import load_model
from axial_kd_tf.training import build_model_from_config


def test_zoo_distillation_model_reloads_in_a_fresh_process(tmp_path):
    cfg = config_from_dict({"model": {"arch": "unet", "encoder": "resnet18"}, "distill": {"enabled": True}})
    path = tmp_path / "model.keras"
    build_model_from_config(cfg, num_classes=5, in_channels=1).save(path)
    code = ("from axial_kd_tf.saving import load_model; import numpy as np; m = load_model(r'%s'); "
            "out = m(np.zeros((1, 64, 64, 1), 'float32')); print(sorted(out), tuple(out['student'].shape))" % path)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip().splitlines()[-1] == "['student', 'teacher'] (1, 64, 64, 5)"


def test_corrupt_file_is_a_one_line_error(tmp_path):
    path = tmp_path / "broken.keras"
    path.write_bytes(b"not a zip")
    with pytest.raises(UserError, match=r"cannot load '.*broken\.keras'") as info:
        load_model(path)
    assert "\n" not in str(info.value)

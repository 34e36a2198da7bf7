"""The shipped dataset configs (``configs/drosophila.yaml``, ``configs/covid.yaml``) run through ``train.py`` and
``evaluate.py`` end to end, on generated fixtures in the real formats, at a tiny size (1 step, 32² crops)."""

from __future__ import annotations

import json

import pytest

from axial_kd_tf.cli import evaluate_main, train_main
from helpers import write_covid_fixture as write_covid, write_sstem_fixture as write_sstem

TINY = ["train.epochs=1", "train.steps_per_epoch=1", "train.batch_size=2", "data.crop_size=32",
        "model.encoder=resnet18", "teacher.max_span=32", "export.enabled=false", "logging.tensorboard=false"]


# drosophila in the slow tier (the same code path as covid, ~35 s idle each)
@pytest.mark.parametrize("config", [pytest.param("drosophila", marks=pytest.mark.slow), "covid"])
def test_dataset_config_trains_and_evaluates(config, tmp_path, capsys):
    root = tmp_path / "data"
    if config == "drosophila":
        write_sstem(root, size=64)
        data = ["data.tile_size=32"]
    else:
        write_covid(root)
        data = ["data.covid.train_slices=6", "data.covid.val_slices=2"]
    run = tmp_path / "run"
    args = ["--config", config, "--run-dir", str(run), "--set", f"data.root={root}"]
    for item in TINY + data:
        args += ["--set", item]
    assert train_main(args) == 0
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["mode"] == "distillation" and set(metrics["outputs"]) == {"student", "teacher"}
    assert evaluate_main(["--run", str(run), "--split", "test", "--overlays", "1"]) == 0
    test = json.loads((run / "eval" / "metrics.json").read_text())
    assert test["split"] == "test" and len(test["class_names"]) == (5 if config == "drosophila" else 4)
    assert "miou" in test["outputs"]["student"]

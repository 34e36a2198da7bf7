"""End to end on a tiny synthetic config: train → run directory → TensorBoard → resume → evaluate → export."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

from axial_kd_tf.cli import evaluate_main, export_main
from axial_kd_tf.config import load_config
from axial_kd_tf.pipeline import train
from helpers import InterruptAfterEpoch

TINY = [
    "data.synthetic.image_size=32", "data.synthetic.train_samples=8", "data.synthetic.val_samples=4", "data.synthetic.test_samples=4",
    "model.options={base_filters: 4, depth: 2}", "teacher.hidden_dim=8", "teacher.max_span=32",
    "train.epochs=2", "train.batch_size=4", "train.jit_compile=false", "logging.num_images=2",
    "logging.image_every=1", "export.verify_samples=2", "export.calibration_samples=4",
]


def tiny_config(*extra: str):
    return load_config("quickstart", TINY + list(extra))


def _tags(event_dir: Path) -> set[str]:
    tags = set()
    for f in event_dir.glob("events.out.tfevents.*"):
        for raw in tf.data.TFRecordDataset(str(f)):
            event = tf.compat.v1.Event.FromString(raw.numpy())
            tags.update(v.tag for v in event.summary.value)
    return tags


@pytest.fixture(scope="module")
def distill_run(tmp_path_factory) -> tuple[Path, dict]:
    run = tmp_path_factory.mktemp("runs") / "distill"
    metrics = train(tiny_config("export.variants=[float32, int8]"), run, progress=lambda s: None)
    return run, metrics


def test_run_directory_layout(distill_run):
    run, metrics = distill_run
    for rel in ["config.yaml", "checkpoints/best.weights.h5", "checkpoints/last.weights.h5", "checkpoints/best.json",
                "model.keras", "student.keras", "metrics.json", "metrics.md", "history.csv", "curves.png",
                "export/student_saved_model/saved_model.pb", "export/student.tflite", "export/student_int8.tflite",
                "export/export_report.json"]:
        assert (run / rel).exists(), rel
    assert not (run / "backup").exists()  # BackupAndRestore cleans up after a completed run
    assert not list(run.rglob("*.tmp")), "a temporary file was left behind"
    saved = json.loads((run / "metrics.json").read_text())
    assert saved == json.loads(json.dumps(metrics))
    assert set(saved["outputs"]) == {"student", "teacher"}
    for out in saved["outputs"].values():
        assert set(out["per_class_iou"]) == {"membrane", "mitochondria", "synapse", "glia_extracellular",
                                             "intracellular"}
        assert out["miou"] is None or 0.0 <= out["miou"] <= 1.0
    assert saved["mode"] == "distillation" and saved["teacher_params"] > 0


def test_history_has_the_teacher_diagnostics(distill_run):
    import csv

    run, _ = distill_run
    rows = list(csv.DictReader(open(run / "history.csv")))
    assert len(rows) == 2
    for key in ["gate", "distill_grad_share", "distill_grad_cosine", "teacher_delta_l1", "teacher_delta_share",
                "argmax_disagreement", "val_argmax_disagreement", "distill_mask_share", "distill_weight",
                "val_student_iou_synapse", "val_teacher_iou_synapse"]:
        values = [float(r[key]) for r in rows]
        assert all(np.isfinite(values)), key
    assert 0.0 <= float(rows[-1]["distill_grad_share"]) <= 1.0
    assert float(rows[-1]["gate"]) != 0.0  # the gate learned something


def test_class_watch_warns_when_a_class_collapses():
    from axial_kd_tf.callbacks import ClassWatch

    lines = []
    watch = ClassWatch(("a", "b"), progress=lines.append)
    history = [{"a": 0.30, "b": 0.05}, {"a": 0.32, "b": 0.004}, {"a": 0.12, "b": 0.0}, {"a": 0.005, "b": 0.0},
               {"a": 0.30, "b": 0.0}, {"a": 0.0, "b": 0.0}]
    for epoch, ious in enumerate(history):
        watch.on_epoch_end(epoch, {f"val_student_iou_{k}": v for k, v in ious.items()})
    # 'b' never reached 10 %: no warning. 'a' fell below half its best by >= 10 points at epoch 3 (one warning while
    # it stays down, also below 1 % at epoch 4), recovered at epoch 5 and fell again at epoch 6.
    assert len(watch.warnings) == 2 and lines == watch.warnings
    assert "epoch 3" in watch.warnings[0] and "'a'" in watch.warnings[0] and "12.0" in watch.warnings[0]
    assert "epoch 6" in watch.warnings[1] and "fell to 0.0 (best 32.0)" in watch.warnings[1]


def test_export_report(distill_run):
    run, _ = distill_run
    report = json.loads((run / "export" / "export_report.json").read_text())
    student = report["networks"]["student"]
    for variant in ("float32", "int8"):
        v = student["variants"][variant]
        assert {"max_abs_diff", "argmax_agreement", "size_bytes", "mean_latency_ms"} <= set(v)
        assert v["size_bytes"] == (run / "export" / Path(v["path"]).name).stat().st_size
    assert student["variants"]["float32"]["max_abs_diff"] < 1e-3
    assert student["variants"]["float32"]["argmax_agreement"] == 1.0
    assert not any(op.startswith("CUSTOM") for op in student["ops"])


def test_tensorboard_has_scalars_and_image_panels(distill_run):
    run, _ = distill_run
    train_tags = _tags(run / "tensorboard" / "train")
    val_tags = _tags(run / "tensorboard" / "validation")
    for term in ["loss", "student_ce", "teacher_ce", "distill_loss", "student_miou", "teacher_miou",
                 "student_iou_membrane", "teacher_iou_synapse"]:
        assert f"epoch_{term}" in train_tags, term
        assert f"epoch_{term}" in val_tags, term
    assert "epoch_learning_rate" in train_tags
    for diag in ["gate", "distill_grad_share", "distill_grad_cosine", "teacher_delta_l1", "argmax_disagreement"]:
        assert f"epoch_{diag}" in train_tags, diag
    assert "epoch_argmax_disagreement" in val_tags
    assert any(t.startswith("val_panels") for t in _tags(run / "tensorboard" / "images"))


def test_evaluate_run_and_tflite(distill_run, capsys):
    run, _ = distill_run
    assert evaluate_main(["--run", str(run), "--split", "test", "--overlays", "2"]) == 0
    out = capsys.readouterr().out
    assert "student" in out and "teacher" in out and "mIoU" in out
    ev = json.loads((run / "eval" / "metrics.json").read_text())
    assert ev["split"] == "test" and set(ev["outputs"]) == {"student", "teacher"}
    assert (run / "eval" / "table.md").read_text().count("|") > 10
    assert len(list((run / "eval" / "overlays").glob("*.png"))) == 2
    # The float32 TFLite student gives the same student IoU as the Keras model.
    assert evaluate_main(["--model", str(run / "export" / "student.tflite"), "--split", "test", "--overlays", "0"]) == 0
    ev_tfl = json.loads(next((run / "export").glob("eval-student_tflite/metrics.json")).read_text())
    assert ev_tfl["outputs"]["student"]["confusion_matrix"] == ev["outputs"]["student"]["confusion_matrix"]


def test_export_cli_adds_teacher_and_float16(distill_run):
    run, _ = distill_run
    assert export_main(["--run", str(run), "--variants", "float16", "--teacher"]) == 0
    report = json.loads((run / "export" / "export_report.json").read_text())
    assert set(report["networks"]) == {"student", "teacher"}
    assert (run / "export" / "teacher_float16.tflite").is_file()


def test_baseline_run_exports_the_same_student(tmp_path, distill_run):
    """The distilled student costs exactly what the baseline costs: same parameters, same TFLite op list."""
    run, dist = distill_run
    metrics = train(tiny_config("distill.enabled=false"), tmp_path / "b", progress=lambda s: None)
    assert set(metrics["outputs"]) == {"student"} and metrics["mode"] == "baseline"
    assert metrics["student_params"] == dist["student_params"] and metrics["teacher_params"] == 0
    base = json.loads((tmp_path / "b" / "export" / "export_report.json").read_text())["networks"]["student"]
    ours = json.loads((run / "export" / "export_report.json").read_text())["networks"]["student"]
    assert base["op_sequence"] == ours["op_sequence"] and base["params"] == ours["params"]


def test_resume_after_interruption(tmp_path):
    cfg = tiny_config("train.epochs=3", "export.enabled=false")
    run = tmp_path / "r"
    with pytest.raises(KeyboardInterrupt):
        train(cfg, run, extra_callbacks=(InterruptAfterEpoch(2),), progress=lambda s: None)
    assert (run / "backup").is_dir() and not (run / "metrics.json").exists()
    lines = []
    metrics = train(cfg, run, resume=True, progress=lines.append)
    rows = (run / "history.csv").read_text().strip().splitlines()
    assert [r.split(",")[0] for r in rows[1:]] == ["1", "2", "3"]  # epoch 3 only was trained after the resume
    assert sum(l.startswith("epoch") for l in lines) == 1
    assert metrics["best_epoch"] in (1, 2, 3)


def test_zoo_architecture_through_the_config(tmp_path):
    """A zoo network (SMP design, resnet18 encoder, 1 input channel) trains and exports through the same path."""
    cfg = load_config("quickstart", TINY + [
        "model.arch=linknet", "model.encoder=resnet18", "model.options={}", "data.synthetic.image_size=64",
        "teacher.max_span=64", "train.epochs=1",
    ])
    metrics = train(cfg, tmp_path / "z", progress=lambda s: None)
    assert metrics["student_params"] > 11_000_000  # the resnet18 encoder alone has 11.2M
    report = json.loads((tmp_path / "z" / "export" / "export_report.json").read_text())
    assert report["networks"]["student"]["variants"]["float32"]["argmax_agreement"] == 1.0

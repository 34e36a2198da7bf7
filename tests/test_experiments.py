"""The protocol runner (axial_kd_tf.experiments) on a tiny synthetic config: grid, resume, aggregation, overlays."""

from __future__ import annotations

import contextlib
import csv
import io
import json
import math
import shutil
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
import yaml

from axial_kd_tf import experiments as ex
from axial_kd_tf.config import CONFIG_DIR, load_config
from axial_kd_tf.errors import UserError

ARCH = "simple_unet"


@pytest.fixture(scope="module")
def tiny_yaml(tmp_path_factory) -> Path:
    raw = yaml.safe_load((CONFIG_DIR / "quickstart.yaml").read_text())
    raw["name"] = "tiny"
    raw["model"]["options"] = {"base_filters": 4, "depth": 2}
    raw["teacher"].update(hidden_dim=8, max_span=32)
    raw["data"].update(image_size=32, train_samples=16, val_samples=8, test_samples=8)
    raw["train"].update(epochs=1, steps_per_epoch=2, batch_size=4, jit_compile=False)
    raw["export"]["enabled"] = False
    raw["logging"]["tensorboard"] = False
    path = tmp_path_factory.mktemp("cfg") / "tiny.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def run_main(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = ex.main([str(a) for a in argv])
    return rc, out.getvalue(), err.getvalue()


@pytest.fixture(scope="module")
def grid(tiny_yaml, tmp_path_factory) -> tuple[Path, str]:
    """One architecture × both modes, trained and evaluated in this process."""
    out = tmp_path_factory.mktemp("results")
    rc, stdout, stderr = run_main("--config", tiny_yaml, "--archs", ARCH, "--out", out, "--in-process")
    assert rc == 0, stderr
    return out / "tiny", stdout


def _csv_rows(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


# ------------------------------------------------------------------------------------------------ argument parsing
def test_parse_int_list():
    assert ex.parse_int_list("0-4", "folds", 0, 4) == [0, 1, 2, 3, 4]
    assert ex.parse_int_list("0,2", "folds", 0, 4) == [0, 2]
    assert ex.parse_int_list("3", "folds", 0, 4) == [3]
    assert ex.parse_int_list("1-3,5,2", "seeds") == [1, 2, 3, 5]
    for bad in ("0-5", "a", "3-1", "1,,2", "-1"):
        with pytest.raises(UserError):
            ex.parse_int_list(bad, "folds", 0, 4)
    assert ex.resolve_modes("distill,baseline") == ["distill", "baseline"]
    with pytest.raises(UserError, match="did you mean 'distill'"):
        ex.resolve_modes("distil")
    from axial_kd_tf.models import ZOO

    assert ex.resolve_archs("all") == list(ZOO)


def test_bad_arch_exits_2_with_a_suggestion(tiny_yaml, tmp_path):
    rc, _, err = run_main("--config", tiny_yaml, "--archs", "simple_uent", "--out", tmp_path)
    assert rc == 2
    assert err.count("\n") == 1 and err.startswith("error: ") and "did you mean 'simple_unet'" in err
    assert not (tmp_path / "tiny").exists()


def test_several_folds_of_a_foldless_dataset_is_an_error(tiny_yaml, tmp_path):
    rc, _, err = run_main("--config", tiny_yaml, "--archs", ARCH, "--folds", "0-1", "--out", tmp_path)
    assert rc == 2 and "has no folds" in err and err.count("\n") == 1


def test_dry_run_lists_the_grid(tiny_yaml, tmp_path):
    rc, out, _ = run_main("--config", tiny_yaml, "--archs", ARCH, "--seeds", "1-2", "--out", tmp_path, "--dry-run")
    assert rc == 0
    lines = [l for l in out.splitlines() if l.startswith("[run ")]
    assert len(lines) == 4
    assert "[run 1/4] simple_unet baseline fold 0 seed 1: new" in lines[0]
    assert str(tmp_path / "tiny" / "runs" / ARCH / "distill" / "fold0-seed2") in lines[3]
    assert not (tmp_path / "tiny").exists()  # a dry run writes nothing


# ---------------------------------------------------------------------------------------------------- aggregation
def _fake_run(arch, mode, fold, student, teacher=None, mito=0.5):
    outputs = {"student": {"per_class_iou": {"a": student, "b": mito}, "miou": (student + mito) / 2}}
    if teacher is not None:
        outputs["teacher"] = {"per_class_iou": {"a": teacher, "b": None}, "miou": teacher}
    return {"arch": arch, "mode": mode, "fold": fold, "seed": 1, "outputs": outputs}


def test_aggregation_mean_and_std_over_two_folds():
    runs = [
        _fake_run("unet", "baseline", 0, 0.60), _fake_run("unet", "baseline", 1, 0.70),
        _fake_run("unet", "distill", 0, 0.64, teacher=0.66), _fake_run("unet", "distill", 1, 0.72, teacher=0.70),
    ]
    rows = ex.aggregate_rows(runs, ["a", "b"], ["unet", "fpn"])
    assert [r["label"] for r in rows] == ["U-Net without", "U-Net with: student", "U-Net with: teacher",
                                          "FPN without", "FPN with: student", "FPN with: teacher"]
    without, student, teacher = rows[:3]
    assert without["n"] == 2 and without["per_class_iou"]["a"]["mean"] == pytest.approx(0.65)
    assert without["per_class_iou"]["a"]["std"] == pytest.approx(math.sqrt(0.005))  # sample std (n - 1)
    assert without["per_class_iou"]["b"] == {"mean": 0.5, "std": 0.0, "n": 2}
    assert without["miou"]["mean"] == pytest.approx(0.575)
    assert "delta_miou" not in without
    # paired differences: student (0.57, 0.61) - baseline (0.55, 0.60) -> 0.02, 0.01
    assert student["delta_miou"]["mean"] == pytest.approx(0.015)
    assert student["delta_miou"]["std"] == pytest.approx(np.std([0.02, 0.01], ddof=1))
    assert teacher["per_class_iou"]["b"] == {"mean": None, "std": None, "n": 0}  # undefined in every run
    assert teacher["delta_miou"]["mean"] == pytest.approx(np.mean([0.66 - 0.55, 0.70 - 0.60]))
    assert rows[3]["n"] == 0 and rows[3]["miou"]["mean"] is None

    md = ex.format_markdown(rows, ["a", "b"])
    lines = md.splitlines()
    assert lines[0] == "| Model | a | b | mIoU | Δ mIoU | n |"
    assert lines[2] == "| U-Net without | 65.00 ± 7.07 | 50.00 ± 0.00 | 57.50 ± 3.54 |  | 2 |"
    assert lines[3].endswith("| +1.50 ± 0.71 | 2 |")
    assert lines[4].split(" | ")[2] == "—"
    assert lines[5] == "| FPN without | — | — | — |  | 0 |"
    # a single run has no ± part
    one = ex.aggregate_rows(runs[:1], ["a", "b"], ["unet"])
    assert ex.format_markdown(one, ["a", "b"]).splitlines()[2] == "| U-Net without | 60.00 | 50.00 | 55.00 |  | 1 |"
    text = ex.format_csv(rows, ["a", "b"]).splitlines()
    assert text[1].startswith("U-Net without,unet,baseline,student,2,65.0000,7.0711,50.0000,0.0000,57.5000,3.5355")


# ------------------------------------------------------------------------------------------------------- the grid
def test_grid_writes_tables_matching_the_runs(grid):
    root, stdout = grid
    assert "[run 1/2] simple_unet baseline fold 0 seed 0" in stdout
    assert "[run 2/2] simple_unet distill fold 0 seed 0 finished in" in stdout and "ETA" in stdout
    assert "simple U-Net with: teacher" in stdout  # the final table is printed
    runs = json.loads((root / "runs.json").read_text())
    assert {(r["arch"], r["mode"]) for r in runs} == {(ARCH, "baseline"), (ARCH, "distill")}
    per_run = {}
    for mode in ("baseline", "distill"):
        run = root / "runs" / ARCH / mode / "fold0-seed0"
        for rel in ("config.yaml", "model.keras", "metrics.json", "test_metrics.json", "test_predictions.npz"):
            assert (run / rel).is_file(), (mode, rel)
        assert (root / "logs" / f"{ARCH}_{mode}_fold0-seed0.log").read_text().count("[train]") == 1
        m = json.loads((run / "test_metrics.json").read_text())
        assert m["split"] == "test" and m["mode"] == mode and m["fold"] == 0 and m["seed"] == 0
        assert set(m["outputs"]) == ({"student"} if mode == "baseline" else {"student", "teacher"})
        assert m["train_wall_time_s"] > 0 and m["eval_wall_time_s"] >= 0
        per_run[mode] = m
    classes = per_run["baseline"]["class_names"]
    expected = {"simple U-Net without": per_run["baseline"]["outputs"]["student"],
                "simple U-Net with: student": per_run["distill"]["outputs"]["student"],
                "simple U-Net with: teacher": per_run["distill"]["outputs"]["teacher"]}
    # table.csv: the three rows, numbers recomputed from runs.json and equal to the runs' test_metrics.json
    rows = _csv_rows(root / "table.csv")
    assert [r["model"] for r in rows] == list(expected)
    for row in rows:
        out = expected[row["model"]]
        matching = [r["outputs"][row["output"]] for r in runs if r["mode"] == row["mode"]]
        assert row["n"] == "1" == str(len(matching))
        for c in classes:
            values = [o["per_class_iou"][c] for o in matching if o["per_class_iou"][c] is not None]
            assert float(row[c]) == pytest.approx(100 * np.mean(values), abs=1e-4)
            assert float(row[c]) == pytest.approx(100 * out["per_class_iou"][c], abs=1e-4)
            assert row[f"{c}_std"] == ""  # one run: no std
        assert float(row["mIoU"]) == pytest.approx(100 * out["miou"], abs=1e-4)
    delta = 100 * (expected["simple U-Net with: student"]["miou"] - expected["simple U-Net without"]["miou"])
    assert float(rows[1]["delta_mIoU"]) == pytest.approx(delta, abs=1e-4)
    # table.md: same rows, formatted like the paper's tables
    md = (root / "table.md").read_text()
    for label, out in expected.items():
        line = next(l for l in md.splitlines() if l.startswith(f"| {label} |"))
        cells = [c.strip() for c in line.strip("|").split("|")]
        assert cells[1 + len(classes)] == f"{100 * out['miou']:.2f}"
        assert cells[-1] == "1"
    summary = json.loads((root / "summary.json").read_text())
    assert summary["runs_evaluated"] == 2 and summary["grid"]["archs"] == [ARCH]


def test_predictions_and_overlay_figure(grid):
    root, _ = grid
    with np.load(root / "runs" / ARCH / "distill" / "fold0-seed0" / "test_predictions.npz") as z:
        assert set(z.files) == {"image", "ground_truth", "student", "teacher"}
        assert all(z[k].dtype == np.uint8 for k in z.files)
        assert z["student"].shape == (4, 32, 32) and z["image"].shape == (4, 32, 32, 3)
    png = root / "overlays" / f"{ARCH}_fold0_seed0.png"
    image = cv2.imread(str(png))
    assert image is not None
    assert image.shape[1] == 5 * 32  # input | ground truth | without | with: student | with: teacher
    assert image.shape[0] > 4 * 32  # four tiles (and the legend)


def test_second_invocation_skips_everything(grid, tiny_yaml):
    root, _ = grid
    table = (root / "table.csv").read_text()
    t0 = time.time()
    rc, out, err = run_main("--config", tiny_yaml, "--archs", ARCH, "--out", root.parent, "--in-process")
    assert rc == 0, err
    assert time.time() - t0 < 30
    assert "0 to train, 0 to resume, 0 to evaluate, 2 already evaluated" in out
    assert out.count("skipped: already evaluated") == 2
    assert (root / "table.csv").read_text() == table


def test_trained_run_is_only_evaluated(grid, tiny_yaml, tmp_path):
    root = tmp_path / "tiny"
    shutil.copytree(grid[0], root)
    run = root / "runs" / ARCH / "baseline" / "fold0-seed0"
    before = json.loads((run / "test_metrics.json").read_text())
    (run / "test_metrics.json").unlink()
    (run / "test_predictions.npz").unlink()
    model_mtime = (run / "model.keras").stat().st_mtime
    rc, out, err = run_main("--config", tiny_yaml, "--archs", ARCH, "--out", tmp_path, "--in-process")
    assert rc == 0, err
    assert "0 to train, 0 to resume, 1 to evaluate, 1 already evaluated" in out
    assert "[train]" not in out and "[test]" in out
    assert (run / "model.keras").stat().st_mtime == model_mtime
    after = json.loads((run / "test_metrics.json").read_text())
    assert after["outputs"]["student"]["miou"] == pytest.approx(before["outputs"]["student"]["miou"])
    assert not after["trained_by_runner"]
    assert (run / "test_predictions.npz").is_file()


def test_interrupted_run_made_by_train_py_is_resumed(tiny_yaml, tmp_path):
    from axial_kd_tf.training import InterruptAfterEpoch, train

    # what `python train.py --config tiny.yaml --set model.arch=... --set distill.enabled=false --run-dir ...` writes
    run = tmp_path / "tiny" / "runs" / ARCH / "baseline" / "fold0-seed0"
    cfg = load_config(tiny_yaml, [f"model.arch={ARCH}", "distill.enabled=false", "train.epochs=2"])
    with pytest.raises(KeyboardInterrupt):
        train(cfg, run, extra_callbacks=(InterruptAfterEpoch(1),), progress=lambda s: None)
    assert not (run / "metrics.json").exists()
    common = ["--config", tiny_yaml, "--archs", ARCH, "--modes", "baseline", "--out", tmp_path, "--in-process"]
    # another configuration: one-line error naming the run directory, nothing trained
    rc, _, err = run_main(*common, "--set", "train.epochs=3")
    assert rc == 2 and err.count("\n") == 1 and str(run) in err and "train.epochs" in err
    rc, out, err = run_main(*common, "--set", "train.epochs=2")
    assert rc == 0, err
    assert "0 to train, 1 to resume" in out and "[resume]" in out
    epochs = [l.split(",")[0] for l in (run / "history.csv").read_text().strip().splitlines()[1:]]
    assert epochs == ["0", "1"]  # only the second epoch was trained after the resume
    assert (run / "test_metrics.json").is_file()
    assert not (tmp_path / "tiny" / "overlays" / f"{ARCH}_fold0_seed0.png").exists()  # needs both modes
    md = (tmp_path / "tiny" / "table.md").read_text()
    assert "| simple U-Net with: student | — |" in md  # a missing row is shown with dashes


def test_failed_runs_are_reported_and_the_grid_goes_on(tiny_yaml, tmp_path):
    # a training set smaller than the batch fails inside each run
    rc, out, err = run_main("--config", tiny_yaml, "--archs", ARCH, "--out", tmp_path, "--in-process",
                            "--set", "data.train_samples=2")
    assert rc == 1
    assert out.count("FAILED") == 2 and "[run 2/2]" in out
    assert "2 run(s) failed" in err and str(tmp_path / "tiny" / "runs" / ARCH / "distill" / "fold0-seed0") in err
    assert "batch_size" in (tmp_path / "tiny" / "logs" / f"{ARCH}_baseline_fold0-seed0.log").read_text()
    assert (tmp_path / "tiny" / "table.md").is_file()


def test_default_mode_trains_in_a_child_process(tiny_yaml, tmp_path, capsys):
    rc = ex.main(["--config", str(tiny_yaml), "--archs", ARCH, "--modes", "baseline", "--out", str(tmp_path)])
    out = capsys.readouterr().out
    assert rc == 0
    assert "[train]" in out and "finished in" in out  # the child's output reaches the console ...
    log = (tmp_path / "tiny" / "logs" / f"{ARCH}_baseline_fold0-seed0.log").read_text()
    assert "[train]" in log and "[test]" in log  # ... and the run's log file
    assert (tmp_path / "tiny" / "runs" / ARCH / "baseline" / "fold0-seed0" / "test_metrics.json").is_file()


def test_eta_counts_training_and_evaluation_separately():
    from axial_kd_tf.experiments import estimate_eta

    durations = {"train": [100.0, 300.0], "evaluate": [10.0]}
    assert estimate_eta(["train", "evaluate", "train"], durations) == 200.0 + 10.0 + 200.0
    assert estimate_eta(["evaluate"], {"train": [], "evaluate": []}) == 0.0
    assert estimate_eta(["train"], {"train": [], "evaluate": [5.0]}) is None
    assert estimate_eta([], durations) == 0.0


def test_report_only_rebuilds_the_tables_without_training(grid, tiny_yaml):
    root, _ = grid
    table = (root / "table.csv").read_text()
    (root / "table.csv").unlink()
    (root / "table.md").unlink()
    rc, out, err = run_main("--config", tiny_yaml, "--archs", ARCH, "--out", root.parent, "--report-only")
    assert rc == 0, err
    assert "[run" not in out and "evaluated runs on disk" in out
    assert (root / "table.csv").read_text() == table and (root / "table.md").is_file()

"""The protocol runner (axial_kd_tf.experiments) on a tiny synthetic config: grid, resume, aggregation, overlays."""

from __future__ import annotations

import contextlib
import csv
import io
import json
import math
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Sequence

import cv2
import numpy as np
import pytest
import yaml

from axial_kd_tf import experiments as ex
from axial_kd_tf.config import CONFIG_DIR, DistillConfig, load_config
from axial_kd_tf.errors import UserError

ARCH = "simple_unet"


@pytest.fixture(scope="module")
def tiny_yaml(tmp_path_factory) -> Path:
    raw = yaml.safe_load((CONFIG_DIR / "quickstart.yaml").read_text())
    raw["name"] = "tiny"
    raw["model"]["options"] = {"base_filters": 4, "depth": 2}
    raw["teacher"].update(hidden_dim=8, max_span=32)
    raw["data"]["synthetic"].update(image_size=32, train_samples=16, val_samples=8, test_samples=8)
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
    from axial_kd_tf.pipeline import train
    from helpers import InterruptAfterEpoch

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
    assert epochs == ["1", "2"]  # only the second epoch was trained after the resume (epochs numbered from 1)
    assert (run / "test_metrics.json").is_file()
    assert not (tmp_path / "tiny" / "overlays" / f"{ARCH}_fold0_seed0.png").exists()  # needs both modes
    md = (tmp_path / "tiny" / "table.md").read_text()
    assert "| simple U-Net with: student | — |" in md  # a missing row is shown with dashes


def test_failed_runs_are_reported_and_the_grid_goes_on(tiny_yaml, tmp_path):
    # a training set smaller than the batch fails inside each run
    rc, out, err = run_main("--config", tiny_yaml, "--archs", ARCH, "--out", tmp_path, "--in-process",
                            "--set", "data.synthetic.train_samples=2")
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


# ------------------------------------------------------------------------------------ studies: variants, splits, records
SWEEP = ("--sweep", "distill.distill_weight=0.5,2")
VARIANTS = ("distill_weight=0.5", "distill_weight=2")
VOLATILE = ("train_wall_time_s", "date", "git_commit", "git_dirty")


@pytest.fixture(scope="module")
def study_grid(grid, tiny_yaml, tmp_path_factory) -> tuple[Path, Path, str]:
    """A shared baseline and two distill variants, evaluated on the validation split, with records (in-process).

    The baseline is the one ``grid`` trained (same config and seed), so it is only evaluated here.
    """
    out = tmp_path_factory.mktemp("study")
    baseline = out / "tiny" / "runs" / ARCH / "baseline"
    shutil.copytree(grid[0] / "runs" / ARCH / "baseline", baseline)
    for name in ("test_metrics.json", "test_predictions.npz"):
        (baseline / "fold0-seed0" / name).unlink()
    records = out / "records" / "study.json"
    rc, stdout, stderr = run_main("--config", tiny_yaml, "--archs", ARCH, "--out", out, "--in-process", *SWEEP,
                                  "--split", "val", "--record", records)
    assert rc == 0, stderr
    return out / "tiny", records, stdout


def test_dry_run_layout_with_and_without_variants(tiny_yaml, tmp_path):
    rc, out, _ = run_main("--config", tiny_yaml, "--archs", ARCH, "--out", tmp_path, "--dry-run")
    assert rc == 0 and str(tmp_path / "tiny" / "runs" / ARCH / "distill" / "fold0-seed0") in out
    variants = tmp_path / "v.yaml"
    variants.write_text("kl-T2: {distill.target: logits, distill.distill_weight: 2}\nplain: {}\n")
    rc, out, err = run_main("--config", tiny_yaml, "--archs", ARCH, "--seeds", "1-2", "--out", tmp_path,
                            "--variants", variants, "--dry-run")
    assert rc == 0, err
    assert "6 runs (archs × (baseline + variants) × folds × seeds = 1 × (1 + 2) × 1 × 2)" in out
    lines = [line for line in out.splitlines() if line.startswith("[run ")]
    assert [line.split(": ")[0] for line in lines[:3]] == [
        "[run 1/6] simple_unet baseline fold 0 seed 1", "[run 2/6] simple_unet distill [kl-T2] fold 0 seed 1",
        "[run 3/6] simple_unet distill [plain] fold 0 seed 1"]
    for line, group in zip(lines, ["baseline", "kl-T2", "plain"] * 2):
        assert f"runs/{ARCH}/{group}/fold0-seed" in line
    assert "/distill/" not in out and not (tmp_path / "tiny").exists()


def test_bad_variants_fail_before_anything_runs(tiny_yaml, tmp_path):
    common = ["--config", tiny_yaml, "--archs", ARCH, "--out", tmp_path]
    bad_name = tmp_path / "bad.yaml"
    bad_name.write_text("ok: {}\nnot/ok: {distill.target: logits}\n")
    rc, _, err = run_main(*common, "--variants", bad_name)
    assert rc == 2 and err.count("\n") == 1 and str(bad_name) in err and "'not/ok'" in err
    typo = tmp_path / "typo.yaml"
    typo.write_text("kl: {distill.targt: logits}\n")
    rc, _, err = run_main(*common, "--variants", typo)
    assert rc == 2 and err.count("\n") == 1
    assert "variant 'kl'" in err and "unknown config key 'distill.targt'; did you mean 'distill.target'?" in err
    for argv, message in [
        (["--sweep", "distill.target=logits,bogus"], "config key 'distill.target' must be one of"),
        (["--sweep", "distill.distill_weight=1", "--modes", "baseline"], "--modes has no distill"),
        (["--sweep", "data.sstem.fold=1"], "which the grid sets itself"),
        (["--parallel", "2", "--in-process"], "cannot be combined with --in-process"),
        (["--parallel", "0"], "--parallel must be >= 1"),
        (["--parallel", "999"], "more than the"),
    ]:
        rc, _, err = run_main(*common, *argv)
        assert rc == 2 and err.count("\n") == 1 and message in err, (argv, err)
    assert not (tmp_path / "tiny").exists()  # nothing was written


def test_variants_layout_val_split_and_tables(study_grid):
    root, _, stdout = study_grid
    assert "2 to train, 0 to resume, 1 to evaluate, 0 already evaluated on the val split" in stdout
    assert f"[run 2/3] {ARCH} distill [distill_weight=0.5] fold 0 seed 0 finished in" in stdout
    assert "val mIoU student" in stdout
    assert sorted(p.name for p in (root / "runs" / ARCH).iterdir()) == ["baseline", *VARIANTS]
    digests = set()
    # the baseline keeps the base config's (the library default) weight; it trains CE only anyway
    for group, weight in [("baseline", DistillConfig().distill_weight), (VARIANTS[0], 0.5), (VARIANTS[1], 2.0)]:
        run = root / "runs" / ARCH / group / "fold0-seed0"
        cfg = load_config(run / "config.yaml")
        assert cfg.distill.distill_weight == weight and cfg.distill.enabled == (group != "baseline")
        assert (run / "val_metrics.json").is_file() and (run / "val_predictions.npz").is_file()
        assert not (run / "test_metrics.json").exists()
        m = json.loads((run / "val_metrics.json").read_text())
        assert m["split"] == "val" and m["num_images"] == 8
        digests.add(m["config_digest"])
        assert (root / "logs" / f"{ARCH}_{group}_fold0-seed0.log").is_file()
    assert len(digests) == 1  # one base config: the variants' overrides are recorded apart from the digest
    assert not (root / "table.md").exists()  # the test-split tables are not touched by a val grid
    md = (root / "val_table.md").read_text()
    assert md.startswith("# tiny: val IoU (%)")
    labels = [r["model"] for r in _csv_rows(root / "val_table.csv")]
    assert labels == ["simple U-Net without"] + [f"simple U-Net with [{v}]: {o}" for v in VARIANTS
                                                 for o in ("student", "teacher")]
    assert _csv_rows(root / "val_table.csv")[1]["variant"] == VARIANTS[0]
    runs = json.loads((root / "val_runs.json").read_text())
    assert {r.get("variant") for r in runs} == {None, *VARIANTS}
    for v in VARIANTS:
        assert (root / "val_overlays" / f"{ARCH}_{v}_fold0_seed0.png").is_file()


def test_records_of_a_study(study_grid, tiny_yaml):
    root, records, _ = study_grid
    recs = json.loads(records.read_text())
    assert [(r["variant"], r["split"]) for r in recs] == [("baseline", "val"), (VARIANTS[0], "val"),
                                                         (VARIANTS[1], "val")]
    text = records.read_text()
    assert str(root.parent) not in text and '"/' not in text  # no path of this machine
    for r in recs:
        group = r["variant"]
        run = root / "runs" / ARCH / group / "fold0-seed0"
        m = json.loads((run / "val_metrics.json").read_text())
        assert r["run_dir"] == f"runs/{ARCH}/{group}/fold0-seed0" and r["study"] == "tiny"
        assert r["outputs"] == {k: {"per_class_iou": v["per_class_iou"], "miou": v["miou"]}
                                for k, v in m["outputs"].items()}
        assert (r["iterations"], r["epochs"], r["batch_size"]) == (2, 1, 4)
        assert r["grid_overrides"] == [] and r["class_names"] == m["class_names"]
        assert len(r["diagnostics"]["val_student_miou"]) == 1
        assert r["overrides"] == ({} if group == "baseline" else {"distill.distill_weight": float(group[15:])})
    assert "val_argmax_disagreement" in recs[1]["diagnostics"]
    # --report-only --record re-records every evaluated run: the same file, byte for byte
    rc, out, err = run_main("--config", tiny_yaml, "--archs", ARCH, "--out", root.parent, *SWEEP, "--split", "val",
                            "--record", records, "--report-only")
    assert rc == 0, err
    assert "[record] 3 records upserted" in out and records.read_text() == text


def test_val_then_test_reuses_the_trained_runs(study_grid, tiny_yaml, tmp_path):
    root = tmp_path / "tiny"
    shutil.copytree(study_grid[0], root)
    records = tmp_path / "study.json"
    shutil.copy(study_grid[1], records)
    mtimes = {p: p.stat().st_mtime for p in root.glob(f"runs/{ARCH}/*/fold0-seed0/model.keras")}
    assert len(mtimes) == 3
    rc, out, err = run_main("--config", tiny_yaml, "--archs", ARCH, "--out", tmp_path, "--in-process", *SWEEP,
                            "--split", "test", "--record", records)
    assert rc == 0, err
    assert "0 to train, 0 to resume, 3 to evaluate, 0 already evaluated" in out
    assert "[train]" not in out and out.count("[test]") == 3
    assert all(p.stat().st_mtime == t for p, t in mtimes.items())
    for group in ("baseline", *VARIANTS):
        run = root / "runs" / ARCH / group / "fold0-seed0"
        assert json.loads((run / "test_metrics.json").read_text())["split"] == "test"
        assert (run / "val_metrics.json").is_file()
    assert (root / "table.md").read_text().startswith("# tiny: test IoU (%)")
    recs = json.loads(records.read_text())
    assert sorted((r["split"], r["variant"]) for r in recs) == sorted(
        (s, v) for s in ("val", "test") for v in ("baseline", *VARIANTS))
    # the val split stays done: a second val invocation has nothing to do
    rc, out, _ = run_main("--config", tiny_yaml, "--archs", ARCH, "--out", tmp_path, *SWEEP, "--split", "val",
                          "--dry-run")
    assert rc == 0 and "3 already evaluated on the val split" in out


def _comparable(rec: dict, volatile: Sequence[str] = VOLATILE) -> dict:
    return {k: v for k, v in rec.items() if k not in tuple(volatile) + ("diagnostics",)}


@pytest.mark.skipif(len(__import__("axial_kd_tf.parallel").parallel.usable_cpus()) < 2, reason="needs 2 CPUs")
@pytest.mark.parametrize("train", [False, pytest.param(True, marks=pytest.mark.slow)])
def test_parallel_children_finish_with_the_serial_records(grid, tiny_yaml, tmp_path, train):
    """--parallel 2: two pinned single-thread children at once give the records of the serial in-process grid.

    Fast tier: the children evaluate copies of the serial grid's trained runs (the worker's training path is the one
    test_default_mode_trains_in_a_child_process covers); slow tier: they train too.
    """
    serial = tmp_path / "serial.json"
    rc, _, err = run_main("--config", tiny_yaml, "--archs", ARCH, "--out", grid[0].parent, "--report-only",
                          "--record", serial)
    assert rc == 0, err
    if not train:
        shutil.copytree(grid[0] / "runs", tmp_path / "par" / "tiny" / "runs")
        for path in (tmp_path / "par" / "tiny" / "runs").glob("*/*/*/test_*"):
            path.unlink()
    parallel = tmp_path / "parallel.json"
    rc, out, err = run_main("--config", tiny_yaml, "--archs", ARCH, "--out", tmp_path / "par", "--parallel", "2",
                            "--record", parallel)
    assert rc == 0, err
    first = "[train]" if train else "[test]"
    assert f"[{ARCH}/baseline/fold0-seed0] {first}" in out and f"[{ARCH}/distill/fold0-seed0] {first}" in out
    assert "2 in parallel" in out and ("0 to evaluate" if train else "2 to evaluate") in out
    cpus = []
    for mode in ("baseline", "distill"):
        log = (tmp_path / "par" / "tiny" / "logs" / f"{ARCH}_{mode}_fold0-seed0.log").read_text()
        line = next(line for line in log.splitlines() if line.startswith("[worker] CPUs "))
        assert "1 intra-op / 1 inter-op threads" in line
        cpus.append(line.split()[2])
    assert len(set(cpus)) == 2  # disjoint shares
    a, b = json.loads(serial.read_text()), json.loads(parallel.read_text())
    assert [(r["variant"], r["split"]) for r in b] == [("baseline", "test"), ("distill", "test")]
    volatile = VOLATILE if train else ("date", "git_commit", "git_dirty")
    assert [_comparable(r, volatile) for r in a] == [_comparable(r, volatile) for r in b]
    for x, y in zip(a, b):  # diagnostics: the same up to float summation order (1 vs 2 threads) when trained
        assert x["diagnostics"].keys() == y["diagnostics"].keys()
        for k, v in x["diagnostics"].items():
            assert y["diagnostics"][k] == (pytest.approx(v, rel=1e-3, abs=1e-6) if train else v), k


def test_eta_accounts_for_parallel_runs():
    durations = {"train": [100.0], "evaluate": [10.0]}
    assert ex.estimate_eta(["train"] * 4, durations, parallel=2) == 200.0
    assert ex.estimate_eta(["train"] * 3, durations, parallel=2) == 200.0
    # one run 30 s into its 100: its slot frees at 70, the next run there ends at 170; the other slot ends at 100
    assert ex.estimate_eta(["train", "train"], durations, parallel=2, running=[("train", 30.0)]) == 170.0
    assert ex.estimate_eta([], durations, parallel=2, running=[("evaluate", 4.0)]) == pytest.approx(6.0)
    assert ex.estimate_eta(["train"], {"train": []}, parallel=2) is None


def test_cpu_shares_and_child_environment():
    from axial_kd_tf.parallel import CPUS_ENV, child_env, cpu_shares

    assert cpu_shares(2, [0, 1, 2, 3, 4]) == [[0, 1], [2, 3]]
    assert cpu_shares(1, [3, 5]) == [[3, 5]]
    with pytest.raises(UserError, match="more than the 2 CPU"):
        cpu_shares(3, [0, 1])
    env = child_env([2, 3], {})
    assert env == {"TF_NUM_INTRAOP_THREADS": "2", "TF_NUM_INTEROP_THREADS": "2", "OMP_NUM_THREADS": "2",
                   CPUS_ENV: "2,3"}
    assert child_env(None, {"A": "1"}) == {"A": "1"}


def test_study_config_keeps_the_digest_of_its_committed_records():
    """Renamed keys (config.RENAMED_KEYS) and keys added later leave the study's digest as its records have it, so
    new runs add to the same study instead of starting a second one."""
    from axial_kd_tf.experiments.grid import config_digest

    root = Path(__file__).resolve().parent.parent
    records = json.loads((root / "docs" / "results" / "teacher_study.json").read_text())
    newest = max(records, key=lambda r: r["date"])
    cfg = load_config(root / "configs" / "studies" / "teacher_study.yaml")
    assert config_digest(cfg.to_dict()) == newest["config_digest"]


def test_worker_imports_this_copy_of_the_package(tmp_path, monkeypatch):
    """A worker started from any folder imports the runner's own axial_kd_tf (a worktree's, not an installed one):
    the first PYTHONPATH entry is the folder that holds the package, not the package itself (which would also put
    its modules, such as ``config`` or ``metrics``, on the path as top-level names)."""
    import axial_kd_tf
    from axial_kd_tf.experiments.runner import worker_env

    monkeypatch.setenv("PYTHONPATH", str(tmp_path))
    env = worker_env()
    first = env["PYTHONPATH"].split(os.pathsep)[0]
    assert (Path(first) / "axial_kd_tf" / "__init__.py").is_file()
    assert str(tmp_path) in env["PYTHONPATH"].split(os.pathsep)
    code = "import axial_kd_tf, sys; print(axial_kd_tf.__file__); print(any(p.endswith('axial_kd_tf') for p in sys.path))"
    out = subprocess.run([sys.executable, "-c", code], env=env, cwd=tmp_path, capture_output=True, text=True,
                         timeout=120, check=True).stdout.split()
    assert Path(out[0]).resolve() == Path(axial_kd_tf.__file__).resolve() and out[1] == "False"

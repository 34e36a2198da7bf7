"""CLI error contract: every user error → one line ``error: ...`` on stderr, exit code 2, no traceback.

Most cases call ``train_main`` / ``evaluate_main`` / ``export_main`` in-process (fast); a few run the real scripts as
subprocesses to check the exit code and stderr of the process itself. No training happens here.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from axial_kd_tf.cli import evaluate_main, export_main, train_main
from axial_kd_tf.config import dump_config, load_config

REPO = Path(__file__).resolve().parent.parent

# TensorFlow / absl start-up chatter that may reach stderr even with TF_CPP_MIN_LOG_LEVEL=2.
_LOG_LINE = re.compile(
    r"^([IWEF]\d{4} |WARNING: All log messages before absl|To enable the following instructions|"
    r"\S+\.(cc|h):\d+\]|.*(oneDNN|cuda|TensorFlow binary is optimized))"
)


def _user_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.strip() and not _LOG_LINE.match(line)]


def _single_error(stderr: str, prefix: str = "error: ") -> str:
    """The one user-facing line on stderr (asserts there is exactly one and no traceback)."""
    assert "Traceback" not in stderr, stderr
    lines = _user_lines(stderr)
    assert len(lines) == 1, stderr
    assert lines[0].startswith(prefix), stderr
    return lines[0]


def _call(main, argv, capsys) -> str:
    """Run a CLI main in-process, expecting exit code 2; return its single error line."""
    assert main([str(a) for a in argv]) == 2
    captured = capsys.readouterr()
    return _single_error(captured.err)


def _run_script(args, cwd=REPO) -> subprocess.CompletedProcess:
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONUNBUFFERED="1")
    return subprocess.run(
        [sys.executable, *map(str, args)], cwd=cwd, env=env, capture_output=True, text=True, timeout=120,
    )


def _tree(path: Path) -> dict:
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


@pytest.fixture
def saved_run(tmp_path: Path) -> Path:
    """A run directory as train.py leaves it after an interruption: config.yaml and a checkpoint, no metrics."""
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "config.yaml").write_text(dump_config(load_config("quickstart")))
    (run / "checkpoints" / "last.weights.h5").write_bytes(b"not really weights")
    return run


@pytest.fixture
def garbage_keras(tmp_path: Path) -> Path:
    path = tmp_path / "models" / "broken.keras"
    path.parent.mkdir()
    path.write_bytes(os.urandom(512))
    return path


# ------------------------------------------------------------------------------------------ subprocess contract
def test_script_unknown_key_exits_2_with_one_line_and_creates_no_run_dir(tmp_path: Path):
    run_dir = tmp_path / "run"
    proc = _run_script(["train.py", "--config", "quickstart", "--set", "train.epoch=3", "--run-dir", run_dir])
    assert proc.returncode == 2, proc.stderr
    line = _single_error(proc.stderr)
    assert "'train.epoch'" in line and "train.epochs" in line
    assert not run_dir.exists()
    assert proc.stdout.strip() == ""


def test_script_missing_config_file_exits_2(tmp_path: Path):
    missing = tmp_path / "does_not_exist.yaml"
    proc = _run_script(["train.py", "--config", missing, "--run-dir", tmp_path / "run"])
    assert proc.returncode == 2, proc.stderr
    line = _single_error(proc.stderr)
    assert str(missing) in line and "quickstart.yaml" in line
    assert not (tmp_path / "run").exists()


def test_script_argparse_error_exits_2_with_one_line(tmp_path: Path):
    proc = _run_script(["train.py", "--run-dir", tmp_path / "run"])  # --config is required
    assert proc.returncode == 2, proc.stderr
    line = _single_error(proc.stderr, prefix="train.py: error:")
    assert "--config" in line


def test_script_evaluate_corrupt_model_exits_2(tmp_path: Path, garbage_keras: Path):
    proc = _run_script(["evaluate.py", "--model", garbage_keras, "--config", "quickstart"])
    assert proc.returncode == 2, proc.stderr
    line = _single_error(proc.stderr)
    assert str(garbage_keras) in line
    assert not any(p.name.startswith("eval") for p in garbage_keras.parent.iterdir())


# -------------------------------------------------------------------------------------------------- train.py
def test_train_unknown_key_suggests_and_creates_no_run_dir(tmp_path: Path, capsys):
    run_dir = tmp_path / "run"
    line = _call(train_main, ["--config", "quickstart", "--set", "train.epoch=3", "--run-dir", run_dir], capsys)
    assert "'train.epoch'" in line and "did you mean 'train.epochs'" in line
    assert not run_dir.exists()


def test_train_bad_override_value_names_key(tmp_path: Path, capsys):
    line = _call(train_main, ["--config", "quickstart", "--set", "train.optimizer=adm", "--run-dir", tmp_path / "r"],
                 capsys)
    assert "'train.optimizer'" in line and "adam" in line
    assert not (tmp_path / "r").exists()


def test_train_malformed_override(tmp_path: Path, capsys):
    line = _call(train_main, ["--config", "quickstart", "--set", "train.epochs", "--run-dir", tmp_path / "r"], capsys)
    assert "train.epochs" in line and "=" in line
    assert not (tmp_path / "r").exists()


def test_train_missing_config(tmp_path: Path, capsys):
    line = _call(train_main, ["--config", "no_such_config", "--run-dir", tmp_path / "r"], capsys)
    assert "'no_such_config'" in line and "quickstart.yaml" in line


def test_train_invalid_yaml_names_file(tmp_path: Path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("train:\n  epochs: [3\n")
    line = _call(train_main, ["--config", bad, "--run-dir", tmp_path / "r"], capsys)
    assert str(bad) in line and "line" in line
    assert not (tmp_path / "r").exists()


def test_train_existing_run_dir_is_not_overwritten(saved_run: Path, capsys):
    before = _tree(saved_run)
    line = _call(train_main, ["--config", "quickstart", "--run-dir", saved_run], capsys)
    assert str(saved_run) in line and "--resume" in line and "--overwrite" in line
    assert _tree(saved_run) == before


def test_train_existing_non_run_dir_is_not_overwritten(tmp_path: Path, capsys):
    folder = tmp_path / "precious"
    folder.mkdir()
    (folder / "notes.txt").write_text("keep me")
    _call(train_main, ["--config", "quickstart", "--run-dir", folder], capsys)
    assert _tree(folder) == {"notes.txt": b"keep me"}


def test_train_resume_non_existent_dir(tmp_path: Path, capsys):
    missing = tmp_path / "never_ran"
    line = _call(train_main, ["--config", "quickstart", "--run-dir", missing, "--resume"], capsys)
    assert str(missing) in line and "does not exist" in line
    assert not missing.exists()


def test_train_resume_with_different_config_names_the_key(saved_run: Path, capsys):
    before = _tree(saved_run)
    line = _call(train_main, ["--config", "quickstart", "--set", "train.epochs=3", "--run-dir", saved_run,
                              "--resume"], capsys)
    assert "'train.epochs'" in line and str(saved_run) in line
    assert _tree(saved_run) == before


def test_train_resume_with_different_config_file_names_the_key(saved_run: Path, capsys):
    line = _call(train_main, ["--config", "quickstart_baseline", "--run-dir", saved_run, "--resume"], capsys)
    assert "'name'" in line or "'distill.enabled'" in line


def test_train_resume_nested_option_difference(saved_run: Path, capsys):
    line = _call(train_main, ["--config", "quickstart", "--set", "model.options.depth=2", "--run-dir", saved_run,
                              "--resume"], capsys)
    assert "'model.options.depth'" in line


def test_train_resume_dir_without_config_yaml(tmp_path: Path, capsys):
    folder = tmp_path / "other"
    folder.mkdir()
    (folder / "file.txt").write_text("x")
    line = _call(train_main, ["--config", "quickstart", "--run-dir", folder, "--resume"], capsys)
    assert "config.yaml" in line and str(folder) in line


def test_train_resume_a_completed_run(saved_run: Path, capsys):
    (saved_run / "metrics.json").write_text("{}")
    line = _call(train_main, ["--config", "quickstart", "--run-dir", saved_run, "--resume"], capsys)
    assert "complete" in line


def test_train_resume_without_run_dir(capsys):
    line = _call(train_main, ["--config", "quickstart", "--resume"], capsys)
    assert "--run-dir" in line


def test_train_resume_and_overwrite_are_exclusive(saved_run: Path, capsys):
    before = _tree(saved_run)
    line = _call(train_main, ["--config", "quickstart", "--run-dir", saved_run, "--resume", "--overwrite"], capsys)
    assert "--resume" in line and "--overwrite" in line
    assert _tree(saved_run) == before


@pytest.mark.parametrize("argv", [[], ["--run-dir", "x"], ["--config", "quickstart", "--bogus"], ["--config"]])
def test_train_argparse_errors_exit_2(argv, capsys):
    with pytest.raises(SystemExit) as info:
        train_main(argv)
    assert info.value.code == 2
    lines = _user_lines(capsys.readouterr().err)
    assert len(lines) == 1 and lines[0].startswith("train.py: error:")


# ----------------------------------------------------------------------------------------------- evaluate.py
def test_evaluate_run_without_config_yaml(tmp_path: Path, capsys):
    folder = tmp_path / "not_a_run"
    folder.mkdir()
    (folder / "model.keras").write_bytes(b"x")
    line = _call(evaluate_main, ["--run", folder], capsys)
    assert str(folder) in line and "config.yaml" in line


def test_evaluate_run_missing_dir(tmp_path: Path, capsys):
    missing = tmp_path / "nope"
    line = _call(evaluate_main, ["--run", missing], capsys)
    assert str(missing) in line and "does not exist" in line


def test_evaluate_run_without_model(saved_run: Path, capsys):
    line = _call(evaluate_main, ["--run", saved_run], capsys)
    assert "model.keras" in line and "--resume" in line
    assert not (saved_run / "eval").exists()


@pytest.mark.parametrize("with_config", [False, True])
def test_evaluate_model_missing_path(tmp_path: Path, capsys, with_config):
    missing = tmp_path / "missing.keras"
    extra = ["--config", "quickstart"] if with_config else []
    line = _call(evaluate_main, ["--model", missing, *extra], capsys)
    assert str(missing) in line and "does not exist" in line


def test_evaluate_corrupt_keras_file_names_file(garbage_keras: Path, capsys):
    line = _call(evaluate_main, ["--model", garbage_keras, "--config", "quickstart"], capsys)
    assert str(garbage_keras) in line


def test_evaluate_corrupt_model_inside_run_dir(saved_run: Path, capsys):
    model = saved_run / "student.keras"
    model.write_bytes(b"PK\x03\x04 this is not a zip archive")
    line = _call(evaluate_main, ["--model", model], capsys)  # config comes from the run directory
    assert str(model) in line


def test_evaluate_corrupt_run_model(saved_run: Path, capsys):
    (saved_run / "model.keras").write_bytes(b"garbage")
    line = _call(evaluate_main, ["--run", saved_run], capsys)
    assert str(saved_run / "model.keras") in line


def test_evaluate_model_outside_run_dir_needs_config(garbage_keras: Path, capsys):
    line = _call(evaluate_main, ["--model", garbage_keras], capsys)
    assert str(garbage_keras) in line and "--config" in line


def test_evaluate_unknown_override_key(saved_run: Path, capsys):
    line = _call(evaluate_main, ["--run", saved_run, "--set", "data.seeds=1"], capsys)
    assert "'data.seeds'" in line and "data.seed" in line


def test_evaluate_not_a_model_file(tmp_path: Path, capsys):
    path = tmp_path / "weights.txt"
    path.write_text("x")
    line = _call(evaluate_main, ["--model", path, "--config", "quickstart"], capsys)
    assert str(path) in line


@pytest.mark.parametrize("argv", [[], ["--run", "a", "--model", "b"], ["--run", "a", "--split", "dev"]])
def test_evaluate_argparse_errors_exit_2(argv, capsys):
    with pytest.raises(SystemExit) as info:
        evaluate_main(argv)
    assert info.value.code == 2
    lines = _user_lines(capsys.readouterr().err)
    assert len(lines) == 1 and lines[0].startswith("evaluate.py: error:")


# ------------------------------------------------------------------------------------------------------ export
def test_export_non_run_folder(tmp_path: Path, capsys):
    folder = tmp_path / "folder"
    folder.mkdir()
    line = _call(export_main, ["--run", folder], capsys)
    assert str(folder) in line and "config.yaml" in line


def test_export_run_without_model(saved_run: Path, capsys):
    line = _call(export_main, ["--run", saved_run], capsys)
    assert "model.keras" in line
    assert not (saved_run / "export").exists()


def test_export_corrupt_saved_config(tmp_path: Path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text("train:\n  epoch: 3\n")
    line = _call(export_main, ["--run", run], capsys)
    assert "'train.epoch'" in line


@pytest.mark.parametrize("argv", [[], ["--run", "x", "--variants", "int4"], ["--run", "x", "--input-size", "big"]])
def test_export_argparse_errors_exit_2(argv, capsys):
    with pytest.raises(SystemExit) as info:
        export_main(argv)
    assert info.value.code == 2
    assert len(_user_lines(capsys.readouterr().err)) == 1

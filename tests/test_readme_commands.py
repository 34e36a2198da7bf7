"""Every command in README.md runs, at a tiny size, so that a README command cannot break unnoticed.

The commands are read from the README itself: each line of a ```bash block and each inline `python ...` span. A
command runs in-process (the same ``main`` its script calls) in a temporary folder that holds a link to configs/,
with tiny ``--set`` overrides appended for the keys the command does not set itself (32² images, one step, one
epoch). Placeholders of the command table are filled in: optional ``[--flag ...]`` groups are dropped, ``DIR`` is
the run the README's quickstart command wrote (or a fresh folder for ``axial_kd_tf.data``). Commands that cannot run
here are skipped with the reason listed in :data:`SKIPS`; a README command that matches no runner and no skip fails,
so a new command gets a rule (and a test) when it is added.

Two tiers. The default one also sets ``train.jit_compile=false`` (XLA compiles a training step for ~45 s or more on
a 2-core CPU; XLA for every architecture is ``tests/test_xla.py``'s question) and ``export.enabled=false`` except for
the run that ``DIR`` stands for. The ``slow`` tier runs each command with the config's own XLA and export settings
(the zoo example there compiles its U-Net with XLA, which once crashed).
"""

from __future__ import annotations

import os
import re
import shlex
from pathlib import Path
from typing import Callable, Optional

import pytest

REPO = Path(__file__).resolve().parent.parent
README = REPO / "README.md"

#: (pattern searched in the command, why it is not run here)
SKIPS: tuple[tuple[str, str], ...] = (
    (r"^pip install", "installs packages (network)"),
    (r"^tensorboard ", "starts a web server"),
    (r"python -m pytest", "is this test suite itself"),
    (r"axial_kd_tf\.data download", "downloads a dataset (network)"),
    (r"drosophila|configs/paper/", "needs the real ssTEM data (a download)"),
    (r"--resume", "needs an interrupted run"),
)

#: Tiny overrides for ``train.py`` commands (a key the command sets itself is left to the command).
TINY = {
    "data.synthetic.image_size": "32", "data.synthetic.train_samples": "4", "data.synthetic.val_samples": "2", "data.synthetic.test_samples": "2",
    "model.options": "{base_filters: 4, depth: 2}", "teacher.hidden_dim": "8", "teacher.max_span": "32",
    "train.epochs": "1", "train.steps_per_epoch": "1", "train.batch_size": "2", "logging.num_images": "1",
    "export.verify_samples": "2", "export.calibration_samples": "2",
}
#: Added in the default tier only (module docstring).
FAST = {"train.jit_compile": "false", "export.enabled": "false"}
#: Tiny flags for ``python -m axial_kd_tf.data phantom``.
TINY_PHANTOM = ["--slices", "12", "--size", "64"]


def readme_commands(text: Optional[str] = None) -> list[str]:
    """The README's commands, in order, without duplicates: the lines of ```bash blocks (comments dropped) and the
    inline `python ...` spans outside code blocks (table cells unescaped)."""
    text = README.read_text(encoding="utf-8") if text is None else text
    fence = re.compile(r"^```(\w*)[^\n]*\n(.*?)^```[^\n]*$", re.M | re.S)
    commands: list[str] = []
    for match in fence.finditer(text):
        if match.group(1) in ("bash", "sh", "shell"):
            for line in match.group(2).splitlines():
                line = re.sub(r"(^|\s+)#.*$", "", line).strip()
                if line:
                    commands.append(line)
    for span in re.findall(r"`(python [^`]+)`", fence.sub("", text)):
        commands.append(span.replace("\\|", "|").strip())
    return list(dict.fromkeys(c for c in commands if _is_shell(c)))


def _is_shell(command: str) -> bool:
    return bool(re.match(r"(python|pip|tensorboard) ", command))


def _plain(command: str) -> list[str]:
    """``command`` split into words, without the optional ``[--flag ...]`` groups of the command table."""
    return shlex.split(re.sub(r"\s\[--[^\]]*\]", "", command))


def skip_reason(command: str) -> Optional[str]:
    for pattern, reason in SKIPS:
        if re.search(pattern, command):
            return reason
    return None


# -------------------------------------------------------------------------------------------------- running
class Workdir:
    """The temporary folder the commands run in, and their results (each command runs once)."""

    def __init__(self, root: Path, fast: bool = True) -> None:
        self.root, self.fast = root, fast
        (root / "configs").symlink_to(REPO / "configs", target_is_directory=True)
        self.results: dict[tuple, int] = {}
        self.made: dict = {}  # command (and its canonical key) -> the run folders it created
        self._run_dir: Optional[Path] = None

    def runs(self) -> set[Path]:
        return set((self.root / "runs").glob("*")) if (self.root / "runs").is_dir() else set()

    @staticmethod
    def dir_command() -> str:
        """The command whose run ``DIR`` stands for: the README's plain quickstart (exported, in both tiers)."""
        plain = [c for c in readme_commands() if re.fullmatch(r"python train\.py --config \S*quickstart(\.yaml)?", c)]
        return plain[0] if plain else "python train.py --config quickstart"

    def run_dir(self) -> Path:
        """DIR of the command table: the run of :meth:`dir_command`."""
        if self._run_dir is None:
            assert self.run(self.dir_command()) == 0
            (self._run_dir,) = self.made[self.dir_command()]
        return self._run_dir

    def run(self, command: str) -> int:
        """Run ``command`` (once: the same call spelt differently, e.g. ``--config quickstart`` and
        ``--config configs/quickstart.yaml``, reuses the first result)."""
        cwd = os.getcwd()
        os.chdir(self.root)
        try:
            same = self._canonical(_plain(command)) == self._canonical(_plain(self.dir_command()))
            argv, main = self.resolve(command, export=same)
            key = (main.__name__, *self._canonical(argv))
            if key not in self.results:
                before = self.runs()
                self.results[key] = main(argv)
                self.made[key] = sorted(self.runs() - before)
            self.made[command] = self.made[key]
        finally:
            os.chdir(cwd)
        return self.results[key]

    @staticmethod
    def _canonical(argv: list[str]) -> list[str]:
        from axial_kd_tf.config import resolve_config_path

        return [str(resolve_config_path(a).resolve()) if i and argv[i - 1] == "--config" else a
                for i, a in enumerate(argv)]

    def resolve(self, command: str, export: bool = False) -> tuple[list[str], Callable]:
        """The ``main`` that runs ``command`` and its arguments, placeholders filled and tiny overrides added."""
        argv = _plain(command)
        command = " ".join(argv)
        data_cli = argv[:3] == ["python", "-m", "axial_kd_tf.data"]
        if "DIR" in command or any(a.startswith("DIR/") for a in argv):
            fill = str(self.root / "phantom") if data_cli else str(self.run_dir())
            argv = [fill + a[3:] if a == "DIR" or a.startswith("DIR/") else a for a in argv]
        left = [a for a in argv if re.fullmatch(r"[A-Z]{1,3}|[A-Z]+(/\S*)?", a)]
        assert not left, f"unfilled placeholder(s) {left} in README command: {command}"
        if argv[:2] == ["python", "train.py"]:
            from axial_kd_tf.cli import train_main

            given = {argv[i + 1].split("=", 1)[0] for i, a in enumerate(argv) if a == "--set" and i + 1 < len(argv)}
            extra = dict(TINY)
            if self.fast:
                extra.update({k: v for k, v in FAST.items() if not (k == "export.enabled" and export)})
            tiny = [x for k, v in extra.items() if k not in given for x in ("--set", f"{k}={v}")]
            return argv[2:] + tiny, train_main
        if argv[:2] == ["python", "evaluate.py"]:
            from axial_kd_tf.cli import evaluate_main

            return argv[2:], evaluate_main
        if argv[:3] == ["python", "-m", "axial_kd_tf.export"]:
            from axial_kd_tf.cli import export_main

            return argv[3:], export_main
        if data_cli:
            from axial_kd_tf.data.__main__ import main

            return argv[3:] + (TINY_PHANTOM if argv[3:4] == ["phantom"] else []), main
        raise AssertionError(f"README command has no runner in this test and no skip rule: {command}")


@pytest.fixture(scope="module")
def workdirs(tmp_path_factory) -> dict:
    """One working folder per tier, made when first used."""
    made: dict = {}

    def get(fast: bool) -> Workdir:
        if fast not in made:
            made[fast] = Workdir(tmp_path_factory.mktemp("readme-fast" if fast else "readme-full"), fast=fast)
        return made[fast]

    return get


def test_the_readme_commands_are_found():
    commands = readme_commands()
    assert "python train.py --config configs/quickstart.yaml" in commands
    assert ("python train.py --config quickstart --set model.arch=unet --set model.encoder=resnet18 "
            "--set model.options={}") in commands
    assert "pip install -r requirements.txt" in commands
    assert not any(c.startswith("from ") or c.startswith("import ") for c in commands)  # python blocks are not shell


def _params() -> list:
    params = []
    for command in readme_commands():
        params.append(pytest.param(command, True, id=command))
        if not skip_reason(command):
            params.append(pytest.param(command, False, id=f"full: {command}", marks=pytest.mark.slow))
    return params


@pytest.mark.parametrize("command, fast", _params())
def test_readme_command_runs(command: str, fast: bool, workdirs, capsys):
    reason = skip_reason(command)
    if reason:
        pytest.skip(f"{reason}: {command}")
    rc = workdirs(fast).run(command)
    captured = capsys.readouterr()
    assert rc == 0, f"{command}\n{captured.err[-3000:]}"

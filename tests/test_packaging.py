"""Packaging: the wheel holds every module, the dataset checksums and the shipped configs (``axial_kd_tf/configs``),
and an installed copy resolves ``--config covid`` without a checkout (issue 11, item 4)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

from setuptools import find_packages

ROOT = Path(__file__).resolve().parent.parent


def test_pyproject_lists_every_package():
    listed = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]
    found = find_packages(where=str(ROOT), include=["axial_kd_tf*"])
    assert sorted(listed) == sorted(found + ["axial_kd_tf.configs"])


def test_wheel_ships_the_configs_and_they_resolve_by_name(tmp_path):
    src = tmp_path / "src"  # build from a copy: setuptools writes build/ and *.egg-info beside the sources
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for name in ("axial_kd_tf", "configs"):
        shutil.copytree(ROOT / name, src / name, ignore=ignore)
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation", "--no-index",
                    "--disable-pip-version-check", "-w", str(tmp_path / "dist"), str(src)],
                   check=True, capture_output=True, timeout=300)
    (wheel,) = (tmp_path / "dist").glob("*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    configs = sorted(p.relative_to(ROOT / "configs").as_posix() for p in (ROOT / "configs").rglob("*.yaml"))
    assert configs and {f"axial_kd_tf/configs/{c}" for c in configs} <= names
    modules = {p.relative_to(ROOT).as_posix() for p in (ROOT / "axial_kd_tf").rglob("*.py")}
    assert modules <= names
    assert {"axial_kd_tf/data/checksums/sstem.sha256", "axial_kd_tf/data/checksums/covid.md5"} <= names

    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    code = ("from axial_kd_tf.config import CONFIG_DIR, load_config; "
            "print(CONFIG_DIR); print(load_config('covid').data.dataset); "
            "print(load_config('studies/teacher_study').name)")
    env = dict(os.environ, PYTHONPATH=str(site))
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True,
                         timeout=120, check=True).stdout.split()
    assert Path(out[0]) == site / "axial_kd_tf" / "configs"
    assert out[1] == "covid" and out[2]

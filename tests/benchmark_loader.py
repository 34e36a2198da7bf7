"""Shared by the benchmark tests: load ``benchmarks/<name>.py`` from its file, as ``python benchmarks/<name>.py``
runs it (the scripts put the repository root on ``sys.path`` themselves)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parent.parent


def load_benchmark(name: str) -> ModuleType:
    """A fresh module ``benchmarks_<name>_under_test`` from ``benchmarks/<name>.py``."""
    spec = importlib.util.spec_from_file_location(f"benchmarks_{name}_under_test", ROOT / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses and pickling look the module up by name
    spec.loader.exec_module(module)
    return module

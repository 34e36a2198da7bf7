"""Fixtures shared by the test files (helpers that are plain functions live in ``tests/helpers.py``)."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path

import keras
import numpy as np
import pytest

from helpers import build_zoo_network


@pytest.fixture
def rng() -> np.random.Generator:
    """A seeded generator, fresh for each test (tests draw their own data without depending on each other)."""
    return np.random.default_rng(0)


@pytest.fixture(autouse=True)
def _float32_policy_after_each_test() -> Iterator[None]:
    """A test that sets Keras' global dtype policy must not change the next test's networks."""
    yield
    if keras.config.dtype_policy().name != "float32":
        keras.config.set_dtype_policy("float32")


@pytest.fixture
def dtype_policy(request: pytest.FixtureRequest) -> Iterator[str]:
    """The global Keras dtype policy ``request.param`` for one test (parametrise it with ``indirect=True``)."""
    keras.config.set_dtype_policy(request.param)
    yield request.param
    keras.config.set_dtype_policy("float32")


@pytest.fixture(scope="session")
def sstem_dir() -> Path:
    """The real ssTEM Drosophila copy named by ``AXIAL_KD_SSTEM_DIR`` (``.ci/run`` sets it when the copy is there);
    the opt-in tests that read it skip without it, and fail if it names something that is not that copy."""
    value = os.environ.get("AXIAL_KD_SSTEM_DIR")
    if not value:
        pytest.skip("set AXIAL_KD_SSTEM_DIR to the real ssTEM copy to run")
    path = Path(value)
    assert (path / "raw").is_dir() and (path / "labels").is_dir(), f"AXIAL_KD_SSTEM_DIR={value} is not the ssTEM copy"
    return path


@pytest.fixture(scope="session")
def zoo_network() -> Iterator[Callable[..., keras.Model]]:
    """``zoo_network(arch, encoder="resnet34", in_channels=3)``: the zoo network at its defaults (5 classes), built
    once per session and shared by every test that asks for it: building them is most of the zoo tests' time.

    Shared means read-only: call it in inference mode, save it, convert it. A test that trains or sets weights builds
    its own (``helpers.build_zoo_network``); at the end of the session a shared network whose weights changed fails.
    """
    cache: dict[tuple[str, str, int], keras.Model] = {}
    fingerprints: dict[tuple[str, str, int], list[float]] = {}

    def fingerprint(model: keras.Model) -> list[float]:
        return [float(np.sum(np.abs(keras.ops.convert_to_numpy(w)))) for w in model.weights]

    def get(arch: str, encoder: str = "resnet34", in_channels: int = 3) -> keras.Model:
        key = (arch, encoder, in_channels)
        if key not in cache:
            cache[key] = build_zoo_network(arch, encoder, in_channels)
            fingerprints[key] = fingerprint(cache[key])
        return cache[key]

    yield get
    changed = [key for key, model in cache.items() if fingerprint(model) != fingerprints[key]]
    cache.clear()
    assert not changed, f"tests changed the weights of shared zoo networks {changed}: build your own to train"

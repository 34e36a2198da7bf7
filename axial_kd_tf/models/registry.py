"""Architecture registry (one module per architecture registers itself by name)."""

from __future__ import annotations

import difflib
from typing import Any, Callable

import keras

from axial_kd_tf.errors import UserError

_REGISTRY: dict[str, Callable[..., keras.Model]] = {}


def register_architecture(name: str) -> Callable[[Callable[..., keras.Model]], Callable[..., keras.Model]]:
    """Decorator: register a builder ``fn(num_classes, in_channels, encoder, encoder_weights, **options)``."""

    def wrap(fn: Callable[..., keras.Model]) -> Callable[..., keras.Model]:
        if name in _REGISTRY:
            raise ValueError(f"architecture '{name}' is already registered")
        _REGISTRY[name] = fn
        return fn

    return wrap


def available_architectures() -> list[str]:
    return sorted(_REGISTRY)


def build_network(
    arch: str,
    encoder: str | None = None,
    num_classes: int = 5,
    in_channels: int = 3,
    encoder_weights: str | None = None,
    **options: Any,
) -> keras.Model:
    """Build a registered native architecture (see :func:`available_architectures`)."""
    if arch not in _REGISTRY:
        match = difflib.get_close_matches(arch, list(_REGISTRY), n=1)
        hint = f"; did you mean '{match[0]}'?" if match else ""
        raise UserError(f"unknown model.arch '{arch}'{hint} (available: {', '.join(available_architectures())})")
    try:
        return _REGISTRY[arch](
            num_classes=num_classes, in_channels=in_channels, encoder=encoder, encoder_weights=encoder_weights,
            **options,
        )
    except TypeError as exc:  # unknown option keyword
        raise UserError(f"model.options for '{arch}' are invalid: {exc}") from None

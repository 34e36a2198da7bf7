"""Architecture registry (one module per architecture registers itself by name)."""

from __future__ import annotations

import difflib
import inspect
from typing import Any, Callable

import keras

from axial_kd_tf.errors import UserError

_REGISTRY: dict[str, Callable[..., keras.Model]] = {}
_ARGUMENTS = ("num_classes", "in_channels", "encoder", "encoder_weights")  # every builder's; the rest are options


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
    """Build a registered native architecture (see :func:`available_architectures`).

    ``options`` are checked against the builder's signature first: an unknown one is a :class:`UserError` that
    names the closest valid option. Errors raised while building are the builder's own.
    """
    if arch not in _REGISTRY:
        match = difflib.get_close_matches(arch, list(_REGISTRY), n=1)
        hint = f"; did you mean '{match[0]}'?" if match else ""
        raise UserError(f"unknown model.arch '{arch}'{hint} (available: {', '.join(available_architectures())})")
    builder = _REGISTRY[arch]
    arguments = dict(num_classes=num_classes, in_channels=in_channels, encoder=encoder,
                     encoder_weights=encoder_weights, **options)
    signature = inspect.signature(builder)
    try:
        signature.bind(**arguments)
    except TypeError as exc:
        valid = [name for name in signature.parameters if name not in _ARGUMENTS]
        unknown = [name for name in options if name not in signature.parameters]
        if not unknown:  # e.g. a required option that is missing
            raise UserError(f"model.options for '{arch}' are invalid: {exc}") from None
        match = difflib.get_close_matches(unknown[0], valid, n=1)
        hint = f"; did you mean '{match[0]}'?" if match else ""
        raise UserError(f"model.options for '{arch}': unknown option '{unknown[0]}'{hint} "
                        f"(valid: {', '.join(valid)})") from None
    return builder(**arguments)

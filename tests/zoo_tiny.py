"""Shrunken variants of the nine zoo architectures for tests that compile or cross backends (not a test module).

``axial_kd_tf.models.TINY_OPTIONS``: the same blocks as the defaults on a resnet18 encoder at depth 3–4 with narrow
decoders: XLA compiles them in seconds, and they run at 32² (PAN: 64²).
"""

from __future__ import annotations

from typing import Any

from axial_kd_tf.models import TINY_OPTIONS

K = 3  # classes

TINY: dict[str, dict[str, Any]] = TINY_OPTIONS  # one table, shared with benchmarks/teacher_gpu.py --small
SIZE = {"pan": 64}  # PAN's feature pyramid pools the 1/8 map three more times; the rest take 32


def tiny_size(arch: str) -> int:
    """Input height and width for ``arch``'s tiny variant."""
    return SIZE.get(arch, 32)


def build_tiny(arch: str, in_channels: int = 1) -> Any:
    """``arch``'s tiny variant (resnet18, :data:`K` classes) on whichever Keras backend is running."""
    from axial_kd_tf.models import build_network

    return build_network(arch, encoder="resnet18", num_classes=K, in_channels=in_channels, **TINY[arch])

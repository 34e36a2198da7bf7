"""The generic checks of every custom Keras layer of the package (``helpers.run_layer_test``, after keras-hub's
``run_layer_test``): config and serialisation round trips, symbolic and eager calls, weight counts, ``.keras``
save/load with random weights, one training step. Each layer's numerics are tested in its own file."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

import numpy as np
import pytest

from axial_kd_tf.layers import AxialAttention, AxialTeacherHead
from axial_kd_tf.models.blocks import InputSizeCheck, Resize
from axial_kd_tf.models.manet import PositionAttention
from axial_kd_tf.models.pspnet import AdaptiveAvgPool2D
from helpers import run_layer_test


def _x(*shape: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(shape).astype("float32")


@dataclass
class LayerCase:
    cls: type
    init_kwargs: dict[str, Any]
    input_data: Any
    expected_output_shape: tuple[int, ...]
    trainable: int
    non_trainable: int = 0
    call_kwargs: dict[str, np.ndarray] = field(default_factory=dict)
    expected_output: Optional[np.ndarray] = None


X = _x(2, 5, 7, 3)
CASES = {
    # AxialAttention: qkv kernel, 3 relative tables, gamma/beta of 3 folded BNs (their moving statistics are not
    # trainable); without normalisation a qkv bias instead of the BNs; plain attention: kernel and bias only.
    "axial_height_norm": LayerCase(AxialAttention, dict(axis="height", num_heads=2, key_dim=4, value_dim=3,
                                                        max_span=4), _x(2, 7, 6, 3), (2, 7, 6, 6), 10, 6),
    "axial_width_nonorm": LayerCase(AxialAttention, dict(axis="width", num_heads=1, key_dim=2, value_dim=5,
                                                         max_span=3, use_normalization=False, name="aa",
                                                         kernel_initializer="he_normal"),
                                    _x(2, 7, 6, 3), (2, 7, 6, 5), 5),
    "axial_plain": LayerCase(AxialAttention, dict(axis="width", num_heads=2, key_dim=3, value_dim=2, max_span=5,
                                                  use_positional_encoding=False, use_normalization=False),
                             _x(2, 4, 6, 3), (2, 4, 6, 4), 2),
    # AxialTeacherHead: in/out projections (2 + 2), two axial passes per block, the gate when it is learnt.
    "head_pooled_plain": LayerCase(AxialTeacherHead, dict(num_classes=5, hidden_dim=12, num_heads=3, key_dim=2,
                                                          max_span=7, use_positional_encoding=False,
                                                          use_normalization=False, pool_size=2, num_blocks=1),
                                   _x(1, 8, 10, 5), (1, 8, 10, 5), 4 + 2 * 2 + 1),
    "head_direct_two_blocks": LayerCase(AxialTeacherHead, dict(num_classes=5, hidden_dim=8, num_heads=2, max_span=8,
                                                               residual=False, num_blocks=2),
                                        _x(1, 8, 10, 5), (1, 8, 10, 5), 4 + 2 * 2 * 10, 2 * 2 * 6),
    "head_fixed_gate": LayerCase(AxialTeacherHead, dict(num_classes=5, hidden_dim=8, gate_init=0.5,
                                                        gate_trainable=False, detach_input=True, num_blocks=1),
                                 _x(1, 8, 10, 5), (1, 8, 10, 5), 4 + 2 * 10, 2 * 6 + 1),
    # The zoo's weight-free layers.
    "resize_nearest_x2": LayerCase(Resize, dict(scale=2, interpolation="nearest"), X, (2, 10, 14, 3), 0,
                                   expected_output=X.repeat(2, axis=1).repeat(2, axis=2)),
    "resize_bilinear_like": LayerCase(Resize, dict(interpolation="bilinear", align_corners=True), X, (2, 9, 11, 3), 0,
                                      call_kwargs=dict(like=_x(2, 9, 11, 4))),
    "input_size_check": LayerCase(InputSizeCheck, dict(multiple=16, arch="pan", minimum=32, reason="why"),
                                  _x(1, 32, 48, 3), (1, 32, 48, 3), 0, expected_output=_x(1, 32, 48, 3)),
    "position_attention": LayerCase(PositionAttention, {}, [_x(2, 3, 5, 4, seed=1), _x(2, 3, 5, 4, seed=2),
                                                            _x(2, 3, 5, 6, seed=3)], (2, 3, 5, 6), 0),
    "adaptive_pool_3": LayerCase(AdaptiveAvgPool2D, dict(output_size=3), _x(2, 10, 7, 4), (2, 3, 3, 4), 0),
    "adaptive_pool_1": LayerCase(AdaptiveAvgPool2D, dict(output_size=1), _x(2, 10, 7, 4), (2, 1, 1, 4), 0,
                                 expected_output=_x(2, 10, 7, 4).mean(axis=(1, 2), keepdims=True)),
}


@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
def test_layer(case: LayerCase):
    run_layer_test(case.cls, case.init_kwargs, case.input_data, case.expected_output_shape,
                   call_kwargs=case.call_kwargs, expected_output=case.expected_output,
                   expected_num_trainable_weights=case.trainable, expected_num_non_trainable_weights=case.non_trainable)

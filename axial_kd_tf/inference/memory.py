"""Memory estimates for inference: the axial teacher's working set and the student's bytes per pixel.

The full-image predictor (:mod:`axial_kd_tf.inference.full_image`) tiles the teacher or the whole pipeline when
these exceed a budget; :mod:`axial_kd_tf.preflight` uses them to check a training configuration against the machine.
"""

from __future__ import annotations

from typing import Optional

import numpy as np


def estimate_teacher_mb(
    height: int,
    width: int,
    batch: int = 1,
    *,
    num_heads: int = 1,
    pool_size: int = 1,
    hidden_dim: int = 32,
    key_dim: Optional[int] = None,
    num_classes: int = 5,
    use_positional_encoding: bool = True,
    bytes_per_float: int = 4,
) -> float:
    """Estimated peak memory (MiB) of one :class:`~axial_kd_tf.layers.AxialTeacherHead` call in inference.

    The head pools to ``h × w = ceil(H/p) × ceil(W/p)``; each axial pass folds the other axis into the batch, so its
    attention tensors are ``[N, heads, L, L]`` with ``N = batch·(other side)``: ``batch·heads·h·w·L`` floats, ``L``
    the attended side. In ``AxialAttention.call`` the content logits, the ``q·r^q`` and ``k·r^k`` terms (transposed
    copies), their sum, the softmax and its transposed copy for the ``r^v`` retrieval are alive together: 6 such
    tensors with positional encoding, 3 without (logits, softmax and its temporary). Add the relative windows
    ``[L, L, d]`` (``r^q``, ``r^k`` and its transpose, ``r^v``) and the full-resolution tensors (input, output,
    upsampled hidden: ``batch·H·W·(2K + hidden)``). The larger pass counts. An estimate, not a measurement: the
    allocator, XLA fusion or a GPU's workspace change the real peak.
    """
    p = max(int(pool_size), 1)
    hp, wp = -(-int(height) // p), -(-int(width) // p)
    heads = max(int(num_heads), 1)
    dk = int(key_dim) if key_dim else max(hidden_dim // heads // 2, 1)
    dv = max(hidden_dim // heads, 1)
    live = 6 if use_positional_encoding else 3
    passes = []
    for length, other in ((hp, wp), (wp, hp)):
        square = batch * other * heads * length * length
        tables = length * length * (3 * dk + dv) if use_positional_encoding else 0
        rows = batch * other * length * heads * (4 * dk + 3 * dv)  # q, k, v, qkv and the outputs
        passes.append(live * square + tables + rows)
    full = batch * int(height) * int(width) * (2 * num_classes + hidden_dim) + batch * hp * wp * hidden_dim * 2
    return (max(passes) + full) * bytes_per_float / 2**20


def teacher_memory_mb(head, height: int, width: int, batch: int = 1) -> float:
    """:func:`estimate_teacher_mb` for an :class:`~axial_kd_tf.layers.AxialTeacherHead` (read from its config)."""
    dtype = getattr(getattr(head, "dtype_policy", None), "compute_dtype", "float32")
    return estimate_teacher_mb(
        height, width, batch, num_heads=head.num_heads, pool_size=head.pool_size, hidden_dim=head.hidden_dim,
        key_dim=head.key_dim, num_classes=head.num_classes, use_positional_encoding=head.use_positional_encoding,
        bytes_per_float=np.dtype(dtype).itemsize if dtype != "bfloat16" else 2,
    )


def _all_layers(model) -> list:
    out = []
    for layer in getattr(model, "layers", []):
        out.append(layer)
        out.extend(_all_layers(layer))
    return out


def _first_output(spec):
    if isinstance(spec, dict):
        spec = next(iter(spec.values()))
    if isinstance(spec, (list, tuple)):
        spec = spec[0]
    return spec


def network_multiple(network, max_multiple: int = 64, default: int = 32) -> int:
    """The multiple the network's input height and width must be (its output stride), for whole-image padding.

    From the zoo's ``InputSizeCheck`` layers when present; otherwise the smallest power of two ``m`` for which a
    symbolic ``m·q`` × ``m·q`` input (``q`` odd, side ≥ 128) gives a same-size output (a U-Net without the check,
    e.g. ``simple_unet``, silently returns a smaller map at other sizes). ``default`` when nothing fits.
    """
    import keras

    checks = [int(layer.multiple) for layer in _all_layers(network) if type(layer).__name__ == "InputSizeCheck"]
    if checks:
        return int(np.lcm.reduce(checks))
    channels = network.inputs[0].shape[-1]
    m = 1
    while m <= max_multiple:
        q = max(3, -(-128 // m))
        q += 1 - q % 2
        side = m * q
        try:
            spec = _first_output(network.compute_output_spec(keras.KerasTensor((1, side, side, channels))))
            if tuple(spec.shape[1:3]) == (side, side):
                return m
        except Exception:  # the size check (or an op) rejects the size
            pass
        m *= 2
    return default


def student_bytes_per_pixel(network, multiple: int = 32) -> Optional[float]:
    """Sum of every layer's output bytes per input pixel (one image), from a symbolic pass; None if unavailable.

    An upper bound of eager inference memory (which frees most activations as it goes; skips stay alive).
    """
    import keras

    try:
        outs = []
        for layer in network.layers:
            if isinstance(layer, keras.layers.InputLayer):
                continue
            try:
                o = layer.output
            except Exception:  # a layer called more than once
                continue
            outs.extend(o if isinstance(o, (list, tuple)) else [o])
        side = multiple * max(1, -(-256 // multiple))
        specs = keras.Model(network.inputs, outs).compute_output_spec(
            keras.KerasTensor((1, side, side, network.inputs[0].shape[-1])))
        total = sum(float(np.prod(s.shape)) * np.dtype(s.dtype if s.dtype != "bfloat16" else "float16").itemsize
                    for s in specs)
        return total / (side * side)
    except Exception:
        return None

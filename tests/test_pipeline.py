"""Tests for the tf.data input pipeline."""

from __future__ import annotations

import numpy as np
import pytest

from axial_kd_tf.data.pipeline import build_dataset
from axial_kd_tf.errors import UserError


def _data(num: int = 8, height: int = 24, width: int = 24, channels: int = 1, seed: int = 0):
    """Random images whose mask is a deterministic function of the pixel: mask = (channel 0 > 0.5)."""
    images = np.random.default_rng(seed).random((num, height, width, channels), dtype=np.float32)
    masks = (images[..., 0] > 0.5).astype(np.uint8)
    return images, masks


def _collect(ds, batches: int | None = None) -> list[tuple[np.ndarray, np.ndarray]]:
    if batches is not None:
        ds = ds.take(batches)
    return [(x.numpy(), y.numpy()) for x, y in ds]


def test_training_shapes_and_dtypes() -> None:
    images, masks = _data(num=10)
    out = _collect(build_dataset(images, masks, batch_size=4, training=True, crop_size=16))
    assert len(out) == 2  # 10 // 4, remainder dropped
    for x, y in out:
        assert x.shape == (4, 16, 16, 1) and x.dtype == np.float32
        assert y.shape == (4, 16, 16) and y.dtype == np.int32


def test_static_shapes_for_keras() -> None:
    images, masks = _data()
    spec = build_dataset(images, masks, batch_size=2, training=True, crop_size=12).element_spec
    assert tuple(spec[0].shape) == (2, 12, 12, 1) and tuple(spec[1].shape) == (2, 12, 12)


def test_same_seed_same_batches_different_seed_differs() -> None:
    images, masks = _data(num=8)

    def run(seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
        ds = build_dataset(images, masks, batch_size=4, training=True, seed=seed, crop_size=16)
        return _collect(ds) + _collect(ds)  # two epochs

    first, second, other = run(7), run(7), run(8)
    for (xa, ya), (xb, yb) in zip(first, second):
        np.testing.assert_array_equal(xa, xb)
        np.testing.assert_array_equal(ya, yb)
    assert any(not np.array_equal(xa, xc) for (xa, _), (xc, _) in zip(first, other))
    # The second epoch is reshuffled / re-augmented, not a replay of the first.
    assert not all(np.array_equal(a[0], b[0]) for a, b in zip(first[:2], first[2:]))


def test_augmentation_depends_on_seed() -> None:
    """With one sample the shuffle is a no-op, so any difference comes from the augmentation seeds."""
    images, masks = _data(num=1, height=16, width=16)

    def run(seed: int) -> np.ndarray:
        ds = build_dataset(images, masks, batch_size=1, training=True, seed=seed, crop_size=12, repeat=True)
        return np.stack([x for x, _ in _collect(ds, 8)])

    np.testing.assert_array_equal(run(0), run(0))
    assert not np.array_equal(run(0), run(1))
    per_step = run(0)
    assert any(not np.array_equal(per_step[0], p) for p in per_step[1:])  # varies from step to step


def test_repeat_is_deterministic_and_endless() -> None:
    images, masks = _data(num=3)
    ds_a = build_dataset(images, masks, batch_size=2, training=True, seed=1, repeat=True)
    ds_b = build_dataset(images, masks, batch_size=2, training=True, seed=1, repeat=True)
    out_a, out_b = _collect(ds_a, 5), _collect(ds_b, 5)
    assert len(out_a) == 5
    for (xa, ya), (xb, yb) in zip(out_a, out_b):
        np.testing.assert_array_equal(xa, xb)
        np.testing.assert_array_equal(ya, yb)


@pytest.mark.parametrize("crop_size, height, width", [(16, 24, 24), (None, 24, 24), (10, 20, 32), (None, 20, 32)])
def test_augmentation_keeps_image_and_mask_aligned(crop_size, height, width) -> None:
    images, masks = _data(num=8, height=height, width=width, channels=2)
    ds = build_dataset(images, masks, batch_size=4, training=True, seed=3, crop_size=crop_size)
    out = _collect(ds) + _collect(ds)
    expected_hw = (crop_size, crop_size) if crop_size else (height, width)
    for x, y in out:
        assert x.shape[1:3] == expected_hw and y.shape[1:] == expected_hw
        np.testing.assert_array_equal(y, (x[..., 0] > 0.5).astype(np.int32))


def test_augmentation_transforms_are_flips_and_rotations() -> None:
    images, masks = _data(num=8, height=16, width=16)
    originals = [images[i, ..., 0] for i in range(len(images))]
    variants = [np.rot90(np.flip(im, axis) if axis is not None else im, k)
                for im in originals for axis in (None, 0) for k in range(4)]  # the dihedral group
    seen_changed = False
    for x, _ in _collect(build_dataset(images, masks, batch_size=4, training=True, seed=0)):
        for im in x[..., 0]:
            assert any(np.array_equal(im, v) for v in variants)
            seen_changed |= not any(np.array_equal(im, o) for o in originals)
    assert seen_changed


def test_non_square_inputs_skip_rotation() -> None:
    images, masks = _data(num=8, height=12, width=20)
    originals = [images[i, ..., 0] for i in range(len(images))]
    variants = [f(o) for o in originals for f in (lambda a: a, np.fliplr, np.flipud, lambda a: a[::-1, ::-1])]
    for x, _ in _collect(build_dataset(images, masks, batch_size=4, training=True, seed=0)):
        for im in x[..., 0]:
            assert any(np.array_equal(im, v) for v in variants)


def test_crop_without_augment_is_a_window_of_an_input() -> None:
    images, masks = _data(num=4, height=20, width=20)
    crop = 8
    windows = {(n, t, l) for n in range(4) for t in range(13) for l in range(13)}
    for x, y in _collect(build_dataset(images, masks, batch_size=2, training=True, seed=5,
                                       crop_size=crop, augment=False)):
        for im, m in zip(x, y):
            matches = [(n, t, l) for n, t, l in windows
                       if np.array_equal(images[n, t:t + crop, l:l + crop], im)]
            assert len(matches) == 1
            n, t, l = matches[0]
            np.testing.assert_array_equal(masks[n, t:t + crop, l:l + crop], m)


def test_eval_keeps_order_and_partial_batch() -> None:
    images, masks = _data(num=7)
    out = _collect(build_dataset(images, masks, batch_size=3, training=False, crop_size=8))
    assert [x.shape[0] for x, _ in out] == [3, 3, 1]
    np.testing.assert_array_equal(np.concatenate([x for x, _ in out]), images)  # no crop, no augmentation
    np.testing.assert_array_equal(np.concatenate([y for _, y in out]), masks.astype(np.int32))


@pytest.mark.parametrize(
    "images_shape, masks_shape, kwargs, match",
    [
        ((4, 16, 16), (4, 16, 16), {}, "images must be 4-D"),
        ((4, 16, 16, 1), (4, 16, 16, 1), {}, "masks must be 3-D"),
        ((4, 16, 16, 1), (3, 16, 16), {}, "differ"),
        ((4, 16, 16, 1), (4, 16, 15), {}, "differ"),
        ((4, 16, 16, 1), (4, 16, 16), {"crop_size": 17}, "larger than the images"),
        ((4, 16, 24, 1), (4, 16, 24), {"crop_size": 20}, "larger than the images"),
        ((4, 16, 16, 1), (4, 16, 16), {"crop_size": 0}, "crop_size"),
        ((4, 16, 16, 1), (4, 16, 16), {"batch_size": 0}, "batch_size"),
        ((4, 16, 16, 1), (4, 16, 16), {"batch_size": 5}, "exceeds"),
        ((0, 16, 16, 1), (0, 16, 16), {}, "empty"),
    ],
)
def test_invalid_inputs_raise_user_error(images_shape, masks_shape, kwargs, match) -> None:
    args = {"batch_size": 2, "training": True, **kwargs}
    with pytest.raises(UserError, match=match) as info:
        build_dataset(np.zeros(images_shape, np.float32), np.zeros(masks_shape, np.uint8), **args)
    assert "\n" not in str(info.value)


def test_large_batch_is_fine_for_eval_and_repeat() -> None:
    images, masks = _data(num=3)
    assert [x.shape[0] for x, _ in _collect(build_dataset(images, masks, 8, training=False))] == [3]
    assert _collect(build_dataset(images, masks, 8, training=True, repeat=True), 1)[0][0].shape[0] == 8

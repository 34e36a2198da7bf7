"""Tests for the procedural ssTEM-like quickstart dataset."""

from __future__ import annotations

import numpy as np
import pytest

from axial_kd_tf.data import synthetic
from axial_kd_tf.data.synthetic import CLASS_NAMES, generate_sample, load_split, make_arrays
from axial_kd_tf.errors import UserError


@pytest.fixture(scope="module")
def sample_set() -> tuple[np.ndarray, np.ndarray]:
    return make_arrays(12, size=64, seed=0)


def test_class_names() -> None:
    assert CLASS_NAMES == ("membrane", "mitochondria", "synapse", "glia_extracellular", "intracellular")


@pytest.mark.parametrize("size", [32, 48, 64])
def test_generate_sample_shapes_dtypes_ranges(size: int) -> None:
    image, mask = generate_sample(np.random.default_rng(3), size=size)
    assert image.shape == (size, size, 1) and image.dtype == np.float32
    assert mask.shape == (size, size) and mask.dtype == np.uint8
    assert np.isfinite(image).all()
    assert image.min() >= 0.0 and image.max() <= 1.0
    assert set(np.unique(mask)) <= set(range(len(CLASS_NAMES)))
    assert image.std() > 0.05  # not a flat image


def test_make_arrays_shapes(sample_set: tuple[np.ndarray, np.ndarray]) -> None:
    images, masks = sample_set
    assert images.shape == (12, 64, 64, 1) and images.dtype == np.float32
    assert masks.shape == (12, 64, 64) and masks.dtype == np.uint8
    empty_images, empty_masks = make_arrays(0, size=32)
    assert empty_images.shape == (0, 32, 32, 1) and empty_masks.shape == (0, 32, 32)


def test_deterministic_and_independent_of_num() -> None:
    images_a, masks_a = make_arrays(3, size=48, seed=5)
    images_b, masks_b = make_arrays(3, size=48, seed=5)
    np.testing.assert_array_equal(images_a, images_b)
    np.testing.assert_array_equal(masks_a, masks_b)
    # Sample i depends only on (seed, i): a longer run starts with the same samples.
    images_long, masks_long = make_arrays(5, size=48, seed=5)
    np.testing.assert_array_equal(images_long[:3], images_a)
    np.testing.assert_array_equal(masks_long[:3], masks_a)
    image_1, mask_1 = generate_sample(np.random.default_rng([5, 1]), size=48)
    np.testing.assert_array_equal(image_1, images_a[1])
    np.testing.assert_array_equal(mask_1, masks_a[1])


def test_seeds_and_indices_differ() -> None:
    images_a, masks_a = make_arrays(2, size=48, seed=0)
    images_b, masks_b = make_arrays(2, size=48, seed=1)
    assert not np.array_equal(masks_a[0], masks_a[1])
    assert not np.array_equal(masks_a[0], masks_b[0])
    assert not np.array_equal(images_a, images_b)


def test_splits_do_not_share_samples() -> None:
    splits = {name: load_split(name, 4, 32, seed=0) for name in ("train", "val", "test")}
    for name, (images, masks) in splits.items():
        assert images.shape == (4, 32, 32, 1) and masks.shape == (4, 32, 32)
    names = list(splits)
    for i, first in enumerate(names):
        for second in names[i + 1:]:
            for a in splits[first][0]:
                for b in splits[second][0]:
                    assert not np.array_equal(a, b), f"{first} and {second} share a sample"
    # A different base seed gives different splits, and never the other seed's val/test.
    other_train = load_split("train", 4, 32, seed=1)[0]
    assert not np.array_equal(other_train, splits["train"][0])
    assert not np.array_equal(other_train, splits["val"][0])


def test_all_classes_present_with_plausible_proportions(sample_set: tuple[np.ndarray, np.ndarray]) -> None:
    _, masks = sample_set
    share = np.bincount(masks.ravel(), minlength=5) / masks.size
    assert (share > 0).all(), share
    membrane, mito, synapse, glia, intra = share
    assert 0.10 <= membrane <= 0.25
    assert 0.03 <= mito <= 0.10
    assert 0.002 <= synapse <= 0.02
    assert 0.015 <= glia <= 0.10
    assert intra >= 0.5
    assert intra == share.max()


def test_glia_cue_is_subtle_and_relative(sample_set: tuple[np.ndarray, np.ndarray]) -> None:
    """Glia interiors are brighter than intracellular cytoplasm on average, but by less than the per-pixel spread."""
    images, masks = sample_set
    shifts, spreads, levels = [], [], []
    for image, mask in zip(images[..., 0], masks):
        if (mask == 3).sum() < 50:
            continue
        intra = image[mask == 4]
        shifts.append(image[mask == 3].mean() - intra.mean())
        spreads.append(intra.std())
        levels.append(intra.mean())
    assert len(shifts) >= 3
    assert np.mean(shifts) > 0
    assert np.mean(shifts) < np.mean(spreads)
    # The per-image brightness change moves the cytoplasm level by more than the glia shift.
    assert np.ptp(levels) > np.mean(shifts)


def test_cache_round_trip(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    images, masks = load_split("val", 3, 32, seed=2, cache_dir=tmp_path)
    path = tmp_path / "synthetic_val_3_32_2.npz"
    assert path.is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == [path.name]  # no temporary leftovers

    def _fail(*args, **kwargs):
        raise AssertionError("should have been read from the cache")

    monkeypatch.setattr(synthetic, "make_arrays", _fail)
    cached_images, cached_masks = load_split("val", 3, 32, seed=2, cache_dir=tmp_path)
    assert cached_images.dtype == np.float32 and cached_masks.dtype == np.uint8
    np.testing.assert_array_equal(cached_images, images)
    np.testing.assert_array_equal(cached_masks, masks)
    monkeypatch.undo()
    np.testing.assert_array_equal(load_split("val", 3, 32, seed=2)[1], masks)  # uncached is the same


def test_corrupt_cache_is_a_user_error(tmp_path) -> None:
    (tmp_path / "synthetic_train_2_32_0.npz").write_bytes(b"not an npz")
    with pytest.raises(UserError, match="delete it"):
        load_split("train", 2, 32, seed=0, cache_dir=tmp_path)


@pytest.mark.parametrize(
    "call",
    [
        lambda: load_split("training", 2, 32, seed=0),
        lambda: make_arrays(2, size=8),
        lambda: make_arrays(-1, size=32),
        lambda: make_arrays(1, size=32, seed=-3),
    ],
)
def test_bad_arguments_raise_user_error(call) -> None:
    with pytest.raises(UserError) as info:
        call()
    assert "\n" not in str(info.value)

"""``tf.data`` input pipeline for in-memory segmentation arrays.

Training pipelines shuffle with a seeded ``Dataset.shuffle`` (a fresh, reproducible order every epoch) and crop /
augment with *stateless* random ops whose seeds are derived from ``(seed, element index)``; two pipelines built
with the same arguments therefore yield identical batches regardless of parallelism, and different seeds yield
different batches. (The shuffle, like every seeded TF op, also depends on the global ``tf.random.set_seed`` if one
is set; it is the same for both pipelines in one program.) Evaluation pipelines keep the sample order and apply no
randomness.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from axial_kd_tf.errors import UserError

__all__ = ["build_dataset"]


def _validate(images: np.ndarray, masks: np.ndarray, batch_size: int, crop_size: int | None) -> None:
    images_shape, masks_shape = np.shape(images), np.shape(masks)
    if len(images_shape) != 4:
        raise UserError(f"images must be 4-D [N, H, W, C], got shape {tuple(images_shape)}")
    if len(masks_shape) != 3:
        raise UserError(f"masks must be 3-D [N, H, W], got shape {tuple(masks_shape)}")
    if tuple(images_shape[:3]) != tuple(masks_shape):
        raise UserError(f"images {tuple(images_shape)} and masks {tuple(masks_shape)} differ in N, H or W")
    if images_shape[0] == 0:
        raise UserError("images and masks are empty (N = 0)")
    if int(batch_size) < 1:
        raise UserError(f"batch_size must be >= 1, got {batch_size}")
    if crop_size is not None:
        height, width = images_shape[1:3]
        if int(crop_size) < 1:
            raise UserError(f"crop_size must be >= 1, got {crop_size}")
        if int(crop_size) > min(height, width):
            raise UserError(f"crop_size {crop_size} is larger than the images ({height}x{width})")


def _flip(image: tf.Tensor, mask: tf.Tensor, seed: tf.Tensor, axis: int) -> tuple[tf.Tensor, tf.Tensor]:
    """Reverse both tensors along ``axis`` with probability 1/2."""
    return tf.cond(tf.random.stateless_uniform([], seed) < 0.5,
                   lambda: (tf.reverse(image, [axis]), tf.reverse(mask, [axis])),
                   lambda: (image, mask))


def _augment(image: tf.Tensor, mask: tf.Tensor, seed: tf.Tensor, crop_size: int | None,
             augment: bool, allow_rot90: bool) -> tuple[tf.Tensor, tf.Tensor]:
    """Random crop / flips / rot90, identical for ``image`` [h, w, C] and ``mask`` [h, w]; ``seed`` is int64 [2]."""
    crop_seed, hflip_seed, vflip_seed, rot_seed = tf.unstack(tf.random.experimental.stateless_split(seed, num=4))
    static_shape = image.shape
    if crop_size is not None:
        shape = tf.shape(mask)
        draws = tf.random.stateless_uniform([2], crop_seed, minval=0, maxval=tf.int32.max, dtype=tf.int32)
        top = draws[0] % (shape[0] - crop_size + 1)
        left = draws[1] % (shape[1] - crop_size + 1)
        image = image[top:top + crop_size, left:left + crop_size]
        mask = mask[top:top + crop_size, left:left + crop_size]
        static_shape = tf.TensorShape([crop_size, crop_size, static_shape[-1]])
    if augment:
        mask = mask[..., tf.newaxis]  # rank 3 like the image, so both go through the same ops
        image, mask = _flip(image, mask, hflip_seed, axis=1)
        image, mask = _flip(image, mask, vflip_seed, axis=0)
        if allow_rot90:
            k = tf.random.stateless_uniform([], rot_seed, minval=0, maxval=4, dtype=tf.int32)
            image, mask = tf.image.rot90(image, k), tf.image.rot90(mask, k)
        mask = mask[..., 0]
    image = tf.ensure_shape(image, static_shape)
    return image, tf.ensure_shape(mask, static_shape[:2])


def build_dataset(images: np.ndarray, masks: np.ndarray, batch_size: int, training: bool, seed: int = 0,
                  crop_size: int | None = None, augment: bool = True, repeat: bool = False,
                  skip: int = 0, shard: tuple[int, int] | None = None) -> tf.data.Dataset:
    """Batch in-memory images and masks into a ``tf.data.Dataset`` of ``(image, mask)``.

    Args:
        images: ``[N, H, W, C]`` array (cast to float32, values are not rescaled).
        masks: ``[N, H, W]`` integer class ids (cast to int32).
        batch_size: samples per batch.
        training: if true, shuffle (seeded, reshuffled every epoch), random-crop to ``crop_size`` and augment,
            and drop the last incomplete batch. If false, keep the order, apply no randomness and keep the last
            partial batch; ``crop_size`` and ``augment`` are then ignored (evaluation uses whole images).
        seed: seed of the shuffle and of all augmentation randomness.
        crop_size: side of the square random training crop (same window for image and mask); ``None`` = no crop.
        augment: random horizontal / vertical flips and 90-degree rotations (rotations only for square inputs).
        repeat: repeat indefinitely (before batching, so batches run across epoch boundaries).
        skip: training only: start after this many samples of the (repeated) stream, with the same shuffle order
            and augmentation as the uninterrupted stream — how a resumed run continues exactly where it stopped.
        shard: ``(count, index)``: keep the elements ``index, index + count, ...`` of the (shuffled, skipped) stream,
            before any augmentation — one worker's part under ``train.distribute`` (:mod:`axial_kd_tf.distribute`).
            The shuffle is seeded, so the ``count`` shards are disjoint and together make up the whole stream; each
            element keeps the augmentation of its global index. ``batch_size`` is then the per-replica batch.

    Returns:
        Dataset yielding ``(float32 [B, h, w, C], int32 [B, h, w])``.

    Raises:
        UserError: on malformed shapes, ``crop_size`` larger than the images or a bad ``batch_size``.
    """
    _validate(images, masks, batch_size, crop_size)
    if shard is not None and not (int(shard[0]) >= 1 and 0 <= int(shard[1]) < int(shard[0])):
        raise UserError(f"shard must be (count, index) with 0 <= index < count, got {tuple(shard)}")
    batch_size, seed = int(batch_size), int(seed)
    crop = int(crop_size) if crop_size is not None else None
    num, height, width = np.shape(masks)
    if training and not repeat and num < batch_size:
        raise UserError(f"batch_size {batch_size} exceeds the {num} training samples (no full batch); "
                        f"lower batch_size or use repeat=True")

    ds = tf.data.Dataset.from_tensor_slices((np.asarray(images, np.float32), np.asarray(masks, np.int32)))
    if training:
        ds = ds.shuffle(num, seed=seed, reshuffle_each_iteration=True)
        if repeat:
            ds = ds.repeat()
        allow_rot90 = crop is not None or height == width
        base = tf.constant(seed, tf.int64)

        def _map(index: tf.Tensor, sample: tuple[tf.Tensor, tf.Tensor]) -> tuple[tf.Tensor, tf.Tensor]:
            element_seed = tf.stack([base, index])
            return _augment(sample[0], sample[1], element_seed, crop, augment, allow_rot90)

        ds = ds.enumerate()
        if skip:  # before the map: skipped samples are neither augmented nor copied twice
            ds = ds.skip(int(skip))
        if shard is not None:  # after the seeded shuffle (same order on every worker), before the augmentation
            ds = ds.shard(int(shard[0]), int(shard[1]))
        ds = ds.map(_map, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
        ds = ds.batch(batch_size, drop_remainder=True)
    else:
        if shard is not None:  # in order: every worker evaluates its own images, each image once
            ds = ds.shard(int(shard[0]), int(shard[1]))
        if repeat:
            ds = ds.repeat()
        ds = ds.batch(batch_size, drop_remainder=False)
    return ds.prefetch(tf.data.AUTOTUNE)

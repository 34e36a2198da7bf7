"""Datasets behind the YAML ``data:`` section, delivered as a :class:`DataBundle` of tf.data pipelines and arrays."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np

from axial_kd_tf.config import Config, check_crop_size
from axial_kd_tf.errors import UserError


@dataclass
class DataBundle:
    """Everything training and evaluation need from a dataset."""

    class_names: tuple[str, ...]
    in_channels: int
    train_images: np.ndarray
    train_masks: np.ndarray
    splits: dict  # split name -> (images [N,H,W,C] float32, masks [N,H,W] uint8), evaluation splits

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def split(self, name: str) -> tuple[np.ndarray, np.ndarray]:
        if name == "train":
            return self.train_images, self.train_masks
        if name not in self.splits:
            raise UserError(f"split '{name}' is not available; choose one of: train, {', '.join(self.splits)}")
        return self.splits[name]

    def train_dataset(self, batch_size: int, seed: int, crop_size: Optional[int], augment: bool,
                      skip_batches: int = 0, shard: Optional[tuple[int, int]] = None,
                      global_batch: Optional[int] = None) -> "tf.data.Dataset":
        """The endless, shuffled and augmented training stream; ``skip_batches`` continues it after that many
        batches exactly as an uninterrupted run would (a resumed run skips the batches of its finished epochs).

        Under ``train.distribute``: ``shard`` = ``(count, index)`` is this worker's part of the stream and
        ``batch_size`` the per-replica batch; ``global_batch`` (default ``batch_size``) counts the skipped batches.
        Every dataset (``synthetic``, ``sstem``, ``covid``, ``folders``) is read into arrays first, so this one
        sharded pipeline serves them all."""
        from axial_kd_tf.data.pipeline import build_dataset

        global_batch = int(global_batch or batch_size)
        if global_batch > len(self.train_images):
            raise UserError(
                f"train.batch_size ({global_batch}) is larger than the training set ({len(self.train_images)} images)"
            )
        return build_dataset(
            self.train_images, self.train_masks, batch_size, training=True, seed=seed, crop_size=crop_size,
            augment=augment, repeat=True, skip=int(skip_batches) * global_batch, shard=shard,
        )

    def eval_dataset(self, name: str, batch_size: int, shard: Optional[tuple[int, int]] = None
                     ) -> "tf.data.Dataset":
        """The evaluation split in order, batched; ``shard`` = ``(count, index)`` keeps this worker's images."""
        from axial_kd_tf.data.pipeline import build_dataset

        images, masks = self.split(name)
        return build_dataset(images, masks, batch_size, training=False, shard=shard)


def load_data(cfg: Config) -> DataBundle:
    """Load the dataset named by ``cfg.data.dataset``.

    Each loader module (``sstem``, ``covid``, ``folders``) exposes ``load(data_config) -> DataBundle``: training
    arrays at full size (random crops are taken by the tf.data pipeline) and evaluation splits ``val`` / ``test``.
    """
    bundle = _load(cfg)
    check_crop_size(cfg.data, *bundle.train_images.shape[1:3])
    return bundle


def _load(cfg: Config) -> DataBundle:
    d = cfg.data
    if d.dataset == "synthetic":
        from axial_kd_tf.data import synthetic

        def split(name: str, num: int) -> tuple[np.ndarray, np.ndarray]:
            return synthetic.load_split(name, num, d.synthetic.image_size, d.seed, cache_dir=d.cache_dir)

        train = split("train", d.synthetic.train_samples)
        return DataBundle(
            class_names=tuple(synthetic.CLASS_NAMES),
            in_channels=1,
            train_images=train[0],
            train_masks=train[1],
            splits={"val": split("val", d.synthetic.val_samples), "test": split("test", d.synthetic.test_samples)},
        )
    if d.dataset == "sstem":
        from axial_kd_tf.data import sstem

        return sstem.load(d)
    if d.dataset == "covid":
        from axial_kd_tf.data import covid

        return covid.load(d)
    if d.dataset == "folders":
        from axial_kd_tf.data import folders

        return folders.load(d)
    raise UserError(f"unknown data.dataset '{d.dataset}'")  # unreachable: the config validates the literal

"""The ssTEM Drosophila ventral-nerve-cord dataset (Gerhard et al., 2013): the paper's 5-class cell-image benchmark.

Layout (the upstream ``stack1`` folder, as written by ``python -m axial_kd_tf.data download sstem``)::

    raw/00.tif … raw/19.tif                        1024×1024 uint8 serial-section TEM images
    labels/labels00000000.png … labels00000019.png 1024×1024 uint8 merged label values

Label values map to the 5 classes of the paper's lab (:data:`VALUE_MAP`): 0, 32, 64, 96, 128 → membrane;
191 → mitochondria; 223 → synapse; 159 → glia / extracellular; 255 → intracellular.

The lab's 5-fold protocol (:func:`fold_blocks`): the 20 sections form 5 blocks of 4 consecutive images. Fold ``f``
trains on blocks ``f, f+1, f+2`` (12 images, random 256² crops), validates on block ``f+3`` and tests on the held-out
block ``f+4`` (indices mod 5), so every block is the test block of exactly one fold. Validation and test images are
cut into 16 non-overlapping 256² tiles each (``data.tile_size: 256``) and mIoU comes from the confusion matrix summed
over all test tiles. Input is ``raw / 255`` on one channel.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from axial_kd_tf.config import DataConfig
from axial_kd_tf.data import DataBundle
from axial_kd_tf.data.io import (check_same_shape, files_with_suffixes, map_values, read_image, read_mask,
                                 resolve_root, tiles)
from axial_kd_tf.errors import UserError

CLASS_NAMES = ("membrane", "mitochondria", "synapse", "glia", "intracellular")
VALUE_MAP = {0: 0, 32: 0, 64: 0, 96: 0, 128: 0, 191: 1, 223: 2, 159: 3, 255: 4}
NUM_IMAGES = 20
BLOCK = 4
NUM_FOLDS = NUM_IMAGES // BLOCK
IMAGE_SIZE = 1024


def raw_name(index: int) -> str:
    return f"raw/{index:02d}.tif"


def label_name(index: int) -> str:
    return f"labels/labels{index:08d}.png"


def fold_blocks(fold: int) -> dict[str, list[int]]:
    """Image indices of each split for ``fold`` (0–4): train = blocks f..f+2, val = f+3, test = f+4 (mod 5)."""
    if not 0 <= fold < NUM_FOLDS:
        raise UserError(f"config key 'data.sstem.fold' must be between 0 and {NUM_FOLDS - 1}, got {fold}")

    def block(b: int) -> list[int]:
        b %= NUM_FOLDS
        return list(range(b * BLOCK, (b + 1) * BLOCK))

    return {
        "train": block(fold) + block(fold + 1) + block(fold + 2),
        "val": block(fold + 3),
        "test": block(fold + 4),
    }


def check_files(root: Path) -> None:
    """Missing or unexpected image files under ``raw/`` and ``labels/`` raise a one-line error naming the file."""
    for folder, name in (("raw", raw_name), ("labels", label_name)):
        path = root / folder
        if not path.is_dir():
            raise UserError(f"ssTEM folder '{path}' is missing; point data.root at the folder holding raw/ and "
                            f"labels/ or run `python -m axial_kd_tf.data download sstem`")
        expected = {root / name(i) for i in range(NUM_IMAGES)}
        for i in range(NUM_IMAGES):
            if not (root / name(i)).is_file():
                raise UserError(f"ssTEM file '{root / name(i)}' is missing; re-run "
                                f"`python -m axial_kd_tf.data download sstem` or restore the file")
        extra = [p for p in files_with_suffixes(path) if p not in expected]
        if extra:
            raise UserError(f"unexpected file '{extra[0]}' in the ssTEM folder '{path}' "
                            f"({len(extra)} extra); the set has exactly {NUM_IMAGES} sections, move it elsewhere")


def read_section(root: Path, index: int) -> tuple[np.ndarray, np.ndarray]:
    """Section ``index`` as (float32 [1024, 1024, 1] in [0, 1], uint8 [1024, 1024] class ids)."""
    image_path, label_path = root / raw_name(index), root / label_name(index)
    image = read_image(image_path)
    if image.shape[2] != 1:
        raise UserError(f"ssTEM image '{image_path}' has {image.shape[2]} channels; expected one greyscale channel")
    mask = map_values(read_mask(label_path), VALUE_MAP, label_path)
    check_same_shape(image, mask, image_path, label_path)
    return image, mask


def load(d: DataConfig) -> DataBundle:
    """The ssTEM bundle for ``d.sstem.fold``: 12 full training sections; val / test as ``d.tile_size`` tiles (or
    whole)."""
    root = resolve_root(d.root, "sstem")
    check_files(root)
    blocks = fold_blocks(d.sstem.fold)
    arrays: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    shape = None
    for split, indices in blocks.items():
        sections = [read_section(root, i) for i in indices]
        for i, (image, _) in zip(indices, sections):
            if shape is None:
                shape = image.shape
            elif image.shape != shape:
                raise UserError(f"ssTEM image '{root / raw_name(i)}' is {image.shape[0]}x{image.shape[1]}, the "
                                f"others are {shape[0]}x{shape[1]}; all sections must have the same size")
        images = np.stack([s[0] for s in sections])
        masks = np.stack([s[1] for s in sections])
        if split != "train" and d.tile_size is not None:
            images, masks = tiles(images, d.tile_size), tiles(masks, d.tile_size)
        arrays[split] = (images, masks)
    return DataBundle(
        class_names=CLASS_NAMES,
        in_channels=1,
        train_images=arrays["train"][0],
        train_masks=arrays["train"][1],
        splits={"val": arrays["val"], "test": arrays["test"]},
    )

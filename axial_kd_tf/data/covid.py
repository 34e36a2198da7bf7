"""MedSeg COVID-19 CT segmentation ("MedSeg Covid Dataset 1", figshare, doi:10.6084/m9.figshare.13521488).

Layout (as written by ``python -m axial_kd_tf.data download covid``)::

    tr_im.nii.gz     512×512×100 CT slices of ~40 patients, intensities in Hounsfield units
    tr_mask.nii.gz   512×512×100 labels (stored as floats): 0 background, 1 ground-glass, 2 consolidation,
                     3 pleural effusion
    val_im.nii.gz    10 unlabelled slices (downloaded for completeness, not used here)

Slice ``i`` is ``vol[:, :, i]`` turned upright with ``np.fliplr(np.rot90(x, k=3))``, as the paper's lab loads it (the
two operations amount to a transpose: image row = NIfTI axis 1, image column = NIfTI axis 0).

Intensities: ``data.window = [low, high]`` clips to the window in HU and scales it to [0, 1]; ``null`` scales the
minimum and maximum of the whole volume (all slices, so every split sees the same mapping) to [0, 1]. One channel.

Splits, in slice order: the first ``data.train_slices`` (70) train, the next ``data.val_slices`` (15) validation,
the rest (15) test. ``data.tile_size`` cuts the evaluation splits into tiles (default null: whole 512² slices).

Class weights for the cross-entropy (optional; the default is the paper's plain CE) follow from the training pixel
shares: ``class_weights_from_frequencies(class_frequencies(bundle.train_masks, 4), "median")``, or
``python -m axial_kd_tf.data class-weights covid``, then ``--set distill.class_weights=[...]``.
"""

from __future__ import annotations

import struct
import zlib
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from axial_kd_tf.config import DataConfig
from axial_kd_tf.errors import UserError

__all__ = ["CLASS_NAMES", "FILES", "IMAGE_FILE", "MASK_FILE", "load", "load_arrays", "read_volume", "to_slices",
           "normalize", "class_weights_from_frequencies"]

CLASS_NAMES: tuple[str, ...] = ("background", "ground-glass", "consolidation", "pleural effusion")
IMAGE_FILE = "tr_im.nii.gz"
MASK_FILE = "tr_mask.nii.gz"
UNLABELLED_FILE = "val_im.nii.gz"
#: The files the loader reads (the download also fetches ``val_im.nii.gz``, which has no labels).
FILES: tuple[str, ...] = (IMAGE_FILE, MASK_FILE)


def read_volume(path: Path) -> np.ndarray:
    """A NIfTI volume as float32 ``[X, Y, Z]`` (trailing singleton axes dropped); bad files raise a UserError."""
    import nibabel as nib
    from nibabel.filebasedimages import ImageFileError
    from nibabel.spatialimages import HeaderDataError

    path = Path(path)
    if not path.is_file():
        raise UserError(f"file '{path}' is missing; run `python -m axial_kd_tf.data download covid` "
                        f"or point data.root at a folder holding {', '.join(FILES)}")
    try:
        volume = nib.load(str(path)).get_fdata(dtype=np.float32)
    except (OSError, EOFError, ValueError, zlib.error, struct.error, ImageFileError, HeaderDataError) as exc:
        raise UserError(f"cannot read NIfTI file '{path}' ({type(exc).__name__}: {exc}); the file is corrupt or "
                        f"truncated, delete it and run `python -m axial_kd_tf.data download covid` again") from None
    while volume.ndim > 3 and volume.shape[-1] == 1:
        volume = volume[..., 0]
    if volume.ndim != 3:
        raise UserError(f"NIfTI file '{path}' has shape {tuple(volume.shape)}; expected a 3-D volume "
                        f"[height, width, slices] such as 512x512x100")
    return volume


def to_slices(volume: np.ndarray) -> np.ndarray:
    """``[X, Y, Z]`` → ``[Z, H, W]``, each slice ``np.fliplr(np.rot90(vol[:, :, i], k=3))`` (upright)."""
    return np.stack([np.fliplr(np.rot90(volume[:, :, i], k=3)) for i in range(volume.shape[2])], axis=0)


def normalize(volume: np.ndarray, window: Optional[Sequence[float]] = None) -> np.ndarray:
    """Intensities to [0, 1] float32: clip to ``window`` = [low, high] and scale, or min-max over ``volume``."""
    if window is not None:
        low, high = float(window[0]), float(window[1])
        if not high > low:
            raise UserError(f"data.window {list(window)} must be [low, high] with low < high (e.g. [-1000, 400])")
        out = (np.clip(volume, low, high) - low) / (high - low)
    else:
        low, high = float(volume.min()), float(volume.max())
        out = (volume - low) / (high - low) if high > low else np.zeros_like(volume)
    return out.astype(np.float32, copy=False)


def _check_mask(mask: np.ndarray, path: Path) -> np.ndarray:
    if not np.all(np.isfinite(mask)):
        raise UserError(f"mask '{path}' contains NaN or infinite values; expected only class ids 0-3")
    if not np.array_equal(mask, np.round(mask)):
        raise UserError(f"mask '{path}' holds non-integer values; expected only class ids 0-3 "
                        f"({', '.join(f'{i} {n}' for i, n in enumerate(CLASS_NAMES))})")
    bad = np.unique(mask[(mask < 0) | (mask >= len(CLASS_NAMES))])
    if bad.size:
        shown = [int(v) for v in bad[:8]]
        raise UserError(f"mask '{path}' has values {shown} outside the class map 0-3 "
                        f"({', '.join(f'{i} {n}' for i, n in enumerate(CLASS_NAMES))}); fix the mask file")
    return mask.astype(np.uint8)


def load_arrays(root: Path, window: Optional[Sequence[float]] = None) -> tuple[np.ndarray, np.ndarray]:
    """All slices of ``root``: images float32 ``[Z, H, W, 1]`` in [0, 1] and masks uint8 ``[Z, H, W]``."""
    root = Path(root)
    image_path, mask_path = root / IMAGE_FILE, root / MASK_FILE
    image = read_volume(image_path)
    mask = read_volume(mask_path)
    if image.shape != mask.shape:
        raise UserError(f"image '{image_path}' is {'x'.join(map(str, image.shape))} but mask '{mask_path}' is "
                        f"{'x'.join(map(str, mask.shape))}; they must have the same shape")
    if not np.all(np.isfinite(image)):
        raise UserError(f"image '{image_path}' contains NaN or infinite values; replace the file "
                        f"(`python -m axial_kd_tf.data download covid`)")
    masks = _check_mask(mask, mask_path)
    images = normalize(image, window)
    return to_slices(images)[..., None], to_slices(masks)


def load(d: DataConfig):
    """The :class:`~axial_kd_tf.data.DataBundle` of ``data.dataset: covid`` (full 512² training slices)."""
    from axial_kd_tf.data import DataBundle
    from axial_kd_tf.data.io import resolve_root, tiles

    root = resolve_root(d.root, "covid")
    images, masks = load_arrays(root, d.window)
    depth = len(images)
    if d.train_slices + d.val_slices >= depth:
        raise UserError(f"data.train_slices ({d.train_slices}) + data.val_slices ({d.val_slices}) must be less than "
                        f"the {depth} slices of '{root / IMAGE_FILE}' so that test slices remain")
    a, b = d.train_slices, d.train_slices + d.val_slices
    splits = {"val": (images[a:b], masks[a:b]), "test": (images[b:], masks[b:])}
    if d.tile_size:
        splits = {name: (tiles(x, d.tile_size), tiles(y, d.tile_size)) for name, (x, y) in splits.items()}
    return DataBundle(
        class_names=CLASS_NAMES,
        in_channels=1,
        train_images=np.ascontiguousarray(images[:a]),
        train_masks=np.ascontiguousarray(masks[:a]),
        splits={name: (np.ascontiguousarray(x), np.ascontiguousarray(y)) for name, (x, y) in splits.items()},
    )


def class_weights_from_frequencies(freqs: Sequence[float], kind: str = "median") -> list[float]:
    """Cross-entropy class weights from pixel shares (e.g. :func:`axial_kd_tf.data.io.class_frequencies`).

    * ``"median"``: median-frequency balancing (Eigen & Fergus), ``w_c = median(f) / f_c``.
    * ``"inverse"``: ``w_c = 1 / (K · f_c)`` over the K classes present, so the pixel-weighted mean weight is 1.

    Classes with zero frequency get the largest weight of the others. Returns a list for ``distill.class_weights``.
    """
    f = np.asarray(freqs, dtype=np.float64)
    if f.ndim != 1 or f.size == 0 or np.any(~np.isfinite(f)) or np.any(f < 0) or f.sum() <= 0:
        raise UserError(f"class frequencies {list(np.round(f, 6))} must be non-negative numbers, not all zero")
    f = f / f.sum()
    present = f > 0
    if kind == "median":
        w = np.where(present, np.median(f[present]) / np.where(present, f, 1.0), 0.0)
    elif kind == "inverse":
        w = np.where(present, 1.0 / (present.sum() * np.where(present, f, 1.0)), 0.0)
    else:
        raise UserError(f"class weight kind '{kind}' is unknown; choose 'median' or 'inverse'")
    w[~present] = w[present].max()
    return [float(v) for v in w]

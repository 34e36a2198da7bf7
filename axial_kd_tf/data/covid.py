"""MedSeg COVID-19 CT segmentation ("MedSeg Covid Dataset 1", figshare, doi:10.6084/m9.figshare.13521488).

Layout (as written by ``python -m axial_kd_tf.data download covid``)::

    tr_im.nii.gz     512×512×100 CT slices of ~40 patients, intensities in Hounsfield units
    tr_mask.nii.gz   512×512×100 labels (stored as floats): 0 background, 1 ground-glass, 2 consolidation,
                     3 pleural effusion
    val_im.nii.gz    10 unlabelled slices (downloaded for completeness, not used here)

Slice ``i`` is ``vol[:, :, i]`` turned upright with ``np.fliplr(np.rot90(x, k=3))``, as the paper's lab loads it (the
two operations amount to a transpose: image row = NIfTI axis 1, image column = NIfTI axis 0).

Orientation: that slicing assumes volumes stored as the fixtures and the phantom are, voxel axes along R, A, S. A
volume whose NIfTI header (``qform``/``sform`` code > 0) says another orientation is reoriented to R, A, S first
(``nibabel.orientations``, the equivalent of ``as_closest_canonical``), with a one-line warning; a mask without
orientation follows its image. MedSeg's own files (recognised by their md5) are always read as stored, as the lab
reads them. A header without orientation codes says nothing, and the volume is read as stored.

Classes: MedSeg's labels 0-3 (:data:`CLASS_NAMES`) by default. ``data.value_map`` (mask value -> class id) and
``data.class_names`` relabel them, as for ``folders``: e.g. ``value_map: {0: 0, 1: 1, 2: 1, 3: 0}`` and
``class_names: [background, infection]`` for a binary infection model; ``class_names`` alone (K names) reads mask
values 0..K-1 as they are (a binary mask file).

Intensities: ``data.covid.window = [low, high]`` clips to the window in HU and scales it to [0, 1]; ``null`` scales the
minimum and maximum of the whole volume (all slices, so every split sees the same mapping) to [0, 1]. One channel.

Splits, in slice order: the first ``data.covid.train_slices`` (70) train, the next ``data.covid.val_slices`` (15)
validation, the rest (15) test. ``data.tile_size`` cuts the evaluation splits into tiles (default null: whole 512² slices).

Class weights for the cross-entropy (optional; the default is the paper's plain CE) follow from the training pixel
shares: ``class_weights_from_frequencies(class_frequencies(bundle.train_masks, 4), "median")``, or
``python -m axial_kd_tf.data class-weights covid``, then ``--set distill.class_weights=[...]``.
"""

from __future__ import annotations

import struct
import sys
import zlib
from pathlib import Path
from typing import Mapping, Optional, Sequence

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


#: Voxel-axis orientation the lab's slicing expects (:func:`to_slices`); other orientations are reoriented to it.
CANONICAL: tuple[str, str, str] = ("R", "A", "S")


def read_volume(path: Path) -> np.ndarray:
    """A NIfTI volume as float32 ``[X, Y, Z]`` (trailing singleton axes dropped), as stored; bad files raise a
    UserError. :func:`load_arrays` also applies the header's orientation."""
    return _read_nifti(path)[0]


def _read_nifti(path: Path) -> tuple[np.ndarray, Optional[tuple[str, ...]]]:
    """:func:`read_volume` and the voxel axes' orientation codes from the header (None when it states none)."""
    import nibabel as nib
    from nibabel.filebasedimages import ImageFileError
    from nibabel.spatialimages import HeaderDataError

    path = Path(path)
    if not path.is_file():
        raise UserError(f"file '{path}' is missing; run `python -m axial_kd_tf.data download covid` "
                        f"or point data.root at a folder holding {', '.join(FILES)}")
    try:
        image = nib.load(str(path))
        volume = image.get_fdata(dtype=np.float32)
    except (OSError, EOFError, ValueError, zlib.error, struct.error, ImageFileError, HeaderDataError) as exc:
        raise UserError(f"cannot read NIfTI file '{path}' ({type(exc).__name__}: {exc}); the file is corrupt or "
                        f"truncated, delete it and run `python -m axial_kd_tf.data download covid` again") from None
    while volume.ndim > 3 and volume.shape[-1] == 1:
        volume = volume[..., 0]
    if volume.ndim != 3:
        raise UserError(f"NIfTI file '{path}' has shape {tuple(volume.shape)}; expected a 3-D volume "
                        f"[X, Y, slices] such as 512x512x100 (axis 0 becomes the slice width, axis 1 its height)")
    return volume, _orientation(image)


def _orientation(image) -> Optional[tuple[str, ...]]:
    """Axis codes of the header's affine, or None when neither qform nor sform code is set (then nibabel's affine is
    a fallback convention, not a statement about the data)."""
    import nibabel as nib

    try:
        if int(image.header["qform_code"]) == 0 and int(image.header["sform_code"]) == 0:
            return None
        codes = nib.aff2axcodes(image.affine)
    except (KeyError, ValueError, TypeError, np.linalg.LinAlgError):
        return None
    return tuple(codes) if None not in codes else None


def _is_medseg_original(path: Path) -> bool:
    """True for MedSeg's own ``tr_im`` / ``tr_mask`` (md5 as downloaded): the lab reads them as stored."""
    from axial_kd_tf.data.download import file_digest, get_dataset

    known = {f.path: f for f in get_dataset("covid").files}.get(path.name)
    try:
        return known is not None and file_digest(path, known.algorithm) == known.digest
    except OSError:
        return False


def _reorient(volume: np.ndarray, codes: tuple[str, ...], target: tuple[str, ...], path: Path) -> np.ndarray:
    """``volume`` stored along ``codes`` rearranged (axes permuted / flipped) to ``target``, with a warning."""
    from nibabel.orientations import apply_orientation, axcodes2ornt, ornt_transform

    if tuple(codes) == tuple(target):
        return volume
    transform = ornt_transform(axcodes2ornt(codes), axcodes2ornt(target))
    print(f"warning: NIfTI file '{path}' is stored in {','.join(codes)} orientation (its header); reoriented to "
          f"{','.join(target)} before slicing", file=sys.stderr)
    return np.ascontiguousarray(apply_orientation(volume, transform))


def oriented_pair(image_path: Path, mask_path: Path) -> tuple[np.ndarray, np.ndarray]:
    """The image and mask volumes ``[X, Y, Z]`` in the orientation :func:`to_slices` expects (module docstring).

    A volume without orientation codes takes its partner's. The target is R, A, S, or the image's own orientation
    when that is MedSeg's original file (read as the lab reads it).
    """
    image, image_codes = _read_nifti(image_path)
    mask, mask_codes = _read_nifti(mask_path)
    image_codes = image_codes or mask_codes
    mask_codes = mask_codes or image_codes
    if image_codes is None:
        return image, mask
    target = CANONICAL
    if image_codes != CANONICAL and _is_medseg_original(image_path):
        target = image_codes
    return _reorient(image, image_codes, target, image_path), _reorient(mask, mask_codes, target, mask_path)


def to_slices(volume: np.ndarray) -> np.ndarray:
    """``[X, Y, Z]`` → ``[Z, H, W]``, each slice ``np.fliplr(np.rot90(vol[:, :, i], k=3))`` (upright)."""
    return np.stack([np.fliplr(np.rot90(volume[:, :, i], k=3)) for i in range(volume.shape[2])], axis=0)


def normalize(volume: np.ndarray, window: Optional[Sequence[float]] = None) -> np.ndarray:
    """Intensities to [0, 1] float32: clip to ``window`` = [low, high] and scale, or min-max over ``volume``."""
    if window is not None:
        low, high = float(window[0]), float(window[1])
        if not high > low:
            raise UserError(f"data.covid.window {list(window)} must be [low, high] with low < high (e.g. [-1000, 400])")
        out = (np.clip(volume, low, high) - low) / (high - low)
    else:
        low, high = float(volume.min()), float(volume.max())
        out = (volume - low) / (high - low) if high > low else np.zeros_like(volume)
    return out.astype(np.float32, copy=False)


def class_map(value_map: Optional[Mapping] = None, class_names: Optional[Sequence[str]] = None
              ) -> tuple[dict[int, int], tuple[str, ...]]:
    """``({mask value: class id}, class names)`` from ``data.value_map`` / ``data.class_names`` (module docstring).

    Neither: MedSeg's 0-3 and :data:`CLASS_NAMES`. ``class_names`` alone: values 0..K-1 as they are. A ``value_map``
    without names names each class after the MedSeg labels mapped to it (``ground-glass+consolidation``).
    """
    from axial_kd_tf.data.folders import class_map as folders_class_map

    if value_map is None and class_names is None:
        return {i: i for i in range(len(CLASS_NAMES))}, CLASS_NAMES
    if value_map is not None and not value_map:
        raise UserError("data.value_map is empty; map the mask values to class ids, e.g. {0: 0, 1: 1, 2: 1, 3: 1}, "
                        "or set it to null")
    if value_map is None:
        value_map = {i: i for i in range(len(class_names))}
    mapping, names = folders_class_map(value_map, class_names)
    if class_names is None:
        sources = [[v for v, c in sorted(mapping.items()) if c == cls] for cls in range(len(names))]
        names = tuple("+".join(CLASS_NAMES[v] for v in vs) if all(v < len(CLASS_NAMES) for v in vs) else names[cls]
                      for cls, vs in enumerate(sources))
    return mapping, names


def _check_mask(mask: np.ndarray, path: Path, value_map: Optional[Mapping[int, int]] = None) -> np.ndarray:
    """The mask's values as class ids (uint8) through ``value_map`` (default: MedSeg's 0-3 as they are)."""
    mapping = dict(value_map) if value_map is not None else class_map()[0]
    expected = f"the class map {sorted(mapping)}" if value_map is not None else "the class map 0-3 (" + ", ".join(
        f"{i} {n}" for i, n in enumerate(CLASS_NAMES)) + ")"
    if not np.all(np.isfinite(mask)):
        raise UserError(f"mask '{path}' contains NaN or infinite values; expected only the values of {expected}")
    if not np.array_equal(mask, np.round(mask)):
        raise UserError(f"mask '{path}' holds non-integer values; expected only the values of {expected}")
    bad = np.unique(mask[~np.isin(mask, np.asarray(sorted(mapping), np.float64))])
    if bad.size:
        shown = [int(v) for v in bad[:8]]
        raise UserError(f"mask '{path}' has values {shown} outside {expected}; fix the mask file"
                        f"{' or data.value_map' if value_map is not None else ' or set data.value_map'}")
    lut = np.zeros(max(mapping) + 1, np.uint8)
    for value, cls in mapping.items():
        lut[value] = cls
    return lut[mask.astype(np.int64)]


def load_arrays(root: Path, window: Optional[Sequence[float]] = None,
                value_map: Optional[Mapping[int, int]] = None) -> tuple[np.ndarray, np.ndarray]:
    """All slices of ``root``: images float32 ``[Z, H, W, 1]`` in [0, 1] and masks uint8 ``[Z, H, W]`` (class ids
    through ``value_map``, default MedSeg's 0-3), the volumes first put in the expected orientation."""
    root = Path(root)
    image_path, mask_path = root / IMAGE_FILE, root / MASK_FILE
    image, mask = oriented_pair(image_path, mask_path)
    if image.shape != mask.shape:
        raise UserError(f"image '{image_path}' is {'x'.join(map(str, image.shape))} but mask '{mask_path}' is "
                        f"{'x'.join(map(str, mask.shape))}; they must have the same shape")
    if not np.all(np.isfinite(image)):
        raise UserError(f"image '{image_path}' contains NaN or infinite values; replace the file "
                        f"(`python -m axial_kd_tf.data download covid`)")
    masks = _check_mask(mask, mask_path, value_map)
    images = normalize(image, window)
    return to_slices(images)[..., None], to_slices(masks)


def load(d: DataConfig):
    """The :class:`~axial_kd_tf.data.DataBundle` of ``data.dataset: covid`` (full 512² training slices)."""
    from axial_kd_tf.data import DataBundle
    from axial_kd_tf.data.io import resolve_root, tiles

    mapping, names = class_map(d.value_map, d.class_names)  # before reading 40 MB: a bad map fails fast
    root = resolve_root(d.root, "covid")
    relabel = None if d.value_map is None and d.class_names is None else mapping
    images, masks = load_arrays(root, d.covid.window, relabel)
    depth = len(images)
    if d.covid.train_slices + d.covid.val_slices >= depth:
        raise UserError(f"data.covid.train_slices ({d.covid.train_slices}) + data.covid.val_slices "
                        f"({d.covid.val_slices}) must be less than "
                        f"the {depth} slices of '{root / IMAGE_FILE}' so that test slices remain")
    a, b = d.covid.train_slices, d.covid.train_slices + d.covid.val_slices
    splits = {"val": (images[a:b], masks[a:b]), "test": (images[b:], masks[b:])}
    if d.tile_size:
        splits = {name: (tiles(x, d.tile_size), tiles(y, d.tile_size)) for name, (x, y) in splits.items()}
    return DataBundle(
        class_names=names,
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

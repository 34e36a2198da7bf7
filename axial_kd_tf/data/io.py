"""File reading and validation shared by the dataset loaders.

Every failure is a :class:`~axial_kd_tf.errors.UserError` whose one-line message names the offending file and the fix.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable, Mapping, Optional

import numpy as np

from axial_kd_tf.errors import UserError

IMAGE_SUFFIXES = (".png", ".tif", ".tiff", ".jpg", ".jpeg")


def default_data_root(dataset: str) -> Path:
    """Download cache of ``dataset``: ``$AXIAL_KD_DATA_DIR/<dataset>``, else ``~/.cache/axial_kd_tf/<dataset>``."""
    base = os.environ.get("AXIAL_KD_DATA_DIR")
    return (Path(base).expanduser() if base else Path.home() / ".cache" / "axial_kd_tf") / dataset


def resolve_root(root: Optional[str], dataset: str) -> Path:
    """``data.root`` if given, else the download cache; a missing folder names the download command."""
    path = Path(root).expanduser() if root else default_data_root(dataset)
    if not path.is_dir():
        where = f"data.root '{path}'" if root else f"the download cache '{path}'"
        raise UserError(f"{where} does not exist; run `python -m axial_kd_tf.data download {dataset}` "
                        f"or set data.root to an existing copy")
    return path


def read_array(path: Path, flags: int) -> np.ndarray:
    """Read an image file with OpenCV (``flags`` as for ``cv2.imread``); unreadable files raise a UserError."""
    import cv2

    if not path.is_file():
        raise UserError(f"file '{path}' is missing")
    data = np.fromfile(str(path), dtype=np.uint8)  # imdecode: non-ASCII paths work, and errors are ours to word
    array = cv2.imdecode(data, flags) if data.size else None
    if array is None:
        raise UserError(f"cannot read image '{path}': not a valid PNG/TIFF/JPEG file; replace or remove it")
    return array


def read_image(path: Path) -> np.ndarray:
    """An image as float32 ``[H, W, C]`` scaled to [0, 1] (uint8 / 255, uint16 / 65535), RGB channel order."""
    import cv2

    array = read_array(path, cv2.IMREAD_UNCHANGED)
    if array.ndim == 3 and array.shape[2] == 4:
        array = array[..., :3]  # alpha carries no image content
    if array.ndim == 3:
        array = array[..., ::-1]  # OpenCV reads BGR
    else:
        array = array[..., None]
    if array.dtype == np.uint8:
        return array.astype(np.float32) / 255.0
    if array.dtype == np.uint16:
        return array.astype(np.float32) / 65535.0
    out = array.astype(np.float32)
    if not np.all(np.isfinite(out)):
        raise UserError(f"image '{path}' contains NaN or infinite values; fix or remove the file")
    return out


def read_mask(path: Path) -> np.ndarray:
    """A label mask as a 2-D integer array; an RGB mask is accepted only when its three channels are equal."""
    import cv2

    array = read_array(path, cv2.IMREAD_UNCHANGED)
    if array.ndim == 3 and array.shape[2] == 4:
        array = array[..., :3]  # alpha (e.g. a grey+alpha PNG) carries no label
    if array.ndim == 3:
        if not all(np.array_equal(array[..., 0], array[..., c]) for c in range(1, array.shape[2])):
            raise UserError(f"mask '{path}' is a colour image; masks must hold one label value per pixel "
                            f"(greyscale or equal RGB channels)")
        array = array[..., 0]
    if not np.issubdtype(array.dtype, np.integer):
        raise UserError(f"mask '{path}' has {array.dtype} values; masks must be integer label images")
    return array


def map_values(mask: np.ndarray, value_map: Mapping[int, int], path: Path | str) -> np.ndarray:
    """Map raw mask values to class ids (uint8); values outside ``value_map`` raise a UserError naming ``path``."""
    if not value_map or min(int(k) for k in value_map) < 0:
        raise UserError(f"the value map {dict(value_map)} must list the non-negative mask values of '{path}'")
    lut = np.full(max(int(mask.max()), max(int(k) for k in value_map)) + 1, 255, np.int64)
    for value, cls in value_map.items():
        lut[int(value)] = int(cls)
    if mask.min() < 0:
        raise UserError(f"mask '{path}' has negative values; expected only {sorted(int(k) for k in value_map)}")
    mapped = lut[mask]
    if (mapped == 255).any():
        bad = sorted(int(v) for v in np.unique(mask[mapped == 255]))[:8]
        raise UserError(f"mask '{path}' has values {bad} outside the value map "
                        f"{sorted(int(k) for k in value_map)}; fix the mask or extend data.value_map")
    return mapped.astype(np.uint8)


def check_same_shape(image: np.ndarray, mask: np.ndarray, image_path: Path, mask_path: Path) -> None:
    if image.shape[:2] != mask.shape[:2]:
        raise UserError(f"image '{image_path}' is {image.shape[0]}x{image.shape[1]} but its mask '{mask_path}' is "
                        f"{mask.shape[0]}x{mask.shape[1]}; they must have the same height and width")


def tiles(array: np.ndarray, size: int) -> np.ndarray:
    """Cut ``[N, H, W, ...]`` into non-overlapping ``size``² tiles, row-major per image: ``[N·(H/size)·(W/size), ...]``."""
    n, h, w = array.shape[:3]
    if h % size or w % size:
        raise UserError(f"data.tile_size {size} does not divide the {h}x{w} images; use a divisor or null")
    rest = array.shape[3:]
    out = array.reshape(n, h // size, size, w // size, size, *rest)
    out = np.moveaxis(out, 2, 3)  # [n, rows, cols, size, size, ...]
    return out.reshape(n * (h // size) * (w // size), size, size, *rest)


def class_frequencies(masks: np.ndarray, num_classes: int) -> np.ndarray:
    """Share of pixels of each class over ``masks`` (sums to 1)."""
    counts = np.bincount(np.asarray(masks).ravel(), minlength=num_classes)[:num_classes].astype(np.float64)
    return counts / max(counts.sum(), 1.0)


def files_with_suffixes(folder: Path, suffixes: Iterable[str] = IMAGE_SUFFIXES) -> list[Path]:
    suffixes = tuple(s.lower() for s in suffixes)
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in suffixes)

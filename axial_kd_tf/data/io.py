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
    """A label mask as a 2-D integer array.

    An indexed (palette) PNG/TIFF with colours in its palette (Pascal VOC style) gives its palette indices, read with
    Pillow (OpenCV would expand the palette to colours); a palette of grey colours only gives the grey levels, as
    any greyscale PNG. An RGB mask is accepted only when its three channels are equal.
    """
    import cv2

    indices = palette_indices(path)
    if indices is not None:
        return indices
    array = read_array(path, cv2.IMREAD_UNCHANGED)
    if array.ndim == 3 and array.shape[2] == 4:
        array = array[..., :3]  # alpha (e.g. a grey+alpha PNG) carries no label
    if array.ndim == 3:
        if not all(np.array_equal(array[..., 0], array[..., c]) for c in range(1, array.shape[2])):
            hint = ""
            if _is_palette_png(path):  # only reached without Pillow
                hint = "; it is a palette (indexed) PNG, whose indices are read with Pillow: pip install pillow"
            raise UserError(f"mask '{path}' is a colour image; masks must hold one label value per pixel "
                            f"(greyscale, equal RGB channels or a palette PNG){hint}")
        array = array[..., 0]
    if not np.issubdtype(array.dtype, np.integer):
        raise UserError(f"mask '{path}' has {array.dtype} values; masks must be integer label images")
    return array


def _is_palette_png(path: Path) -> bool:
    """PNG colour type 3 (palette), from the IHDR chunk: byte 25 of the file."""
    try:
        with open(path, "rb") as f:
            head = f.read(26)
    except OSError:
        return False
    return len(head) == 26 and head[:8] == b"\x89PNG\r\n\x1a\n" and head[25] == 3


def palette_indices(path: Path) -> Optional[np.ndarray]:
    """The ``[H, W]`` palette indices of an indexed PNG/TIFF whose used palette entries include a colour; None for
    any other file (greyscale, RGB, a grey-only palette, unreadable: OpenCV reads or words those), or without
    Pillow."""
    if Path(path).suffix.lower() not in (".png", ".tif", ".tiff"):
        return None
    try:
        from PIL import Image  # ships with matplotlib
    except ImportError:
        return None
    try:
        with Image.open(path) as image:
            if image.mode not in ("P", "PA"):
                return None
            indices = np.asarray(image)
            palette = image.getpalette("RGB") or []
    except Exception:  # a damaged file: read_array gives the one-line error
        return None
    if indices.ndim == 3:  # PA: index and alpha
        indices = indices[..., 0]
    colours = np.asarray(palette, np.int64).reshape(-1, 3)
    used = np.unique(indices)
    used = used[used < len(colours)]
    grey = np.all(colours[used, 0] == colours[used, 1]) and np.all(colours[used, 1] == colours[used, 2])
    return None if grey else np.ascontiguousarray(indices)


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

"""Your own data: image and mask files in folders (``data.dataset: folders``).

Two layouts under ``data.root``:

* **one pool** -- ``root/images/`` and ``root/masks/``. The matched pairs are split deterministically by
  ``data.seed`` into train / val / test: ``round(val_fraction · N)`` pairs (at least 1) for validation,
  ``round(test_fraction · N)`` (at least 1 when the fraction is > 0) for test, the rest for training. With
  ``test_fraction: 0`` (the default) there is no held-out test set and ``test`` is the validation split.
* **explicit splits** -- ``root/train/{images,masks}``, ``root/val/{images,masks}`` and optionally
  ``root/test/{images,masks}``; ``val_fraction`` / ``test_fraction`` are ignored. Without ``root/test/``, ``test``
  is the validation split.

An image and its mask share a file stem (``cell_01.png`` ↔ ``cell_01.tif``); suffixes ``.png .tif .tiff .jpg
.jpeg`` (any case); hidden files (``.name``) and other suffixes are ignored. Images are greyscale or RGB(A, alpha
dropped), 8- or 16-bit, scaled to [0, 1]; all of them must have the same number of channels and the same height and
width (training takes random ``data.crop_size`` crops of the full images). Masks are greyscale (or RGB with equal
channels, or palette PNG/TIFF read as their indices: :func:`axial_kd_tf.data.io.read_mask`) label images whose
values are mapped to class ids by ``data.value_map`` (e.g. ``{0: 0, 128: 1, 255: 2}``;
several values may share a class). Class ids must be 0..K-1; ``data.class_names`` names them (default
``class0`` .. ``classK-1``). With ``data.tile_size`` the evaluation splits are cut into non-overlapping tiles.

Every problem (missing folder, unpaired or duplicate stems, a corrupt file, a size or channel mismatch, a mask value
outside the map) is a one-line :class:`~axial_kd_tf.errors.UserError` naming the file and the fix.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Optional, Sequence

import numpy as np

from axial_kd_tf.config import DataConfig
from axial_kd_tf.data import DataBundle
from axial_kd_tf.data import io
from axial_kd_tf.errors import UserError

__all__ = ["Pair", "FolderPlan", "class_map", "find_split_dirs", "match_pairs", "split_pairs", "plan", "read_pairs",
           "load"]

SPLITS = ("train", "val", "test")
_SHOW = 5  # stems named in an error before "... (+N more)"
_SUFFIXES = " ".join(io.IMAGE_SUFFIXES)


@dataclass(frozen=True)
class Pair:
    """One image and its mask, matched by file stem."""

    stem: str
    image: Path
    mask: Path


@dataclass
class FolderPlan:
    """Which pairs go to which split, and how the splits were made (before any file is decoded)."""

    layout: str  # "pool" or "splits"
    splits: dict  # "train" / "val" / "test" -> list[Pair]; "test" is absent when it is the validation split
    test_is_val: bool
    notes: list


def _names(items: Sequence[str]) -> str:
    shown = ", ".join(items[:_SHOW])
    return shown + (f" (+{len(items) - _SHOW} more)" if len(items) > _SHOW else "")


# -------------------------------------------------------------------------------------------------------- classes
def _as_int(value: object) -> Optional[int]:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.strip().lstrip("-").isdigit():
        return int(value.strip())
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return None


def class_map(value_map: Optional[Mapping], class_names: Optional[Sequence[str]]) -> tuple[dict, tuple[str, ...]]:
    """Validate ``data.value_map`` / ``data.class_names``; return ``({mask value: class id}, class names)``.

    Keys are non-negative integers (``"255"`` is accepted), class ids must be exactly 0..K-1 (several mask values
    may map to the same class), and ``class_names``, when given, must have K unique names.
    """
    if not value_map:
        raise UserError("data.value_map must map mask values to class ids, e.g. {0: 0, 255: 1} (dataset: folders)")
    mapping: dict[int, int] = {}
    for key, cls in value_map.items():
        k, c = _as_int(key), _as_int(cls)
        if k is None or k < 0:
            raise UserError(f"data.value_map has key {key!r}; keys must be the non-negative integer values stored in "
                            f"the masks, e.g. {{0: 0, 255: 1}}")
        if c is None or c < 0:
            raise UserError(f"data.value_map maps {key!r} to {cls!r}; class ids must be integers 0..K-1")
        if k in mapping:
            raise UserError(f"data.value_map lists mask value {k} twice; keep one entry per value")
        mapping[k] = c
    ids = sorted(set(mapping.values()))
    if ids != list(range(len(ids))):
        missing = sorted(set(range(max(ids) + 1)) - set(ids))
        raise UserError(f"data.value_map class ids {ids} must be contiguous from 0 (0..{len(ids) - 1}); "
                        f"missing {missing}: renumber the classes")
    if len(ids) > 255:
        raise UserError(f"data.value_map has {len(ids)} classes; at most 255 are supported")
    if class_names is None:
        names = tuple(f"class{i}" for i in ids)
    else:
        names = tuple(str(n) for n in class_names)
        if len(names) != len(ids):
            raise UserError(f"data.class_names has {len(names)} names but data.value_map has {len(ids)} class ids "
                            f"(0..{len(ids) - 1}); give one name per class id")
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise UserError(f"data.class_names repeats {', '.join(dupes)}; class names must be unique")
    return mapping, names


# ---------------------------------------------------------------------------------------------------------- files
def _require_dir(path: Path, what: str) -> Path:
    if not path.is_dir():
        kind = "is not a folder" if path.exists() else "does not exist"
        raise UserError(f"{what} '{path}' {kind}; {_LAYOUT_HINT}")
    return path


_LAYOUT_HINT = ("data.root must hold images/ and masks/ (one pool, split by data.folders.val_fraction / "
                "test_fraction), or train/ and val/ (and optionally test/), each with images/ and masks/")


def find_split_dirs(root: Path) -> tuple[str, dict[str, tuple[Path, Path]]]:
    """The layout under ``root``: ``("pool", {"pool": (images, masks)})`` or ``("splits", {split: (images, masks)})``."""
    root = Path(root).expanduser()
    _require_dir(root, "data.root")
    has_pool = (root / "images").exists() or (root / "masks").exists()
    has_splits = (root / "train").exists() or (root / "val").exists()
    if has_pool and has_splits:
        raise UserError(f"data.root '{root}' holds both images/+masks/ and train/+val/; keep one layout (or point "
                        f"data.root at one of them)")
    if not has_pool and not has_splits:
        raise UserError(f"data.root '{root}' has neither images/ nor train/; {_LAYOUT_HINT}")
    if has_pool:
        return "pool", {"pool": (_require_dir(root / "images", "folder"), _require_dir(root / "masks", "folder"))}
    dirs: dict[str, tuple[Path, Path]] = {}
    for split in SPLITS:
        base = root / split
        if split == "test" and not base.exists():
            continue
        _require_dir(base, "folder")
        dirs[split] = (_require_dir(base / "images", "folder"), _require_dir(base / "masks", "folder"))
    return "splits", dirs


def _files_by_stem(folder: Path) -> dict[str, Path]:
    files = [p for p in io.files_with_suffixes(folder) if not p.name.startswith(".")]
    if not files:
        others = sorted(p.name for p in folder.iterdir() if p.is_file() and not p.name.startswith("."))
        extra = f" (it holds {len(others)} other files, e.g. {others[0]})" if others else ""
        raise UserError(f"folder '{folder}' has no image files ({_SUFFIXES}){extra}; add the files or fix data.root")
    by_stem: dict[str, list[Path]] = {}
    for p in files:
        by_stem.setdefault(p.stem, []).append(p)
    dupes = {s: ps for s, ps in by_stem.items() if len(ps) > 1}
    if dupes:
        stem, ps = sorted(dupes.items())[0]
        more = f" ({len(dupes) - 1} more stems too)" if len(dupes) > 1 else ""
        raise UserError(f"folder '{folder}' has several files with stem '{stem}' ({', '.join(p.name for p in ps)})"
                        f"{more}; keep one file per stem")
    return {s: ps[0] for s, ps in by_stem.items()}


def match_pairs(images_dir: Path, masks_dir: Path) -> list[Pair]:
    """Image/mask pairs matched by file stem, sorted by stem; unmatched files on either side are an error."""
    images, masks = _files_by_stem(Path(images_dir)), _files_by_stem(Path(masks_dir))
    lonely_images = sorted(set(images) - set(masks))
    if lonely_images:
        raise UserError(f"{len(lonely_images)} image(s) in '{images_dir}' have no mask with the same stem in "
                        f"'{masks_dir}': {_names(lonely_images)}; add the masks or remove the images")
    lonely_masks = sorted(set(masks) - set(images))
    if lonely_masks:
        raise UserError(f"{len(lonely_masks)} mask(s) in '{masks_dir}' have no image with the same stem in "
                        f"'{images_dir}': {_names(lonely_masks)}; add the images or remove the masks")
    return [Pair(s, images[s], masks[s]) for s in sorted(images)]


def split_pairs(pairs: Sequence[Pair], val_fraction: float, test_fraction: float, seed: int) -> dict[str, list[Pair]]:
    """Deterministic train / val (/ test) split of one pool: a ``seed``-ed permutation of the stem-sorted pairs.

    ``val`` gets ``round(val_fraction · N)`` pairs but at least 1; ``test`` ``round(test_fraction · N)``, at least 1
    when ``test_fraction > 0`` (absent otherwise); ``train`` the rest, at least 1. Each split is sorted by stem.
    """
    pairs = sorted(pairs, key=lambda p: p.stem)
    n = len(pairs)
    n_val = max(1, int(round(val_fraction * n)))
    n_test = max(1, int(round(test_fraction * n))) if test_fraction > 0 else 0
    if n - n_val - n_test < 1:
        need = 2 + (test_fraction > 0)
        raise UserError(f"only {n} image/mask pair(s); data.folders.val_fraction {val_fraction} and test_fraction "
                        f"{test_fraction} leave none for training: add images (at least {need}) or lower the fractions")
    order = np.random.default_rng(int(seed)).permutation(n)
    val_idx, test_idx, train_idx = order[:n_val], order[n_val:n_val + n_test], order[n_val + n_test:]
    out = {"train": [pairs[i] for i in sorted(train_idx)], "val": [pairs[i] for i in sorted(val_idx)]}
    if n_test:
        out["test"] = [pairs[i] for i in sorted(test_idx)]
    return out


def plan(cfg: DataConfig) -> FolderPlan:
    """Find the layout, match the pairs and split them (reads no image data)."""
    if not cfg.root:
        raise UserError("data.root must name the folder holding images/ and masks/ (dataset: folders)")
    layout, dirs = find_split_dirs(Path(cfg.root))
    notes: list[str] = []
    if layout == "pool":
        pairs = match_pairs(*dirs["pool"])
        splits = split_pairs(pairs, cfg.folders.val_fraction, cfg.folders.test_fraction, cfg.seed)
        notes.append(f"{len(pairs)} pairs split by data.seed {cfg.seed}: " +
                     ", ".join(f"{k} {len(v)}" for k, v in splits.items()))
    else:
        splits = {split: match_pairs(*d) for split, d in dirs.items()}
        train_stems = {p.stem for p in splits["train"]}
        for split in ("val", "test"):
            shared = sorted(train_stems & {p.stem for p in splits.get(split, [])})
            if shared:
                notes.append(f"{len(shared)} stem(s) appear in both train/ and {split}/: {_names(shared)}")
    test_is_val = "test" not in splits
    if test_is_val:
        notes.append("no test split (data.folders.test_fraction 0 or no test/ folder): 'test' is the validation split")
    return FolderPlan(layout=layout, splits=splits, test_is_val=test_is_val, notes=notes)


# ---------------------------------------------------------------------------------------------------------- reading
class _Reference:
    """The first image read: every later image must match its channels and size."""

    def __init__(self) -> None:
        self.path: Optional[Path] = None
        self.shape: Optional[tuple[int, int, int]] = None

    def check(self, image: np.ndarray, path: Path) -> None:
        if self.shape is None:
            self.path, self.shape = path, tuple(image.shape)
            return
        h, w, c = image.shape
        rh, rw, rc = self.shape
        if c != rc:
            kinds = {1: "greyscale", 3: "RGB"}
            raise UserError(f"image '{path}' is {kinds.get(c, f'{c}-channel')} but '{self.path}' is "
                            f"{kinds.get(rc, f'{rc}-channel')}; all images must have the same channels: convert "
                            f"them all to greyscale or all to RGB")
        if (h, w) != (rh, rw):
            raise UserError(f"image '{path}' is {h}x{w} but '{self.path}' is {rh}x{rw}; the folders dataset needs all "
                            f"images the same size: resize or crop them (and their masks) to one size")


def _read_pair(pair: Pair, mapping: dict, ref: _Reference) -> tuple[np.ndarray, np.ndarray]:
    image = io.read_image(pair.image)
    if image.shape[2] not in (1, 3):
        raise UserError(f"image '{pair.image}' has {image.shape[2]} channels; use greyscale or RGB images")
    if image.dtype == np.float32 and image.size and (image.min() < 0.0 or image.max() > 1.0):
        raise UserError(f"image '{pair.image}' holds floating-point values in [{image.min():g}, {image.max():g}]; "
                        f"scale them to [0, 1] or save the image as 8- or 16-bit")
    ref.check(image, pair.image)
    raw = io.read_mask(pair.mask)
    io.check_same_shape(image, raw, pair.image, pair.mask)
    try:
        mask = io.map_values(raw, mapping, pair.mask)
    except UserError as exc:
        if pair.mask.suffix.lower() in (".jpg", ".jpeg"):
            raise UserError(f"{exc} (JPEG is lossy and blurs label values: save masks as PNG or TIFF)") from None
        raise
    return image, mask


def read_pairs(pairs: Sequence[Pair], mapping: dict, reference: Optional[_Reference] = None
               ) -> tuple[np.ndarray, np.ndarray]:
    """Read and validate ``pairs``: images ``float32 [N, H, W, C]`` in [0, 1], masks ``uint8 [N, H, W]`` class ids."""
    ref = reference if reference is not None else _Reference()
    images, masks = [], []
    for pair in pairs:
        image, mask = _read_pair(pair, mapping, ref)
        images.append(image)
        masks.append(mask)
    return np.stack(images).astype(np.float32, copy=False), np.stack(masks)


def load(cfg: DataConfig) -> DataBundle:
    """The ``folders`` dataset of ``cfg`` (``data.root``, ``value_map``, ``class_names``, fractions, seed, tiles)."""
    mapping, names = class_map(cfg.value_map, cfg.class_names)
    p = plan(cfg)
    ref = _Reference()
    arrays = {split: read_pairs(pairs, mapping, ref) for split, pairs in p.splits.items()}
    train_images, train_masks = arrays["train"]
    evals = {}
    for split in ("val", "test"):
        if split not in arrays:
            continue
        images, masks = arrays[split]
        if cfg.tile_size is not None:
            images, masks = io.tiles(images, cfg.tile_size), io.tiles(masks, cfg.tile_size)
        evals[split] = (images, masks)
    if p.test_is_val:
        evals["test"] = evals["val"]
    return DataBundle(
        class_names=names,
        in_channels=int(train_images.shape[-1]),
        train_images=train_images,
        train_masks=train_masks,
        splits=evals,
    )

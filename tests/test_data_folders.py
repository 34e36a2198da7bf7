"""The generic ``folders`` dataset loader (axial_kd_tf.data.folders), on tiny image/mask files in temp dirs."""

from __future__ import annotations

import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest

from axial_kd_tf.config import Config, DataConfig, FoldersData, config_from_dict
from axial_kd_tf.data import load_data
from axial_kd_tf.data import folders
from axial_kd_tf.errors import UserError

SIZE = 16
VALUE_MAP = {0: 0, 128: 1, 255: 2}


def _pair(index: int, size: int = SIZE, rgb: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """A deterministic image and its mask (values 0 / 128 / 255); the image brightness encodes the class."""
    rng = np.random.default_rng(index)
    mask = np.array([0, 128, 255], np.uint8)[rng.integers(0, 3, (size, size))]
    image = (mask // 2 + 10).astype(np.uint8)
    if rgb:
        image = np.stack([image, image // 2, 255 - image], axis=-1)  # BGR on disk
    return image, mask


def _make(folder: Path, stems, image_ext: str = ".png", mask_ext: str = ".png", **kw) -> None:
    (folder / "images").mkdir(parents=True, exist_ok=True)
    (folder / "masks").mkdir(parents=True, exist_ok=True)
    for i, stem in enumerate(stems):
        image, mask = _pair(zlib.crc32(stem.encode()) % 1000, **kw)
        assert cv2.imwrite(str(folder / "images" / f"{stem}{image_ext}"), image)
        assert cv2.imwrite(str(folder / "masks" / f"{stem}{mask_ext}"), mask)


def _stems(n: int, prefix: str = "s") -> list[str]:
    return [f"{prefix}{i:02d}" for i in range(n)]


def _cfg(root: Path, **kw) -> DataConfig:
    own = {k: kw.pop(k) for k in ("val_fraction", "test_fraction") if k in kw}  # the data.folders keys
    return DataConfig(dataset="folders", root=str(root), value_map=dict(kw.pop("value_map", VALUE_MAP)),
                      folders=FoldersData(**own), **kw)


def _error(cfg: DataConfig, match: str) -> str:
    with pytest.raises(UserError, match=match) as exc:
        folders.load(cfg)
    msg = str(exc.value)
    assert "\n" not in msg
    return msg


@pytest.fixture()
def pool(tmp_path: Path) -> Path:
    _make(tmp_path, _stems(10))
    return tmp_path


# --------------------------------------------------------------------------------------------------------- layouts
def test_pool_layout(pool: Path) -> None:
    bundle = folders.load(_cfg(pool))
    assert bundle.class_names == ("class0", "class1", "class2") and bundle.in_channels == 1
    assert bundle.train_images.shape == (8, SIZE, SIZE, 1) and bundle.train_images.dtype == np.float32
    assert bundle.train_masks.shape == (8, SIZE, SIZE) and bundle.train_masks.dtype == np.uint8
    val_images, val_masks = bundle.split("val")
    assert val_images.shape == (2, SIZE, SIZE, 1)
    assert bundle.splits["test"] is bundle.splits["val"]  # no test fraction: test = val
    assert 0.0 <= bundle.train_images.min() and bundle.train_images.max() <= 1.0
    # the mask values went through the value map, and match the image that encodes them
    expected = np.round((bundle.train_images[..., 0] * 255 - 10) * 2 / 128).astype(np.uint8)
    np.testing.assert_array_equal(bundle.train_masks, np.minimum(expected, 2))
    assert set(np.unique(bundle.train_masks)) == {0, 1, 2}


def test_pool_split_is_deterministic_and_disjoint(pool: Path) -> None:
    def splits(seed: int, **kw) -> dict:
        p = folders.plan(_cfg(pool, seed=seed, **kw))
        return {k: [x.stem for x in v] for k, v in p.splits.items()}

    a = splits(0, val_fraction=0.2, test_fraction=0.3)
    assert a == splits(0, val_fraction=0.2, test_fraction=0.3)
    assert (len(a["train"]), len(a["val"]), len(a["test"])) == (5, 2, 3)
    assert sorted(a["train"] + a["val"] + a["test"]) == _stems(10)
    assert all(v == sorted(v) for v in a.values())
    assert any(splits(seed, val_fraction=0.2, test_fraction=0.3) != a for seed in range(1, 5))
    # val gets at least one image even with val_fraction 0
    b = splits(0, val_fraction=0.0)
    assert len(b["val"]) == 1 and len(b["train"]) == 9 and "test" not in b


def test_pool_with_test_fraction_loads_three_splits(pool: Path) -> None:
    bundle = folders.load(_cfg(pool, test_fraction=0.2))
    assert len(bundle.train_images) == 6 and len(bundle.splits["val"][0]) == 2 and len(bundle.splits["test"][0]) == 2
    assert bundle.splits["test"] is not bundle.splits["val"]


@pytest.mark.parametrize("with_test", [True, False])
def test_explicit_split_layout(tmp_path: Path, with_test: bool) -> None:
    _make(tmp_path / "train", _stems(4, "tr"))
    _make(tmp_path / "val", _stems(2, "va"))
    if with_test:
        _make(tmp_path / "test", _stems(3, "te"))
    bundle = folders.load(_cfg(tmp_path, val_fraction=0.5, test_fraction=0.3))  # fractions ignored
    assert len(bundle.train_images) == 4 and len(bundle.splits["val"][0]) == 2
    assert len(bundle.splits["test"][0]) == (3 if with_test else 2)
    assert (bundle.splits["test"] is bundle.splits["val"]) != with_test
    p = folders.plan(_cfg(tmp_path))
    assert p.layout == "splits" and p.test_is_val != with_test
    assert [x.stem for x in p.splits["train"]] == _stems(4, "tr")


def test_rgb_images_class_names_and_mixed_suffixes(tmp_path: Path) -> None:
    _make(tmp_path, _stems(3), image_ext=".tif", mask_ext=".png", rgb=True)
    (tmp_path / "images" / "notes.txt").write_text("ignored")
    (tmp_path / "masks" / ".DS_Store").write_bytes(b"\0")
    bundle = folders.load(_cfg(tmp_path, value_map={"0": 0, "128": 1, "255": 1}, class_names=["bg", "fg"]))
    assert bundle.in_channels == 3 and bundle.class_names == ("bg", "fg")
    assert bundle.train_images.shape == (2, SIZE, SIZE, 3) and set(np.unique(bundle.train_masks)) == {0, 1}
    # RGB channel order: the files hold (B, G, R) = (v, v // 2, 255 - v)
    image = bundle.train_images[0]
    np.testing.assert_allclose(image[..., 0] * 255, 255 - np.round(image[..., 2] * 255), atol=1e-3)


def test_tile_size_tiles_the_evaluation_splits(pool: Path) -> None:
    bundle = folders.load(_cfg(pool, tile_size=8))
    assert bundle.train_images.shape == (8, SIZE, SIZE, 1)  # training keeps full images (random crops later)
    assert bundle.splits["val"][0].shape == (2 * 4, 8, 8, 1) and bundle.splits["val"][1].shape == (8, 8, 8)
    _error(_cfg(pool, tile_size=12), "data.tile_size 12 does not divide")


def test_load_data_via_config_and_train_dataset(pool: Path) -> None:
    cfg = config_from_dict({"data": {"dataset": "folders", "root": str(pool), "value_map": {0: 0, 128: 1, 255: 2},
                                     "class_names": ["a", "b", "c"], "crop_size": 8, "seed": 3}})
    bundle = load_data(cfg)
    assert bundle.num_classes == 3 and bundle.class_names == ("a", "b", "c")
    ds = bundle.train_dataset(batch_size=4, seed=cfg.data.seed, crop_size=cfg.data.crop_size, augment=True)
    x, y = next(iter(ds))
    assert x.shape == (4, 8, 8, 1) and x.dtype.name == "float32"
    assert y.shape == (4, 8, 8) and y.dtype.name == "int32" and int(y.numpy().max()) <= 2
    xv, yv = next(iter(bundle.eval_dataset("val", 4)))
    assert xv.shape == (2, SIZE, SIZE, 1) and yv.shape == (2, SIZE, SIZE)


# ---------------------------------------------------------------------------------------------------------- errors
def test_class_map_errors(pool: Path) -> None:
    assert folders.class_map({0: 1, 255: 0}, None) == ({0: 1, 255: 0}, ("class0", "class1"))
    with pytest.raises(UserError, match=r"data.value_map class ids \[0, 2\] must be contiguous"):
        folders.class_map({0: 0, 255: 2}, None)
    with pytest.raises(UserError, match="data.class_names has 3 names but data.value_map has 2 class ids"):
        folders.class_map({0: 0, 255: 1}, ["a", "b", "c"])
    with pytest.raises(UserError, match="data.class_names repeats a"):
        folders.class_map({0: 0, 255: 1}, ["a", "a"])
    with pytest.raises(UserError, match="data.value_map has key -1"):
        folders.class_map({-1: 0, 0: 1}, None)
    with pytest.raises(UserError, match="data.value_map has key 'x'"):
        folders.class_map({"x": 0}, None)
    with pytest.raises(UserError, match="class ids must be integers"):
        folders.class_map({0: "a"}, None)
    with pytest.raises(UserError, match="data.value_map must map"):
        folders.class_map({}, None)
    _error(_cfg(pool, value_map={0: 0, 128: 1, 255: 3}), "contiguous")


def test_missing_root_and_folders(tmp_path: Path) -> None:
    msg = _error(_cfg(tmp_path / "nowhere"), "data.root .* does not exist")
    assert "images/ and masks/" in msg
    _error(_cfg(tmp_path), "has neither images/ nor train/")
    (tmp_path / "images").mkdir()
    msg = _error(_cfg(tmp_path), "folder .*masks' does not exist")
    assert str(tmp_path / "masks") in msg
    (tmp_path / "train").mkdir()
    _error(_cfg(tmp_path), "holds both images/.masks/ and train/.val/")


def test_explicit_layout_missing_val(tmp_path: Path) -> None:
    _make(tmp_path / "train", _stems(2))
    msg = _error(_cfg(tmp_path), "does not exist")
    assert str(tmp_path / "val") in msg


def test_empty_folder(tmp_path: Path) -> None:
    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    (tmp_path / "images" / "x.bmp").write_bytes(b"x")
    msg = _error(_cfg(tmp_path), "has no image files")
    assert str(tmp_path / "images") in msg and "x.bmp" in msg


def test_unpaired_stems(pool: Path) -> None:
    for stem in ("extra1", "extra2"):
        image, _ = _pair(0)
        cv2.imwrite(str(pool / "images" / f"{stem}.png"), image)
    msg = _error(_cfg(pool), r"2 image\(s\) in .* have no mask")
    assert "extra1, extra2" in msg
    for stem in ("extra1", "extra2"):
        (pool / "images" / f"{stem}.png").unlink()
    (pool / "images" / "s03.png").unlink()
    msg = _error(_cfg(pool), r"1 mask\(s\) in .* have no image")
    assert "s03" in msg and "add the images or remove the masks" in msg


def test_many_unpaired_stems_are_shortened(tmp_path: Path) -> None:
    _make(tmp_path, _stems(2))
    for i in range(8):
        cv2.imwrite(str(tmp_path / "images" / f"z{i}.png"), _pair(0)[0])
    assert "(+3 more)" in _error(_cfg(tmp_path), "have no mask")


def test_duplicate_stems(pool: Path) -> None:
    cv2.imwrite(str(pool / "images" / "s01.tif"), _pair(0)[0])
    msg = _error(_cfg(pool), "several files with stem 's01'")
    assert "s01.png, s01.tif" in msg and "keep one file per stem" in msg


def test_image_mask_size_mismatch(pool: Path) -> None:
    cv2.imwrite(str(pool / "masks" / "s04.png"), np.zeros((SIZE, SIZE + 2), np.uint8))
    msg = _error(_cfg(pool), "but its mask")
    assert "s04.png" in msg and f"{SIZE}x{SIZE + 2}" in msg


def test_images_of_different_sizes(pool: Path) -> None:
    image, mask = _pair(0, size=SIZE * 2)
    cv2.imwrite(str(pool / "images" / "s07.png"), image)
    cv2.imwrite(str(pool / "masks" / "s07.png"), mask)
    msg = _error(_cfg(pool), "the folders dataset needs all images the same size")
    assert "s07.png" in msg and "resize or crop" in msg


def test_images_with_different_channels(pool: Path) -> None:
    cv2.imwrite(str(pool / "images" / "s05.png"), _pair(5, rgb=True)[0])
    msg = _error(_cfg(pool), "is RGB but .* is greyscale")
    assert "s05.png" in msg


def test_mask_values_outside_the_map(pool: Path) -> None:
    msg = _error(_cfg(pool, value_map={0: 0, 255: 1}), "outside the value map")
    assert "[128]" in msg and "masks" in msg and "data.value_map" in msg


def test_jpeg_mask_hint(tmp_path: Path) -> None:
    _make(tmp_path, _stems(3), mask_ext=".jpg")
    msg = _error(_cfg(tmp_path), "outside the value map")
    assert "JPEG is lossy" in msg


def test_colour_mask(pool: Path) -> None:
    colour = np.zeros((SIZE, SIZE, 3), np.uint8)
    colour[..., 2] = 255
    cv2.imwrite(str(pool / "masks" / "s02.png"), colour)
    assert "s02.png" in _error(_cfg(pool), "colour image")


@pytest.mark.parametrize("kind", ["images", "masks"])
def test_corrupt_file(pool: Path, kind: str) -> None:
    (pool / kind / "s06.png").write_bytes(b"garbage")
    msg = _error(_cfg(pool), "cannot read image")
    assert str(pool / kind / "s06.png") in msg


def test_too_few_pairs_and_crop_too_large(tmp_path: Path) -> None:
    _make(tmp_path, _stems(1))
    _error(_cfg(tmp_path), r"only 1 image/mask pair\(s\)")
    _make(tmp_path, _stems(3))
    with pytest.raises(UserError, match=f"'data.crop_size' \\({SIZE + 8}\\) is larger than the {SIZE}x{SIZE} training "
                                        f"images of data.dataset 'folders' in '{tmp_path}'; lower it to at most {SIZE}"):
        load_data(Config(data=_cfg(tmp_path, crop_size=SIZE + 8)))


def test_config_requires_root_and_value_map(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="data.root"):
        config_from_dict({"data": {"dataset": "folders", "value_map": {0: 0}}})
    with pytest.raises(UserError, match="data.value_map"):
        config_from_dict({"data": {"dataset": "folders", "root": str(tmp_path)}})

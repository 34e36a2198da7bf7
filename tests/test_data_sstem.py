"""ssTEM Drosophila loader: the lab's fold protocol, label map and file validation, on generated fixtures in the
upstream format (``raw/NN.tif`` + ``labels/labels000000NN.png``); plus an opt-in test on the real data."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from axial_kd_tf.config import config_from_dict
from axial_kd_tf.data import load_data, sstem
from axial_kd_tf.errors import UserError
from helpers import SSTEM_FIXTURE_SIZE, write_sstem_fixture

SIZE = SSTEM_FIXTURE_SIZE


def load(root: Path, **data) -> object:
    cfg = config_from_dict({"data": {"dataset": "sstem", "root": str(root), **data}})
    return load_data(cfg)


@pytest.fixture(scope="module")
def fixture_root(tmp_path_factory) -> tuple[Path, dict]:
    root = tmp_path_factory.mktemp("sstem")
    return root, write_sstem_fixture(root)


def test_fold_blocks_cover_every_image_once_per_fold_and_rotate_the_test_block():
    test_blocks = []
    for fold in range(5):
        b = sstem.fold_blocks(fold)
        assert len(b["train"]) == 12 and len(b["val"]) == 4 and len(b["test"]) == 4
        assert sorted(b["train"] + b["val"] + b["test"]) == list(range(20))
        for split in ("val", "test"):  # consecutive blocks of 4
            assert b[split] == list(range(b[split][0], b[split][0] + 4)) and b[split][0] % 4 == 0
        test_blocks.append(b["test"][0] // 4)
    assert sorted(test_blocks) == [0, 1, 2, 3, 4]
    assert sstem.fold_blocks(0) == {"train": list(range(12)), "val": list(range(12, 16)), "test": list(range(16, 20))}
    with pytest.raises(UserError, match="data.sstem.fold"):
        sstem.fold_blocks(5)


@pytest.mark.parametrize("fold", [0, 3])
def test_load_splits_values_and_label_map(fixture_root, fold):
    root, sections = fixture_root
    bundle = load(root, fold=fold, tile_size=None)
    blocks = sstem.fold_blocks(fold)
    assert bundle.class_names == sstem.CLASS_NAMES and bundle.in_channels == 1
    assert bundle.train_images.shape == (12, SIZE, SIZE, 1) and bundle.train_images.dtype == np.float32
    for split, (images, masks) in [("train", (bundle.train_images, bundle.train_masks)), *bundle.splits.items()]:
        assert [int(round(v * 255)) for v in images[:, 0, 0, 0]] == blocks[split]
        for k, i in enumerate(blocks[split]):
            raw, labels = sections[i]
            np.testing.assert_allclose(images[k, ..., 0], raw / 255.0, atol=1e-7)
            expected = np.vectorize(sstem.VALUE_MAP.get)(labels)
            np.testing.assert_array_equal(masks[k], expected)
    assert set(np.unique(bundle.train_masks)) == {0, 1, 2, 3, 4}


def test_eval_splits_are_cut_into_row_major_tiles(fixture_root):
    root, sections = fixture_root
    bundle = load(root, fold=0, tile_size=SIZE // 4)
    t = SIZE // 4
    images, masks = bundle.split("test")
    assert images.shape == (4 * 16, t, t, 1) and masks.shape == (4 * 16, t, t)
    raw, labels = sections[16 + 1]  # second test image, its tile at row 2, column 3
    np.testing.assert_allclose(images[16 + 2 * 4 + 3, ..., 0], raw[2 * t:3 * t, 3 * t:4 * t] / 255.0, atol=1e-7)
    assert bundle.train_images.shape[1:3] == (SIZE, SIZE)  # training keeps whole sections for random crops


def _broken_copy(src: Path, dst: Path) -> Path:
    import shutil

    shutil.copytree(src, dst)
    return dst


def test_validation_errors_name_the_file(fixture_root, tmp_path):
    root, _ = fixture_root
    d = _broken_copy(root, tmp_path / "missing")
    (d / sstem.label_name(7)).unlink()
    with pytest.raises(UserError, match=r"labels00000007\.png' is missing"):
        load(d)

    d = _broken_copy(root, tmp_path / "extra")
    cv2.imwrite(str(d / "raw" / "20.tif"), np.zeros((SIZE, SIZE), np.uint8))
    with pytest.raises(UserError, match=r"unexpected file .*20\.tif"):
        load(d)

    d = _broken_copy(root, tmp_path / "badvalue")
    bad = np.full((SIZE, SIZE), 255, np.uint8)
    bad[3, 3] = 17
    cv2.imwrite(str(d / sstem.label_name(2)), bad)
    with pytest.raises(UserError, match=r"labels00000002\.png' has values \[17\] outside the value map"):
        load(d)

    d = _broken_copy(root, tmp_path / "shape")
    cv2.imwrite(str(d / sstem.label_name(4)), np.full((SIZE, SIZE // 2), 255, np.uint8))
    with pytest.raises(UserError, match=r"04\.tif' is 32x32 but its mask .*labels00000004\.png' is 32x16"):
        load(d)

    d = _broken_copy(root, tmp_path / "corrupt")
    (d / sstem.raw_name(9)).write_bytes(b"not a tiff at all")
    with pytest.raises(UserError, match=r"cannot read image .*09\.tif'"):
        load(d)

    with pytest.raises(UserError, match=r"does not exist; run `python -m axial_kd_tf.data download sstem`"):
        load(tmp_path / "nowhere")


def test_load_errors_are_single_lines_through_the_cli(fixture_root, tmp_path, capsys):
    from axial_kd_tf.cli import train_main

    d = _broken_copy(fixture_root[0], tmp_path / "cli")
    (d / sstem.raw_name(0)).unlink()
    code = train_main(["--config", "quickstart", "--set", "data.dataset=sstem", "--set", f"data.root={d}",
                       "--set", "data.crop_size=16", "--run-dir", str(tmp_path / "run")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "00.tif' is missing" in err and len(err.splitlines()) == 1


def test_fixture_trains_through_the_pipeline(fixture_root):
    root, _ = fixture_root
    bundle = load(root, crop_size=16, tile_size=16)
    x, y = next(iter(bundle.train_dataset(batch_size=4, seed=0, crop_size=16, augment=True)))
    assert x.shape == (4, 16, 16, 1) and y.shape == (4, 16, 16)
    assert 0.0 <= float(np.min(x)) and float(np.max(x)) <= 1.0


def test_real_sstem_protocol_and_class_shares(sstem_dir: Path):
    """The real data (opt-in: ``AXIAL_KD_SSTEM_DIR``): the protocol's split sizes and the class shares published in
    the data README."""
    bundle = load(sstem_dir, fold=0, tile_size=256, crop_size=256)
    assert bundle.train_images.shape == (12, 1024, 1024, 1)
    for split in ("val", "test"):
        images, masks = bundle.split(split)
        assert images.shape == (64, 256, 256, 1) and masks.shape == (64, 256, 256)
    every = np.concatenate([bundle.train_masks.ravel(), *(bundle.split(s)[1].ravel() for s in ("val", "test"))])
    shares = np.bincount(every, minlength=5) / every.size * 100
    np.testing.assert_allclose(shares, [17.16, 5.38, 0.56, 2.85, 74.06], atol=0.006)
    assert 0.0 <= bundle.train_images.min() and bundle.train_images.max() <= 1.0

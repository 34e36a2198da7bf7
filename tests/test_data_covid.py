"""MedSeg COVID-19 CT loader: orientation, intensity scaling, splits, tiles, and one-line errors on bad files.

Fixtures are small NIfTI volumes written with nibabel in the real files' format (``.nii.gz``, [X, Y, slices], masks
stored as floats), 32×32×10 with ``train_slices`` / ``val_slices`` overridden.
"""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from axial_kd_tf.config import CovidData, DataConfig, config_from_dict
from axial_kd_tf.data import covid, load_data
from axial_kd_tf.data.io import class_frequencies
from axial_kd_tf.errors import UserError
from helpers import COVID_SHAPE, covid_volumes, save_nifti, write_covid_fixture

X, Y, Z = COVID_SHAPE


def _cfg(root: Path, **kw) -> DataConfig:
    own = {k: kw.pop(k) for k in ("window", "train_slices", "val_slices") if k in kw}  # the data.covid keys
    return DataConfig(dataset="covid", root=str(root), covid=CovidData(**{"train_slices": 6, "val_slices": 2, **own}),
                      **kw)


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_covid_fixture(tmp_path_factory.mktemp("covid"))


def test_orientation_upright_like_the_lab_loader(root: Path) -> None:
    images, masks = covid.load_arrays(root, window=[-1000, 500])
    assert images.shape == (Z, Y, X, 1) and masks.shape == (Z, Y, X)
    first = images[0, ..., 0]
    # The marker lands top-left: its long arm (NIfTI axis 1) runs down the left column, the short one along the top row.
    assert np.all(first[0:6, 0] == 1.0) and first[6, 0] < 1.0
    assert np.all(first[0, 0:3] == 1.0) and first[0, 3] < 1.0
    # Mask block of 4 (axis 0) × 8 (axis 1) voxels becomes 8 rows × 4 columns at rows 20:28, columns 8:12.
    assert np.all(masks[1, 20:28, 8:12] == 1) and masks[1].sum() == 8 * 4
    raw = nib.load(str(root / covid.IMAGE_FILE)).get_fdata()
    expected = np.fliplr(np.rot90(raw[:, :, 3], k=3))
    np.testing.assert_allclose(images[3, ..., 0], (np.clip(expected, -1000, 500) + 1000) / 1500, atol=1e-6)


def test_load_splits_dtypes_and_order(root: Path) -> None:
    bundle = covid.load(_cfg(root))
    assert bundle.class_names == ("background", "ground-glass", "consolidation", "pleural effusion")
    assert bundle.num_classes == 4 and bundle.in_channels == 1
    assert bundle.train_images.shape == (6, 32, 32, 1) and bundle.train_images.dtype == np.float32
    assert bundle.train_masks.shape == (6, 32, 32) and bundle.train_masks.dtype == np.uint8
    (vi, vm), (ti, tm) = bundle.splits["val"], bundle.splits["test"]
    assert vi.shape == (2, 32, 32, 1) and ti.shape == (2, 32, 32, 1) and vm.dtype == tm.dtype == np.uint8
    # Slice order: train 0-5, val 6-7, test 8-9 (slice i's mask block holds class i mod 4).
    assert [int(m.max()) for m in bundle.train_masks] == [0, 1, 2, 3, 0, 1]
    assert [int(m.max()) for m in vm] == [2, 3] and [int(m.max()) for m in tm] == [0, 1]
    # Min-max over the whole volume: the minimum (-1000, slice 0) → 0, the marker maximum (500) → 1.
    assert bundle.train_images.min() == 0.0 and bundle.train_images.max() == 1.0
    np.testing.assert_allclose(ti[1, 10, 10, 0], (-1000 + 90 + 1000) / 1500, atol=1e-6)


def test_window_clips_and_scales(root: Path) -> None:
    bundle = covid.load(_cfg(root, window=[-1000, -900]))
    x = bundle.train_images
    assert x.min() >= 0.0 and x.max() <= 1.0
    np.testing.assert_allclose(x[5, 10, 10, 0], 0.5, atol=1e-6)  # -1000 + 50 HU in a [-1000, -900] window
    assert x[0, 0, 0, 0] == 1.0  # 500 HU clipped to the top of the window


def test_tile_size_cuts_eval_splits_only(root: Path) -> None:
    bundle = covid.load(_cfg(root, tile_size=16))
    assert bundle.train_images.shape == (6, 32, 32, 1)
    assert bundle.splits["val"][0].shape == (8, 16, 16, 1) and bundle.splits["val"][1].shape == (8, 16, 16)
    assert bundle.splits["test"][0].shape == (8, 16, 16, 1)


def test_load_data_through_config_and_pipeline(root: Path) -> None:
    cfg = config_from_dict({"data": {"dataset": "covid", "root": str(root), "crop_size": 16,
                                     "covid": {"train_slices": 6, "val_slices": 2}}})
    bundle = load_data(cfg)
    images, masks = next(iter(bundle.train_dataset(batch_size=2, seed=0, crop_size=16, augment=True)))
    assert tuple(images.shape) == (2, 16, 16, 1) and tuple(masks.shape) == (2, 16, 16)
    assert bundle.split("test")[0].shape == (2, 32, 32, 1)


def test_crop_size_larger_than_the_slices_names_the_key(root: Path) -> None:
    cfg = config_from_dict({"data": {"dataset": "covid", "root": str(root), "crop_size": X + 8,
                                     "covid": {"train_slices": 6, "val_slices": 2}}})
    with pytest.raises(UserError, match=f"'data.crop_size' \\({X + 8}\\) is larger than the {X}x{Y} training images "
                                        "of data.dataset 'covid'"):
        load_data(cfg)


def _one_line(exc: pytest.ExceptionInfo) -> str:
    message = str(exc.value)
    assert "\n" not in message
    return message


def _bad_image(**changes) -> np.ndarray:
    image = covid_volumes()[0]
    for key, value in changes.items():
        image[key] = value
    return image


@pytest.mark.parametrize("case, fragment", [
    ("missing_image", covid.IMAGE_FILE),
    ("truncated_mask", covid.MASK_FILE),
    ("not_gzip", covid.IMAGE_FILE),
    ("shape_mismatch", covid.MASK_FILE),
    ("mask_value_5", "outside the class map"),
    ("mask_fractional", "non-integer"),
    ("image_nan", "NaN"),
    ("image_rank_2", "3-D volume"),
])
def test_bad_files_raise_one_line_errors_naming_the_file(tmp_path: Path, case: str, fragment: str) -> None:
    image, mask = covid_volumes()
    root = write_covid_fixture(tmp_path / "d")
    if case == "missing_image":
        (root / covid.IMAGE_FILE).unlink()
    elif case == "truncated_mask":
        data = (root / covid.MASK_FILE).read_bytes()
        (root / covid.MASK_FILE).write_bytes(data[: len(data) // 2])
    elif case == "not_gzip":
        (root / covid.IMAGE_FILE).write_bytes(b"this is not a NIfTI file")
    elif case == "shape_mismatch":
        save_nifti(root / covid.MASK_FILE, mask[:, :16])
    elif case == "mask_value_5":
        mask[0, 0, 0] = 5
        save_nifti(root / covid.MASK_FILE, mask)
    elif case == "mask_fractional":
        mask[0, 0, 0] = 1.5
        save_nifti(root / covid.MASK_FILE, mask)
    elif case == "image_nan":
        image[3, 3, 3] = np.nan
        save_nifti(root / covid.IMAGE_FILE, image)
    elif case == "image_rank_2":
        save_nifti(root / covid.IMAGE_FILE, image[:, :, 0])
    with pytest.raises(UserError) as exc:
        covid.load(_cfg(root))
    message = _one_line(exc)
    assert fragment in message
    assert str(root) in message  # names the file


def test_split_counts_beyond_depth_name_the_keys(root: Path) -> None:
    with pytest.raises(UserError) as exc:
        covid.load(_cfg(root, train_slices=8, val_slices=2))
    message = _one_line(exc)
    assert "data.covid.train_slices" in message and "data.covid.val_slices" in message and covid.IMAGE_FILE in message


def test_missing_root_names_the_download_command(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AXIAL_KD_DATA_DIR", str(tmp_path / "cache"))
    with pytest.raises(UserError) as exc:
        covid.load(DataConfig(dataset="covid"))
    assert "python -m axial_kd_tf.data download covid" in _one_line(exc)


def test_class_weights_from_frequencies(root: Path) -> None:
    freqs = [0.5, 0.25, 0.25, 0.0]
    median = covid.class_weights_from_frequencies(freqs, "median")
    np.testing.assert_allclose(median, [0.5, 1.0, 1.0, 1.0])  # absent class: the largest other weight
    inverse = covid.class_weights_from_frequencies(freqs, "inverse")
    np.testing.assert_allclose(inverse, [2 / 3, 4 / 3, 4 / 3, 4 / 3])
    assert abs(sum(f * w for f, w in zip(freqs, inverse)) - 1.0) < 1e-12  # pixel-weighted mean weight 1
    bundle = covid.load(_cfg(root))
    weights = covid.class_weights_from_frequencies(class_frequencies(bundle.train_masks, 4))
    assert len(weights) == 4 and weights[0] < min(weights[1:])  # background is the most frequent class
    with pytest.raises(UserError, match="median"):
        covid.class_weights_from_frequencies(freqs, "sqrt")
    with pytest.raises(UserError):
        covid.class_weights_from_frequencies([0, 0])



def test_class_weights_cli(root: Path, capsys: pytest.CaptureFixture) -> None:
    from axial_kd_tf.data.__main__ import main

    # The default split (70 / 15 slices) does not fit this 10-slice fixture: a one-line error naming the keys.
    assert main(["class-weights", "covid", "--dir", str(root)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: data.covid.train_slices (70)")
    assert main(["class-weights", "covid", "--dir", str(root), "--set", "data.covid.train_slices=6",
                 "--set", "data.covid.val_slices=2"]) == 0
    out = capsys.readouterr().out
    assert "ground-glass" in out and "--set distill.class_weights=[" in out

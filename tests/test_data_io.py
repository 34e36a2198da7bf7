"""Unit tests of the shared file readers and helpers in axial_kd_tf.data.io."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from axial_kd_tf.data import io
from axial_kd_tf.errors import UserError


def _write(path: Path, array: np.ndarray) -> Path:
    assert cv2.imwrite(str(path), array), path
    return path


def _one_line(exc: pytest.ExceptionInfo) -> str:
    msg = str(exc.value)
    assert "\n" not in msg
    return msg


# ------------------------------------------------------------------------------------------------------ read_image
def test_read_image_uint8_grey(tmp_path: Path) -> None:
    raw = np.arange(12, dtype=np.uint8).reshape(3, 4) * 20
    img = io.read_image(_write(tmp_path / "a.png", raw))
    assert img.shape == (3, 4, 1) and img.dtype == np.float32
    np.testing.assert_allclose(img[..., 0], raw / 255.0, rtol=1e-6)


def test_read_image_uint16_grey(tmp_path: Path) -> None:
    raw = np.array([[0, 1000], [40000, 65535]], dtype=np.uint16)
    img = io.read_image(_write(tmp_path / "a.png", raw))
    assert img.shape == (2, 2, 1) and img.dtype == np.float32
    np.testing.assert_allclose(img[..., 0], raw / 65535.0, rtol=1e-6)


def test_read_image_rgb_order_and_rgba_alpha_dropped(tmp_path: Path) -> None:
    bgr = np.zeros((2, 3, 3), np.uint8)
    bgr[0, 0] = (0, 0, 255)  # red in OpenCV's BGR order
    bgr[1, 2] = (255, 0, 0)  # blue
    rgb = io.read_image(_write(tmp_path / "rgb.png", bgr))
    assert rgb.shape == (2, 3, 3)
    np.testing.assert_array_equal(rgb[0, 0], [1.0, 0.0, 0.0])
    np.testing.assert_array_equal(rgb[1, 2], [0.0, 0.0, 1.0])
    bgra = np.concatenate([bgr, np.full((2, 3, 1), 128, np.uint8)], axis=-1)
    rgba = io.read_image(_write(tmp_path / "rgba.png", bgra))
    np.testing.assert_array_equal(rgba, rgb)


def test_read_image_float_tiff_nan_is_an_error(tmp_path: Path) -> None:
    raw = np.array([[0.25, np.nan]], dtype=np.float32)
    path = _write(tmp_path / "f.tif", raw)
    with pytest.raises(UserError, match="NaN") as exc:
        io.read_image(path)
    assert str(path) in _one_line(exc)


@pytest.mark.parametrize("content", [b"", b"not an image at all", b"\x89PNG\r\n\x1a\n" + b"\0" * 20])
def test_corrupt_file_names_the_path(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "broken.png"
    path.write_bytes(content)
    for reader in (io.read_image, io.read_mask):
        with pytest.raises(UserError, match="cannot read image") as exc:
            reader(path)
        assert str(path) in _one_line(exc) and "replace or remove" in str(exc.value)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="is missing"):
        io.read_image(tmp_path / "nope.png")


# ------------------------------------------------------------------------------------------------------- read_mask
def test_read_mask_grey_and_rgb_with_equal_channels(tmp_path: Path) -> None:
    raw = np.array([[0, 128], [255, 0]], np.uint8)
    grey = io.read_mask(_write(tmp_path / "g.png", raw))
    np.testing.assert_array_equal(grey, raw)
    rgb = io.read_mask(_write(tmp_path / "rgb.png", np.repeat(raw[..., None], 3, axis=-1)))
    assert rgb.ndim == 2
    np.testing.assert_array_equal(rgb, raw)
    rgba = np.concatenate([np.repeat(raw[..., None], 3, axis=-1), np.full((2, 2, 1), 255, np.uint8)], axis=-1)
    np.testing.assert_array_equal(io.read_mask(_write(tmp_path / "rgba.png", rgba)), raw)  # alpha ignored
    wide = io.read_mask(_write(tmp_path / "w.png", np.array([[0, 1000]], np.uint16)))
    assert wide.dtype == np.uint16 and wide[0, 1] == 1000


def test_read_mask_colour_is_an_error(tmp_path: Path) -> None:
    colour = np.zeros((2, 2, 3), np.uint8)
    colour[0, 0] = (0, 0, 255)
    path = _write(tmp_path / "c.png", colour)
    with pytest.raises(UserError, match="colour image") as exc:
        io.read_mask(path)
    assert str(path) in _one_line(exc)


def test_read_mask_float_is_an_error(tmp_path: Path) -> None:
    path = _write(tmp_path / "f.tif", np.zeros((2, 2), np.float32))
    with pytest.raises(UserError, match="integer label images"):
        io.read_mask(path)


# ------------------------------------------------------------------------------------------------------ map_values
def test_map_values_good() -> None:
    mask = np.array([[0, 128], [255, 128]], np.uint8)
    out = io.map_values(mask, {0: 0, 128: 1, 255: 2}, "m.png")
    assert out.dtype == np.uint8
    np.testing.assert_array_equal(out, [[0, 1], [2, 1]])
    # several values may share a class; a map larger than the mask's values is fine
    np.testing.assert_array_equal(io.map_values(mask, {0: 0, 128: 1, 255: 1, 300: 0}, "m.png"), [[0, 1], [1, 1]])


def test_map_values_outside_the_map() -> None:
    mask = np.array([[0, 7], [255, 9]], np.uint16)
    with pytest.raises(UserError) as exc:
        io.map_values(mask, {0: 0, 255: 1}, "dir/m.png")
    msg = _one_line(exc)
    assert "dir/m.png" in msg and "[7, 9]" in msg and "data.value_map" in msg


def test_map_values_negative_values_and_keys() -> None:
    with pytest.raises(UserError, match="negative"):
        io.map_values(np.array([[-1, 0]]), {0: 0}, "m.png")
    with pytest.raises(UserError, match="non-negative"):
        io.map_values(np.array([[0, 1]]), {-1: 0, 0: 1, 1: 0}, "m.png")


def test_check_same_shape() -> None:
    io.check_same_shape(np.zeros((4, 5, 1)), np.zeros((4, 5)), Path("i.png"), Path("m.png"))
    with pytest.raises(UserError, match=r"'i.png' is 4x5 but its mask 'm.png' is 4x6"):
        io.check_same_shape(np.zeros((4, 5, 1)), np.zeros((4, 6)), Path("i.png"), Path("m.png"))


# ----------------------------------------------------------------------------------------------------------- tiles
def _tiles_reference(array: np.ndarray, size: int) -> np.ndarray:
    out = []
    for img in array:
        for r in range(array.shape[1] // size):
            for c in range(array.shape[2] // size):
                out.append(img[r * size:(r + 1) * size, c * size:(c + 1) * size])
    return np.stack(out)


@pytest.mark.parametrize("shape", [(2, 8, 12, 3), (3, 8, 4), (1, 4, 4, 1)])
def test_tiles_row_major(shape: tuple) -> None:
    array = np.random.default_rng(0).integers(0, 1000, shape)
    out = io.tiles(array, 4)
    np.testing.assert_array_equal(out, _tiles_reference(array, 4))
    assert out.shape == (shape[0] * (shape[1] // 4) * (shape[2] // 4), 4, 4, *shape[3:])


def test_tiles_not_divisible() -> None:
    with pytest.raises(UserError, match=r"data.tile_size 5 does not divide the 8x10 images"):
        io.tiles(np.zeros((1, 8, 10)), 5)


# ----------------------------------------------------------------------------------------------- class_frequencies
def test_class_frequencies() -> None:
    masks = np.array([[[0, 0, 1, 2]], [[2, 2, 2, 2]]], np.uint8)  # 2x0, 1x1, 5x2 of 8 pixels
    freq = io.class_frequencies(masks, 4)
    np.testing.assert_allclose(freq, [2 / 8, 1 / 8, 5 / 8, 0.0])
    assert freq.sum() == pytest.approx(1.0)
    np.testing.assert_allclose(io.class_frequencies(np.zeros((1, 0, 0), np.uint8), 2), [0.0, 0.0])


# ------------------------------------------------------------------------------------------------ folders, roots
def test_files_with_suffixes(tmp_path: Path) -> None:
    for name in ("b.PNG", "a.tif", "c.jpeg", "notes.txt", "d.bmp"):
        (tmp_path / name).write_bytes(b"x")
    (tmp_path / "sub.png").mkdir()
    assert [p.name for p in io.files_with_suffixes(tmp_path)] == ["a.tif", "b.PNG", "c.jpeg"]
    assert [p.name for p in io.files_with_suffixes(tmp_path, [".TXT"])] == ["notes.txt"]


def test_default_and_resolved_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AXIAL_KD_DATA_DIR", str(tmp_path))
    assert io.default_data_root("sstem") == tmp_path / "sstem"
    with pytest.raises(UserError, match="download sstem"):
        io.resolve_root(None, "sstem")
    (tmp_path / "sstem").mkdir()
    assert io.resolve_root(None, "sstem") == tmp_path / "sstem"
    assert io.resolve_root(str(tmp_path), "covid") == tmp_path
    with pytest.raises(UserError, match="data.root"):
        io.resolve_root(str(tmp_path / "missing"), "covid")

"""Visualisation panels / PNG output and IoU table / JSON reporting."""

from __future__ import annotations

import json
import math

import cv2
import numpy as np
import pytest

from axial_kd_tf.errors import UserError
from axial_kd_tf.reporting import format_iou_table, format_iou_table_text, format_value, metrics_dict
from axial_kd_tf.visualize import (
    DEFAULT_PALETTE,
    colorize,
    overlay_panel,
    palette_for,
    panel_legend,
    to_uint8_rgb,
    write_png,
)

NAMES = ["membrane", "mito", "synapse", "glia", "intracellular"]


def _scene(h=64, w=80, seed=0):
    rng = np.random.default_rng(seed)
    img = rng.random((h, w, 1)).astype(np.float32)
    gt = np.zeros((h, w), dtype=np.int64)
    gt[:, : w // 5] = 0
    for c in range(1, 5):
        gt[:, c * w // 5 : (c + 1) * w // 5] = c
    student = gt.copy()
    student[: h // 4] = 4
    teacher = np.roll(gt, 3, axis=1)
    return img, gt, {"student": student, "teacher": teacher}


# ------------------------------------------------------------------------------------------------ visualize
def test_palette():
    assert DEFAULT_PALETTE.shape == (20, 3) and DEFAULT_PALETTE.dtype == np.uint8
    assert len({tuple(c) for c in DEFAULT_PALETTE.tolist()}) == 20
    p = palette_for(30)
    assert p.shape == (30, 3) and len({tuple(c) for c in p.tolist()}) == 30
    np.testing.assert_array_equal(p[:20], DEFAULT_PALETTE)


def test_colorize():
    mask = np.array([[0, 1], [4, 255]])
    rgb = colorize(mask)
    assert rgb.shape == (2, 2, 3) and rgb.dtype == np.uint8
    np.testing.assert_array_equal(rgb[0, 0], DEFAULT_PALETTE[0])
    np.testing.assert_array_equal(rgb[1, 0], DEFAULT_PALETTE[4])
    np.testing.assert_array_equal(rgb[1, 1], [0, 0, 0])  # ignore label -> black
    custom = colorize(mask, palette=[(1, 2, 3), (4, 5, 6)])
    np.testing.assert_array_equal(custom[0, 1], [4, 5, 6])
    np.testing.assert_array_equal(custom[1, 0], [0, 0, 0])


def test_to_uint8_rgb():
    grey = np.linspace(0, 1, 12, dtype=np.float32).reshape(3, 4)
    out = to_uint8_rgb(grey)
    assert out.shape == (3, 4, 3) and out.dtype == np.uint8
    assert out[0, 0, 0] == 0 and out[-1, -1, 2] == 255
    np.testing.assert_array_equal(out[..., 0], out[..., 1])
    wide = to_uint8_rgb(np.array([[-5.0, 5.0]])[..., None])  # outside [0, 1] -> min-max
    np.testing.assert_array_equal(wide[0, :, 0], [0, 255])
    u8 = np.arange(24, dtype=np.uint8).reshape(2, 4, 3)
    np.testing.assert_array_equal(to_uint8_rgb(u8), u8)
    assert to_uint8_rgb(np.zeros((2, 2, 1), np.float32) + 7).max() == 0  # constant out of range -> black
    assert to_uint8_rgb(np.zeros((2, 2, 5), np.float32)).shape == (2, 2, 3)


def test_overlay_panel_shapes_labels_and_png(tmp_path):
    img, gt, preds = _scene()
    h, w = gt.shape
    panel = overlay_panel(img, gt, preds, NAMES)
    assert panel.shape == (h, w * 4, 3) and panel.dtype == np.uint8
    plain = overlay_panel(img, gt, preds, NAMES, title=False)
    assert plain.shape == panel.shape
    assert not np.array_equal(panel, plain)  # labels were drawn
    # without titles, the input column is the untouched image (except the separator) and GT is blended
    np.testing.assert_array_equal(plain[:, : w - 1], to_uint8_rgb(img)[:, : w - 1])
    assert np.all(plain[:, w - 1 : w + 1] == 255)  # separator
    x = w + w // 2  # mid ground-truth column: class 2
    expected = np.rint(0.5 * to_uint8_rgb(img)[5, w // 2].astype(float) + 0.5 * DEFAULT_PALETTE[2])
    np.testing.assert_allclose(plain[5, x], expected, atol=1)
    # probabilities are arg-maxed; ignore labels stay uncoloured
    probs = np.eye(5, dtype=np.float32)[gt]
    gt_ign = gt.copy()
    gt_ign[0, 2] = 255
    p2 = overlay_panel(img, gt_ign, {"student": probs}, NAMES, title=False)
    assert p2.shape == (h, w * 3, 3)
    np.testing.assert_array_equal(p2[0, w + 2], to_uint8_rgb(img)[0, 2])
    assert not np.array_equal(p2[1, w + 2], to_uint8_rgb(img)[1, 2])
    # arg-maxed one-hot probabilities of gt render like the ground-truth column
    np.testing.assert_array_equal(p2[:, 2 * w + 1 : 3 * w - 1], plain[:, w + 1 : 2 * w - 1])
    # legend strip appended
    with_legend = overlay_panel(img, gt, preds, NAMES, legend=True)
    assert with_legend.shape[1] == w * 4 and with_legend.shape[0] > h
    np.testing.assert_array_equal(with_legend[:h], panel)
    leg = panel_legend(NAMES, width=200)
    assert leg.dtype == np.uint8 and leg.shape[1] == 200 and leg.shape[0] > 0

    out = write_png(tmp_path / "sub" / "panel.png", with_legend)
    assert out.exists() and not [p for p in out.parent.iterdir() if p.name.startswith(".")]
    back = cv2.imread(str(out), cv2.IMREAD_COLOR)
    np.testing.assert_array_equal(back[..., ::-1], with_legend)  # BGR on disk, RGB in memory


def test_overlay_panel_errors(tmp_path):
    img, gt, preds = _scene()
    with pytest.raises(UserError, match="shape"):
        overlay_panel(img, gt[:10], preds, NAMES)
    with pytest.raises(UserError, match="alpha"):
        overlay_panel(img, gt, preds, NAMES, alpha=2.0)
    with pytest.raises(UserError, match="bad.png"):
        write_png(tmp_path / "bad.png", np.zeros((4, 4, 3), np.float32))
    assert not (tmp_path / "bad.png").exists()


# ------------------------------------------------------------------------------------------------ reporting
ROWS = {
    "student": {"per_class_iou": [0.8123, float("nan")], "miou": 0.8123},
    "teacher | big": {"per_class_iou": [(0.5, 0.0045), None], "miou": (0.5, 0.0045)},
}


def test_format_value():
    assert format_value(0.8123) == "81.23"
    assert format_value(1.0) == "100.00"
    assert format_value(float("nan")) == "—" and format_value(None) == "—"
    assert format_value((0.8123, 0.0045)) == "81.23 ± 0.45"
    assert format_value((float("nan"), 0.1)) == "—"


def test_format_iou_table_markdown():
    expected = (
        "| Model | membrane | mito | mIoU |\n"
        "|---|---:|---:|---:|\n"
        "| student | 81.23 | — | 81.23 |\n"
        "| teacher \\| big | 50.00 ± 0.45 | — | 50.00 ± 0.45 |"
    )
    assert format_iou_table(ROWS, ["membrane", "mito"]) == expected


def test_format_iou_table_text():
    expected = (
        "Model              membrane  mito          mIoU\n"
        "-------------  ------------  ----  ------------\n"
        "student               81.23     —         81.23\n"
        "teacher | big  50.00 ± 0.45     —  50.00 ± 0.45"
    )
    assert format_iou_table_text(ROWS, ["membrane", "mito"]) == expected


def test_format_iou_table_errors():
    with pytest.raises(UserError, match="student"):
        format_iou_table({"student": {"per_class_iou": [0.1], "miou": 0.1}}, ["a", "b"])
    with pytest.raises(UserError, match="miou"):
        format_iou_table({"student": {"per_class_iou": [0.1]}}, ["a"])


def test_metrics_dict_json_and_table():
    cm = np.array([[3, 1, 0], [0, 2, 0], [0, 0, 0]])
    d = metrics_dict(cm, ["a", "b", "c"])
    assert set(d) == {"per_class_iou", "miou", "confusion_matrix"}
    assert d["per_class_iou"]["a"] == pytest.approx(0.75)
    assert d["per_class_iou"]["b"] == pytest.approx(2 / 3)
    assert d["per_class_iou"]["c"] is None  # NaN -> None
    assert d["miou"] == pytest.approx((0.75 + 2 / 3) / 2)
    assert d["confusion_matrix"] == cm.tolist()
    text = json.dumps(d, allow_nan=False)  # strictly valid JSON
    assert json.loads(text)["per_class_iou"]["c"] is None
    assert metrics_dict(np.zeros((2, 2)), ["x", "y"])["miou"] is None
    # a metrics_dict result is a valid table row (per_class_iou by name)
    table = format_iou_table({"student": d}, ["a", "b", "c"])
    assert table.splitlines()[-1] == "| student | 75.00 | 66.67 | — | 70.83 |"
    with pytest.raises(UserError, match="class names"):
        metrics_dict(cm, ["a", "b"])
    assert math.isclose(d["miou"], 0.7083333, rel_tol=1e-6)

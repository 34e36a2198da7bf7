"""Full-image inference: sliding-window blending, whole-image padding, the tiled teacher and evaluate.py's flags.

Everything runs on tiny inputs (≤ 64 px) and a ``simple_unet`` with 4 base filters, so the file takes seconds.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import keras
import numpy as np
import pytest

from axial_kd_tf.cli import _inference_predictor, evaluate_main
from axial_kd_tf.config import dump_config, load_config
from axial_kd_tf.distill import build_distillation_model
from axial_kd_tf.errors import UserError
from axial_kd_tf.inference import (
    FullImagePredictor,
    SlidingWindow,
    TimedPredictor,
    blend_weights,
    estimate_teacher_mb,
    evaluate_split,
    full_image_predictor,
    network_multiple,
    sliding_window,
    teacher_memory_mb,
    tiled,
    window_starts,
)
from axial_kd_tf.layers import AxialTeacherHead
from axial_kd_tf.models.blocks import InputSizeCheck
from axial_kd_tf.models.simple_unet import build_simple_unet
from axial_kd_tf.inference import KerasPredictor
from axial_kd_tf.training import build_model_from_config

NUM_CLASSES = 3


# --------------------------------------------------------------------------------------------------- helpers
def smooth_image(n: int, h: int, w: int, channels: int = 2, seed: int = 0) -> np.ndarray:
    """A smooth function of the absolute position (plus a per-image phase)."""
    y, x = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
    phase = np.random.default_rng(seed).random(n)
    chans = [np.sin(y / 5.0 + phase[:, None, None] * 3) + np.cos(x / 7.0),
             0.01 * y + 0.02 * x + phase[:, None, None]]
    return np.stack(chans[:channels], axis=-1).astype(np.float32)


def pointwise(images: np.ndarray) -> dict:
    """A position-equivariant predictor: its output at a pixel depends only on the input at that pixel."""
    return {"student": np.concatenate([2 * images + 1, images**2], axis=-1),
            "teacher": np.tanh(images)}


def window_relative(images: np.ndarray) -> dict:
    """Not equivariant: adds a ramp in window coordinates, so the blend weights matter."""
    h, w = images.shape[1:3]
    yy, xx = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
    return {"student": images + (0.1 * yy + 0.01 * xx)[None, :, :, None].astype(np.float32)}


def reference_blend(predictor, images, window, overlap, blend):
    """Explicit loops over windows (the last one flush): Σ g·out / Σ g, with g written out here."""
    n, h, w = images.shape[:3]
    wh, ww = window
    sh, sw = (max(1, int(round(win * (1 - overlap), 6))) for win in window)  # 20·0.7 is 13.999…

    def starts(length, win, stride):
        s = list(range(0, max(length - win, 0) + 1, stride))
        return s if s[-1] + win >= length else s + [length - win]

    def gauss(size):
        c, sigma = (size - 1) / 2, size / 8
        return np.array([np.exp(-((i - c) ** 2) / (2 * sigma**2)) for i in range(size)])

    # peak 1, floored at 1e-6 (the corners of a window, ~4σ from its centre on both axes, fall below it)
    g = np.outer(gauss(wh), gauss(ww))
    g = np.maximum(g / g.max(), 1e-6) if blend == "gaussian" else np.ones((wh, ww))
    num = den = None
    for y in starts(h, wh, sh):
        for x in starts(w, ww, sw):
            out = predictor(images[:, y : y + wh, x : x + ww])["student"].astype(np.float64)
            if num is None:
                num = np.zeros((n, h, w, out.shape[-1]))
                den = np.zeros((h, w))
            for i in range(wh):
                for j in range(ww):
                    num[:, y + i, x + j] += g[i, j] * out[:, i, j]
                    den[y + i, x + j] += g[i, j]
    return num / den[None, :, :, None]


# ------------------------------------------------------------------------------------------- window geometry
@pytest.mark.parametrize("length,window,stride", [(64, 16, 8), (70, 16, 8), (33, 16, 12), (16, 16, 8), (9, 16, 8),
                                                  (100, 30, 30), (31, 30, 1)])
def test_window_starts_cover_the_axis_and_end_flush(length, window, stride):
    s = window_starts(length, window, stride)
    assert s[0] == 0
    if length <= window:
        assert s == [0]
        return
    assert s[-1] == length - window
    assert all(0 < b - a <= stride for a, b in zip(s, s[1:]))
    covered = np.zeros(length, bool)
    for a in s:
        covered[a : a + window] = True
    assert covered.all()


def test_blend_weights():
    g = blend_weights(16, 12)
    assert g.shape == (16, 12) and g.dtype == np.float32
    assert np.isclose(g.max(), 1.0) and g.min() > 0
    np.testing.assert_allclose(g, g[::-1, ::-1], rtol=1e-6)  # symmetric about the centre
    assert g[8, 6] > g[0, 6] > g[0, 0]
    np.testing.assert_array_equal(blend_weights(5, 7, "mean"), np.ones((5, 7)))
    with pytest.raises(UserError, match="blend"):
        blend_weights(4, 4, "median")


# ------------------------------------------------------------------------------------------------- blending
@pytest.mark.parametrize("blend", ["gaussian", "mean"])
@pytest.mark.parametrize("shape,window,overlap", [((37, 53), 16, 0.5), ((40, 40), 16, 0.25), ((29, 61), (12, 20), 0.5),
                                                  ((10, 7), 16, 0.5), ((10, 40), 16, 0.5), ((16, 16), 16, 0.5)])
def test_equivariant_predictor_is_reproduced(blend, shape, window, overlap):
    images = smooth_image(2, *shape)
    out = sliding_window(pointwise, window, overlap, blend)(images)
    expected = pointwise(images)
    assert set(out) == {"student", "teacher"}
    for k in expected:
        assert out[k].shape == expected[k].shape and out[k].dtype == np.float32
        np.testing.assert_allclose(out[k], expected[k], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("blend", ["gaussian", "mean"])
@pytest.mark.parametrize("shape,window,overlap", [((37, 53), (16, 16), 0.5), ((40, 45), (12, 20), 0.3),
                                                  ((24, 24), (8, 8), 0.0)])
def test_blending_matches_loop_reference(blend, shape, window, overlap):
    images = smooth_image(2, *shape, channels=1)
    out = sliding_window(window_relative, window, overlap, blend)(images)["student"]
    ref = reference_blend(window_relative, images, window, overlap, blend)
    np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-5)
    # several windows per predictor call: same result
    batched = sliding_window(window_relative, window, overlap, blend, batch_size=5)(images)["student"]
    np.testing.assert_allclose(batched, out, rtol=1e-6, atol=1e-6)


def test_weights_sum_to_one_everywhere():
    ones = lambda x: {"student": np.ones(x.shape[:3] + (2,), np.float32)}  # noqa: E731
    out = sliding_window(ones, 16, 0.5, "gaussian")(smooth_image(1, 45, 38))["student"]
    np.testing.assert_allclose(out, 1.0, rtol=1e-6)


def test_images_smaller_than_the_window_are_padded_and_cropped_back():
    seen = []

    def record(x):
        seen.append(x.shape)
        return pointwise(x)

    images = smooth_image(3, 10, 7)
    sw = sliding_window(record, 16, 0.5)
    out = sw(images)
    assert seen == [(3, 16, 16, 2)]
    assert out["student"].shape == (3, 10, 7, 4)
    np.testing.assert_array_equal(out["student"], pointwise(images)["student"])  # one window: no blending round-off
    assert list(sw.modes) == ["one 16x16 window, reflect-padded to 16x16"]
    # one axis smaller, the other larger: padded on that axis only, windows slide on the other
    seen.clear()
    out = sliding_window(record, 16, 0.5)(smooth_image(1, 10, 40))
    assert out["student"].shape == (1, 10, 40, 4) and {s[1:3] for s in seen} == {(16, 16)} and len(seen) == 4


def test_tiled_is_the_non_overlapping_special_case():
    images = smooth_image(2, 24, 24, channels=1)
    out = tiled(window_relative, 8)(images)["student"]
    ramp = window_relative(np.zeros((1, 8, 8, 1), np.float32))["student"][0]
    expected = images + np.tile(ramp, (3, 3, 1))[None]  # each tile written exactly once
    np.testing.assert_array_equal(out, expected)
    # 20 px: tiles at 0, 8 and a last one flush at 12 (averaged with its neighbour where they overlap)
    out = tiled(window_relative, 8)(smooth_image(1, 20, 20, channels=1))
    assert out["student"].shape == (1, 20, 20, 1)
    np.testing.assert_allclose(out["student"], reference_blend(window_relative, smooth_image(1, 20, 20, channels=1),
                                                               (8, 8), 0.0, "mean"), rtol=1e-6)
    # a tile larger than the image no longer fails: reflect-padded, cropped back
    assert tiled(pointwise, 32)(smooth_image(1, 20, 20))["student"].shape == (1, 20, 20, 4)


def test_sliding_window_rejects_bad_arguments_and_outputs():
    with pytest.raises(UserError, match="overlap"):
        sliding_window(pointwise, 8, overlap=1.0)
    with pytest.raises(UserError, match="window"):
        sliding_window(pointwise, 0)
    shrink = lambda x: {"student": x[:, ::2, ::2]}  # noqa: E731
    with pytest.raises(UserError, match="same-size outputs"):
        sliding_window(shrink, 8, 0.5)(smooth_image(1, 20, 20))


# ------------------------------------------------------------------------------------------ Keras models
@pytest.fixture(scope="module")
def model() -> keras.Model:
    keras.utils.set_random_seed(0)
    net = build_simple_unet(NUM_CLASSES, 1, base_filters=4, depth=2)
    m = build_distillation_model(net, NUM_CLASSES,
                                 teacher_kwargs=dict(hidden_dim=8, num_heads=2, max_span=32, pool_size=1))
    _head(m).gate.assign(1.0)  # a non-trivial teacher (it equals the student at the zero-initialised gate)
    return m


def _head(m: keras.Model) -> AxialTeacherHead:
    return next(layer for layer in m.layers if isinstance(layer, AxialTeacherHead))


def _net(m: keras.Model) -> keras.Model:
    return next(layer for layer in m.layers if isinstance(layer, keras.Model))


def _images(n, h, w, seed=1) -> np.ndarray:
    return np.random.default_rng(seed).random((n, h, w, 1)).astype(np.float32)


def test_network_multiple():
    assert network_multiple(build_simple_unet(3, 1, base_filters=4, depth=2)) == 4
    assert network_multiple(build_simple_unet(3, 1, base_filters=4, depth=3)) == 8
    inputs = keras.Input((None, None, 1))
    checked = keras.Model(inputs, keras.layers.Conv2D(2, 1)(InputSizeCheck(16, "toy")(inputs)))
    assert network_multiple(checked) == 16


def test_whole_image_pads_to_the_multiple_and_crops_back(model):
    images = _images(2, 62, 42)  # multiple 4: padded to 64x44
    pred = full_image_predictor(model)
    out = pred(images)
    assert pred.last_mode == "whole-image (reflect-padded to a multiple of 4)"
    padded = np.pad(images, ((0, 0), (0, 2), (0, 2), (0, 0)), mode="reflect")
    student = np.asarray(_net(model)(padded))[:, :62, :42]
    np.testing.assert_allclose(out["student"], student, rtol=1e-6, atol=1e-6)
    # the teacher sees exactly the image: the head on the cropped student logits
    np.testing.assert_allclose(out["teacher"], np.asarray(_head(model)(student)), rtol=1e-6, atol=1e-6)
    assert out["student"].shape == out["teacher"].shape == (2, 62, 42, NUM_CLASSES)


def test_divisible_image_is_the_model_itself(model):
    images = _images(3, 64, 48)
    pred = full_image_predictor(model)
    assert isinstance(pred, FullImagePredictor) and pred.multiple == 4
    out = pred(images)
    ref = KerasPredictor(model)(images)
    for k in ("student", "teacher"):
        np.testing.assert_array_equal(out[k], ref[k])
    assert pred.last_mode == "whole-image" and pred.modes == {"whole-image": 3}


def test_teacher_tiled_when_over_budget(model):
    images = _images(2, 64, 48)
    whole = full_image_predictor(model)(images)
    pred = full_image_predictor(model, max_teacher_mb=2.0)  # the 64x48 teacher needs ~8 MB: 33x33 windows
    out = pred(images)
    assert "teacher tiled (33x33 windows" in pred.last_mode and pred.last_mode.startswith("whole-image")
    assert out["teacher"].shape == (2, 64, 48, NUM_CLASSES)
    np.testing.assert_allclose(out["student"], whole["student"], rtol=1e-6, atol=1e-6)  # student still whole-image
    # exactly the blended head over windows of the student logits
    side = pred.teacher_window_for(64, 48)
    head = _head(model)
    ref = sliding_window(lambda x: {"teacher": np.asarray(head(x))}, (min(side, 64), min(side, 48)), 0.5)(
        whole["student"])["teacher"]
    np.testing.assert_allclose(out["teacher"], ref, rtol=1e-5, atol=1e-5)
    assert np.isfinite(out["teacher"]).all()


@pytest.mark.parametrize("side", [64, 100])
def test_teacher_window_covering_the_image_equals_whole_image(model, side):
    images = _images(2, 64, 48)
    whole = full_image_predictor(model)(images)
    pred = full_image_predictor(model, teacher_window=side)
    out = pred(images)
    assert "teacher tiled (64x48 windows" in pred.last_mode
    np.testing.assert_array_equal(out["teacher"], whole["teacher"])


def test_teacher_window_fits_the_budget(model):
    pred = full_image_predictor(model, max_teacher_mb=1.0)
    head = _head(model)
    side = pred.teacher_window_for(64, 64)
    assert 16 <= side < 64
    assert teacher_memory_mb(head, side, side) <= 1.0 < teacher_memory_mb(head, side + 1, side + 1)


def test_estimate_teacher_mb():
    # pool 1, 1 head, hidden 16 (dk 8, dv 16), K 5, 64x64: passes are symmetric
    l2 = 64 * 64 * 64
    floats = 6 * l2 + 64 * 64 * (3 * 8 + 16) + 64 * 64 * (4 * 8 + 3 * 16) + 64 * 64 * (10 + 16) + 64 * 64 * 32
    assert estimate_teacher_mb(64, 64, hidden_dim=16) == pytest.approx(floats * 4 / 2**20)
    # the defaults are the default head's (hidden 32: dk 16, dv 32)
    floats = 6 * l2 + 64 * 64 * (3 * 16 + 32) + 64 * 64 * (4 * 16 + 3 * 32) + 64 * 64 * (10 + 32) + 64 * 64 * 64
    assert estimate_teacher_mb(64, 64) == pytest.approx(floats * 4 / 2**20)
    assert AxialTeacherHead(5).hidden_dim == 32
    assert estimate_teacher_mb(64, 64, 2) > estimate_teacher_mb(64, 64)
    big = [estimate_teacher_mb(1024, 1024, pool_size=p, hidden_dim=16) for p in (1, 2, 4)]  # the maps dominate
    assert big[0] / big[1] == pytest.approx(8, rel=0.1) and big[1] / big[2] == pytest.approx(8, rel=0.25)
    assert estimate_teacher_mb(64, 128) == estimate_teacher_mb(128, 64)
    assert estimate_teacher_mb(64, 64, use_positional_encoding=False) < estimate_teacher_mb(64, 64)
    head = AxialTeacherHead(5, hidden_dim=8, num_heads=2, pool_size=2)
    assert teacher_memory_mb(head, 96, 80) == estimate_teacher_mb(96, 80, num_heads=2, pool_size=2, hidden_dim=8,
                                                                  num_classes=5)


def test_forced_sliding_window(model):
    images = _images(2, 64, 48)
    pred = full_image_predictor(model, window=32, overlap=0.5)
    out = pred(images)
    assert pred.last_mode == "sliding window 32x32, overlap 0.5, gaussian blending (forced)"
    ref = sliding_window(full_image_predictor(model), 32, 0.5)(images)
    for k in ("student", "teacher"):
        np.testing.assert_allclose(out[k], ref[k], rtol=1e-6, atol=1e-6)
    # a window that is not a multiple of 4: each window is padded
    pred = full_image_predictor(model, window=30, overlap=0.25, blend="mean")
    assert pred(images)["teacher"].shape == (2, 64, 48, NUM_CLASSES)
    assert "windows reflect-padded to a multiple of 4" in pred.last_mode


def test_student_budget_falls_back_to_a_sliding_window(model):
    pred = full_image_predictor(model, max_student_mb=0.5)  # ~1.8 MB estimated at 64x64: 32x32 windows
    out = pred(_images(1, 64, 64))
    assert "sliding window 32x32" in pred.last_mode
    assert "student estimate" in pred.last_mode and pred.last_mode.startswith("sliding window")
    assert out["student"].shape == (1, 64, 64, NUM_CLASSES)
    assert full_image_predictor(model, max_student_mb=1e4)(_images(1, 64, 64)) is not None


def test_plain_network_and_student_only_model(model):
    net = _net(model)
    images = _images(2, 30, 42)
    pred = full_image_predictor(net)
    out = pred(images)
    assert set(out) == {"student"} and out["student"].shape == (2, 30, 42, NUM_CLASSES)
    padded = np.pad(images, ((0, 0), (0, 2), (0, 2), (0, 0)), mode="reflect")
    np.testing.assert_allclose(out["student"], np.asarray(net(padded))[:, :30, :42], rtol=1e-6, atol=1e-6)
    baseline = build_distillation_model(net, NUM_CLASSES, with_teacher=False)
    assert set(full_image_predictor(baseline)(images)) == {"student"}


def test_full_image_predictor_in_evaluate_split(model):
    images, masks = _images(5, 42, 38), np.random.default_rng(0).integers(0, NUM_CLASSES, (5, 42, 38))
    timed = TimedPredictor(full_image_predictor(model, max_teacher_mb=2.0))
    cms = evaluate_split(timed, images, masks, NUM_CLASSES, batch_size=2)
    assert set(cms) == {"student", "teacher"} and cms["teacher"].sum() == 5 * 42 * 38
    assert timed.images == 5 and timed.seconds > 0 and sum(timed.modes.values()) == 5


def test_fixed_size_models_use_a_sliding_window_at_their_input():
    args = argparse.Namespace(window=None, overlap=None, blend=None, batch_size=8, max_teacher_mb=2048.0,
                              max_student_mb=None)
    pred = _inference_predictor(pointwise, 16, args)
    assert isinstance(pred.predictor, SlidingWindow)
    assert pred.predictor.overlap == 0.5 and pred.predictor.blend == "gaussian"  # overlapping: no seams
    pred(smooth_image(1, 40, 40))
    assert list(pred.modes) == ["sliding window 16x16, overlap 0.5, gaussian blending"]
    args.overlap = 0.0  # the old tiled behaviour, on request
    assert _inference_predictor(pointwise, 16, args).predictor.blend == "mean"
    args.window = 32
    with pytest.raises(UserError, match="fixed 16x16 input"):
        _inference_predictor(pointwise, 16, args)


# ------------------------------------------------------------------------------------------------- evaluate.py
TINY = ["data.synthetic.image_size=32", "data.synthetic.train_samples=1", "data.synthetic.val_samples=2", "data.synthetic.test_samples=3",
        "model.options={base_filters: 4, depth: 2}", "teacher.hidden_dim=8", "teacher.max_span=32",
        "teacher.pool_size=1", "data.tile_size=16"]


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory) -> Path:
    """A run directory with config.yaml and an untrained model.keras (as train.py writes them; no training)."""
    run = tmp_path_factory.mktemp("runs") / "tiny"
    run.mkdir()
    cfg = load_config("quickstart", TINY)
    keras.utils.set_random_seed(0)
    m = build_model_from_config(cfg, 5, 1)
    _head(m).gate.assign(0.5)
    m.save(run / "model.keras")
    (run / "config.yaml").write_text(dump_config(cfg))
    return run


def _evaluate(run: Path, capsys, *argv) -> tuple[str, dict, Path]:
    assert evaluate_main(["--run", str(run), "--overlays", "1", *map(str, argv)]) == 0
    out = capsys.readouterr().out
    folder = run / ("eval-full-image" if "--full-image" in argv else "eval")
    return out, json.loads((folder / "metrics.json").read_text()), folder


def test_evaluate_default_is_unchanged(tiny_run: Path, capsys):
    out, payload, folder = _evaluate(tiny_run, capsys)
    assert "[eval] mode: whole-image (3 images)" in out and "ms per image" in out
    assert payload["inference"]["full_image"] is False and payload["inference"]["tile_size"] == 16
    from axial_kd_tf.data import load_data
    from axial_kd_tf.inference import metrics_payload
    from axial_kd_tf.rundir import load_run_config, load_run_model

    data = load_data(load_run_config(tiny_run))
    images, masks = data.split("test")
    cms = evaluate_split(KerasPredictor(load_run_model(tiny_run)), images, masks, data.num_classes)
    assert payload["outputs"] == metrics_payload(cms, data.class_names, "test")["outputs"]
    assert (folder / "table.md").is_file() and (folder / "overlays" / "test_000.png").is_file()


def test_evaluate_full_image_end_to_end(tiny_run: Path, capsys):
    out, payload, folder = _evaluate(tiny_run, capsys, "--full-image", "--set", "data.synthetic.image_size=42")
    assert "whole images" in out
    assert "[eval] mode: whole-image (reflect-padded to a multiple of 4) (3 images)" in out
    assert set(payload["outputs"]) == {"student", "teacher"}
    info = payload["inference"]
    assert info["full_image"] is True and info["tile_size"] is None and info["image_size"] == "42x42"
    assert info["images"] == 3 and info["seconds_per_image"] > 0
    assert "whole images" in (folder / "table.md").read_text()


def test_evaluate_teacher_tiled_and_forced_window(tiny_run: Path, capsys):
    out, payload, _ = _evaluate(tiny_run, capsys, "--full-image", "--set", "data.synthetic.image_size=42",
                                "--max-teacher-mb", "2")
    assert "teacher tiled" in out and "teacher tiled" in next(iter(payload["inference"]["modes"]))
    out, payload, _ = _evaluate(tiny_run, capsys, "--full-image", "--window", "16", "--overlap", "0.25",
                                "--blend", "mean")
    assert "[eval] mode: sliding window 16x16, overlap 0.25, mean blending (forced)" in out
    assert set(payload["outputs"]) == {"student", "teacher"}


@pytest.mark.parametrize("argv,needle", [(["--overlap", "1.5"], "--overlap"), (["--window", "0"], "--window"),
                                         (["--max-teacher-mb", "0"], "--max-teacher-mb")])
def test_evaluate_bad_inference_flags(tiny_run: Path, capsys, argv, needle):
    assert evaluate_main(["--run", str(tiny_run), *argv]) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert len(err) == 1 and needle in err[0]

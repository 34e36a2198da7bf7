"""Tests for axial_kd_tf.export: SavedModel + TFLite float32/float16/int8 export, verification, atomicity."""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf
from ai_edge_litert.interpreter import Interpreter

from axial_kd_tf import export as ex
from axial_kd_tf.errors import UserError

H = W = 16
SHAPE = (H, W, 1)
NUM_CLASSES = 3


def _level_data(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Piecewise-constant images with intensities {0, .5, 1} (+ noise); the label is the intensity level."""
    rng = np.random.default_rng(seed)
    labels = np.zeros((n, H, W), np.int64)
    for i in range(n):
        for _ in range(3):
            y0, x0 = rng.integers(0, H - 4, size=2)
            h, w = rng.integers(4, 9, size=2)
            labels[i, y0 : y0 + h, x0 : x0 + w] = rng.integers(0, NUM_CLASSES)
    images = labels[..., None].astype(np.float32) / (NUM_CLASSES - 1)
    images += rng.normal(0.0, 0.05, images.shape).astype(np.float32)
    return images.astype(np.float32), labels


def _tiny_net(name: str = "tiny") -> keras.Model:
    inp = keras.Input((None, None, 1), name="image")
    x = keras.layers.Conv2D(8, 3, padding="same")(inp)
    x = keras.layers.BatchNormalization()(x)
    x = keras.layers.ReLU()(x)
    x = keras.layers.Conv2D(8, 3, padding="same", activation="relu")(x)
    out = keras.layers.Conv2D(NUM_CLASSES, 1, name="logits")(x)
    return keras.Model(inp, out, name=name)


@pytest.fixture(scope="module")
def data() -> dict[str, np.ndarray]:
    train_x, train_y = _level_data(48, seed=0)
    verify_x, verify_y = _level_data(8, seed=1)
    return {"train_x": train_x, "train_y": train_y, "verify_x": verify_x, "verify_y": verify_y}


@pytest.fixture(scope="module")
def model(data) -> keras.Model:
    """A briefly trained tiny net, so argmax agreement is measured on confident, meaningful predictions."""
    keras.utils.set_random_seed(0)
    net = _tiny_net()
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    net.compile(optimizer=keras.optimizers.Adam(0.02), loss=loss)
    net.fit(data["train_x"], data["train_y"], batch_size=16, epochs=15, verbose=0)
    pred = np.argmax(net.predict(data["verify_x"], verbose=0), -1)
    assert np.mean(pred == data["verify_y"]) > 0.8  # the model actually learned the task (~0.92 here)
    return net


@pytest.fixture(scope="module")
def exported(model, data, tmp_path_factory) -> tuple[dict, Path]:
    out = tmp_path_factory.mktemp("export")
    report = ex.export_network(
        model,
        out,
        SHAPE,
        name="student",
        variants=ex.VARIANTS,
        calibration_images=data["train_x"][:16],
        verify_images=data["verify_x"],
        saved_model=True,
        progress=None,
    )
    return report, out


def _keras_logits(model: keras.Model, images: np.ndarray) -> np.ndarray:
    return np.asarray(model(images, training=False), np.float32)


# ------------------------------------------------------------------------------------------------ report / files


def test_report_keys_and_files(exported, data):
    report, out = exported
    assert set(report) >= {"name", "input_shape", "saved_model", "variants", "ops"}
    assert report["name"] == "student"
    assert report["input_shape"] == [H, W, 1]
    assert report["saved_model"] == str(out / "student_saved_model")
    assert set(report["variants"]) == set(ex.VARIANTS)
    expected_files = {"float32": "student.tflite", "float16": "student_float16.tflite", "int8": "student_int8.tflite"}
    for variant, entry in report["variants"].items():
        assert entry["path"] == str(out / expected_files[variant])
        assert Path(entry["path"]).is_file()
        assert isinstance(entry["max_abs_diff"], float)
        assert isinstance(entry["argmax_agreement"], float) and 0.0 <= entry["argmax_agreement"] <= 1.0
        assert isinstance(entry["size_bytes"], int) and entry["size_bytes"] == Path(entry["path"]).stat().st_size
        assert isinstance(entry["mean_latency_ms"], float) and entry["mean_latency_ms"] > 0
        assert entry["num_verify_images"] == len(data["verify_x"])
    assert isinstance(report["ops"], list) and report["ops"] == sorted(report["ops"])
    # only final names, no temporary leftovers
    assert sorted(p.name for p in out.iterdir()) == sorted([*expected_files.values(), "student_saved_model"])


# ------------------------------------------------------------------------------------------------ variants


def test_float32_matches_keras_and_is_builtins_only(exported, model, data):
    report, out = exported
    entry = report["variants"]["float32"]
    assert entry["max_abs_diff"] < 1e-4
    assert entry["argmax_agreement"] == 1.0
    ops = ex.tflite_op_names((out / "student.tflite").read_bytes())
    assert ops == report["ops"]
    assert "CONV_2D" in ops
    assert not any(op.startswith(ex.CUSTOM_OP_PREFIX) or "Flex" in op for op in ops), ops
    # run_tflite directly: float32 logits [N, H, W, K]
    logits = ex.run_tflite(out / "student.tflite", data["verify_x"])
    assert logits.dtype == np.float32 and logits.shape == (len(data["verify_x"]), H, W, NUM_CLASSES)
    np.testing.assert_allclose(logits, _keras_logits(model, data["verify_x"]), atol=1e-4)


def test_float16_close_to_keras(exported, model, data):
    report, out = exported
    entry = report["variants"]["float16"]
    scale = float(np.max(np.abs(_keras_logits(model, data["verify_x"]))))
    assert entry["max_abs_diff"] < 1e-2 * scale
    assert entry["argmax_agreement"] >= 0.99
    assert (out / "student_float16.tflite").stat().st_size < (out / "student.tflite").stat().st_size
    ops = ex.tflite_op_names((out / "student_float16.tflite").read_bytes())
    assert not any(op.startswith(ex.CUSTOM_OP_PREFIX) for op in ops)


def test_int8_full_integer(exported, model, data):
    report, out = exported
    path = out / "student_int8.tflite"
    runner = Interpreter(model_path=str(path)).get_signature_runner()
    (in_details,) = runner.get_input_details().values()
    (out_name, out_details), = runner.get_output_details().items()
    assert out_name == "logits"
    assert in_details["dtype"] == np.int8 and out_details["dtype"] == np.int8
    assert list(in_details["shape"]) == [1, H, W, 1]
    entry = report["variants"]["int8"]
    assert entry["resolver"] == "BUILTIN_WITHOUT_DEFAULT_DELEGATES"
    assert entry["argmax_agreement"] >= 0.9
    logits = ex.run_tflite(path, data["verify_x"])
    assert logits.dtype == np.float32 and logits.shape == (len(data["verify_x"]), H, W, NUM_CLASSES)
    keras_acc = np.mean(np.argmax(_keras_logits(model, data["verify_x"]), -1) == data["verify_y"])
    assert np.mean(np.argmax(logits, -1) == data["verify_y"]) >= keras_acc - 0.03  # quantisation costs ~nothing
    assert not any(op.startswith(ex.CUSTOM_OP_PREFIX) for op in ex.tflite_op_names(path.read_bytes()))


def test_int8_requires_calibration_images(model, tmp_path):
    with pytest.raises(UserError, match="calibration_images"):
        ex.convert_tflite(model, SHAPE, "int8")
    with pytest.raises(UserError, match="calibration_images"):
        ex.export_network(model, tmp_path / "out", SHAPE, variants=("int8",), progress=None)
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_unknown_variant_is_user_error(model, tmp_path):
    with pytest.raises(UserError, match="float32, float16, int8"):
        ex.export_network(model, tmp_path / "out", SHAPE, variants=("float32", "bf16"), progress=None)
    with pytest.raises(UserError, match="valid variants"):
        ex.convert_tflite(model, SHAPE, "int4")
    assert not (tmp_path / "out").exists()


def test_input_shape_must_fit_model(model):
    with pytest.raises(UserError, match="input_shape"):
        ex.convert_tflite(model, (H, W, 3))
    with pytest.raises(UserError, match="input_shape"):
        ex.convert_tflite(model, (H, W))  # type: ignore[arg-type]


# ------------------------------------------------------------------------------------------------ SavedModel


def test_saved_model_reloads_with_same_output(exported, model, data):
    report, _ = exported
    loaded = tf.saved_model.load(report["saved_model"])
    serve = loaded.signatures["serving_default"]
    batch = data["verify_x"][:3]  # batch dim is dynamic in the SavedModel signature
    got = serve(images=tf.constant(batch))["logits"].numpy()
    np.testing.assert_allclose(got, _keras_logits(model, batch), atol=1e-5)


def test_export_saved_model_standalone_replaces_atomically(model, data, tmp_path):
    target = tmp_path / "sm"
    assert ex.export_saved_model(model, target, SHAPE) == target
    assert ex.export_saved_model(model, target, SHAPE) == target  # replacing an existing export works
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sm"]
    got = tf.saved_model.load(str(target)).signatures["serving_default"](images=tf.constant(data["verify_x"][:1]))
    np.testing.assert_allclose(got["logits"].numpy(), _keras_logits(model, data["verify_x"][:1]), atol=1e-5)


# ------------------------------------------------------------------------------------------------ atomicity


def test_failing_conversion_leaves_nothing(model, data, tmp_path, monkeypatch):
    out = tmp_path / "out"
    out.mkdir()
    real_from_saved_model = tf.lite.TFLiteConverter.from_saved_model

    def from_saved_model(*args, **kwargs):
        converter = real_from_saved_model(*args, **kwargs)
        real_convert = converter.convert

        def convert():
            if converter.inference_input_type == tf.int8:  # fail only int8, after float32 converted fine
                raise RuntimeError("simulated converter crash")
            return real_convert()

        converter.convert = convert
        return converter

    monkeypatch.setattr(tf.lite.TFLiteConverter, "from_saved_model", from_saved_model)
    with pytest.raises(ex.TFLiteConversionError, match="int8 conversion failed: simulated converter crash"):
        ex.export_network(
            model, out, SHAPE, variants=("float32", "int8"), calibration_images=data["train_x"][:4],
            verify_images=data["verify_x"][:2], saved_model=True, progress=None,
        )
    assert list(out.iterdir()) == []


def test_failing_verification_leaves_nothing_and_keeps_previous_export(model, data, tmp_path, monkeypatch):
    out = tmp_path / "out"
    out.mkdir()
    (out / "student.tflite").write_bytes(b"previous export")

    def broken_verify(*args, **kwargs):
        raise RuntimeError("simulated verification crash")

    monkeypatch.setattr(ex.convert, "verify_tflite", broken_verify)
    with pytest.raises(RuntimeError, match="verification crash"):
        ex.export_network(model, out, SHAPE, variants=("float32",), verify_images=data["verify_x"][:2],
                          saved_model=True, progress=None)
    assert sorted(p.name for p in out.iterdir()) == ["student.tflite"]  # no temp files, no SavedModel
    assert (out / "student.tflite").read_bytes() == b"previous export"


def test_non_builtin_op_fails_loudly(tmp_path):
    """tf.signal.fft2d has no TFLite builtin (only a Flex kernel): conversion must fail, not emit Flex ops."""
    inp = keras.Input((None, None, 1))
    x = keras.layers.Conv2D(2, 1)(inp)
    x = keras.layers.Lambda(
        lambda t: tf.math.real(tf.signal.fft2d(tf.cast(tf.transpose(t, [0, 3, 1, 2]), tf.complex64)))
    )(x)
    x = keras.layers.Lambda(lambda t: tf.transpose(t, [0, 2, 3, 1]))(x)
    net = keras.Model(inp, x)
    with pytest.raises(ex.TFLiteConversionError, match="FFT2D"):
        ex.convert_tflite(net, (8, 8, 1))
    # With Flex allowed (what keras' model.export(format="litert") does) it converts, and tflite_op_names shows it.
    ex.saved_model.write_serving_archive(net, tmp_path / "sm", (1, 8, 8, 1))
    converter = tf.lite.TFLiteConverter.from_saved_model(str(tmp_path / "sm"))
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS, tf.lite.OpsSet.SELECT_TF_OPS]
    assert "CUSTOM:FlexFFT2D" in ex.tflite_op_names(converter.convert())
    out = tmp_path / "out"
    with pytest.raises(UserError, match="no TFLite builtin kernel"):
        ex.export_network(net, out, (8, 8, 1), progress=None)
    assert not out.exists() or list(out.iterdir()) == []


# ------------------------------------------------------------------------------------------------ misc


def test_multi_output_keeps_names_and_run_tflite_picks_output(tmp_path):
    keras.utils.set_random_seed(1)
    inp = keras.Input((None, None, 1))
    feat = keras.layers.Conv2D(4, 3, padding="same", activation="relu")(inp)
    seg = keras.layers.Conv2D(NUM_CLASSES, 1, name="seg")(feat)
    aux = keras.layers.Conv2D(2, 1, name="aux")(feat)
    net = keras.Model(inp, [seg, aux])
    images = np.random.default_rng(0).random((2, 8, 8, 1), dtype=np.float32)
    blob = ex.convert_tflite(net, (8, 8, 1))
    with pytest.raises(UserError, match="output_name"):
        ex.run_tflite(blob, images)
    ref_seg, ref_aux = (np.asarray(t) for t in net(images, training=False))
    np.testing.assert_allclose(ex.run_tflite(blob, images, output_name="seg"), ref_seg, atol=1e-4)
    np.testing.assert_allclose(ex.run_tflite(blob, images, output_name="aux"), ref_aux, atol=1e-4)
    path = tmp_path / "m.tflite"
    path.write_bytes(blob)
    result = ex.verify_tflite(net, path, images, latency_repeats=2)
    assert result["max_abs_diff"] < 1e-4 and result["argmax_agreement"] == 1.0


def test_run_tflite_rejects_wrong_image_shape(exported, data):
    _, out = exported
    with pytest.raises(UserError, match="shape"):
        ex.run_tflite(out / "student.tflite", np.zeros((1, 8, 8, 1), np.float32))


def test_tflite_op_names_rejects_non_tflite_bytes():
    with pytest.raises(UserError, match="TFLite"):
        ex.tflite_op_names(b"definitely not a flatbuffer")

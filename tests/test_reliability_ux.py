"""Issue 9, part B: small input checks, real data that was refused or misread, and what a person sees.

One section per item of the issue; each test failed on the code before the fix. The README's own commands are run
in tests/test_readme_commands.py.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import cv2
import nibabel as nib
import numpy as np
import pytest

from axial_kd_tf.cli import evaluate_main, export_main
from axial_kd_tf.config import CovidData, DataConfig, config_from_dict, load_config
from axial_kd_tf.errors import UserError

REPO = Path(__file__).resolve().parent.parent
TINY = [
    "data.synthetic.image_size=32", "data.synthetic.train_samples=8", "data.synthetic.val_samples=4", "data.synthetic.test_samples=4",
    "model.options={base_filters: 4, depth: 2}", "teacher.hidden_dim=8", "teacher.max_span=32",
    "train.epochs=2", "train.steps_per_epoch=1", "train.batch_size=4", "train.jit_compile=false",
    "logging.num_images=0", "logging.tensorboard=false", "export.verify_samples=2",
    "logging.progress_seconds=0.000001", "distill.enabled=false",  # the baseline: half the time of a teacher run
]


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory) -> tuple[Path, list[str]]:
    """A finished two-epoch baseline run (one step each, float32 TFLite) and the progress lines it printed."""
    from axial_kd_tf.pipeline import train

    run = tmp_path_factory.mktemp("ux") / "run"
    lines: list[str] = []
    train(load_config("quickstart", TINY), run, progress=lines.append)
    return run, lines


def _one_line(exc: pytest.ExceptionInfo) -> str:
    message = str(exc.value)
    assert "\n" not in message
    return message


# ================================================================================================ small input checks
def test_truncated_keras_file_is_called_truncated_not_missing(tmp_path: Path):
    import keras

    from axial_kd_tf.saving import load_model

    path = tmp_path / "model.keras"
    keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)]).save(path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) * 2 // 3])  # a cut-off copy
    with pytest.raises(UserError) as exc:
        load_model(path)
    message = _one_line(exc)
    assert str(path) in message and "truncated or corrupt" in message
    assert "not found" not in message.lower()


def test_overlays_must_not_be_negative(tmp_path: Path, capsys):
    model = tmp_path / "m.keras"
    model.write_bytes(b"whatever")
    assert evaluate_main(["--model", str(model), "--config", "quickstart", "--overlays", "-1"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: --overlays must be >= 0")


@pytest.mark.parametrize("value", [-1, 256, 1000])
def test_ignore_index_outside_8_bit_labels_is_rejected(value: int):
    with pytest.raises(UserError, match="distill.ignore_index"):
        load_config("quickstart", [f"distill.ignore_index={value}"])


def test_ignore_index_beyond_the_classes_is_rejected():
    from axial_kd_tf.models import build_network
    from axial_kd_tf.training import make_trainer

    cfg = load_config("quickstart", ["distill.ignore_index=7", "distill.enabled=false"])
    net = build_network("simple_unet", num_classes=5, in_channels=1, base_filters=4, depth=2)
    with pytest.raises(UserError) as exc:
        make_trainer(cfg, net, ("a", "b", "c", "d", "e"))
    assert "distill.ignore_index" in _one_line(exc) and "0..4" in str(exc.value)
    make_trainer(load_config("quickstart", ["distill.ignore_index=4"]), net, ("a", "b", "c", "d", "e"))  # in range


@pytest.mark.parametrize("text, key, line", [
    ("train:\n  epochs: 3\n  batch_size: 4\n  epochs: 5\n", "epochs", 4),
    ("model:\n  arch: unet\ntrain:\n  epochs: 3\nmodel:\n  arch: fpn\n", "model", 5),
])
def test_duplicate_yaml_keys_are_rejected(tmp_path: Path, text: str, key: str, line: int):
    path = tmp_path / "dup.yaml"
    path.write_text(text)
    with pytest.raises(UserError) as exc:
        load_config(path)
    message = _one_line(exc)
    assert str(path) in message and f"key '{key}' appears twice" in message and f"line {line}" in message


def test_yaml_merge_keys_may_repeat_keys(tmp_path: Path):
    path = tmp_path / "merge.yaml"
    path.write_text("defaults: &d {epochs: 3, batch_size: 4}\ntrain:\n  <<: *d\n  epochs: 5\n")
    from axial_kd_tf.config import read_config_file

    assert read_config_file(path)["train"] == {"epochs": 5, "batch_size": 4}


def test_empty_yaml_file_warns(tmp_path: Path, capsys):
    path = tmp_path / "empty.yaml"
    path.write_text("# nothing here yet\n")
    cfg = load_config(path)
    assert cfg.to_dict() == config_from_dict({}).to_dict()
    err = capsys.readouterr().err
    assert err.startswith("warning: config file") and "is empty" in err and str(path) in err


# ================================================================================= real data refused or misread
VOC_PALETTE = [0, 0, 0, 128, 0, 0, 0, 128, 0, 128, 128, 0] + [224, 224, 192] * 252


def _palette_png(path: Path, indices: np.ndarray, palette=VOC_PALETTE) -> None:
    from PIL import Image

    image = Image.fromarray(indices.astype(np.uint8), mode="P")
    image.putpalette(palette)
    image.save(path)


def test_palette_png_masks_are_read_as_indices(tmp_path: Path):
    from axial_kd_tf.data import folders, io as data_io

    rng = np.random.default_rng(0)
    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    masks = []
    for i in range(5):
        mask = rng.integers(0, 3, (16, 16)).astype(np.uint8)
        mask[0, 0] = 255 if i == 0 else mask[0, 0]  # a VOC boundary pixel in one file
        masks.append(mask)
        cv2.imwrite(str(tmp_path / "images" / f"s{i}.png"), (mask * 60).astype(np.uint8))
        _palette_png(tmp_path / "masks" / f"s{i}.png", mask)
    assert cv2.imread(str(tmp_path / "masks" / "s1.png"), cv2.IMREAD_UNCHANGED).ndim == 3  # OpenCV sees colours
    np.testing.assert_array_equal(data_io.read_mask(tmp_path / "masks" / "s1.png"), masks[1])
    bundle = folders.load(DataConfig(dataset="folders", root=str(tmp_path), value_map={0: 0, 1: 1, 2: 2, 255: 0},
                                     class_names=["background", "aeroplane", "bicycle"]))
    assert bundle.num_classes == 3
    assert set(np.unique(bundle.train_masks)) <= {0, 1, 2}


def test_grey_palette_png_keeps_its_grey_levels(tmp_path: Path):
    from axial_kd_tf.data import io as data_io

    mask = np.array([[0, 1], [2, 1]], np.uint8)
    grey = [0, 0, 0, 128, 128, 128, 255, 255, 255] + [0, 0, 0] * 253
    _palette_png(tmp_path / "m.png", mask, grey)
    np.testing.assert_array_equal(data_io.read_mask(tmp_path / "m.png"), [[0, 128], [255, 128]])


def _nifti(path: Path, volume: np.ndarray, affine=None, oriented: bool = True) -> None:
    image = nib.Nifti1Image(volume, np.eye(4) if affine is None else affine)
    if not oriented:
        image.set_sform(None, code=0)
        image.set_qform(None, code=0)
    nib.save(image, str(path))


def _ct(shape=(24, 20, 10)) -> tuple[np.ndarray, np.ndarray]:
    """An asymmetric HU volume [X, Y, Z] and a mask with labels 0-3 (as MedSeg stores them)."""
    x, y, z = shape
    image = np.full(shape, -1000.0, np.float32) + 10.0 * np.arange(z, dtype=np.float32)[None, None, :]
    image[0:3, 0, :] = 500.0
    image[0, 0:7, :] = 400.0
    mask = np.zeros(shape, np.float32)
    mask[2:6, 10:18, :] = 1
    mask[12:20, 3:5, :] = 2
    mask[20:23, 15:19, 1::2] = 3
    return image, mask


def _covid_root(root: Path, image: np.ndarray, mask: np.ndarray, affine=None, mask_oriented: bool = True) -> Path:
    from axial_kd_tf.data import covid

    root.mkdir(parents=True, exist_ok=True)
    _nifti(root / covid.IMAGE_FILE, image, affine)
    _nifti(root / covid.MASK_FILE, mask, affine, oriented=mask_oriented)
    return root


def _covid_cfg(root: Path, **kw) -> DataConfig:
    return DataConfig(dataset="covid", root=str(root), covid=CovidData(train_slices=6, val_slices=2), **kw)


def test_covid_honours_value_map_and_class_names(tmp_path: Path):
    from axial_kd_tf.data import covid, load_data

    image, mask = _ct()
    root = _covid_root(tmp_path / "d", image, mask)
    binary = covid.load(_covid_cfg(root, value_map={0: 0, 1: 1, 2: 1, 3: 0}, class_names=["background", "infection"]))
    assert binary.class_names == ("background", "infection") and binary.num_classes == 2
    full = covid.load(_covid_cfg(root))
    assert full.num_classes == 4
    np.testing.assert_array_equal(binary.train_masks, np.isin(full.train_masks, (1, 2)).astype(np.uint8))
    merged = covid.load(_covid_cfg(root, value_map={0: 0, 1: 1, 2: 1, 3: 2}))
    assert merged.class_names == ("background", "ground-glass+consolidation", "pleural effusion")
    # The config path: a 2-class model for a binary infection mask file (values 0/1) named by class_names alone.
    root2 = _covid_root(tmp_path / "b", image, (mask > 0).astype(np.float32))
    cfg = config_from_dict({"data": {"dataset": "covid", "root": str(root2), "covid": {"train_slices": 6, "val_slices": 2},
                                     "class_names": ["background", "infection"]}})
    assert load_data(cfg).num_classes == 2
    with pytest.raises(UserError) as exc:  # the 4-label masks do not fit two names
        covid.load(_covid_cfg(root, class_names=["background", "infection"]))
    assert "outside" in _one_line(exc) and covid.MASK_FILE in str(exc.value)


@pytest.mark.parametrize("dataset", ["synthetic", "sstem"])
def test_class_maps_of_fixed_datasets_are_rejected(dataset: str):
    with pytest.raises(UserError, match="data.class_names.*not used"):
        config_from_dict({"data": {"dataset": dataset, "class_names": ["a", "b"]}})
    with pytest.raises(UserError, match="data.value_map.*not used"):
        config_from_dict({"data": {"dataset": dataset, "value_map": {0: 0, 1: 1}}})


@pytest.mark.parametrize("layout", ["LPS", "ARS", "mask-without-orientation"])
def test_nifti_orientation_header_is_applied(tmp_path: Path, capsys, layout: str):
    from axial_kd_tf.data import covid

    image, mask = _ct()
    ref_images, ref_masks = covid.load_arrays(_covid_root(tmp_path / "ras", image, mask), window=[-1000, 500])
    assert capsys.readouterr().err == ""  # R,A,S: read as stored, nothing to say
    if layout in ("LPS", "mask-without-orientation"):  # the same anatomy stored with axes 0 and 1 flipped
        stored, stored_mask, affine = image[::-1, ::-1], mask[::-1, ::-1], np.diag([-1.0, -1.0, 1.0, 1.0])
    else:  # axes 0 and 1 swapped: voxel axis 0 runs anterior, axis 1 right
        stored, stored_mask = image.transpose(1, 0, 2), mask.transpose(1, 0, 2)
        affine = np.array([[0, 1, 0, 0], [1, 0, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]], np.float64)
    root = _covid_root(tmp_path / layout, np.ascontiguousarray(stored), np.ascontiguousarray(stored_mask), affine,
                       mask_oriented=layout != "mask-without-orientation")
    images, masks = covid.load_arrays(root, window=[-1000, 500])
    np.testing.assert_array_equal(images, ref_images)
    np.testing.assert_array_equal(masks, ref_masks)
    err = capsys.readouterr().err
    assert f"warning: NIfTI file '{root / covid.IMAGE_FILE}' is stored in {','.join(layout[:3])}" in err \
        if layout != "mask-without-orientation" else "stored in L,P,S orientation" in err
    assert "reoriented to R,A,S" in err


def test_medseg_originals_keep_the_lab_orientation(tmp_path: Path, monkeypatch, capsys):
    from axial_kd_tf.data import covid

    image, mask = _ct()
    as_stored = covid.load_arrays(_covid_root(tmp_path / "plain", image, mask), window=[-1000, 500])
    root = _covid_root(tmp_path / "medseg", image, mask, np.diag([-1.0, -1.0, 1.0, 1.0]))
    monkeypatch.setattr(covid, "_is_medseg_original", lambda path: True)
    images, masks = covid.load_arrays(root, window=[-1000, 500])
    np.testing.assert_array_equal(images, as_stored[0])
    np.testing.assert_array_equal(masks, as_stored[1])
    assert "reoriented" not in capsys.readouterr().err


def test_nifti_shape_error_names_the_axes_correctly(tmp_path: Path):
    from axial_kd_tf.data import covid

    image, mask = _ct()
    root = _covid_root(tmp_path / "d", image[:, :, 0], mask)
    with pytest.raises(UserError) as exc:
        covid.load(_covid_cfg(root))
    message = _one_line(exc)
    assert "[X, Y, slices]" in message and "axis 0 becomes the slice width" in message
    assert "[height, width, slices]" not in message


# ============================================================================================ what a person sees
class _Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_step_progress_prints_a_line_every_n_seconds_without_a_terminal():
    from axial_kd_tf.progress import StepProgress

    lines: list[str] = []
    clock = _Clock()
    cb = StepProgress(10, lines.append, tty=False, every=10.0, clock=clock)
    cb.set_params({"epochs": 3, "steps": 10})
    cb.on_train_begin()
    cb.on_epoch_begin(1)
    for step, t in enumerate([4.0, 8.0, 11.0, 15.0, 22.0]):
        clock.now = t
        cb.on_train_batch_end(step, {"loss": 0.5, "student_ce": 0.25, "distill_loss": 0.01})
    assert len(lines) == 2
    assert lines[0].startswith("epoch 2/3 step 3/10 (30%) loss 0.5000 student_ce 0.2500 distill_loss 0.0100")
    assert "epoch ETA 26s" in lines[0]  # 11 s for 3 steps, 7 to go
    assert lines[1].startswith("epoch 2/3 step 5/10")


def test_step_progress_draws_a_bar_on_a_terminal():
    from axial_kd_tf.progress import StepProgress

    out = io.StringIO()
    clock = _Clock()
    cb = StepProgress(4, print, tty=True, stream=out, clock=clock)
    cb.set_params({"epochs": 1, "steps": 4})
    cb.on_train_begin()
    cb.on_epoch_begin(0)
    for step in range(4):
        clock.now = step + 1.0
        cb.on_train_batch_end(step, {"loss": 1.25})
    text = out.getvalue()
    assert "\r" in text and f"epoch 1/1 4/4 {'━' * 20} 4s ETA 0s - loss 1.2500" in text
    assert "epoch 1/1 2/4 ━━━━━━━━━━╸" in text
    cb.on_epoch_end(0)
    assert out.getvalue().endswith("\r\033[K")  # cleared for the epoch's summary line


def test_training_reports_progress_within_the_epoch(tiny_run):
    _, lines = tiny_run
    steps = [line for line in lines if line.startswith("epoch ") and " step " in line]
    assert steps and steps[0].startswith("epoch 1/2 step 1/1 (100%) loss ")


def test_cli_output_has_no_tensorflow_startup_noise(tiny_run):
    run, _ = tiny_run
    env = {k: v for k, v in os.environ.items() if k not in ("TF_CPP_MIN_LOG_LEVEL", "AXIAL_KD_VERBOSE")}
    proc = subprocess.run([sys.executable, "evaluate.py", "--model", str(run / "export" / "student.tflite"),
                           "--overlays", "0", "--out", str(run.parent / "eval-noise")],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stderr == "", proc.stderr[-3000:]  # no oneDNN / cuda / absl / XNNPACK lines


def test_experiments_runner_has_no_tensorflow_startup_noise(tmp_path):
    # Resolving the grid imports the zoo (Keras, TensorFlow): that import must be the quiet one.
    env = {k: v for k, v in os.environ.items() if k not in ("TF_CPP_MIN_LOG_LEVEL", "AXIAL_KD_VERBOSE")}
    proc = subprocess.run([sys.executable, "-m", "axial_kd_tf.experiments", "--config", "quickstart",
                           "--archs", "linknet", "--seeds", "1", "--dry-run", "--out", str(tmp_path)],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "[grid] 2 runs" in proc.stdout
    assert proc.stderr == "", proc.stderr[-3000:]


def test_verbose_restores_tensorflow_logging(monkeypatch):
    from axial_kd_tf import quiet

    monkeypatch.setattr(quiet, "_USER_LEVEL", None)
    monkeypatch.setenv("TF_CPP_MIN_LOG_LEVEL", "3")
    quiet.configure(verbose=True)
    assert os.environ["TF_CPP_MIN_LOG_LEVEL"] == "0" and os.environ[quiet.VERBOSE_ENV] == "1"
    quiet.configure(verbose=False)
    assert os.environ["TF_CPP_MIN_LOG_LEVEL"] == "3" and os.environ[quiet.VERBOSE_ENV] == "0"
    monkeypatch.setattr(quiet, "_USER_LEVEL", "1")  # the user's own level wins
    monkeypatch.setenv("TF_CPP_MIN_LOG_LEVEL", "1")
    quiet.configure(verbose=False)
    assert os.environ["TF_CPP_MIN_LOG_LEVEL"] == "1"


@pytest.mark.parametrize("umask", [0o022, 0o027, 0o002])
def test_atomic_writes_honour_the_umask(tmp_path: Path, umask: int):
    from axial_kd_tf.io_utils import atomic_path, atomic_write_json, atomic_write_text

    old = os.umask(umask)
    try:
        atomic_write_text(tmp_path / "config.yaml", "a: 1\n")
        atomic_write_json(tmp_path / "metrics.json", {"a": 1})
        with atomic_path(tmp_path / "folder", is_dir=True) as tmp:
            tmp.mkdir()
    finally:
        os.umask(old)
    for name in ("config.yaml", "metrics.json"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == 0o666 & ~umask, name
    assert stat.S_IMODE((tmp_path / "folder").stat().st_mode) == 0o777 & ~umask


def test_history_csv_numbers_epochs_from_1(tiny_run):
    run, lines = tiny_run
    rows = list(csv.DictReader(open(run / "history.csv")))
    assert [r["epoch"] for r in rows] == ["1", "2"]
    best = json.loads((run / "checkpoints" / "best.json").read_text())["epoch"]
    assert best in (1, 2) and any(line.startswith(f"epoch {best:>3}/2") for line in lines)


def test_fixed_size_models_blend_overlapping_windows_by_default():
    from axial_kd_tf.cli import _inference_predictor

    calls: list[int] = []

    def fixed_32(images: np.ndarray) -> dict:
        calls.append(len(images))
        return {"student": np.zeros((*images.shape[:3], 2), np.float32)}

    args = argparse.Namespace(window=None, overlap=None, blend=None, batch_size=64)
    timed = _inference_predictor(fixed_32, 32, args)
    assert timed.predictor.overlap == 0.5 and timed.predictor.blend == "gaussian"
    timed(np.zeros((1, 64, 64, 1), np.float32))
    assert sum(calls) == 9  # 3 x 3 overlapping windows, not 2 x 2 tiles with seams between them
    args.overlap = 0.0  # still available on request
    assert _inference_predictor(fixed_32, 32, args).predictor.blend == "mean"


def test_overlay_leaves_background_clear_and_has_a_legend():
    from axial_kd_tf.visualize import overlay_panel

    image = np.full((40, 40), 0.5, np.float32)
    mask = np.zeros((40, 40), np.int64)
    mask[30:, 30:] = 1
    panel = overlay_panel(image, mask, {"student": mask}, ["background", "lesion"], title=False)
    gt = panel[:, 40:80]
    assert np.all(gt[:30, 2:30] == 128)  # background: the grey input, not tinted
    assert not np.all(gt[32:, 32:38] == 128)  # the lesion is coloured
    with_legend = overlay_panel(image, mask, {"student": mask}, ["background", "lesion"], legend=True)
    assert with_legend.shape[0] > 40 and with_legend.shape[1] == 120
    membrane = overlay_panel(image, np.zeros((40, 40), np.int64), {}, ["membrane", "mito"], title=False)
    assert not np.all(membrane[:, 42:78] == 128)  # class 0 of ssTEM is a structure, not background: coloured


def test_evaluate_overlays_carry_a_legend(tiny_run):
    run, _ = tiny_run
    out = run.parent / "eval-legend"
    assert evaluate_main(["--run", str(run), "--overlays", "1", "--out", str(out)]) == 0
    png = cv2.imread(str(out / "overlays" / "test_000.png"))
    assert png.shape[1] == 32 * 3 and png.shape[0] > 32  # input | truth | student, the legend below


@pytest.mark.skipif(bool(__import__("tensorflow").config.list_physical_devices("GPU")),
                    reason="XLA on GPU compiles ResizeNearestNeighborGrad")
def test_xla_falls_back_when_an_op_has_no_xla_kernel():
    """A network whose gradient needs an op XLA cannot compile on CPU (TensorFlow's own nearest resize, which the zoo
    used before issue 10) trains without XLA, with one note; one that compiles keeps XLA."""
    import keras
    import tensorflow as tf

    from axial_kd_tf.models import build_network
    from axial_kd_tf.xla import resolve_jit_compile

    lines: list[str] = []
    inputs = keras.Input((None, None, 1))
    x = keras.layers.Conv2D(3, 3, padding="same")(inputs)
    x = keras.layers.MaxPooling2D(2)(x)
    up = keras.layers.Lambda(lambda t: tf.raw_ops.ResizeNearestNeighbor(images=t, size=tf.shape(t)[1:3] * 2),
                             output_shape=lambda s: (s[0], None, None, s[3]))(x)
    no_xla = keras.Model(inputs, keras.layers.Conv2D(2, 3, padding="same")(up))  # a gradient that is not constant
    assert resolve_jit_compile(True, no_xla, (32, 32, 1), lines.append) is False
    assert len(lines) == 1 and "ResizeNearestNeighborGrad" in lines[0] and lines[0].startswith("note: XLA")
    small = build_network("simple_unet", num_classes=3, in_channels=1, base_filters=4, depth=2)
    assert resolve_jit_compile(True, small, (32, 32, 1), lines.append) is True and len(lines) == 1


def test_reexport_removes_stale_variants(tiny_run):
    """Last of the tests on ``tiny_run``: it re-exports the run."""
    run, _ = tiny_run
    export = run / "export"
    for stale in ("student_float16.tflite", "student_int8.tflite"):  # as an earlier export with more variants left
        (export / stale).write_bytes((export / "student.tflite").read_bytes())
    assert export_main(["--run", str(run), "--variants", "float32"]) == 0
    report = json.loads((run / "export" / "export_report.json").read_text())
    assert set(report["networks"]["student"]["variants"]) == {"float32"}
    assert sorted(p.name for p in export.glob("*.tflite")) == ["student.tflite"]
    assert (export / "student_saved_model" / "saved_model.pb").is_file()

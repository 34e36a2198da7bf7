"""Synthetic MedSeg-layout CT phantom: the covid loader reads it, format and orientation, plausible intensities,
determinism, class shares, and the ``phantom`` CLI's one-line errors with nothing half-written.

Small volumes (12 slices of 64²) except the class-share check, which uses 100 slices of 128² (under a second each).
"""

from __future__ import annotations

import json
import shlex
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from axial_kd_tf.config import CovidData, DataConfig, load_config
from axial_kd_tf.data import covid, load_data, phantom
from axial_kd_tf.data.__main__ import main
from axial_kd_tf.errors import UserError

REPO = Path(__file__).resolve().parent.parent
Z, N = 12, 64


@pytest.fixture(scope="module")
def arrays() -> tuple[np.ndarray, np.ndarray]:
    return phantom.generate_covid_phantom(Z, N, seed=0)


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return phantom.write_covid_phantom(tmp_path_factory.mktemp("ph") / "covid", Z, N, seed=0)


def test_covid_loader_reads_the_phantom(root: Path) -> None:
    bundle = covid.load(DataConfig(dataset="covid", root=str(root),
                                   covid=CovidData(train_slices=8, val_slices=2, window=[-1000, 400])))
    assert bundle.class_names == covid.CLASS_NAMES
    assert bundle.train_images.shape == (8, N, N, 1) and bundle.train_images.dtype == np.float32
    assert bundle.train_masks.shape == (8, N, N) and bundle.train_masks.dtype == np.uint8
    (vi, vm), (ti, tm) = bundle.splits["val"], bundle.splits["test"]
    assert vi.shape == ti.shape == (2, N, N, 1) and vm.shape == tm.shape == (2, N, N)
    assert 0.0 <= bundle.train_images.min() and bundle.train_images.max() <= 1.0
    masks = np.concatenate([bundle.train_masks, vm, tm])
    assert set(np.unique(masks).tolist()) == {0, 1, 2, 3}  # seed 0 has an effusion run within 12 slices


def test_files_have_the_medseg_format_and_orientation(root: Path, arrays: tuple[np.ndarray, np.ndarray]) -> None:
    images, masks = arrays
    image_nii, mask_nii = nib.load(str(root / covid.IMAGE_FILE)), nib.load(str(root / covid.MASK_FILE))
    assert image_nii.shape == mask_nii.shape == (N, N, Z)  # [X, Y, slices] as in MedSeg
    assert image_nii.get_data_dtype() == np.float32 and mask_nii.get_data_dtype() == np.float32
    raw_image, raw_mask = image_nii.get_fdata(), mask_nii.get_fdata()
    assert np.array_equal(raw_mask, np.round(raw_mask)) and set(np.unique(raw_mask)) <= {0, 1, 2, 3}
    assert np.array_equal(raw_image, np.round(raw_image))  # integral HU
    # The loader's turn (fliplr ∘ rot90 k=3) gives back exactly the generated upright slices ...
    np.testing.assert_array_equal(covid.to_slices(raw_image), images)
    np.testing.assert_array_equal(covid.to_slices(raw_mask), masks)
    # ... which are upright: effusion and the vertebra (bone on the midline) lie in the lower, dorsal half.
    rows = np.nonzero(masks == 3)[1]
    assert rows.size and rows.min() > N // 2
    spine_rows = np.nonzero(images[:, :, N // 2 - 2:N // 2 + 2] > 150)[1]
    assert spine_rows.size and np.median(spine_rows) > 0.6 * N
    info = json.loads((root / phantom.INFO_FILE).read_text())
    assert info["slices"] == Z and info["size"] == N and info["seed"] == 0 and "not real" in info["note"]
    shares = np.bincount(masks.ravel(), minlength=4) / masks.size
    np.testing.assert_allclose(info["class_shares"], shares)


def test_intensities_are_plausible_and_overlap_between_dense_classes() -> None:
    # 128²: at 64² the thin effusion crescents are mostly partial-volume edge pixels.
    images, masks = phantom.generate_covid_phantom(Z, 128, seed=0)
    assert images.dtype == np.float32 and masks.dtype == np.uint8 and images.shape == masks.shape == (Z, 128, 128)
    assert abs(float(np.median(images[:, :3, :3])) + 1000) < 40  # air in the corners
    median = {c: float(np.median(images[masks == c])) for c in range(4)}
    assert -500 <= median[1] <= -300 and -80 <= median[2] <= 60 and -60 <= median[3] <= 40
    lung = (masks == 0) & (images < -700)
    assert lung.mean() > 0.08  # two lungs of background parenchyma
    # Effusion cannot be told from consolidation by a threshold: most effusion pixels lie within the central
    # 90 % of the consolidation intensities, and so does soft tissue near 40 HU.
    lo, hi = np.percentile(images[masks == 2], [5, 95])
    effusion = images[masks == 3]
    assert np.mean((effusion > lo) & (effusion < hi)) > 0.5
    assert lo < 40 < hi


def test_deterministic_per_seed_and_different_across_seeds(arrays: tuple[np.ndarray, np.ndarray]) -> None:
    again = phantom.generate_covid_phantom(Z, N, seed=0)
    np.testing.assert_array_equal(again[0], arrays[0])
    np.testing.assert_array_equal(again[1], arrays[1])
    other = phantom.generate_covid_phantom(Z, N, seed=1)
    assert np.mean(other[1] != arrays[1]) > 0.01 and np.mean(other[0] != arrays[0]) > 0.5


def test_anatomy_does_not_depend_on_size(arrays: tuple[np.ndarray, np.ndarray]) -> None:
    _, fine = phantom.generate_covid_phantom(Z, 2 * N, seed=0)
    assert np.mean(fine[:, 1::2, 1::2] == arrays[1]) > 0.97  # the same labels at twice the resolution


def test_slices_change_smoothly(arrays: tuple[np.ndarray, np.ndarray]) -> None:
    _, masks = arrays
    lesion = masks > 0
    neighbours = np.mean(lesion[1:] != lesion[:-1])
    far = np.mean(lesion[6:] != lesion[:-6])
    assert neighbours < far  # nearby slices look alike, distant ones less so


@pytest.mark.parametrize("seed", [0, 1])
def test_class_shares_within_documented_ranges(seed: int) -> None:
    _, masks = phantom.generate_covid_phantom(100, 128, seed=seed)
    shares = np.bincount(masks.ravel(), minlength=4) / masks.size
    for cls, (lo, hi) in phantom.SHARE_RANGES.items():
        assert lo <= shares[cls] <= hi, (cls, shares[cls])
    with_effusion = np.any(masks == 3, axis=(1, 2))
    assert 10 <= with_effusion.sum() < 50  # a minority of slices
    assert with_effusion[:70].any() and with_effusion[70:85].any() and with_effusion[85:].any()  # every split


@pytest.mark.parametrize("kw, fragment", [
    ({"slices": 2}, "slices must be >= 3"),
    ({"size": 0}, "size must be >= 32"),
    ({"seed": -1}, "seed must be >= 0"),
    ({"size": 1.5}, "size must be an integer"),
    ({"slices": 5000, "size": 512}, "voxels"),
])
def test_bad_arguments_raise_one_line_errors(kw: dict, fragment: str) -> None:
    args = {"slices": Z, "size": N, "seed": 0, **kw}
    with pytest.raises(UserError, match=fragment) as exc:
        phantom.generate_covid_phantom(**args)
    assert "\n" not in str(exc.value)


# ---------------------------------------------------------------------------------------------------------- CLI
def _cli(capsys: pytest.CaptureFixture, *args: str) -> tuple[int, str, str]:
    rc = main(["phantom", *args])
    out, err = capsys.readouterr()
    return rc, out, err


def _siblings(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def test_cli_writes_prints_shares_and_a_working_train_command(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    target = tmp_path / "my phantom"  # a space: the printed command must quote it
    rc, out, err = _cli(capsys, "covid", "--dir", str(target), "--slices", str(Z), "--size", str(N))
    assert rc == 0 and err == ""
    assert _siblings(tmp_path) == ["my phantom"]  # no temporary folder left behind
    assert "ground-glass" in out and "pleural effusion" in out and "not real" in out
    command = next(line for line in out.splitlines() if "python train.py" in line)
    assert f"--set data.root={shlex.quote(str(target))}" in command
    # The printed overrides fit the 12-slice 64² phantom: the config validates and the loader splits it.
    argv = shlex.split(command.split(": ", 1)[1])
    overrides = [argv[i + 1] for i, a in enumerate(argv) if a == "--set"]
    cfg = load_config(REPO / argv[argv.index("--config") + 1], overrides)
    bundle = load_data(cfg)
    assert cfg.data.crop_size is None and len(bundle.split("test")[0]) >= 1
    # --overwrite replaces an earlier phantom (another seed gives other files).
    before = (target / covid.IMAGE_FILE).read_bytes()
    rc, out, _ = _cli(capsys, "covid", "--dir", str(target), "--slices", str(Z), "--size", str(N), "--seed", "3",
                      "--overwrite")
    assert rc == 0 and (target / covid.IMAGE_FILE).read_bytes() != before
    assert json.loads((target / phantom.INFO_FILE).read_text())["seed"] == 3
    assert _siblings(tmp_path) == ["my phantom"]


def test_cli_default_size_command_uses_the_config_as_is(tmp_path: Path) -> None:
    from axial_kd_tf.data.__main__ import _train_command

    assert _train_command(tmp_path, 100, 512) == (f"python train.py --config configs/covid.yaml "
                                                  f"--set data.root={shlex.quote(str(tmp_path))}")


@pytest.mark.parametrize("case, fragment", [
    ("size_zero", "size must be >= 32"),
    ("slices_negative", "slices must be >= 3"),
    ("seed_negative", "seed must be >= 0"),
    ("unknown_dataset", "no phantom for dataset 'sstem'"),
    ("not_empty", "exists and is not empty"),
    ("overwrite_foreign", "did not write"),
    ("target_is_file", "not a folder"),
    ("download_cache", "download cache"),
])
def test_cli_bad_input_one_line_error_exit_2_nothing_written(tmp_path: Path, capsys: pytest.CaptureFixture,
                                                              monkeypatch: pytest.MonkeyPatch, case: str,
                                                              fragment: str) -> None:
    target = tmp_path / "out"
    args = ["covid", "--dir", str(target), "--slices", str(Z), "--size", str(N)]
    if case == "size_zero":
        args += ["--size", "0"]
    elif case == "slices_negative":
        args += ["--slices", "-1"]
    elif case == "seed_negative":
        args += ["--seed", "-1"]
    elif case == "unknown_dataset":
        args[0] = "sstem"
    elif case in ("not_empty", "overwrite_foreign"):
        target.mkdir()
        (target / "notes.txt").write_text("mine")
        args += ["--overwrite"] if case == "overwrite_foreign" else []
    elif case == "target_is_file":
        target.write_text("a file")
    elif case == "download_cache":
        monkeypatch.setenv("AXIAL_KD_DATA_DIR", str(tmp_path))
        target = tmp_path / "covid"
        args[2] = str(target)
    before = {p.name: p.read_bytes() if p.is_file() else None for p in tmp_path.rglob("*")}
    rc, out, err = _cli(capsys, *args)
    assert rc == 2 and out == ""
    assert err.startswith("error: ") and err.count("\n") == 1 and fragment in err
    after = {p.name: p.read_bytes() if p.is_file() else None for p in tmp_path.rglob("*")}
    assert after == before  # nothing written, nothing removed


def test_cli_argparse_errors_exit_2(capsys: pytest.CaptureFixture, tmp_path: Path) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["phantom", "covid", "--dir", str(tmp_path / "x"), "--size", "big"])
    assert exc.value.code == 2 and "--size" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        main(["phantom", "covid"])  # --dir is required: the phantom never lands in the download cache by default
    assert exc.value.code == 2 and "--dir" in capsys.readouterr().err


def test_failed_write_leaves_nothing_half_written(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []

    def failing_save(path: Path, volume: np.ndarray, spacing: float) -> None:
        calls.append(path.name)
        if len(calls) == 2:  # the image is written, the mask fails (e.g. a full disk)
            raise OSError(28, "No space left on device")
        path.write_bytes(b"partial")

    monkeypatch.setattr(phantom, "_save_nifti", failing_save)
    with pytest.raises(UserError, match="No space left") as exc:
        phantom.write_covid_phantom(tmp_path / "out", Z, N)
    assert "\n" not in str(exc.value) and calls == [covid.IMAGE_FILE, covid.MASK_FILE]
    assert list(tmp_path.iterdir()) == []  # neither the target nor a temporary folder

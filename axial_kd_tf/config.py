"""Typed experiment configuration: YAML → dataclasses, with strict validation.

* Unknown keys are rejected with the nearest valid key as a suggestion.
* Wrong types and out-of-range values are rejected with the dotted key named.
* ``--set section.key=value`` overrides are parsed as YAML scalars (``3``, ``1e-3``, ``true``, ``[float32, int8]``).

All errors are :class:`axial_kd_tf.errors.UserError` with a one-line message. This module is the schema (one
dataclass per section), its checks and the config files (``base:`` inheritance, ``--set``, the shipped ``configs/``);
the YAML reader and the typed dataclass builder underneath are :mod:`axial_kd_tf.typed_yaml`.
"""

from __future__ import annotations

import copy
import dataclasses
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Optional

import yaml

from axial_kd_tf.errors import UserError
from axial_kd_tf.typed_yaml import build_dataclass, dotted_set, move_keys, moved_name, read_yaml_mapping, yaml_load


def _config_dir() -> Path:
    """The shipped configs: ``axial_kd_tf/configs`` in an installed wheel (package data), else the checkout's
    ``configs/`` beside the package (a source tree or an editable install)."""
    here = Path(__file__).resolve().parent
    shipped = here / "configs"
    return shipped if shipped.is_dir() else here.parent / "configs"


CONFIG_DIR = _config_dir()


@dataclass
class ModelConfig:
    """The segmentation network (the student)."""

    library: Literal["native", "segmentation_models"] = "native"
    arch: str = "simple_unet"
    encoder: Optional[str] = None
    # null, imagenet, or (resnet18/resnet34) the path of a torchvision .pth state dict; README "ImageNet weights".
    encoder_weights: Optional[str] = None
    options: dict = field(default_factory=dict)


@dataclass
class TeacherConfig:
    """The Axial-Attention teacher head: its keys are :class:`axial_kd_tf.layers.AxialTeacherHead`'s arguments, so
    the head is built straight from this section."""

    # 32 channels and 2 blocks since the teacher study's stage 2 (docs/method.md), chosen by its rule on 9 pairs;
    # about 4x the attention FLOPs of one 16-channel block.
    hidden_dim: int = 32
    num_heads: int = 1
    key_dim: Optional[int] = None
    max_span: int = 256
    use_positional_encoding: bool = True
    use_normalization: bool = True
    pool_size: int = 1
    # true since the teacher study (docs/method.md): the teacher's CE reaching the student through the teacher's input
    # was what cost the rare classes (LinkNet synapse IoU 10.0 -> 2.9 attached, 12.5 detached; ssTEM, seed 1, val).
    detach_input: bool = True
    # residual: teacher = student + gate·branch (gate from gate_init, learned unless gate_trainable is false);
    # false: teacher = branch (the direct head). docs/method.md.
    residual: bool = True
    gate_init: float = 0.0
    gate_trainable: bool = True
    num_blocks: int = 2


@dataclass
class DistillConfig:
    """Loss = w_s·CE(student) + w_t·CE(teacher) + w_d·D(student, teacher). ``enabled: false`` = CE-only baseline.

    ``target``: D is the MSE on ``logits`` (the paper), on ``probabilities``, or ``kl`` (T²·KL at ``temperature``);
    ``mask``: distil every pixel (``none``), only where the teacher is right (``teacher_correct``), right where the
    student is wrong (``teacher_fixes``) or gives the label a higher probability than the student (``teacher_better``);
    ``warmup``: w_d ramps linearly from 0 over this fraction of training; ``delay``: w_d is 0 for this fraction of
    training first (the ramp starts after it).
    """

    enabled: bool = True
    student_weight: float = 1.0
    teacher_weight: float = 1.0
    # 10 since stage 2 of the teacher study: at 1 the masked term was ~0.5 % of the student's gradient.
    distill_weight: float = 10.0
    # Defaults chosen by the teacher study (docs/method.md); the paper's loss is target: logits, temperature: 1,
    # mask: none, distill_weight 1, with teacher.detach_input: false and one 16-channel block.
    target: Literal["logits", "probabilities", "kl"] = "kl"
    temperature: float = 2.0
    # teacher_confident (teacher surer than the student) was removed: the study never supported it (docs/method.md).
    mask: Literal["none", "teacher_correct", "teacher_fixes", "teacher_better"] = "teacher_fixes"
    warmup: float = 0.0
    delay: float = 0.0
    stop_gradient_teacher: bool = True
    ignore_index: Optional[int] = None
    class_weights: Optional[list] = None


@dataclass
class SyntheticData:
    """``data.synthetic``: the procedurally generated 5-class quickstart set."""

    image_size: int = 128
    train_samples: int = 160
    val_samples: int = 32
    test_samples: int = 32


@dataclass
class SstemData:
    """``data.sstem``: the paper's ssTEM Drosophila set (5 classes)."""

    # Which of the lab's 5 folds (blocks of 4 consecutive sections) is held out for test.
    fold: int = 0


@dataclass
class CovidData:
    """``data.covid``: MedSeg COVID-19 CT (4 classes): ``train_slices`` / ``val_slices`` / the rest test."""

    # CT intensity window [low, high] in HU mapped to [0, 1]; null = min-max over the volume.
    window: Optional[list] = None
    train_slices: int = 70
    val_slices: int = 15


@dataclass
class FoldersData:
    """``data.folders``: ``root/images`` + ``root/masks`` matched by stem, split by ``data.seed``."""

    val_fraction: float = 0.2
    test_fraction: float = 0.0


@dataclass
class DataConfig:
    """The dataset (see ``axial_kd_tf.data``): the keys every dataset reads, then one sub-section per dataset, of
    which only ``data.<dataset>`` is read.

    * ``synthetic``: the procedurally generated 5-class quickstart set (``synthetic.image_size``, ``*_samples``).
    * ``sstem``: the paper's ssTEM Drosophila set (5 classes), the lab's 5-fold protocol selected by ``sstem.fold``.
    * ``covid``: MedSeg COVID-19 CT (4 classes): ``covid.train_slices`` / ``covid.val_slices`` / rest test,
      ``covid.window`` in HU.
    * ``folders``: ``root/images`` + ``root/masks`` matched by stem, with ``value_map`` and ``class_names``.

    ``root`` is an existing copy; when null, ``sstem`` / ``covid`` are read from the download cache
    (``$AXIAL_KD_DATA_DIR/<dataset>``, default ``~/.cache/axial_kd_tf/<dataset>``). ``value_map`` (mask value ->
    class id) and ``class_names`` (index = class id) relabel the masks of the file datasets (``folders``, ``covid``).
    """

    dataset: Literal["synthetic", "sstem", "covid", "folders"] = "synthetic"
    root: Optional[str] = None
    cache_dir: Optional[str] = None
    crop_size: Optional[int] = None
    # Evaluation splits cut into non-overlapping tiles of this side (the ssTEM protocol: 256); null = whole images.
    tile_size: Optional[int] = None
    augment: bool = True
    seed: int = 0
    value_map: Optional[dict] = None
    class_names: Optional[list] = None
    synthetic: SyntheticData = field(default_factory=SyntheticData)
    sstem: SstemData = field(default_factory=SstemData)
    covid: CovidData = field(default_factory=CovidData)
    folders: FoldersData = field(default_factory=FoldersData)


@dataclass
class TrainConfig:
    epochs: int = 10
    batch_size: int = 8
    learning_rate: float = 1e-3
    optimizer: Literal["adam", "adamw", "sgd"] = "adam"
    weight_decay: float = 0.0
    lr_schedule: Literal["constant", "cosine", "poly"] = "cosine"
    steps_per_epoch: Optional[int] = None
    mixed_precision: Literal["float32", "mixed_bfloat16", "mixed_float16"] = "float32"
    jit_compile: bool = False
    seed: int = 0
    # Several devices or hosts (docs/distributed.md): TensorFlow's MirroredStrategy on this host's GPUs (or logical
    # CPUs), MultiWorkerMirroredStrategy across the hosts named in TF_CONFIG; auto = mirrored when > 1 GPU is visible.
    distribute: Literal["none", "auto", "mirrored", "multi_worker"] = "none"
    # BatchNormalization(synchronized=True) in the student and the teacher head: batch statistics over the global batch.
    sync_batchnorm: bool = False


@dataclass
class ExportConfig:
    enabled: bool = True
    variants: list = field(default_factory=lambda: ["float32"])
    teacher: bool = False
    input_size: Optional[int] = None
    verify_samples: int = 8
    calibration_samples: int = 32


@dataclass
class LoggingConfig:
    tensorboard: bool = True
    image_every: int = 1
    num_images: int = 3
    verbose: int = 1
    # verbose 1: within an epoch, a progress bar on a terminal, else one line every this many seconds (0 = none).
    progress_seconds: float = 60.0


@dataclass
class Config:
    name: str = "experiment"
    model: ModelConfig = field(default_factory=ModelConfig)
    teacher: TeacherConfig = field(default_factory=TeacherConfig)
    distill: DistillConfig = field(default_factory=DistillConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    export: ExportConfig = field(default_factory=ExportConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def validate(self) -> "Config":
        _validate_ranges(self)
        return self


# Keys renamed or moved, old dotted name -> new one: the teacher's keys took the names of the layer arguments they
# feed; the dataset-specific data keys moved into the dataset's sub-section. Configs, --set overrides and run folders
# written before still load (with a warning); giving both names is an error.
MOVED_KEYS = {
    "teacher.positional_encoding": "teacher.use_positional_encoding",
    "teacher.normalization": "teacher.use_normalization",
    **{f"data.{k}": f"data.synthetic.{k}" for k in ("image_size", "train_samples", "val_samples", "test_samples")},
    "data.fold": "data.sstem.fold",
    **{f"data.{k}": f"data.covid.{k}" for k in ("window", "train_slices", "val_slices")},
    **{f"data.{k}": f"data.folders.{k}" for k in ("val_fraction", "test_fraction")},
}


def current_key(dotted: str) -> str:
    """The key's name today: ``dotted`` itself, or its new name when it is an old one (with a warning)."""
    return moved_name(dotted, MOVED_KEYS)


def _check(cond: bool, key: str, message: str) -> None:
    if not cond:
        raise UserError(f"config key '{key}' {message}")


def check_crop_size(data: DataConfig, height: int, width: int) -> None:
    """The one check of ``data.crop_size`` against the training images (``height`` × ``width``): the config does it
    for ``synthetic`` (whose size it sets), :func:`axial_kd_tf.data.load_data` for every dataset once loaded."""
    if data.crop_size is not None and data.crop_size > min(height, width):
        where = f" in '{data.root}'" if data.root else ""
        raise UserError(f"config key 'data.crop_size' ({data.crop_size}) is larger than the {height}x{width} "
                        f"training images of data.dataset '{data.dataset}'{where}; lower it to at most "
                        f"{min(height, width)} or set it to null")


def _validate_ranges(cfg: Config) -> None:
    t, d, tr, e, lg, ds = cfg.teacher, cfg.distill, cfg.train, cfg.export, cfg.logging, cfg.data
    for key in ("hidden_dim", "num_heads", "max_span", "pool_size"):
        _check(getattr(t, key) >= 1, f"teacher.{key}", "must be >= 1")
    _check(t.key_dim is None or t.key_dim >= 1, "teacher.key_dim", "must be >= 1 or null")
    _check(t.hidden_dim % t.num_heads == 0, "teacher.hidden_dim", f"must be divisible by teacher.num_heads ({t.num_heads})")
    _check(1 <= t.num_blocks <= 4, "teacher.num_blocks", "must be between 1 and 4")
    _check(not (t.residual and not t.gate_trainable and t.gate_init == 0), "teacher.gate_init",
           "is 0 with teacher.gate_trainable false, so the teacher would equal the student; set e.g. gate_init: 1.0")
    for key in ("student_weight", "teacher_weight", "distill_weight"):
        _check(getattr(d, key) >= 0, f"distill.{key}", "must be >= 0")
    _check(d.temperature > 0, "distill.temperature", "must be > 0")
    _check(0.0 <= d.warmup <= 1.0, "distill.warmup", "must be a fraction of training in [0, 1]")
    _check(0.0 <= d.delay < 1.0, "distill.delay", "must be a fraction of training in [0, 1)")
    # Masks are uint8 class ids: any other value could never match a pixel, so nothing would be ignored.
    _check(d.ignore_index is None or 0 <= d.ignore_index <= 255, "distill.ignore_index",
           "must be a mask label in 0..255 (masks are 8-bit class ids) or null")
    _check(d.class_weights is None or all(isinstance(w, (int, float)) and w >= 0 for w in d.class_weights),
           "distill.class_weights", "must be a list of non-negative numbers, one per class")
    syn, cov, fol = ds.synthetic, ds.covid, ds.folders
    _check(syn.image_size >= 8, "data.synthetic.image_size", "must be >= 8")
    _check(ds.crop_size is None or ds.crop_size >= 8, "data.crop_size", "must be >= 8 or null")
    if ds.dataset == "synthetic":  # its image size is known before loading: fail before any work
        check_crop_size(ds, syn.image_size, syn.image_size)
    _check(0 <= ds.sstem.fold <= 4, "data.sstem.fold", "must be between 0 and 4 (the ssTEM protocol has 5 folds)")
    _check(ds.tile_size is None or ds.tile_size >= 8, "data.tile_size", "must be >= 8 or null")
    _check(cov.window is None or (len(cov.window) == 2 and all(isinstance(v, (int, float)) for v in cov.window)
                                  and cov.window[0] < cov.window[1]),
           "data.covid.window", "must be [low, high] in HU with low < high (e.g. [-1000, 400]) or null")
    _check(cov.train_slices >= 1, "data.covid.train_slices", "must be >= 1")
    _check(cov.val_slices >= 1, "data.covid.val_slices", "must be >= 1")
    _check(0.0 <= fol.val_fraction < 1.0, "data.folders.val_fraction", "must be in [0, 1)")
    _check(0.0 <= fol.test_fraction < 1.0 and fol.val_fraction + fol.test_fraction < 1.0,
           "data.folders.test_fraction", "must be in [0, 1) with val_fraction + test_fraction < 1")
    if ds.dataset == "folders":
        _check(ds.root is not None, "data.root", "must name the folder holding images/ and masks/ (dataset: folders)")
        _check(ds.value_map is not None and len(ds.value_map) > 0, "data.value_map",
               "must map mask values to class ids, e.g. {0: 0, 255: 1} (dataset: folders)")
        _check(ds.class_names is None or (len(ds.class_names) > 0 and all(isinstance(c, str) for c in ds.class_names)),
               "data.class_names", "must be a list of class names or null")
    if ds.dataset in ("synthetic", "sstem"):  # fixed class maps: the keys would be silently ignored
        for key in ("value_map", "class_names"):
            _check(getattr(ds, key) is None, f"data.{key}",
                   f"is not used by data.dataset '{ds.dataset}' (its classes are fixed); remove it, or use "
                   "dataset folders or covid")
    for key in ("train_samples", "val_samples", "test_samples"):
        _check(getattr(syn, key) >= 1, f"data.synthetic.{key}", "must be >= 1")
    _check(tr.epochs >= 1, "train.epochs", "must be >= 1")
    _check(tr.batch_size >= 1, "train.batch_size", "must be >= 1")
    _check(tr.learning_rate > 0, "train.learning_rate", "must be > 0")
    _check(tr.weight_decay >= 0, "train.weight_decay", "must be >= 0")
    _check(tr.steps_per_epoch is None or tr.steps_per_epoch >= 1, "train.steps_per_epoch", "must be >= 1 or null")
    valid_variants = ("float32", "float16", "int8")
    for v in e.variants:
        _check(v in valid_variants, "export.variants", f"has unknown variant {v!r}; valid: {', '.join(valid_variants)}")
    _check(e.input_size is None or e.input_size >= 8, "export.input_size", "must be >= 8 or null")
    _check(e.verify_samples >= 1, "export.verify_samples", "must be >= 1")
    _check(e.calibration_samples >= 1, "export.calibration_samples", "must be >= 1")
    _check(lg.image_every >= 1, "logging.image_every", "must be >= 1")
    _check(lg.num_images >= 0, "logging.num_images", "must be >= 0")
    _check(lg.progress_seconds >= 0, "logging.progress_seconds", "must be >= 0 (0 = no lines within an epoch)")


def resolve_config_path(path: str | Path) -> Path:
    """``covid.yaml`` or ``covid`` resolves to ``configs/covid.yaml`` when it is not a file itself."""
    p = Path(path)
    candidates = [p, CONFIG_DIR / p, CONFIG_DIR / p.with_suffix(".yaml"), Path("configs") / p]
    for c in candidates:
        if c.is_file():
            return c
    available = ", ".join(sorted(x.name for x in CONFIG_DIR.glob("*.yaml"))) if CONFIG_DIR.is_dir() else "none"
    raise UserError(f"config file '{path}' not found; pass a YAML path or one of configs/: {available}")


def apply_override(raw: dict, assignment: str) -> None:
    """Apply ``a.b=value`` to a raw config mapping (value parsed as YAML)."""
    if "=" not in assignment:
        raise UserError(f"override '{assignment}' must look like section.key=value (e.g. train.epochs=3)")
    dotted, _, text = assignment.partition("=")
    dotted = dotted.strip()
    if not dotted or any(not part.strip() for part in dotted.split(".")):
        raise UserError(f"override '{assignment}' must look like section.key=value (e.g. train.epochs=3)")
    try:
        value = yaml_load(text) if text.strip() else None
    except yaml.YAMLError:
        value = text
    try:
        dotted_set(raw, current_key(dotted), value)
    except UserError as err:  # name the command-line assignment the user typed
        raise UserError(f"override '{assignment}': {err}") from None


def config_from_dict(raw: dict) -> Config:
    """The validated :class:`Config` of a raw mapping (old key names moved to their new ones, :data:`MOVED_KEYS`)."""
    return build_dataclass(Config, move_keys(copy.deepcopy(raw or {}), MOVED_KEYS), "").validate()


def _merge(base: dict, over: dict) -> dict:
    """Deep-merge ``over`` into a copy of ``base`` (sections merge key by key; other values replace)."""
    out = dict(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict) and key != "options" and key != "value_map":
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def read_config_file(path: str | Path, _seen: tuple = ()) -> dict:
    """The raw mapping of a YAML config, with ``base: other.yaml`` (relative to the file) merged underneath."""
    p = resolve_config_path(path).resolve()
    if p in _seen:
        raise UserError(f"config file '{p}' includes itself through 'base:'; remove the cycle")
    raw = move_keys(read_yaml_mapping(p), MOVED_KEYS, f" in '{p}'")  # per file, before the merge: a base file may
    # use the new name of a key its child gives under the old one
    base = raw.pop("base", None)
    if base is None:
        return raw
    if not isinstance(base, str):
        raise UserError(f"config key 'base' in '{p}' must be a path to another YAML file, got {base!r}")
    base_path = p.parent / base
    if not base_path.is_file():
        raise UserError(f"config key 'base' in '{p}' names '{base}', which does not exist next to it")
    return _merge(read_config_file(base_path, _seen + (p,)), raw)


def load_config(path: str | Path | None = None, overrides: typing.Sequence[str] = ()) -> Config:
    """Load a YAML config (``None`` = all defaults), apply ``--set`` overrides, validate.

    A file may start from another with ``base: relative/path.yaml``; its sections are merged key by key.
    """
    raw: dict = read_config_file(path) if path is not None else {}
    for assignment in overrides:
        apply_override(raw, assignment)
    return config_from_dict(raw)


def first_difference(a: Any, b: Any, prefix: str = "") -> Optional[str]:
    """Dotted key of the first difference between two config dicts (None when equal)."""
    if a == b:
        return None
    if isinstance(a, dict) and isinstance(b, dict):
        for key in list(a) + [k for k in b if k not in a]:
            if a.get(key) != b.get(key):
                return first_difference(a.get(key), b.get(key), f"{prefix}{key}.")
    return prefix.rstrip(".") or "<root>"


def dump_config(cfg: Config) -> str:
    return yaml.safe_dump(cfg.to_dict(), sort_keys=False)

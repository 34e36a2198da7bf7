"""Typed config: loading, strict validation (unknown keys, types, ranges), ``--set`` overrides, name resolution.

Fast: no TensorFlow import, no training.
"""

from __future__ import annotations

import copy
import dataclasses
import inspect
from pathlib import Path

import pytest
import yaml

from axial_kd_tf.config import (
    CONFIG_DIR,
    Config,
    apply_override,
    config_from_dict,
    dump_config,
    load_config,
    resolve_config_path,
)
from axial_kd_tf.errors import UserError

ALL_CONFIGS = sorted(p for p in CONFIG_DIR.glob("**/*.yaml") if not p.name.endswith(".variants.yaml"))


def _error(fn, *args, **kwargs) -> str:
    """Run ``fn`` expecting a UserError; return its message after checking it is a single line."""
    with pytest.raises(UserError) as info:
        fn(*args, **kwargs)
    message = str(info.value)
    assert message and "\n" not in message, message
    return message


def _with(section: str, **values) -> dict:
    return {section: values}


# ------------------------------------------------------------------------------------------------------ loading
def test_configs_directory_is_not_empty():
    assert {p.name for p in ALL_CONFIGS} >= {"quickstart.yaml", "quickstart_baseline.yaml"}


@pytest.mark.parametrize("path", ALL_CONFIGS, ids=lambda p: p.name)
def test_every_shipped_config_loads_and_validates(path: Path):
    cfg = load_config(path)
    assert isinstance(cfg, Config)
    assert cfg.validate() is cfg
    # The raw YAML has no key that the loader silently dropped: every section it names is a dataclass section.
    raw = yaml.safe_load(path.read_text())
    assert set(raw) - {"base"} <= {f.name for f in dataclasses.fields(Config)}


def test_defaults_load_without_a_file():
    cfg = load_config(None)
    assert cfg == Config()
    assert cfg.train.epochs >= 1 and cfg.train.learning_rate > 0


# The loss and teacher settings the teacher study chose (docs/method.md), which every shipped distillation config
# follows; the study's own base config pins the paper's form instead, so it is exempt.
STUDY_CHOICE = {"distill.target": "kl", "distill.temperature": 2.0, "distill.mask": "teacher_fixes",
                "distill.distill_weight": 10.0, "teacher.detach_input": True, "teacher.hidden_dim": 32,
                "teacher.num_blocks": 2}


def _study_keys(cfg: dict) -> dict:
    """The STUDY_CHOICE keys' values in a config dict."""
    return {k: cfg[k.split(".")[0]][k.split(".")[1]] for k in STUDY_CHOICE}


@pytest.mark.parametrize("path", [p for p in ALL_CONFIGS if "studies" not in p.parts], ids=lambda p: p.stem)
def test_shipped_configs_use_the_studys_teacher_and_loss(path: Path):
    cfg = load_config(path).to_dict()
    if not cfg["distill"]["enabled"]:
        return
    assert _study_keys(cfg) == STUDY_CHOICE, f"{path.name} differs from the library's study-chosen defaults"


def test_library_defaults_are_the_studys_choice():
    assert _study_keys(Config().to_dict()) == STUDY_CHOICE


def test_head_and_trainer_defaults_are_the_configs():
    """A Python user who builds the head and trainer without arguments trains what train.py trains by default."""
    from axial_kd_tf.distill import DistillationTrainer
    from axial_kd_tf.layers import AxialTeacherHead

    cfg = Config()
    head = inspect.signature(AxialTeacherHead).parameters
    for field in dataclasses.fields(cfg.teacher):
        assert head[field.name].default == getattr(cfg.teacher, field.name), f"teacher.{field.name}"
    trainer = inspect.signature(DistillationTrainer).parameters
    for name in ("student_weight", "teacher_weight", "distill_weight", "target", "temperature", "mask",
                 "stop_gradient_teacher", "ignore_index", "class_weights"):
        assert trainer[name].default == getattr(cfg.distill, name), f"distill.{name}"


def test_quickstart_and_baseline_differ_only_in_distillation_and_name():
    a, b = load_config("quickstart").to_dict(), load_config("quickstart_baseline").to_dict()
    assert a["distill"]["enabled"] is True and b["distill"]["enabled"] is False
    for d in (a, b):
        d.pop("name")
        d["distill"].pop("enabled")
    assert a == b


def test_empty_file_and_empty_sections_give_defaults(tmp_path: Path):
    empty = tmp_path / "empty.yaml"
    empty.write_text("# nothing here\n")
    assert load_config(empty) == Config()
    sections = tmp_path / "sections.yaml"
    sections.write_text("train:\nexport:\n")
    assert load_config(sections) == Config()
    # an override into a section that is empty (null) in the file
    assert load_config(sections, ["train.epochs=2"]).train.epochs == 2


# ------------------------------------------------------------------------------------------------ unknown keys
def test_unknown_nested_key_names_dotted_key_and_suggests_full_key():
    message = _error(config_from_dict, {"train": {"epoch": 3}})
    assert "'train.epoch'" in message
    assert "did you mean 'train.epochs'" in message


def test_unknown_nested_key_from_yaml_file(tmp_path: Path):
    path = tmp_path / "typo.yaml"
    path.write_text("train:\n  epochs: 2\n  learning_rat: 0.1\n")
    message = _error(load_config, path)
    assert "'train.learning_rat'" in message and "'train.learning_rate'" in message


def test_unknown_top_level_key_suggests_nearest():
    message = _error(config_from_dict, {"nmae": "x"})
    assert "'nmae'" in message and "did you mean 'name'" in message


def test_unknown_section_suggests_nearest_section():
    message = _error(config_from_dict, {"trian": {"epochs": 3}})
    assert "'trian'" in message and "did you mean 'train'" in message


def test_unknown_key_without_close_match_lists_valid_keys():
    message = _error(config_from_dict, {"distill": {"zzzzzzzz": 1}})
    assert "'distill.zzzzzzzz'" in message
    assert "valid keys" in message and "distill.teacher_weight" in message


def test_unknown_key_via_override_is_rejected():
    message = _error(load_config, "quickstart", ["train.epoch=3"])
    assert "'train.epoch'" in message and "train.epochs" in message


def test_nested_new_key_via_override_is_rejected():
    message = _error(load_config, None, ["train.foo.bar=1"])
    assert "'train.foo'" in message


def test_free_form_options_mapping_accepts_any_key():
    cfg = load_config("quickstart", ["model.options.depth=2", "model.options.new_option=x"])
    assert cfg.model.options["depth"] == 2 and cfg.model.options["new_option"] == "x"
    assert cfg.model.options["base_filters"] == 16  # the rest of the mapping is kept


# ------------------------------------------------------------------------------------------------- wrong types
@pytest.mark.parametrize(
    "raw, key, fragment",
    [
        (_with("train", epochs="3"), "train.epochs", "integer"),  # string for int
        (_with("train", epochs=3.0), "train.epochs", "integer"),  # float for int
        (_with("train", epochs=2.5), "train.epochs", "integer"),
        (_with("train", epochs=True), "train.epochs", "integer"),  # bool for int
        (_with("train", batch_size=None), "train.batch_size", "integer"),  # null for a non-optional int
        (_with("data", augment=1), "data.augment", "true or false"),  # int for bool
        (_with("train", jit_compile="yes please"), "train.jit_compile", "true or false"),
        ({"name": ["a", "b"]}, "name", "string"),  # list for str
        ({"name": 3}, "name", "string"),
        (_with("model", arch=None), "model.arch", "string"),
        (_with("train", learning_rate="fast"), "train.learning_rate", "number"),
        (_with("train", learning_rate=True), "train.learning_rate", "number"),  # bool is not a number here
        (_with("export", variants="float32"), "export.variants", "list"),  # str for list
        (_with("model", options=[1, 2]), "model.options", "mapping"),
        (_with("train", steps_per_epoch="10"), "train.steps_per_epoch", "null"),  # Optional[int]
        (_with("teacher", key_dim=1.5), "teacher.key_dim", "null"),
        (_with("data", crop_size=True), "data.crop_size", "null"),
        (_with("model", encoder=5), "model.encoder", "null"),
        (_with("distill", class_weights="1,2"), "distill.class_weights", "list"),
    ],
)
def test_wrong_types_name_the_dotted_key(raw, key, fragment):
    message = _error(config_from_dict, raw)
    assert f"'{key}'" in message
    assert fragment in message


def test_section_that_is_not_a_mapping():
    assert "'train'" in _error(config_from_dict, {"train": 3})
    assert "'teacher'" in _error(config_from_dict, {"teacher": ["hidden_dim", 4]})


@pytest.mark.parametrize(
    "raw, key, suggestion",
    [
        (_with("train", optimizer="adm"), "train.optimizer", "adam"),
        (_with("train", lr_schedule="cosin"), "train.lr_schedule", "cosine"),
        (_with("distill", target="probabilites"), "distill.target", "probabilities"),
        (_with("model", library="segmentation_model"), "model.library", "segmentation_models"),
        (_with("train", mixed_precision="mixed_bf16"), "train.mixed_precision", "mixed_bfloat16"),
        (_with("distill", mask="teacher_corect"), "distill.mask", "teacher_correct"),
    ],
)
def test_bad_literal_names_key_and_suggests_value(raw, key, suggestion):
    message = _error(config_from_dict, raw)
    assert f"'{key}'" in message
    assert f"did you mean '{suggestion}'" in message


def test_bad_literal_without_close_match_lists_valid_values():
    message = _error(config_from_dict, _with("data", dataset="cityscapes"))
    assert "'data.dataset'" in message and "'synthetic'" in message


def test_ints_are_accepted_for_float_fields_and_stored_as_float():
    cfg = config_from_dict({"train": {"learning_rate": 1, "weight_decay": 0}, "distill": {"distill_weight": 2}})
    assert cfg.train.learning_rate == 1.0 and type(cfg.train.learning_rate) is float
    assert type(cfg.train.weight_decay) is float
    assert cfg.distill.distill_weight == 2.0 and type(cfg.distill.distill_weight) is float
    via_override = load_config(None, ["train.learning_rate=2"])
    assert type(via_override.train.learning_rate) is float and via_override.train.learning_rate == 2.0


# ------------------------------------------------------------------------------------------------------ ranges
@pytest.mark.parametrize(
    "raw, key",
    [
        (_with("train", epochs=0), "train.epochs"),
        (_with("train", epochs=-3), "train.epochs"),
        (_with("distill", temperature=0), "distill.temperature"),
        (_with("distill", warmup=1.5), "distill.warmup"),
        (_with("distill", warmup=-0.1), "distill.warmup"),
        (_with("distill", delay=1.0), "distill.delay"),
        (_with("distill", delay=-0.1), "distill.delay"),
        (_with("teacher", num_blocks=0), "teacher.num_blocks"),
        (_with("teacher", num_blocks=5), "teacher.num_blocks"),
        (_with("teacher", gate_init=0.0, gate_trainable=False), "teacher.gate_init"),
        (_with("train", batch_size=0), "train.batch_size"),
        (_with("train", learning_rate=-1e-3), "train.learning_rate"),
        (_with("train", learning_rate=0), "train.learning_rate"),
        (_with("train", weight_decay=-0.1), "train.weight_decay"),
        (_with("train", steps_per_epoch=0), "train.steps_per_epoch"),
        ({"data": {"synthetic": {"image_size": 64}, "crop_size": 96}}, "data.crop_size"),  # crop_size > image_size
        (_with("data", crop_size=4), "data.crop_size"),
        ({"data": {"synthetic": {"image_size": 4}}}, "data.synthetic.image_size"),
        ({"data": {"synthetic": {"train_samples": 0}}}, "data.synthetic.train_samples"),
        ({"data": {"synthetic": {"val_samples": 0}}}, "data.synthetic.val_samples"),
        ({"teacher": {"hidden_dim": 10, "num_heads": 3}}, "teacher.hidden_dim"),  # not divisible
        (_with("teacher", num_heads=0), "teacher.num_heads"),
        (_with("teacher", hidden_dim=0), "teacher.hidden_dim"),
        (_with("teacher", key_dim=0), "teacher.key_dim"),
        (_with("teacher", pool_size=0), "teacher.pool_size"),
        (_with("distill", teacher_weight=-1), "distill.teacher_weight"),
        (_with("distill", class_weights=[1.0, -1.0]), "distill.class_weights"),
        (_with("distill", class_weights=["a"]), "distill.class_weights"),
        (_with("export", variants=["float32", "int4"]), "export.variants"),  # unknown export variant
        (_with("export", input_size=4), "export.input_size"),
        (_with("export", verify_samples=0), "export.verify_samples"),
        (_with("export", calibration_samples=0), "export.calibration_samples"),
        (_with("logging", image_every=0), "logging.image_every"),
        (_with("logging", num_images=-1), "logging.num_images"),
    ],
)
def test_out_of_range_values_name_the_key(raw, key):
    message = _error(config_from_dict, raw)
    assert f"'{key}'" in message


def test_range_messages_are_helpful():
    assert "int4" in _error(config_from_dict, _with("export", variants=["int4"]))
    assert "num_heads" in _error(config_from_dict, {"teacher": {"hidden_dim": 10, "num_heads": 3}})
    assert "64" in _error(config_from_dict, {"data": {"synthetic": {"image_size": 64}, "crop_size": 96}})


def test_boundary_values_are_accepted():
    cfg = config_from_dict({
        "train": {"epochs": 1, "batch_size": 1, "steps_per_epoch": 1, "weight_decay": 0},
        "data": {"synthetic": {"image_size": 64}, "crop_size": 64},
        "teacher": {"hidden_dim": 12, "num_heads": 3, "key_dim": 1},
        "distill": {"student_weight": 0, "class_weights": [0, 1, 2.5]},
        "export": {"variants": ["float32", "float16", "int8"], "input_size": 8},
        "logging": {"num_images": 0},
    })
    assert cfg.data.crop_size == 64 and cfg.teacher.num_heads == 3


# --------------------------------------------------------------------------------------------------- overrides
@pytest.mark.parametrize(
    "assignment, getter, expected",
    [
        ("train.epochs=3", lambda c: c.train.epochs, 3),
        ("train.learning_rate=1e-3", lambda c: c.train.learning_rate, 1e-3),
        ("train.learning_rate=2E-4", lambda c: c.train.learning_rate, 2e-4),
        ("train.learning_rate=1.5e-2", lambda c: c.train.learning_rate, 1.5e-2),
        ("train.learning_rate=0.05", lambda c: c.train.learning_rate, 0.05),
        ("train.jit_compile=false", lambda c: c.train.jit_compile, False),
        ("data.augment=true", lambda c: c.data.augment, True),
        ("distill.enabled=False", lambda c: c.distill.enabled, False),
        ("export.variants=[float32,int8]", lambda c: c.export.variants, ["float32", "int8"]),
        ("export.variants=[float16]", lambda c: c.export.variants, ["float16"]),
        ("train.steps_per_epoch=null", lambda c: c.train.steps_per_epoch, None),
        ("train.steps_per_epoch=5", lambda c: c.train.steps_per_epoch, 5),
        ("data.crop_size=~", lambda c: c.data.crop_size, None),
        ("model.encoder=", lambda c: c.model.encoder, None),
        ("name=my run", lambda c: c.name, "my run"),
        ("name = spaced", lambda c: c.name, "spaced"),
        ("train.optimizer=sgd", lambda c: c.train.optimizer, "sgd"),
        ("distill.class_weights=[1, 2, 0.5, 1, 1]", lambda c: c.distill.class_weights, [1, 2, 0.5, 1, 1]),
    ],
)
def test_override_values_are_parsed_as_yaml(assignment, getter, expected):
    cfg = load_config("quickstart", [assignment])
    value = getter(cfg)
    assert value == expected and type(value) is type(expected)


def test_overrides_apply_in_order_and_later_wins():
    cfg = load_config("quickstart", ["train.epochs=3", "train.epochs=5", "teacher.num_heads=4"])
    assert cfg.train.epochs == 5 and cfg.teacher.num_heads == 4


def test_override_of_int_field_with_float_is_rejected():
    assert "'train.epochs'" in _error(load_config, None, ["train.epochs=2.5"])


def test_override_type_and_range_errors_name_the_key():
    assert "'train.epochs'" in _error(load_config, "quickstart", ["train.epochs=0"])
    assert "'train.epochs'" in _error(load_config, "quickstart", ["train.epochs=three"])
    assert "'train.epochs'" in _error(load_config, "quickstart", ["train.epochs="])
    message = _error(load_config, "quickstart", ["train.optimizer=adm"])
    assert "'train.optimizer'" in message and "adam" in message


@pytest.mark.parametrize("assignment", ["train.epochs", "train.epochs3", "", "=3", ".epochs=3", "train.=3"])
def test_malformed_override_is_rejected(assignment):
    message = _error(load_config, None, [assignment])
    assert "override" in message or "config key" in message


def test_malformed_override_without_equals_explains_the_syntax():
    message = _error(load_config, None, ["train.epochs"])
    assert "'train.epochs'" in message and "section.key=value" in message


def test_override_through_a_non_section_is_rejected():
    message = _error(load_config, "quickstart", ["train.epochs.x=1"])
    assert "train.epochs.x=1" in message and "'train.epochs' must be a section" in message


def test_override_replacing_a_section_with_a_scalar_is_rejected():
    assert "'train'" in _error(load_config, None, ["train=3"])


def test_unparsable_override_value_is_kept_as_string():
    cfg = load_config(None, ["name=[unclosed"])
    assert cfg.name == "[unclosed"


def test_apply_override_does_not_touch_other_sections():
    raw = {"train": {"epochs": 3}, "data": {"seed": 1}}
    before = copy.deepcopy(raw)
    apply_override(raw, "train.batch_size=4")
    assert raw["train"] == {"epochs": 3, "batch_size": 4} and raw["data"] == before["data"]


def test_exponent_floats_in_yaml_files_are_floats(tmp_path: Path):
    path = tmp_path / "lr.yaml"
    path.write_text("train:\n  learning_rate: 3e-4\n  weight_decay: 1E-5\n  epochs: 2\n")
    cfg = load_config(path)
    assert cfg.train.learning_rate == pytest.approx(3e-4) and cfg.train.weight_decay == pytest.approx(1e-5)
    assert cfg.train.epochs == 2 and type(cfg.train.epochs) is int


# ----------------------------------------------------------------------------------------------- name resolution
@pytest.mark.parametrize("name", ["quickstart", "quickstart.yaml"])
def test_bare_names_resolve_to_configs_dir(name, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)  # must not depend on the working directory
    cfg = load_config(name)
    assert cfg.name == "quickstart"
    assert resolve_config_path(name).resolve() == (CONFIG_DIR / "quickstart.yaml").resolve()


def test_relative_path_from_repo_root(monkeypatch):
    monkeypatch.chdir(CONFIG_DIR.parent)
    assert load_config("configs/quickstart.yaml") == load_config("quickstart")


def test_absolute_path_loads():
    assert load_config(str((CONFIG_DIR / "quickstart_baseline.yaml").resolve())).name == "quickstart-baseline"


def test_a_local_file_wins_over_the_configs_dir(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "quickstart.yaml").write_text("name: local\n")
    assert load_config("quickstart.yaml").name == "local"


def test_missing_config_lists_available_configs():
    message = _error(load_config, "no_such_config")
    assert "'no_such_config'" in message and "not found" in message
    for path in CONFIG_DIR.glob("*.yaml"):  # the top-level configs, resolvable by name
        assert path.name in message


def test_missing_config_path_names_the_path(tmp_path: Path):
    missing = tmp_path / "nope.yaml"
    message = _error(load_config, missing)
    assert str(missing) in message


def test_directory_is_not_a_config(tmp_path: Path):
    assert "not found" in _error(load_config, tmp_path)


# ---------------------------------------------------------------------------------------------------- bad files
def test_invalid_yaml_names_file_and_line(tmp_path: Path):
    path = tmp_path / "broken.yaml"
    path.write_text("name: x\ntrain:\n  epochs: 3\n  batch_size: [8\n")
    message = _error(load_config, path)
    assert str(path) in message and "not valid YAML" in message
    assert "line " in message


def test_invalid_yaml_reports_the_right_line(tmp_path: Path):
    path = tmp_path / "tabs.yaml"
    path.write_text("name: x\ntrain:\n\tepochs: 3\n")
    message = _error(load_config, path)
    assert str(path) in message and "line 3" in message


def test_yaml_list_instead_of_mapping(tmp_path: Path):
    path = tmp_path / "list.yaml"
    path.write_text("- train\n- epochs\n")
    message = _error(load_config, path)
    assert str(path) in message and "mapping" in message


def test_yaml_scalar_instead_of_mapping(tmp_path: Path):
    path = tmp_path / "scalar.yaml"
    path.write_text("just a string\n")
    assert str(path) in _error(load_config, path)


def test_binary_file_is_a_user_error(tmp_path: Path):
    path = tmp_path / "binary.yaml"
    path.write_bytes(bytes(range(128, 256)) * 4)
    assert str(path) in _error(load_config, path)


def test_config_from_dict_rejects_non_mapping_root():
    assert "mapping" in _error(config_from_dict, ["train"])


# ------------------------------------------------------------------------------------------------- round trip
def _roundtrip_variants():
    yield "defaults", load_config(None)
    for path in ALL_CONFIGS:
        yield path.stem, load_config(path)
    yield "custom", config_from_dict({
        "name": "custom run",
        "model": {"arch": "simple_unet", "encoder": "resnet18", "options": {"base_filters": 8, "nested": {"a": [1, 2]}}},
        "teacher": {"hidden_dim": 24, "num_heads": 3, "key_dim": 4, "use_positional_encoding": False},
        "distill": {"target": "probabilities", "ignore_index": 0, "class_weights": [0.5, 1, 1, 2, 1e-3]},
        "data": {"synthetic": {"image_size": 96}, "crop_size": 64, "root": "/data/x", "augment": False},
        "train": {"learning_rate": 1e-5, "optimizer": "adamw", "weight_decay": 1e-4, "lr_schedule": "poly",
                  "steps_per_epoch": 7, "mixed_precision": "mixed_bfloat16"},
        "export": {"variants": ["float32", "float16", "int8"], "teacher": True, "input_size": 64},
        "logging": {"tensorboard": False, "verbose": 0},
    })


def test_teacher_keys_are_the_head_arguments():
    """The teacher section builds the head as it is: every key is an AxialTeacherHead argument."""
    import inspect

    from axial_kd_tf.layers import AxialTeacherHead
    from axial_kd_tf.training import teacher_kwargs

    cfg = config_from_dict({"teacher": {"use_positional_encoding": False, "num_blocks": 2}})
    kwargs = teacher_kwargs(cfg)
    inspect.signature(AxialTeacherHead).bind(num_classes=3, **kwargs)  # raises on a key the head does not take
    head = AxialTeacherHead(num_classes=3, **kwargs)
    assert head.use_positional_encoding is False and head.num_blocks == 2


def test_renamed_teacher_keys_still_load_with_a_warning(capsys):
    old = config_from_dict({"teacher": {"positional_encoding": False, "normalization": False}})
    assert old == config_from_dict({"teacher": {"use_positional_encoding": False, "use_normalization": False}})
    err = capsys.readouterr().err
    assert "'teacher.positional_encoding' is now 'teacher.use_positional_encoding'" in err
    assert "'teacher.normalization' is now 'teacher.use_normalization'" in err
    msg = _error(config_from_dict, {"teacher": {"positional_encoding": False, "use_positional_encoding": True}})
    assert "keep only 'teacher.use_positional_encoding'" in msg


def test_flat_data_keys_moved_into_their_dataset_section(tmp_path, capsys):
    """The dataset-specific data keys live in data.<dataset>; the flat names of earlier configs, run folders and
    --set still load (a warning each), in a file, in a child of a base file that uses the new names, and as --set."""
    new = {"dataset": "covid", "crop_size": 16, "covid": {"window": [-1000, 400], "train_slices": 8, "val_slices": 2},
           "sstem": {"fold": 3}, "synthetic": {"image_size": 64, "train_samples": 5}, "folders": {"test_fraction": 0.1}}
    flat = {"dataset": "covid", "crop_size": 16, "window": [-1000, 400], "train_slices": 8, "val_slices": 2,
            "fold": 3, "image_size": 64, "train_samples": 5, "test_fraction": 0.1}
    assert config_from_dict({"data": flat}) == config_from_dict({"data": new})
    err = capsys.readouterr().err
    for old, moved in [("fold", "sstem.fold"), ("window", "covid.window"), ("image_size", "synthetic.image_size"),
                       ("test_fraction", "folders.test_fraction")]:
        assert f"'data.{old}' is now 'data.{moved}'" in err
    base = tmp_path / "base.yaml"
    base.write_text("data:\n  dataset: sstem\n  sstem:\n    fold: 1\n")
    child = tmp_path / "child.yaml"
    child.write_text("base: base.yaml\ndata:\n  fold: 2\n")
    assert load_config(child).data.sstem.fold == 2
    assert load_config(base, ["data.fold=4"]).data.sstem.fold == 4
    assert "'data.fold' is now 'data.sstem.fold'" in capsys.readouterr().err
    msg = _error(config_from_dict, {"data": {"fold": 1, "sstem": {"fold": 2}}})
    assert "keep only 'data.sstem.fold'" in msg
    assert "data.sstem.fold" in _error(config_from_dict, {"data": {"sstem": {"fold": 7}}})
    assert "did you mean 'data.covid.window'" in _error(config_from_dict, {"data": {"covid": {"windw": None}}})


@pytest.mark.parametrize("label, cfg", list(_roundtrip_variants()), ids=lambda v: v if isinstance(v, str) else "")
def test_dump_config_round_trips(label, cfg):
    text = dump_config(cfg)
    # Plain PyYAML (what other tools, and the run directory reader, use) and the config loader agree.
    assert config_from_dict(yaml.safe_load(text)) == cfg
    assert config_from_dict(yaml.safe_load(dump_config(config_from_dict(yaml.safe_load(text))))) == cfg


def test_dumped_config_file_loads_with_load_config(tmp_path: Path):
    cfg = load_config("quickstart", ["train.learning_rate=1e-4", "export.variants=[float32,int8]"])
    path = tmp_path / "config.yaml"
    path.write_text(dump_config(cfg))
    assert load_config(path) == cfg


# ------------------------------------------------------------------------------------------- base: inheritance
def test_base_merges_sections_key_by_key(tmp_path):
    from axial_kd_tf.config import load_config

    (tmp_path / "parent.yaml").write_text("name: parent\ntrain: {epochs: 7, batch_size: 4}\n"
                                          "model: {arch: unet, options: {decoder_channels: [8, 8, 8, 8, 8]}}\n")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "child.yaml").write_text("base: ../parent.yaml\nname: child\ntrain: {epochs: 2}\n"
                                                 "model: {options: {encoder_depth: 3}}\n")
    cfg = load_config(tmp_path / "sub" / "child.yaml", ["train.batch_size=2"])
    assert (cfg.name, cfg.train.epochs, cfg.train.batch_size, cfg.model.arch) == ("child", 2, 2, "unet")
    assert cfg.model.options == {"encoder_depth": 3}  # options replace: they belong to one architecture


def test_base_errors_are_one_line(tmp_path):
    from axial_kd_tf.config import load_config

    (tmp_path / "a.yaml").write_text("base: b.yaml\n")
    (tmp_path / "b.yaml").write_text("base: a.yaml\n")
    with pytest.raises(UserError, match="includes itself"):
        load_config(tmp_path / "a.yaml")
    (tmp_path / "c.yaml").write_text("base: missing.yaml\n")
    with pytest.raises(UserError, match="names 'missing.yaml', which does not exist"):
        load_config(tmp_path / "c.yaml")
    (tmp_path / "d.yaml").write_text("base: [1]\n")
    with pytest.raises(UserError, match="must be a path"):
        load_config(tmp_path / "d.yaml")


@pytest.mark.parametrize("name", ["drosophila", "covid", "paper/drosophila.yaml", "paper/drosophila_cpu.yaml",
                                  "paper/covid.yaml", "paper/covid_cpu.yaml"])
def test_shipped_dataset_configs_load(name):
    from axial_kd_tf.config import load_config

    cfg = load_config(name)
    assert cfg.data.dataset in ("sstem", "covid") and cfg.data.crop_size == 256


def test_data_keys_are_validated():
    from axial_kd_tf.config import config_from_dict

    for data, key in [({"sstem": {"fold": 5}}, "data.sstem.fold"), ({"covid": {"window": [400, -1000]}},
                                                                     "data.covid.window"),
                      ({"tile_size": 4}, "data.tile_size"), ({"dataset": "folders"}, "data.root"),
                      ({"dataset": "folders", "root": "x"}, "data.value_map"),
                      ({"folders": {"val_fraction": 1.0}}, "data.folders.val_fraction")]:
        with pytest.raises(UserError, match=key.replace(".", r"\.")):
            config_from_dict({"data": data})
    with pytest.raises(UserError, match="did you mean 'data.sstem.fold'"):
        config_from_dict({"data": {"sstem": {"folds": 1}}})


def test_first_difference_names_the_dotted_key():
    from axial_kd_tf.config import config_from_dict, first_difference

    a = config_from_dict({"train": {"epochs": 3}}).to_dict()
    b = config_from_dict({"train": {"epochs": 4}}).to_dict()
    assert first_difference(a, a) is None
    assert first_difference(a, b) == "train.epochs"
    assert first_difference({"x": {"y": 1}}, {"x": {"y": 1, "z": 2}}) == "x.z"
    assert first_difference(1, 2) == "<root>"

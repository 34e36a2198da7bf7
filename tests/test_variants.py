"""Distillation variants of a study (axial_kd_tf.variants): --sweep parsing and naming, variants files, validation."""

from __future__ import annotations

import pytest

from axial_kd_tf.config import CONFIG_DIR, load_config
from axial_kd_tf.errors import UserError
from axial_kd_tf.variants import (Variant, build_variants, parse_sweep, slug, sweep_variants, unique_dirnames,
                                  validate_variants)


def test_parse_sweep_reads_yaml_scalars_and_keeps_brackets_together():
    assert parse_sweep("distill.temperature=1,2.0, 4") == (
        "distill.temperature", [("1", 1), ("2.0", 2.0), ("4", 4)])
    key, values = parse_sweep("distill.class_weights=[1, 2],null,1e-3,kl,'a,b'")
    assert key == "distill.class_weights"
    assert values == [("[1, 2]", [1, 2]), ("null", None), ("1e-3", 1e-3), ("kl", "kl"), ("'a,b'", "a,b")]
    for bad in ("distill.temperature", "=1,2", "distill.temperature=", "distill.temperature=1,,2", "a..b=1",
                "distill.temperature=1,1"):
        with pytest.raises(UserError):
            parse_sweep(bad)


def test_sweeps_form_the_cartesian_product_named_after_the_last_key_component():
    out = sweep_variants(["distill.target=kl,mse", "distill.temperature=1,2"])
    assert [name for name, _ in out] == ["target=kl+temperature=1", "target=kl+temperature=2",
                                         "target=mse+temperature=1", "target=mse+temperature=2"]
    assert out[1][1] == (("distill.target", "kl"), ("distill.temperature", 2))
    # two keys that end alike keep their full names, so that the variant names stay unique
    names = [n for n, _ in sweep_variants(["distill.weight=1", "teacher.weight=2"])]
    assert names == ["distill.weight=1+teacher.weight=2"]
    with pytest.raises(UserError, match="swept twice"):
        sweep_variants(["distill.target=kl", "distill.target=mse"])


def test_folder_names_are_safe_and_unique():
    assert slug("target=kl+temperature=2") == "target=kl+temperature=2"
    assert slug("w=[1, 2]") == "w=_1_2"
    assert slug("../x") == "x" and "/" not in slug("a/b")
    long = slug("x" * 300)
    assert len(long) <= 80 and long != slug("x" * 301)
    # case-insensitive file systems: "KL" and "kl" must not share a folder; reserved runner folders are avoided
    assert unique_dirnames(["kl", "KL", "a b", "a_b", "baseline"]) == ["kl", "KL-2", "a_b", "a_b-2", "baseline-2"]


def test_variants_file(tmp_path):
    f = tmp_path / "v.yaml"
    f.write_text("kl-T2: {distill.target: kl, distill.temperature: 2.0}\nplain:\nw.5: {distill.distill_weight: 5e-1}\n")
    variants = build_variants(variants_file=f)
    assert [v.name for v in variants] == ["kl-T2", "plain", "w.5"]
    assert variants[0].overrides_dict() == {"distill.target": "kl", "distill.temperature": 2.0}
    assert variants[1].overrides == () and variants[2].overrides_dict() == {"distill.distill_weight": 0.5}
    assert Variant.from_dict(variants[0].to_dict()) == variants[0]
    # with --sweep too: every file variant at every sweep point
    both = build_variants(["train.epochs=2,3"], f)
    assert [v.name for v in both][:2] == ["kl-T2+epochs=2", "kl-T2+epochs=3"] and len(both) == 6


@pytest.mark.parametrize("text, message", [
    ("bad name: {distill.target: kl}\n", "invalid variant name 'bad name'"),
    ("_x: {}\n", "invalid variant name '_x'"),
    ("baseline: {}\n", "reserved"),
    ("a: {}\na: {}\n", "variant 'a' is defined twice"),
    ("a: [1, 2]\n", "must map dotted config keys"),
    ("- a\n", "non-empty mapping"),
    ("a: {b: [\n", "not valid YAML"),
])
def test_variants_file_errors_name_the_file_and_the_variant(tmp_path, text, message):
    f = tmp_path / "v.yaml"
    f.write_text(text)
    with pytest.raises(UserError, match=message) as err:
        build_variants(variants_file=f)
    assert str(f) in str(err.value) and "\n" not in str(err.value)


def test_validation_uses_the_config_modules_errors():
    base = load_config("quickstart").to_dict()
    ok = build_variants(["distill.target=logits,probabilities"])
    validate_variants(base, ok)
    with pytest.raises(UserError, match=r"variant 'targt=kl' \(--sweep\): unknown config key 'distill.targt'; "
                                        r"did you mean 'distill.target'\?"):
        validate_variants(base, build_variants(["distill.targt=kl"]), "--sweep")
    with pytest.raises(UserError, match="variant 'distill_weight=-1'.*must be >= 0"):
        validate_variants(base, build_variants(["distill.distill_weight=-1"]))
    with pytest.raises(UserError, match="which the grid sets itself"):
        validate_variants(base, build_variants(["train.seed=3"]))
    with pytest.raises(UserError, match="which the grid sets itself"):
        validate_variants(base, build_variants(["distill.enabled=false"]))


def test_apply_round_trips_values_through_apply_override():
    raw: dict = {}
    v = Variant("x", "x", (("distill.target", "true"), ("distill.class_weights", [1.0, 2]), ("teacher.key_dim", None),
                           ("train.learning_rate", 1e-5)))
    v.apply(raw)
    assert raw == {"distill": {"target": "true", "class_weights": [1.0, 2]}, "teacher": {"key_dim": None},
                   "train": {"learning_rate": 1e-5}}


@pytest.mark.parametrize("path", sorted((CONFIG_DIR / "studies").glob("*.variants.yaml")), ids=lambda p: p.name)
def test_shipped_variant_files_are_valid(path):
    # <base>[.<tag>].variants.yaml is validated against <base>.yaml beside it
    variants = build_variants(variants_file=path)
    assert variants and all(v.dirname == v.name for v in variants)  # the names are folder names already
    validate_variants(load_config(path.with_name(path.name.split(".")[0] + ".yaml")).to_dict(), variants, str(path))

"""Distillation variants of a study: named sets of config overrides for the ``distill`` runs of a grid.

A variant is a small mapping of dotted config keys to values, e.g. ``{distill.target: kl, distill.temperature: 2.0}``.
It applies to the distill runs only, on top of the base config and the grid's ``--set`` overrides; the baseline
("without") runs are shared by every variant. Variants come from

* ``--sweep KEY=V1,V2,...`` (repeatable): the cartesian product of all sweeps, named ``target=kl+temperature=2``
  after the last component of each dotted key (the full key where two sweeps share it); values are YAML scalars as
  in ``--set``;
* ``--variants FILE.yaml``: a mapping ``name: {dotted.key: value, ...}``.

With both, every file variant is combined with every sweep point (``<file name>+<sweep name>``).

This module only parses, names and validates; it imports neither TensorFlow nor the runner's CLI.
"""

from __future__ import annotations

import copy
import hashlib
import itertools
import json
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Sequence

import yaml

from axial_kd_tf.errors import UserError
from axial_kd_tf.io_utils import read_user_text
from axial_kd_tf.typed_yaml import yaml_load

NAME_PATTERN = r"[A-Za-z0-9][A-Za-z0-9_.=+-]*"
_NAME_RE = re.compile(NAME_PATTERN + r"\Z")
_UNSAFE = re.compile(r"[^A-Za-z0-9_.=+-]+")
# Names of the directories the runner uses without variants: a variant of that name would share their runs.
RESERVED_NAMES = ("baseline", "distill")
# Keys that vary across the grid by design (set per run by the runner; left out of a run's configuration digest).
GRID_KEYS = ("name", "model.arch", "distill.enabled", "data.sstem.fold", "train.seed", "data.seed")
# Keys a variant may not change: the grid sets them, or they define which data the baseline it is paired with saw.
FORBIDDEN_KEYS = GRID_KEYS + ("data.dataset",)
MAX_DIRNAME = 80  # longer names are cut and made unique with a hash (file systems allow 255 bytes per name)


@dataclass(frozen=True)
class Variant:
    """A named set of config overrides for the distill runs; ``dirname`` is its folder under ``runs/<arch>/``."""

    name: str
    dirname: str
    overrides: tuple  # ((dotted key, value), ...) in the order they are applied

    def overrides_dict(self) -> dict:
        return {k: copy.deepcopy(v) for k, v in self.overrides}

    def to_dict(self) -> dict:
        return {"name": self.name, "dirname": self.dirname, "overrides": self.overrides_dict()}

    @classmethod
    def from_dict(cls, data: dict) -> "Variant":
        return cls(str(data["name"]), str(data["dirname"]), tuple((str(k), v) for k, v in data["overrides"].items()))

    def apply(self, raw: dict) -> None:
        """Apply the overrides to a raw config mapping, through :func:`axial_kd_tf.config.apply_override`."""
        from axial_kd_tf.config import apply_override

        for key, value in self.overrides:
            apply_override(raw, f"{key}={yaml_text(value)}")


def yaml_text(value: Any) -> str:
    """A value as YAML text that :func:`axial_kd_tf.config.apply_override` parses back to the same value."""
    if isinstance(value, float) and not math.isfinite(value):
        return ".nan" if math.isnan(value) else (".inf" if value > 0 else "-.inf")
    return json.dumps(value)  # JSON is YAML (flow style), and keeps strings such as "true" or "1" strings


# ------------------------------------------------------------------------------------------------------ naming
def slug(name: str) -> str:
    """A file-system-safe folder name for a variant name (same characters as variant names; long names hashed)."""
    # no leading dot or dash (hidden files, options), no path separators; trailing "_" from replaced brackets dropped
    text = re.sub(r"^[^A-Za-z0-9]+", "", _UNSAFE.sub("_", name)).rstrip("_") or "variant"
    if len(text) > MAX_DIRNAME:
        text = text[: MAX_DIRNAME - 11] + "-" + hashlib.sha1(name.encode()).hexdigest()[:10]
    return text


def unique_dirnames(names: Sequence[str]) -> list[str]:
    """:func:`slug` of each name, made unique (case-insensitively, for case-insensitive file systems) with -2, -3."""
    taken = {n.lower() for n in RESERVED_NAMES}
    out = []
    for name in names:
        base = slug(name)
        candidate, i = base, 2
        while candidate.lower() in taken:
            candidate, i = f"{base}-{i}", i + 1
        taken.add(candidate.lower())
        out.append(candidate)
    return out


# ------------------------------------------------------------------------------------------------------ sweeps
def _split_values(text: str) -> list[str]:
    """Split ``a,[1, 2],{x: 1}`` at the commas outside brackets and quotes."""
    parts, depth, quote, current = [], 0, "", ""
    for ch in text:
        if quote:
            quote = "" if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch in "[{":
            depth += 1
        elif ch in "]}":
            depth -= 1
        elif ch == "," and depth == 0:
            parts.append(current)
            current = ""
            continue
        current += ch
    parts.append(current)
    return [p.strip() for p in parts]


def parse_sweep(text: str) -> tuple[str, list[tuple[str, Any]]]:
    """``distill.temperature=1,2.0,4`` → ``("distill.temperature", [("1", 1), ("2.0", 2.0), ("4", 4)])``."""
    from axial_kd_tf.config import apply_override

    key, sep, values = text.partition("=")
    key = key.strip()
    if not sep or not key or any(not p.strip() for p in key.split(".")) or not values.strip():
        raise UserError(f"--sweep '{text}' must look like section.key=value1,value2 (e.g. distill.temperature=1,2,4)")
    out: list[tuple[str, Any]] = []
    for item in _split_values(values):
        if not item:
            raise UserError(f"--sweep '{text}' has an empty value; separate the values with single commas")
        probe: dict = {}
        apply_override(probe, f"v={item}")  # the same YAML-scalar parsing as --set
        if any(item == seen for seen, _ in out):
            raise UserError(f"--sweep '{text}' lists the value '{item}' twice")
        out.append((item, probe["v"]))
    return key, out


def sweep_variants(sweeps: Sequence[str]) -> list[tuple[str, tuple]]:
    """The cartesian product of ``--sweep`` options as ``(name, overrides)`` pairs, in command-line order."""
    parsed = [parse_sweep(s) for s in sweeps]
    keys = [k for k, _ in parsed]
    for key in keys:
        if keys.count(key) > 1:
            raise UserError(f"--sweep: key '{key}' is swept twice; give all its values in one --sweep")
    last = [k.rsplit(".", 1)[-1] for k in keys]
    labels = [lab if last.count(lab) == 1 else key for lab, key in zip(last, keys)]
    out = []
    for combo in itertools.product(*[values for _, values in parsed]):
        name = "+".join(f"{lab}={text}" for lab, (text, _) in zip(labels, combo))
        out.append((name, tuple((key, value) for key, (_, value) in zip(keys, combo))))
    return out


# ------------------------------------------------------------------------------------------------ variant files
def _check_name(name: Any, where: str) -> str:
    if not isinstance(name, str) or not _NAME_RE.match(name):
        raise UserError(f"{where}: invalid variant name {name!r}; names must match {NAME_PATTERN}")
    if name.lower() in RESERVED_NAMES:
        raise UserError(f"{where}: variant name '{name}' is reserved (the runner's own {', '.join(RESERVED_NAMES)} "
                        "folders); choose another")
    return name


def load_variants_file(path: str | Path) -> list[tuple[str, tuple]]:
    """``name: {dotted.key: value}`` mappings of a YAML file as ``(name, overrides)`` pairs, in file order."""

    p = Path(path)
    where = f"variants file '{path}'"
    text = read_user_text(p, where)
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        seen: set = set()
        for key_node, _ in node.value if isinstance(node, yaml.MappingNode) else ():
            if key_node.value in seen:  # before yaml_load, whose own duplicate-key error is less specific
                raise UserError(f"{where}: variant '{key_node.value}' is defined twice")
            seen.add(key_node.value)
        raw = yaml_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f" line {mark.line + 1}" if mark else ""
        raise UserError(f"{where} is not valid YAML{line}: {getattr(exc, 'problem', exc)}") from None
    if not isinstance(raw, dict) or not raw:
        raise UserError(f"{where} must be a non-empty mapping of variant names to overrides, "
                        "e.g. kl-T2: {distill.target: kl, distill.temperature: 2.0}")
    out = []
    for name, overrides in raw.items():
        _check_name(name, where)
        if overrides is None:
            overrides = {}
        if not isinstance(overrides, dict):
            raise UserError(f"{where}: variant '{name}' must map dotted config keys to values, got {overrides!r}")
        for key in overrides:
            if not isinstance(key, str) or not key.strip() or any(not part for part in key.split(".")):
                raise UserError(f"{where}: variant '{name}' has an invalid key {key!r}; use dotted config keys such "
                                "as distill.target")
        out.append((name, tuple(overrides.items())))
    return out


# --------------------------------------------------------------------------------------------- building and checks
def build_variants(sweeps: Sequence[str] = (), variants_file: Optional[str | Path] = None) -> list[Variant]:
    """The variants of ``--variants`` and ``--sweep`` (their product when both are given); [] when neither is."""
    named = load_variants_file(variants_file) if variants_file is not None else []
    swept = sweep_variants(sweeps) if sweeps else []
    if named and swept:
        combined = []
        for (fname, fover), (sname, sover) in itertools.product(named, swept):
            both = {k for k, _ in fover} & {k for k, _ in sover}
            if both:
                raise UserError(f"variant '{fname}' of '{variants_file}' sets {', '.join(sorted(both))}, which "
                                "--sweep also sets; remove it from one of them")
            combined.append((f"{fname}+{sname}", fover + sover))
        pairs = combined
    else:
        pairs = named or swept
    from axial_kd_tf.config import current_key

    pairs = [(name, tuple((current_key(k), v) for k, v in overrides)) for name, overrides in pairs]
    dirnames = unique_dirnames([name for name, _ in pairs])
    return [Variant(name, dirname, overrides) for (name, overrides), dirname in zip(pairs, dirnames)]


def validate_variants(base_raw: dict, variants: Sequence[Variant], source: str = "") -> None:
    """Check every variant on the base config (with ``--set``) before anything runs; one-line UserError otherwise.

    Unknown keys (with a suggestion), wrong types and ranges are the config module's own messages, prefixed with the
    variant's name.
    """
    from axial_kd_tf.config import config_from_dict

    for v in variants:
        where = f"variant '{v.name}'" + (f" ({source})" if source else "")
        for key, _ in v.overrides:
            if key in FORBIDDEN_KEYS:
                raise UserError(f"{where} sets '{key}', which the grid sets itself (variants may not change "
                                f"{', '.join(FORBIDDEN_KEYS)})")
        raw = copy.deepcopy(base_raw)
        raw.setdefault("distill", {})["enabled"] = True
        try:
            v.apply(raw)
            config_from_dict(raw)
        except UserError as exc:
            raise UserError(f"{where}: {exc}") from None

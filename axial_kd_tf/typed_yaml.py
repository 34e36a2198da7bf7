"""Typed configuration from YAML, the machinery under :mod:`axial_kd_tf.config`: a YAML reader (YAML 1.2 floats such
as ``1e-3``, a key given twice is an error) and :func:`build_dataclass`, which builds nested dataclasses from a
mapping, checks every value against its annotation and rejects an unknown key with the nearest valid one.

All errors are :class:`axial_kd_tf.errors.UserError` with a one-line message naming the dotted key or the file.
"""

from __future__ import annotations

import dataclasses
import difflib
import re
import sys
import types
import typing
from pathlib import Path
from typing import Any, Literal, Mapping

import yaml

from axial_kd_tf.errors import UserError


class _Loader(yaml.SafeLoader):
    """SafeLoader that also reads YAML 1.2 floats without a dot (``1e-3``, ``5E4``), which YAML 1.1 reads as strings,
    and rejects a key given twice in one mapping (PyYAML silently keeps the last)."""

    def construct_mapping(self, node: yaml.Node, deep: bool = False) -> dict:
        if isinstance(node, yaml.MappingNode):
            seen: dict = {}
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":  # ``<<: *anchor`` may repeat keys on purpose
                    continue
                key = self.construct_object(key_node, deep=True)
                try:
                    first = seen.setdefault(key, key_node)
                except TypeError:  # an unhashable key: the base class words that error
                    continue
                if first is not key_node:
                    raise yaml.constructor.ConstructorError(
                        None, None,
                        f"key '{key}' appears twice (first on line {first.start_mark.line + 1}); keep one",
                        key_node.start_mark,
                    )
        return super().construct_mapping(node, deep=deep)


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?[0-9][0-9_]*(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"),
)


def yaml_load(text: str) -> Any:
    """Parse YAML like ``yaml.safe_load``, but with ``1e-3`` read as a float."""
    return yaml.load(text, Loader=_Loader)


def read_yaml_mapping(p: Path) -> dict:
    """The top-level mapping of the YAML file ``p``; one-line errors naming the file (and line) otherwise."""
    try:
        raw = yaml_load(p.read_text(encoding="utf-8"))
        if raw is None:  # empty, or comments only: legal, but most likely the wrong file
            print(f"warning: config file '{p}' is empty; every key keeps its default", file=sys.stderr)
            raw = {}
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"cannot read config file '{p}': {type(exc).__name__}: {exc}") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        raise UserError(f"config file '{p}' is not valid YAML{where}: {getattr(exc, 'problem', exc)}") from None
    if not isinstance(raw, dict):
        raise UserError(f"config file '{p}' must contain a mapping of sections (model:, train:, ...)")
    return raw


def _suggest(key: str, valid: typing.Iterable[str], prefix: str = "") -> str:
    valid = list(valid)
    match = difflib.get_close_matches(key, valid, n=1, cutoff=0.5)
    return f"; did you mean '{prefix}{match[0]}'?" if match else f"; valid keys: {', '.join(prefix + v for v in sorted(valid))}"


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(tp))
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(tp))
    return getattr(tp, "__name__", str(tp)).replace("NoneType", "null")


# Plain annotations: the Python types a YAML value may have for each, and how an error names it (an int is
# accepted where a float is expected; a bool is neither).
_PLAIN: dict = {
    bool: (bool, "true or false"),
    int: (int, "an integer"),
    float: ((int, float), "a number"),
    str: (str, "a string"),
    list: (list, "a list"),
    dict: (dict, "a mapping"),
}


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Check ``value`` against the annotation ``tp``; return it (ints are accepted where floats are expected)."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, key)
            except UserError:
                pass
        raise UserError(f"config key '{key}' must be {_type_name(tp)}, got {value!r}")
    if origin is Literal:
        if value not in typing.get_args(tp):
            raise UserError(f"config key '{key}' must be {_type_name(tp)}, got {value!r}{_suggest(str(value), map(str, typing.get_args(tp)))}".replace("valid keys", "valid values"))
        return value
    if tp not in _PLAIN:
        raise TypeError(f"unsupported annotation {tp!r} for {key}")
    accepts, words = _PLAIN[tp]
    if isinstance(value, bool) is not (tp is bool) or not isinstance(value, accepts):  # bool is an int in Python
        raise UserError(f"config key '{key}' must be {words}, got {value!r}")
    return float(value) if tp is float else value


# ------------------------------------------------------------------------------------------------ dotted keys
def dotted_get(raw: Mapping, dotted: str) -> Any:
    """The value at ``a.b.c`` in nested mappings (None when a part is missing)."""
    node: Any = raw
    for part in dotted.split("."):
        node = node.get(part) if isinstance(node, Mapping) else None
    return node


def dotted_has(raw: Mapping, dotted: str) -> bool:
    node: Any = raw
    for part in dotted.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return False
        node = node[part]
    return True


def dotted_pop(raw: dict, dotted: str) -> Any:
    """Remove ``a.b.c`` (nothing when absent) and return its value."""
    parts = dotted.split(".")
    node: Any = raw
    for part in parts[:-1]:
        node = node.get(part, {}) if isinstance(node, dict) else {}
    return node.pop(parts[-1], None) if isinstance(node, dict) else None


def dotted_set(raw: dict, dotted: str, value: Any) -> None:
    """Set ``a.b.c``, creating the sections on the way (an empty ``section:`` in YAML, None, becomes one)."""
    parts = dotted.split(".")
    node = raw
    for i, part in enumerate(parts[:-1]):
        if node.get(part) is None:
            node[part] = {}
        node = node[part]
        if not isinstance(node, dict):
            raise UserError(f"config key '{'.'.join(parts[:i + 1])}' must be a section to hold '{dotted}'")
    node[parts[-1]] = value


def moved_name(dotted: str, moved: Mapping[str, str], where: str = "") -> str:
    """``dotted``'s name today: its new name, with a warning, when it is an old one (a key of ``moved``)."""
    if dotted not in moved:
        return dotted
    print(f"warning: config key '{dotted}' is now '{moved[dotted]}'{where}; rename it", file=sys.stderr)
    return moved[dotted]


def move_keys(raw: dict, moved: Mapping[str, str], where: str = "") -> dict:
    """Move, in place, every key of ``raw`` given under an old dotted name (a key of ``moved``) to its new one, with a
    warning; the old and the new name both given is an error. ``where`` (e.g. `` in 'a.yaml'``)
    ends the messages. Returns ``raw``."""
    for old, new in moved.items():
        if not dotted_has(raw, old):
            continue
        if dotted_has(raw, new):
            raise UserError(f"config keys '{old}' and '{new}'{where} are the same setting ('{old}' is its old name); "
                            f"keep only '{new}'")
        dotted_set(raw, moved_name(old, moved, where), dotted_pop(raw, old))
    return raw


def build_dataclass(cls: type, data: Any, prefix: str = "") -> Any:
    """``cls`` (a dataclass, nested ones included) from the mapping ``data``: every value checked against its
    annotation, an unknown key rejected with the nearest valid one (old key names are :func:`move_keys`' job)."""
    if not isinstance(data, dict):
        raise UserError(f"config section '{prefix.rstrip('.') or '<root>'}' must be a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in data.items():
        if key not in names:
            raise UserError(f"unknown config key '{prefix}{key}'{_suggest(str(key), names, prefix)}")
        tp = hints[key]
        if dataclasses.is_dataclass(tp):
            kwargs[key] = build_dataclass(tp, value if value is not None else {}, f"{prefix}{key}.")
        else:
            kwargs[key] = _coerce(value, tp, f"{prefix}{key}")
    return cls(**kwargs)

"""Typed dataclass configs from YAML, ``--set key=value`` strings and plain dicts.

A config is a dataclass whose fields are scalars, tuples, lists, dicts, ``Literal``s, optionals or
other config dataclasses (groups). ``apply(cfg, mapping, source)`` returns a copy with the mapping's
values converted to each field's annotated type: ``"3e-4"`` becomes a float, ``"0.9,0.98"`` a tuple,
``"none"`` ``None``. A key is either a field of its group (``{"optim": {"lr": 1e-3}}``,
``--set optim.lr=1e-3``) or, when the name is unique among all groups, given flat (``lr: 1e-3``,
``--set lr=1e-3``). Anything unknown or mistyped is a :class:`ConfigError` naming the source and key.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Iterable, Mapping
from typing import Any, Literal

import yaml


class ConfigError(ValueError):
    """A configuration key or value that cannot be used; the message names the source and the key."""


def field_types(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def is_group(tp: Any) -> bool:
    return isinstance(tp, type) and dataclasses.is_dataclass(tp)


def coerce(value: Any, tp: Any, key: str) -> Any:
    """``value`` (from YAML or a ``--set`` string) converted to type ``tp``; ``ConfigError`` if impossible."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp is Any:
        return value
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        is_none = value is None or (isinstance(value, str) and value.lower() in ("none", "null", ""))
        if is_none and type(None) in args:
            return None
        errors = []
        for arg in (a for a in args if a is not type(None)):
            try:
                return coerce(value, arg, key)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError("; ".join(errors))
    if origin is Literal:
        if value not in args:
            raise ConfigError(f"{key}: {value!r} is not one of {list(args)}")
        return value
    if origin in (tuple, list):
        items = [s.strip() for s in value.split(",")] if isinstance(value, str) else value
        if not isinstance(items, (list, tuple)):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        if origin is list:
            return [coerce(v, args[0], key) if args else v for v in items]
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(coerce(v, args[0], key) for v in items)
        if len(items) != len(args):
            raise ConfigError(f"{key}: expected {len(args)} values, got {value!r}")
        return tuple(coerce(v, a, key) for v, a in zip(items, args, strict=True))
    if origin is dict or tp is dict:
        if not isinstance(value, Mapping):
            raise ConfigError(f"{key}: expected a mapping, got {value!r}")
        return dict(value)
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "yes", "on", "1", "false", "no", "off", "0"):
            return value.lower() in ("true", "yes", "on", "1")
        raise ConfigError(f"{key}: expected true/false, got {value!r}")
    if tp in (int, float):
        if isinstance(value, (int, float)) and not isinstance(value, bool) and (tp is float or isinstance(value, int)):
            return tp(value)
        if isinstance(value, str):
            try:
                return tp(value)
            except ValueError:
                pass
        raise ConfigError(f"{key}: expected {'an integer' if tp is int else 'a number'}, got {value!r}")
    if tp is str:
        if isinstance(value, str):
            return value
        raise ConfigError(f"{key}: expected a string, got {value!r}")
    raise ConfigError(f"{key}: unsupported type {tp}")


def flat_keys(cls: type) -> dict[str, tuple[str, ...]]:
    """Every leaf field of config class ``cls`` by its own name -> its path, for names unique in ``cls``."""
    paths: dict[str, list[tuple[str, ...]]] = {}

    def walk(c: type, prefix: tuple[str, ...]) -> None:
        for name, tp in field_types(c).items():
            if is_group(tp):
                walk(tp, (*prefix, name))
            else:
                paths.setdefault(name, []).append((*prefix, name))

    walk(cls, ())
    return {name: p[0] for name, p in paths.items() if len(p) == 1}


def apply(cfg: Any, values: Mapping[str, Any], source: str, aliases: Mapping[str, str] | None = None) -> Any:
    """``cfg`` with ``values`` applied: grouped (nested mappings or dotted keys) or flat unique names.

    ``aliases`` maps extra flat names to dotted paths (``{"model": "model.name"}``). A group key whose
    value is not a mapping is read as its alias, if it has one.
    """
    aliases = dict(aliases or {})
    flat = flat_keys(type(cfg))
    groups = {k for k, tp in field_types(type(cfg)).items() if is_group(tp)}
    nested: dict[str, Any] = {}
    for key, value in values.items():
        if key in aliases and not (key in groups and isinstance(value, Mapping)):
            path = tuple(aliases[key].split("."))
        elif "." in key:
            path = tuple(key.split("."))
        elif key in flat and key not in groups:
            path = flat[key]
        else:
            path = (key,)
        _insert(nested, path, value)
    return _apply_nested(cfg, nested, source, "")


def _insert(tree: dict[str, Any], path: tuple[str, ...], value: Any) -> None:
    for part in path[:-1]:
        tree = tree.setdefault(part, {})
        if not isinstance(tree, dict):
            raise ConfigError(f"{'.'.join(path)}: {part} is given both as a value and as a group")
    if isinstance(value, Mapping) and isinstance(tree.get(path[-1]), dict):
        tree[path[-1]].update(value)
    else:
        tree[path[-1]] = dict(value) if isinstance(value, Mapping) else value


def _apply_nested(cfg: Any, values: Mapping[str, Any], source: str, prefix: str) -> Any:
    types_ = field_types(type(cfg))
    changes: dict[str, Any] = {}
    for key, value in values.items():
        name = f"{prefix}{key}"
        if key not in types_:
            valid = sorted(flat_keys(type(cfg))) if not prefix else sorted(types_)
            raise ConfigError(f"{source}: unknown key {name!r}; valid keys: {valid}")
        tp = types_[key]
        if is_group(tp):
            if not isinstance(value, Mapping):
                raise ConfigError(f"{source}: {name} must be a mapping of its keys, got {value!r}")
            changes[key] = _apply_nested(getattr(cfg, key), value, source, f"{name}.")
        elif isinstance(value, Mapping) and isinstance(getattr(cfg, key), dict):
            changes[key] = coerce({**getattr(cfg, key), **value}, tp, f"{source}: {name}")
        else:
            changes[key] = coerce(value, tp, f"{source}: {name}")
    return dataclasses.replace(cfg, **changes)


def parse_set(items: Iterable[str]) -> dict[str, Any]:
    """``["lr=1e-3", "model.overrides.dropout=0.3"]`` -> ``{"lr": "1e-3", "model.overrides": {"dropout": 0.3}}``.

    A dotted key whose last part lands inside a dict field (``model.overrides.dropout``,
    ``augment.flip_prob``) keeps its value as a YAML scalar; everything else stays a string and is
    converted by the field's type.
    """
    out: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set {item!r}: expected key=value")
        out[key.strip()] = raw
    return out


def resolve_dict_keys(values: Mapping[str, Any], dict_fields: Mapping[str, str]) -> dict[str, Any]:
    """``{"augment.flip_prob": "0"}`` -> ``{"data.augment": {"flip_prob": 0}}`` for keys under a dict field.

    ``dict_fields`` maps each spelling of a dict field (flat and dotted) to its dotted path.
    """
    out: dict[str, Any] = {}
    for key, value in values.items():
        head, _, leaf = key.rpartition(".")
        if head in dict_fields:
            out.setdefault(dict_fields[head], {})[leaf] = yaml.safe_load(value) if isinstance(value, str) else value
        else:
            out[key] = value
    return out


def to_dict(cfg: Any) -> dict[str, Any]:
    """Plain YAML/JSON-safe nested dict (tuples as lists) that ``apply`` turns back into the same config."""

    def plain(v: Any) -> Any:
        if isinstance(v, (list, tuple)):
            return [plain(x) for x in v]
        if isinstance(v, dict):
            return {k: plain(x) for k, x in v.items()}
        return v

    return plain(dataclasses.asdict(cfg))

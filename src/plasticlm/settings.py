"""Typed settings: dataclasses built from YAML mappings, and ``key=value`` overrides.

Every configuration in plasticlm (recipes, model configs, evaluation suites, experiments, the
AUNN's runs) is a dataclass whose fields have types. :func:`from_dict` builds one from nested
mappings, rejecting unknown keys and mistyped values by their dotted name; :func:`parse_override`
and :func:`apply_overrides` turn command-line ``section.key=value`` items into such mappings.
"""
from __future__ import annotations

import dataclasses
import math
import re
import typing
from typing import Any

import yaml


_EXPONENT = re.compile(r"[-+]?[0-9]+(\.[0-9]*)?[eE][-+]?[0-9]+")


def parse_value(raw: str) -> Any:
    """A YAML scalar, except that '3e-3' is a number (YAML 1.1 reads exponents without a dot as strings)."""
    value = yaml.safe_load(raw)
    if isinstance(value, str) and _EXPONENT.fullmatch(value.strip()):
        return float(value)
    return value


def parse_override(item: str, example: str = "optim.lr=1e-3") -> tuple[str, Any]:
    """'section.key=value' -> ('section.key', parsed value)."""
    key, eq, raw = str(item).partition("=")
    if not eq or not key.strip():
        raise ValueError(f"override {item!r} must look like key=value (e.g. {example})")
    return key.strip(), parse_value(raw)


def apply_overrides(data: dict[str, Any], overrides: list[str] | dict[str, Any],
                    example: str = "optim.lr=1e-3") -> dict[str, Any]:
    """Set dotted ``section.key=value`` items (or a {dotted key: value} mapping) in nested ``data``."""
    items = overrides.items() if isinstance(overrides, dict) else [parse_override(o, example) for o in overrides]
    for key, value in items:
        node = data
        *parents, leaf = str(key).strip().split(".")
        for part in parents:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ValueError(f"override {key!r}: {part!r} is not a section")
        node[leaf] = value
    return data


def check_type(value: Any, tp: Any, where: str) -> Any:
    """``value`` if it has type ``tp`` (an int stands for a float); otherwise a ValueError naming ``where``."""
    origin = typing.get_origin(tp) or tp
    if origin is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if origin is float and isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            pass
    ok = {int: lambda v: isinstance(v, int) and not isinstance(v, bool),
          float: lambda v: isinstance(v, float) and math.isfinite(v),
          bool: lambda v: isinstance(v, bool), str: lambda v: isinstance(v, str),
          list: lambda v: isinstance(v, list), dict: lambda v: isinstance(v, dict)}.get(origin)
    if ok is not None and not ok(value):
        raise ValueError(f"{where} must be of type {origin.__name__}, got {value!r} ({type(value).__name__})")
    if origin is list and typing.get_args(tp):
        (item_tp,) = typing.get_args(tp)
        value = [check_type(v, item_tp, f"{where}[{i}]") for i, v in enumerate(value)]
    return value


def from_dict(cls, data: Any, where: str = "", nested: dict[str, Any] | None = None):
    """Build dataclass ``cls`` from nested mappings, rejecting unknown keys and mistyped values.

    ``nested`` maps a field name to a function ``(value, data, where) -> value`` for fields whose
    type depends on another field (e.g. a recipe's ``model`` on its ``arch``).
    """
    if isinstance(data, cls):
        return data
    if not isinstance(data, dict):
        raise ValueError(f"{where or cls.__name__} must be a mapping of {cls.__name__} fields, got {data!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in data.items():
        name = f"{where}.{key}" if where else str(key)
        if key not in fields:
            raise ValueError(f"unknown config key {name!r}; valid keys here: {sorted(fields)}")
        tp = hints[key]
        if nested and key in nested:
            kwargs[key] = nested[key](value, data, name)
        elif dataclasses.is_dataclass(tp):
            kwargs[key] = from_dict(tp, value, name)
        else:
            kwargs[key] = check_type(value, tp, name)
    try:
        return cls(**kwargs)
    except TypeError as e:  # a field without default left out
        raise ValueError(f"{where or cls.__name__}: {e}") from None

"""Configuration tables → validated dataclasses: the one place keys and value types are checked.

Every config of the project (model, training, TTT, budgets, recipe sections, presets) is a
dataclass; a table read from TOML or JSON becomes one through `build_dataclass`, which refuses
unknown keys and values of the wrong type with one `ConfigError` naming where they came from.
The dataclass's own `__post_init__`/`validate` then checks ranges and combinations.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from .errors import ConfigError


def check_keys(table: Any, allowed, where: str) -> dict:
    """`table` itself when it is a dict whose keys all lie in `allowed`; else a ConfigError."""
    if not isinstance(table, dict):
        raise ConfigError(f"{where} must be a table, got {type(table).__name__}")
    unknown = sorted(set(table) - set(allowed))
    if unknown:
        raise ConfigError(f"{where}: unknown key {unknown[0]!r} (known: {', '.join(sorted(allowed))})")
    return table


def typed_value(table: dict, key: str, typ: type, where: str, default: Any = None) -> Any:
    """table[key] checked against `typ` (ints accepted for floats, bools never for ints), or
    `default` when the key is absent; a wrong type is a ConfigError naming `where` and the key."""
    if key not in table:
        return default
    value = table[key]
    if typ is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if not isinstance(value, typ) or (typ is int and isinstance(value, bool)):
        raise ConfigError(f"{where} {key} = {value!r} should be a {typ.__name__}")
    return value


def coerce(field: dataclasses.Field, value: Any, where: str) -> Any:
    """`value` checked against the type of the field's default (ints are accepted for floats,
    lists for tuples); a field without a plain default takes the value as it is."""
    default = field.default
    if default is dataclasses.MISSING:
        if field.default_factory is dataclasses.MISSING:
            return value
        default = field.default_factory()
    if default is None:
        return value
    expected = type(default)
    if expected is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if expected is tuple and isinstance(value, list):
        return tuple(value)
    if not isinstance(value, expected) or (expected is int and isinstance(value, bool)):
        raise ConfigError(f"{where} = {value!r} should be a {expected.__name__}")
    return value


def coerced_fields(cls, table: dict, where: str) -> dict:
    """`table`'s values coerced to dataclass `cls`'s field types, unknown keys refused."""
    known = {f.name: f for f in dataclasses.fields(cls)}
    check_keys(table, known, where)
    return {key: coerce(known[key], value, f"{where} {key}") for key, value in table.items()}


def build_dataclass(cls, table: Any, where: str):
    """`cls(**table)` with unknown keys, wrongly typed values and the dataclass's own checks
    reported as one ConfigError located by `where` (e.g. "presets/x.toml: [model]")."""
    clean = coerced_fields(cls, table, where)
    try:
        return cls(**clean)
    except (ConfigError, TypeError) as exc:  # TypeError: a required field missing
        text = str(exc)
        raise ConfigError(text if text.startswith(where) else f"{where}: {text}") from None


def apply_overrides(cfg, overrides: dict | None, where: str = "overrides"):
    """A copy of dataclass `cfg` with `overrides` applied (validated like a table)."""
    if not overrides:
        return cfg
    clean = coerced_fields(type(cfg), overrides, f"{where}: {type(cfg).__name__}")
    try:
        return dataclasses.replace(cfg, **clean)
    except ConfigError as exc:
        raise ConfigError(f"{where}: {exc}") from None

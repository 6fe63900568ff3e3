"""Named training presets: TOML files with a [model] table (ModelConfig fields) and a [train]
table (TrainConfig fields), plus an optional top-level `description`.

`load_preset("baseline-cpu")` reads `train/presets/baseline-cpu.toml`; a path to any `.toml`
file works too. Unknown tables or keys raise `ConfigError` naming the key and the file, so a
typo never silently falls back to a default.
"""

from __future__ import annotations

import dataclasses
import tomllib
from dataclasses import dataclass, fields
from pathlib import Path

from artifact.cliutil import find_named_toml, named_toml_files
from artifact.errors import ConfigError
from train.loop import TrainConfig
from train.model import ModelConfig

PRESET_DIR = Path(__file__).resolve().parent / "presets"
_TOP_KEYS = {"description", "model", "train"}


@dataclass
class Preset:
    """A resolved preset: its name, source file, description and both configs."""

    name: str
    path: Path
    description: str
    model: ModelConfig
    train: TrainConfig


def list_presets() -> list[str]:
    """Names of the bundled presets (file stems under presets/), sorted."""
    return named_toml_files(PRESET_DIR)


def preset_path(name_or_path: str | Path) -> Path:
    """The TOML file of a bundled preset name or an explicit path."""
    return find_named_toml(name_or_path, PRESET_DIR, "preset")


def load_preset(name_or_path: str | Path) -> Preset:
    """Parse and validate a preset; every unknown key is an error naming key and file."""
    path = preset_path(name_or_path)
    try:
        data = tomllib.loads(path.read_text())
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read preset ({exc})") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: malformed TOML ({exc})") from None
    unknown = sorted(set(data) - _TOP_KEYS)
    if unknown:
        raise ConfigError(f"{path}: unknown preset key {unknown[0]!r} (allowed: description, [model], [train])")
    model = build_dataclass(ModelConfig, data.get("model", {}), path, "model")
    train = build_dataclass(TrainConfig, data.get("train", {}), path, "train")
    if train.qat_recipe:  # the packing recipe QAT matches must exist (checked before any work)
        from train.qat import load_qat_recipe

        try:
            load_qat_recipe(train.qat_recipe)
        except ConfigError as exc:
            raise ConfigError(f"{path}: [train] {exc}") from None
    return Preset(name=path.stem, path=path, description=str(data.get("description", "")), model=model, train=train)


def _coerced(cls, table: dict, unknown_message, where) -> dict:
    """`table`'s values coerced to dataclass `cls`'s field types; an unknown key is a ConfigError
    worded by `unknown_message(key, known_keys)`, a bad value one located by `where(key)`."""
    known = {f.name: f for f in fields(cls)}
    clean = {}
    for key, value in table.items():
        if key not in known:
            raise ConfigError(unknown_message(key, ", ".join(sorted(known))))
        clean[key] = coerce(known[key], value, where(key))
    return clean


def build_dataclass(cls, table, path: Path | str, section: str):
    """`cls(**table)` with unknown keys and wrongly typed values reported as ConfigError."""
    if not isinstance(table, dict):
        raise ConfigError(f"{path}: [{section}] must be a table")
    clean = _coerced(cls, table, lambda k, known: f"{path}: unknown key {k!r} in [{section}] (known: {known})",
                     lambda k: f"{path}: [{section}] {k}")
    try:
        return cls(**clean)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None


def coerce(field: dataclasses.Field, value, where: str):
    """`value` checked against the type of the field's default; ints are accepted for floats."""
    default = field.default
    if default is dataclasses.MISSING:
        return value
    expected = type(default)
    if expected is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if not isinstance(value, expected) or (expected is int and isinstance(value, bool)):
        raise ConfigError(f"{where} = {value!r} should be a {expected.__name__}")
    return value


def apply_overrides(cfg, overrides: dict | None, where: str = "overrides"):
    """A copy of dataclass `cfg` with `overrides` applied (validated like preset keys)."""
    if not overrides:
        return cfg
    clean = _coerced(type(cfg), overrides,
                     lambda k, known: f"{where}: unknown {type(cfg).__name__} key {k!r} (known: {known})",
                     lambda k: f"{where}: {k}")
    return dataclasses.replace(cfg, **clean)

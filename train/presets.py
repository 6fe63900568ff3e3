"""Named training presets: TOML files with a [model] table (ModelConfig fields) and a [train]
table (TrainConfig fields), plus an optional top-level `description`.

`load_preset("baseline-cpu")` reads `train/presets/baseline-cpu.toml`; a path to any `.toml`
file works too. Unknown tables or keys raise `ConfigError` naming the key and the file, so a
typo never silently falls back to a default.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from artifact.runtime.config import build_dataclass, check_keys
from artifact.runtime.errors import ConfigError
from artifact.runtime.files import find_named_toml, named_toml_files, read_toml
from artifact.runtime.model import ModelConfig
from train.qat import load_qat_recipe
from train.train_config import TrainConfig

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
    data = check_keys(read_toml(path, "preset"), _TOP_KEYS, str(path))
    model = build_dataclass(ModelConfig, data.get("model", {}), f"{path}: [model]")
    train = build_dataclass(TrainConfig, data.get("train", {}), f"{path}: [train]")
    if train.qat_recipe:  # the packing recipe QAT matches must exist (checked before any work)
        try:
            load_qat_recipe(train.qat_recipe)
        except ConfigError as exc:
            raise ConfigError(f"{path}: [train] {exc}") from None
    return Preset(name=path.stem, path=path, description=str(data.get("description", "")), model=model, train=train)

"""`golf export`: one self-contained Python file that packs and unpacks exactly one recipe.

The file is generated from the project's own modules, never written a second time: the entry
module `export_entry` (collect_hessians, pack, unpack, calibration_batches) with the recipe
baked in as `RECIPE = Recipe(...)` — the parsed recipe written back as constructor calls, default
fields left out — and every top-level definition those functions reach in the packer and the
shipped decoder (`source_bundle.bundle`: unreachable code pruned, imports made relative to one
flat package, sources minified, every name checked). Its imports are the standard library,
numpy, torch, and the codec libraries the recipe names (brotli, zstandard; numba for `ans`),
each imported where it is used.

Two forms hold the same sources:
- compact (default): the sources as JSON, compressed (lzma; brotli too when the recipe already
  needs it: the smaller wins) and base85-embedded, served to `import` by a small finder under a
  package name derived from the sources' hash (two exported codecs can live in one process);
- plain: the same finder over the minified sources as Python string literals.
Either way the file is what a competitor pastes into (or imports from) train_gpt.py, and its
length is what the challenge counts.
"""

from __future__ import annotations

import ast
import dataclasses
import hashlib
import math
from dataclasses import dataclass
from pathlib import Path

from artifact.codec import parse_codec
from artifact.recipe import Recipe, load_recipe
from artifact.runtime.errors import ConfigError
from artifact.runtime.files import atomic_write
from artifact.source_bundle import PROJECT_ROOT, bundle
from artifact.submission import smallest_stub, sources_json

ENTRY_MODULE = "artifact.export_entry"
ENTRY_NAMES = ("RECIPE", "calibration_batches", "collect_hessians", "pack", "unpack")
FIT_RECIPE = "recipe.toml"  # what `golf fit` writes into its output folder
CODEC_LIBRARIES = {"brotli": "brotli", "zstd": "zstandard", "ans": "numba"}  # others: standard library
STUB_LIBRARIES = ("lzma", "brotli")

_HEADER = """\
# golf codec, recipe {name!r}: pack(state_dict, hessians=None) -> bytes; unpack(blob) -> state_dict;
# collect_hessians(model, batches, output_input=None); calibration_batches(tokens). Needs {needs}.
"""
_LOADER = """\
import sys{imports}
from importlib.util import spec_from_loader as F
P='{package}'
S={sources}
class L:
 def find_spec(s,n,p=None,t=None):
  if n==P or n.startswith(P+'.')and n[len(P)+1:]in S:return F(n,s,is_package=n==P)
 def create_module(s,m):0
 def exec_module(s,m):exec(compile(S.get(m.__name__[len(P)+1:],''),m.__name__,'exec'),m.__dict__)
sys.meta_path.insert(0,L())
from {package}.export_entry import {names}
"""


@dataclass
class Export:
    """An exported codec: the file's bytes, what it was made from, and what it needs."""

    source: bytes
    recipe: Recipe
    package: str
    compact: bool
    libraries: tuple[str, ...]  # third-party libraries beyond numpy and torch
    modules: dict[str, int]  # bundled module -> minified source bytes
    other_form_bytes: int  # the size of the form not chosen (plain when compact, and back)

    @property
    def bytes(self) -> int:
        return len(self.source)

    def to_dict(self) -> dict:
        return {"recipe": self.recipe.name, "bytes": self.bytes, "compact": self.compact, "package": self.package,
                "libraries": list(self.libraries), "modules": self.modules,
                "plain_bytes" if self.compact else "compact_bytes": self.other_form_bytes}


def export_recipe(source: str | Path) -> Recipe:
    """The recipe of a fit folder (its recipe.toml), a recipe file, or a bundled recipe name."""
    path = Path(source)
    if not path.is_dir():
        return load_recipe(source)
    if not (path / FIT_RECIPE).is_file():
        raise ConfigError(f"{path}: folder has no {FIT_RECIPE} (give a `golf fit` output folder, a recipe "
                          "file or a recipe name)")
    return load_recipe(path / FIT_RECIPE)


def recipe_libraries(recipe: Recipe) -> tuple[str, ...]:
    """The codec libraries packing by `recipe` may import (every codec the recipe names)."""
    specs = [recipe.codec, recipe.scales_codec, recipe.passthrough_codec]
    specs += [c for r in recipe.rules for c in (r.codec, r.scales_codec) if c]
    if recipe.lqer is not None and recipe.lqer.codec:
        specs.append(recipe.lqer.codec)
    families = {parse_codec(s).family for s in specs}
    return tuple(sorted({CODEC_LIBRARIES[f] for f in families if f in CODEC_LIBRARIES}))


def _literal(value, classes: dict[str, type]) -> str:
    """Python source that rebuilds `value` (dataclasses by keyword, their default fields left
    out); the dataclasses used are collected in `classes`."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        cls = type(value)
        classes[cls.__name__] = cls
        args = []
        for f in dataclasses.fields(cls):
            v = getattr(value, f.name)
            default = f.default if f.default is not dataclasses.MISSING else (
                f.default_factory() if f.default_factory is not dataclasses.MISSING else dataclasses.MISSING)
            if f.init and (default is dataclasses.MISSING or v != default):
                args.append(f"{f.name}={_literal(v, classes)}")
        return f"{cls.__name__}({','.join(args)})"
    if isinstance(value, tuple):
        return "(" + ",".join(_literal(v, classes) for v in value) + ("," if len(value) == 1 else "") + ")"
    if isinstance(value, list):
        return "[" + ",".join(_literal(v, classes) for v in value) + "]"
    if isinstance(value, float) and not math.isfinite(value):
        if math.isnan(value):
            raise ConfigError("cannot write NaN into an exported codec")
        return "1e999" if value > 0 else "-1e999"
    if value is None or isinstance(value, (bool, int, float, str)):
        return repr(value)
    raise ConfigError(f"cannot write {value!r} ({type(value).__name__}) into an exported codec")


def baked_recipe_source(recipe: Recipe) -> str:
    """`RECIPE = Recipe(...)` and the imports it needs (the description and path left out: they
    do not change what is packed)."""
    classes: dict[str, type] = {}
    text = _literal(dataclasses.replace(recipe, path=None, description=""), classes)
    by_module: dict[str, list[str]] = {}
    for name, cls in sorted(classes.items()):
        by_module.setdefault(cls.__module__, []).append(name)
    imports = [f"from {m} import {', '.join(names)}" for m, names in sorted(by_module.items())]
    return "\n".join(imports + [f"RECIPE = {text}"]) + "\n"


def _entry_source(recipe: Recipe) -> str:
    """The entry module's source with its `RECIPE = None` replaced by the baked recipe."""
    path = PROJECT_ROOT.joinpath(*ENTRY_MODULE.split(".")).with_suffix(".py")
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    tree.body = [n for n in tree.body if not (isinstance(n, ast.Assign) and
                                              any(isinstance(t, ast.Name) and t.id == "RECIPE" for t in n.targets))]
    return ast.unparse(tree) + "\n" + baked_recipe_source(recipe)


def _loader(package: str, sources: str, imports: str) -> str:
    return _LOADER.format(package=package, sources=sources, imports=imports, names=",".join(ENTRY_NAMES))


def build_export(recipe: Recipe, compact: bool = True) -> Export:
    """The exported codec of `recipe` in the compact (default) or plain form."""
    files = bundle({ENTRY_MODULE: list(ENTRY_NAMES)}, {ENTRY_MODULE: _entry_source(recipe)})
    raw = sources_json(files)
    package = "_golf_codec_" + hashlib.sha256(raw).hexdigest()[:10]
    libraries = recipe_libraries(recipe)
    header = _HEADER.format(name=recipe.name, needs=", ".join(("numpy", "torch") + libraries))
    plain = (header + _loader(package, repr(dict(sorted(files.items()))), "")).encode()
    allowed = tuple(lib for lib in STUB_LIBRARIES if lib == "lzma" or lib in libraries)
    packed = smallest_stub(raw, lambda lib, payload: header + _loader(
        package, f"json.loads({lib}.decompress(base64.b85decode(b'{payload}')))", f",base64,json,{lib}"), allowed)
    chosen, other = (packed, plain) if compact else (plain, packed)
    return Export(chosen, recipe, package, compact, libraries, {k: len(v.encode()) for k, v in files.items()},
                  len(other))


def is_export(path: str | Path) -> bool:
    """Whether `path` is a file written by `golf export` (its first line says so)."""
    try:
        with open(path, "rb") as f:
            return f.readline().startswith(_HEADER.split("{")[0].encode())
    except OSError:
        return False


def write_export(export: Export, out: str | Path) -> int:
    """Write the exported codec atomically; returns its size in bytes. An existing file is
    replaced only when it is a previous export (never, say, a train_gpt.py)."""
    out = Path(out)
    if out.is_dir() or (out.exists() and not is_export(out)):
        raise ConfigError(f"{out}: exists and is not a codec written by golf export; refusing to overwrite it")
    return atomic_write(out, export.source)

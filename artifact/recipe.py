"""Recipes: how to pack each tensor of a checkpoint, written as data (TOML) so users write their own.

A recipe file has a name and description, the default codecs, an ordered list of `[[rules]]`
(the first rule whose `match` globs and filters fit a state-dict name decides that tensor), a
`[default]` rule for tensors no rule covers (the challenge baseline's: <= 65,536 elements stay
fp16, control tensors fp32), and optional `[lqer]`, `[prune_pm1]` and `[calibration]` tables:

    name = "my-recipe"
    description = "int6 GPTQ matrices, brotli"
    extends = "record-1855"            # optional: start from another recipe (name or path)
    codec = "brotli-11"                # codes (and LQER factor codes) unless a rule says otherwise
    scales_codec = "deinterleave2+brotli-11"
    passthrough_codec = "deinterleave2+brotli-11"

    [[rules]]
    match = ["blocks.*.attn.*.weight"] # fnmatch globs; a plain name must exist in the checkpoint
    exclude = []                       # globs taken back out
    ndim = 2                           # optional filters: ndim, min_numel, max_numel
    scheme = "per_row"                 # per_row, per_tensor, ternary, binary, fp16, fp32, raw, baseline_int8
    bits = 6
    clip = "sdclip:13"                 # or a table {kind = "sdclip", k = 13}; see quant.ClipRule
    group_size = 64                    # optional: grouped scales
    gptq = true                        # or a table of GPTQConfig fields {damp = 0.02, block_size = 128}
    prune = 0.03                       # magnitude-prune this fraction before quantizing
    rd = 0.15                          # rate-aware rounding's lambda (artifact/rdround.py; 0 = nearest)
    codec = "ans"                      # per-rule override of the codes' codec
    stream = "attn"                    # optional: tensors naming one stream share it

    [default]
    enabled = true                     # false: a tensor no rule covers is an error
    max_numel = 65536                  # "small": kept as `small` (control tensors as `control`)
    small = "fp16"
    control = "fp32"
    control_patterns = ["attn_scale", "mlp_scale", "resid_mix", "q_gain", "skip_weight"]
    large = "error"                    # or "baseline_int8" for larger tensors no rule covers

    [lqer]
    rank = 4
    top_k = 3                          # or names = [...]; or a per-tensor rank table instead of
                                       # rank/top_k/names: [lqer.ranks] "blocks.0.mlp.fc.weight" = 8
    among = ["*"]                      # which quantized 2-D tensors may be chosen
    rank_by = "frobenius"              # or "hessian" (needs Hessians)
    factors = "record"                 # A int2 one scale, B int4 groups of 64; or factor_a/factor_b tables
    scaling = "none"                   # "diag", "hessian": activation-scaled SVD
    refit_b = false

    [prune_pm1]
    target_bytes = 15900000            # zero ±1 codes (smallest s² first) until the blob fits

    [calibration]
    source = "train"                   # or "self" (the model writes its own tokens)
    n_seqs = 64
    seq_len = 1024

`load_recipe(name_or_path, overrides=None)` reads a named preset (artifact/recipes/NAME.toml) or
a file; `overrides` is merged on top like a child recipe (e.g. {"codec": "ans"}). Every unknown
key or bad value raises ConfigError naming the file and the key. `Recipe.plan(state_dict)`
turns it into one `TensorPlan` per tensor.
"""

from __future__ import annotations

import copy
import fnmatch
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from artifact.codec import parse_codec
from artifact.runtime.config import build_dataclass, check_keys, typed_value
from artifact.runtime.errors import CheckpointError, ConfigError
from artifact.runtime.files import find_named_toml, named_toml_files, read_toml
from artifact.gptq import GPTQConfig
from artifact.lqer import RECORD_FACTORS, SCALINGS
from artifact.quant import (
    BASELINE_CONTROL_PATTERNS,
    BASELINE_KEEP_FLOAT_MAX_NUMEL,
    INT_SCHEMES,
    SCHEMES,
    ClipRule,
    QuantSpec,
)

RECIPE_DIR = Path(__file__).resolve().parent / "recipes"
PASSTHROUGH = ("fp16", "fp32", "raw")
STORABLE_DTYPES = ("float32", "bfloat16", "float16", "float64")
_TOP_KEYS = {"name", "description", "extends", "codec", "scales_codec", "passthrough_codec",
             "rules", "default", "lqer", "prune_pm1", "calibration"}
_TABLES = ("default", "lqer", "prune_pm1", "calibration")
_RULE_KEYS = {"match", "exclude", "ndim", "min_numel", "max_numel", "scheme", "bits", "clip",
              "group_size", "asymmetric", "scale_dtype", "gptq", "prune", "codec", "scales_codec", "stream", "rd"}
_INT_ONLY_KEYS = ("bits", "clip", "group_size", "asymmetric", "scale_dtype", "gptq", "prune", "rd")
_SPEC_KEYS = {"scheme", "bits", "clip", "group_size", "asymmetric", "scale_dtype", "rd"}
_GLOB_CHARS = "*?["


# ------------------------------------------------------------------------------ data classes

@dataclass(frozen=True)
class Rule:
    """One `[[rules]]` entry: which tensors (globs + filters) and what to do with them."""

    index: int
    match: tuple[str, ...]
    spec: QuantSpec
    exclude: tuple[str, ...] = ()
    ndim: int | None = None
    min_numel: int | None = None
    max_numel: int | None = None
    gptq: GPTQConfig | None = None
    prune: float = 0.0
    codec: str | None = None
    scales_codec: str | None = None
    stream: str | None = None

    @property
    def label(self) -> str:
        return f"rules[{self.index}] ({', '.join(self.match)})"

    def explicit_names(self) -> list[str]:
        """Patterns without glob characters: names that must exist in the checkpoint."""
        return [p for p in self.match if not any(c in p for c in _GLOB_CHARS)]

    def covers(self, name: str, shape: tuple[int, ...], numel: int) -> bool:
        if not any(fnmatch.fnmatchcase(name, p) for p in self.match):
            return False
        if any(fnmatch.fnmatchcase(name, p) for p in self.exclude):
            return False
        if self.ndim is not None and len(shape) != self.ndim:
            return False
        if self.min_numel is not None and numel < self.min_numel:
            return False
        return self.max_numel is None or numel <= self.max_numel


@dataclass(frozen=True)
class DefaultRule:
    """What happens to tensors no rule covers (the challenge baseline's rule by default)."""

    enabled: bool = True
    max_numel: int = BASELINE_KEEP_FLOAT_MAX_NUMEL
    small: str = "fp16"
    control: str = "fp32"
    control_patterns: tuple[str, ...] = BASELINE_CONTROL_PATTERNS
    large: str = "error"


@dataclass(frozen=True)
class LqerConfig:
    """Low-rank correction of the largest quantization errors (see artifact/lqer.py)."""

    rank: int = 4  # every target's rank (with `ranks`: the largest of them)
    top_k: int | None = 3
    names: tuple[str, ...] | None = None
    ranks: tuple[tuple[str, int], ...] | None = None  # (name or glob, rank): exactly these, each its rank
    among: tuple[str, ...] = ("*",)
    rank_by: str = "frobenius"
    factor_a: QuantSpec = RECORD_FACTORS[0]
    factor_b: QuantSpec = RECORD_FACTORS[1]
    scaling: str = "none"
    refit_b: bool = False
    codec: str | None = None

    def rank_for(self, name: str) -> int | None:
        """The rank tensor `name` gets if chosen: `rank`, or with `ranks` its first matching
        entry's (None: not in the table)."""
        if self.ranks is None:
            return self.rank
        return next((r for pattern, r in self.ranks if fnmatch.fnmatchcase(name, pattern)), None)

    @property
    def target_patterns(self) -> tuple[str, ...] | None:
        """The explicit targets (`names`, or the `ranks` table's keys); None: top_k by error."""
        return tuple(p for p, _ in self.ranks) if self.ranks is not None else self.names


@dataclass(frozen=True)
class PrunePm1Config:
    """Selective ±1 pruning to a blob size; `target_bytes` None leaves it to the fit stage."""

    target_bytes: int | None = None
    budget: str | None = None
    among: tuple[str, ...] = ("*",)


@dataclass(frozen=True)
class CalibrationConfig:
    """Where Hessian calibration tokens come from (`pack.calibrate_for_recipe`)."""

    source: str = "train"
    n_seqs: int = 64
    seq_len: int = 1024
    batch_size: int = 8
    offset: int = 0
    temperature: float = 0.8
    seed: int = 0
    bos_id: int = 1
    output_key: str = "tok_emb.weight"

    def __post_init__(self) -> None:
        if self.source not in ("train", "self"):
            raise ConfigError(f"source = {self.source!r} must be one of train, self")
        for k in ("n_seqs", "seq_len", "batch_size"):
            if getattr(self, k) < 1:
                raise ConfigError(f"{k} = {getattr(self, k)} must be >= 1")
        if self.offset < 0 or not self.temperature > 0:
            raise ConfigError("offset must be >= 0 and temperature > 0")


@dataclass(frozen=True)
class TensorPlan:
    """The recipe's decision for one tensor."""

    name: str
    shape: tuple[int, ...]
    dtype: str
    rule: str
    spec: QuantSpec
    gptq: GPTQConfig | None
    prune: float
    codec: str
    scales_codec: str
    stream: str | None = None

    @property
    def numel(self) -> int:
        n = 1
        for d in self.shape:
            n *= d
        return n

    @property
    def is_passthrough(self) -> bool:
        return self.spec.scheme in PASSTHROUGH


@dataclass(frozen=True)
class Recipe:
    """A parsed, validated recipe."""

    name: str
    path: Path | None
    description: str
    rules: tuple[Rule, ...]
    default: DefaultRule = DefaultRule()
    lqer: LqerConfig | None = None
    prune_pm1: PrunePm1Config | None = None
    calibration: CalibrationConfig = CalibrationConfig()
    codec: str = "ans"
    scales_codec: str = "deinterleave2+brotli-11"
    passthrough_codec: str = "deinterleave2+brotli-11"

    @property
    def where(self) -> str:
        return str(self.path) if self.path else f"recipe {self.name}"

    def plan(self, state_dict: dict) -> dict[str, TensorPlan]:
        """One TensorPlan per state-dict entry (state-dict order). ConfigError when an explicit
        rule name matches no tensor or a tensor is covered by nothing; CheckpointError for
        tensors the artifact cannot hold (non-float dtypes)."""
        names = set(state_dict)
        for rule in self.rules:
            for pattern in rule.explicit_names():
                if pattern not in names:
                    raise ConfigError(f"{self.where}: {rule.label}: recipe names a tensor that doesn't exist "
                                      f"in the checkpoint: {pattern!r}")
        return {name: self._plan_one(name, t) for name, t in state_dict.items()}

    def _plan_one(self, name: str, t) -> TensorPlan:
        dtype = str(getattr(t, "dtype", type(t).__name__)).removeprefix("torch.")
        if not getattr(t, "is_floating_point", lambda: False)():
            raise CheckpointError(f"tensor {name}: dtype {dtype} cannot be packed (the artifact holds float tensors only)")
        if dtype not in STORABLE_DTYPES:
            raise CheckpointError(f"tensor {name}: unsupported dtype {dtype} (one of {', '.join(STORABLE_DTYPES)})")
        shape = tuple(int(d) for d in t.shape)
        numel = int(t.numel())
        for rule in self.rules:
            if rule.covers(name, shape, numel):
                if rule.gptq is not None and len(shape) != 2:
                    raise ConfigError(f"{self.where}: {rule.label}: GPTQ needs 2-D tensors, {name} has shape {shape}")
                return self._make_plan(name, shape, dtype, rule.label, rule.spec, rule.gptq, rule.prune,
                                       rule.codec, rule.scales_codec, rule.stream)
        return self._default_plan(name, shape, dtype, numel)

    def _default_plan(self, name, shape, dtype, numel) -> TensorPlan:
        d = self.default
        if not d.enabled:
            raise ConfigError(f"{self.where}: no rule covers tensor {name} (shape {list(shape)}) and [default] is disabled")
        if numel <= d.max_numel:
            control = any(p in name for p in d.control_patterns)
            scheme = d.control if control else d.small
            label = "default (control)" if control else "default (small)"
        elif d.large == "baseline_int8":
            scheme, label = "baseline_int8", "default (large)"
        else:
            raise ConfigError(f"{self.where}: no rule covers tensor {name} (shape {list(shape)}, {numel:,} elements "
                              f"> [default] max_numel {d.max_numel:,}); add a [[rules]] entry or set [default] "
                              "large = \"baseline_int8\"")
        if scheme == "raw" and dtype == "float64":
            scheme = "fp32"  # the container stores float64 only as fp32
        return self._make_plan(name, shape, dtype, label, QuantSpec(scheme), None, 0.0, None, None, None)

    def _make_plan(self, name, shape, dtype, label, spec, gptq, prune, codec, scales_codec, stream) -> TensorPlan:
        if spec.scheme == "raw" and dtype == "float64":
            raise ConfigError(f"{self.where}: {label}: tensor {name} is float64; raw passthrough cannot store it (use fp32)")
        if codec is None:
            codec = self.passthrough_codec if spec.scheme in PASSTHROUGH else self.codec
        return TensorPlan(name, shape, dtype, label, spec, gptq, prune, codec, scales_codec or self.scales_codec, stream)

    def needs_hessians(self) -> bool:
        """True when some part of the recipe cannot run without calibration Hessians."""
        if any(r.gptq is not None or r.spec.clip.kind == "hsdclip" for r in self.rules):
            return True
        return self.lqer is not None and (self.lqer.scaling != "none" or self.lqer.rank_by == "hessian")

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able summary (for manifests and reports)."""
        return _jsonable(asdict(self))


def _jsonable(v):
    if isinstance(v, dict):
        return {k: _jsonable(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_jsonable(x) for x in v]
    if isinstance(v, Path):
        return str(v)
    if isinstance(v, float) and v == float("inf"):
        return "inf"
    return v


# ------------------------------------------------------------------------------ loading

def list_recipes() -> list[str]:
    """Names of the bundled recipes (file stems under recipes/), sorted."""
    return named_toml_files(RECIPE_DIR)


def recipe_path(name_or_path: str | Path) -> Path:
    """The TOML file of a bundled recipe name or an explicit path."""
    return find_named_toml(name_or_path, RECIPE_DIR, "recipe")


def merge_recipe_data(base: dict, child: dict) -> dict:
    """`child` on top of `base`: top-level values replace, tables merge key by key, a child's
    `rules` list replaces the parent's."""
    out = copy.deepcopy(base)
    for key, value in child.items():
        if key in _TABLES and isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = {**out[key], **copy.deepcopy(value)}
        else:
            out[key] = copy.deepcopy(value)
    return out


def _resolve(path: Path, seen: tuple[Path, ...] = ()) -> dict:
    data = read_toml(path, "recipe")
    parent = data.pop("extends", None)
    if parent is None:
        return data
    if not isinstance(parent, str):
        raise ConfigError(f"{path}: extends must be a recipe name or path, got {parent!r}")
    if parent.endswith(".toml"):  # a file, relative to the recipe that extends it
        parent_path = Path(parent) if Path(parent).is_absolute() else path.parent / parent
        if not parent_path.is_file():
            raise ConfigError(f"{path}: extends {parent!r}: no such recipe file")
    else:
        parent_path = recipe_path(parent)
    if parent_path.resolve() in seen or parent_path.resolve() == path.resolve():
        raise ConfigError(f"{path}: extends {parent!r} makes a cycle")
    base = _resolve(parent_path, seen + (path.resolve(),))
    base.pop("name", None)  # a child is its own recipe
    return merge_recipe_data(base, data)


def load_recipe(name_or_path: str | Path, overrides: dict | None = None) -> Recipe:
    """Parse and validate a recipe by bundled name or path; `overrides` (same layout as the
    TOML) are merged on top. Errors name the file and the key."""
    path = recipe_path(name_or_path)
    data = _resolve(path)
    if overrides:
        data = merge_recipe_data(data, overrides)
    return parse_recipe(data, path)


def parse_recipe(data: dict, path: Path | None = None, default_name: str | None = None) -> Recipe:
    """Build a Recipe from already-loaded TOML data (`path` only labels errors)."""
    where = str(path) if path else "recipe"
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: a recipe must be a table")
    _unknown(data, _TOP_KEYS, where, "top level")
    name = _get(data, "name", str, where, default_name or (path.stem if path else "recipe"))
    codec = _codec(data.get("codec", "ans"), where, "codec")
    scales_codec = _codec(data.get("scales_codec", "deinterleave2+brotli-11"), where, "scales_codec")
    passthrough_codec = _codec(data.get("passthrough_codec", "deinterleave2+brotli-11"), where, "passthrough_codec")
    rules_data = data.get("rules", [])
    if not isinstance(rules_data, list) or not all(isinstance(r, dict) for r in rules_data):
        raise ConfigError(f"{where}: rules must be an array of tables ([[rules]])")
    rules = tuple(_parse_rule(i, r, where) for i, r in enumerate(rules_data))
    return Recipe(
        name=name, path=path, description=_get(data, "description", str, where, ""), rules=rules,
        default=_parse_default(_table(data, "default", where), where),
        lqer=_parse_lqer(data["lqer"], where) if "lqer" in data else None,
        prune_pm1=_parse_pm1(data["prune_pm1"], where) if "prune_pm1" in data else None,
        calibration=_parse_calibration(_table(data, "calibration", where), where),
        codec=codec, scales_codec=scales_codec, passthrough_codec=passthrough_codec,
    )


# ------------------------------------------------------------------------------ validation helpers

def _unknown(table: dict, known, where: str, section: str) -> None:
    check_keys(table, known, f"{where}: {section}")


def _table(data: dict, key: str, where: str) -> dict:
    value = data.get(key, {})
    if not isinstance(value, dict):
        raise ConfigError(f"{where}: [{key}] must be a table")
    return value


def _get(table: dict, key: str, typ, where: str, default=None, section: str = ""):
    """table[key] checked against `typ` (see config.typed_value), `default` when absent."""
    return typed_value(table, key, typ, f"{where}:{' ' + section if section else ''}", default)


def _globs(value, label: str) -> tuple[str, ...]:
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not value or not all(isinstance(v, str) and v for v in value):
        raise ConfigError(f"{label} must be a glob or a non-empty list of globs, got {value!r}")
    return tuple(value)


def _codec(value, where: str, key: str) -> str:
    try:
        return str(parse_codec(value))
    except ConfigError as exc:
        raise ConfigError(f"{where}: {key}: {exc}") from None


def _choice(value, allowed, label: str):
    if value not in allowed:
        raise ConfigError(f"{label} = {value!r} must be one of {', '.join(map(str, allowed))}")
    return value


def _quant_spec(table: dict, where: str, section: str, default_scheme: str = "per_row") -> QuantSpec:
    """A QuantSpec from scheme/bits/clip/group_size/asymmetric/scale_dtype keys."""
    scheme = _choice(table.get("scheme", default_scheme), SCHEMES, f"{where}: {section} scheme")
    if scheme not in INT_SCHEMES:
        stray = [k for k in ("bits", "clip", "asymmetric", "scale_dtype", "rd") if k in table]
        stray += ["group_size"] if scheme not in ("ternary", "binary") and "group_size" in table else []
        if stray:
            raise ConfigError(f"{where}: {section} {stray[0]} does not apply to scheme {scheme!r}")
    bits = _get(table, "bits", int, where, 8, section)
    if scheme in INT_SCHEMES and not 2 <= bits <= 8:
        raise ConfigError(f"{where}: {section} bits = {bits} must be in 2..8 for scheme {scheme!r}")
    label = f"{where}: {section} clip"
    try:
        clip = ClipRule.from_config(table.get("clip", "absmax"), where=label)
    except (ConfigError, TypeError) as exc:  # TypeError: a table value of the wrong type
        raise ConfigError(str(exc) if str(exc).startswith(label) else f"{label}: {exc}") from None
    try:
        return QuantSpec(scheme, bits=bits, clip=clip, group_size=_get(table, "group_size", int, where, None, section),
                         asymmetric=_get(table, "asymmetric", bool, where, False, section),
                         scale_dtype=_get(table, "scale_dtype", str, where, None, section),
                         rd=_get(table, "rd", float, where, 0.0, section))
    except ConfigError as exc:
        raise ConfigError(f"{where}: {section}: {exc}") from None


def _parse_gptq(value, where: str, section: str) -> GPTQConfig | None:
    if isinstance(value, bool):
        return GPTQConfig() if value else None
    if not isinstance(value, dict):
        raise ConfigError(f"{where}: {section} gptq must be true/false or a table of GPTQ settings")
    known = {"enabled", "block_size", "damp", "act_order", "damp_retries"}
    _unknown(value, known, where, f"{section} gptq")
    if not _get(value, "enabled", bool, where, True, f"{section} gptq"):
        return None
    cfg = GPTQConfig(block_size=_get(value, "block_size", int, where, 128, f"{section} gptq"),
                     damp=_get(value, "damp", float, where, 0.01, f"{section} gptq"),
                     act_order=_get(value, "act_order", bool, where, True, f"{section} gptq"),
                     damp_retries=_get(value, "damp_retries", int, where, 3, f"{section} gptq"))
    if cfg.block_size < 1 or not cfg.damp >= 0 or cfg.damp_retries < 0:
        raise ConfigError(f"{where}: {section} gptq: block_size >= 1, damp >= 0, damp_retries >= 0 required")
    return cfg


def _parse_rule(i: int, r: dict, where: str) -> Rule:
    section = f"[[rules]][{i}]"
    _unknown(r, _RULE_KEYS, where, section)
    if "match" not in r:
        raise ConfigError(f"{where}: {section} needs a match key (glob or list of globs)")
    spec = _quant_spec(r, where, section)
    if spec.scheme not in INT_SCHEMES + ("ternary", "binary"):
        stray = [k for k in ("gptq", "prune") if k in r]
        if stray:
            raise ConfigError(f"{where}: {section} {stray[0]} does not apply to scheme {spec.scheme!r}")
    prune = _get(r, "prune", float, where, 0.0, section)
    if not 0.0 <= prune < 1.0:
        raise ConfigError(f"{where}: {section} prune = {prune} must be in [0, 1)")
    limits = {k: _get(r, k, int, where, None, section) for k in ("ndim", "min_numel", "max_numel")}
    if any(v is not None and v < 0 for v in limits.values()):
        raise ConfigError(f"{where}: {section} ndim/min_numel/max_numel must be >= 0")
    return Rule(index=i, match=_globs(r["match"], f"{where}: {section} match"), spec=spec,
                exclude=_globs(r["exclude"], f"{where}: {section} exclude") if "exclude" in r else (),
                gptq=_parse_gptq(r.get("gptq", False), where, section), prune=prune,
                codec=_codec(r["codec"], where, f"{section} codec") if "codec" in r else None,
                scales_codec=_codec(r["scales_codec"], where, f"{section} scales_codec") if "scales_codec" in r else None,
                stream=_get(r, "stream", str, where, None, section), **limits)


def _parse_default(t: dict, where: str) -> DefaultRule:
    section = "[default]"
    _unknown(t, {"enabled", "max_numel", "small", "control", "control_patterns", "large"}, where, section)
    patterns = t.get("control_patterns", list(BASELINE_CONTROL_PATTERNS))
    if not isinstance(patterns, list) or not all(isinstance(p, str) for p in patterns):
        raise ConfigError(f"{where}: {section} control_patterns must be a list of strings")
    return DefaultRule(
        enabled=_get(t, "enabled", bool, where, True, section),
        max_numel=_get(t, "max_numel", int, where, BASELINE_KEEP_FLOAT_MAX_NUMEL, section),
        small=_choice(t.get("small", "fp16"), PASSTHROUGH, f"{where}: {section} small"),
        control=_choice(t.get("control", "fp32"), PASSTHROUGH, f"{where}: {section} control"),
        control_patterns=tuple(patterns),
        large=_choice(t.get("large", "error"), ("error", "baseline_int8"), f"{where}: {section} large"))


def _parse_lqer(t, where: str) -> LqerConfig | None:
    section = "[lqer]"
    if not isinstance(t, dict):
        raise ConfigError(f"{where}: {section} must be a table")
    _unknown(t, {"rank", "top_k", "names", "ranks", "among", "rank_by", "factors", "factor_a", "factor_b",
                 "scaling", "refit_b", "codec"}, where, section)
    if "ranks" in t and t.get("rank") != 0:  # rank = 0 still switches LQER off
        ranks = _parse_lqer_ranks(t, where, section)
        if ranks is None:
            return None  # an empty table: no tensor gets a correction
        rank = max(r for _, r in ranks)
    else:
        ranks, rank = None, _get(t, "rank", int, where, 4, section)
    if rank == 0:
        return None  # rank 0: no correction (lets a child recipe switch LQER off)
    if rank < 0:
        raise ConfigError(f"{where}: {section} rank = {rank} must be >= 0")
    names = t.get("names")
    if names is not None:
        names = _globs(names, f"{where}: {section} names")
        if "top_k" in t:
            raise ConfigError(f"{where}: {section} give top_k or names, not both")
    top_k = None if names is not None else _get(t, "top_k", int, where, 3, section)
    if top_k is not None and top_k < 0:
        raise ConfigError(f"{where}: {section} top_k = {top_k} must be >= 0")
    factor_a, factor_b = RECORD_FACTORS
    factors = t.get("factors")
    if factors is not None and factors != "record":
        raise ConfigError(f"{where}: {section} factors = {factors!r}: only \"record\" (else use factor_a/factor_b tables)")
    for key in ("factor_a", "factor_b"):
        if key in t:
            if factors is not None or not isinstance(t[key], dict):
                raise ConfigError(f"{where}: {section} {key} must be a table (and not combined with factors)")
            _unknown(t[key], _SPEC_KEYS, where, f"{section} {key}")
            spec = _quant_spec(t[key], where, f"{section} {key}")
            if spec.scheme not in INT_SCHEMES:
                raise ConfigError(f"{where}: {section} {key} scheme must be one of {', '.join(INT_SCHEMES)}")
            factor_a, factor_b = (spec, factor_b) if key == "factor_a" else (factor_a, spec)
    if ranks is not None:
        top_k = None
    return LqerConfig(rank=rank, top_k=top_k, names=names, ranks=ranks,
                      among=_globs(t.get("among", ["*"]), f"{where}: {section} among"),
                      rank_by=_choice(t.get("rank_by", "frobenius"), ("frobenius", "hessian"), f"{where}: {section} rank_by"),
                      factor_a=factor_a, factor_b=factor_b,
                      scaling=_choice(t.get("scaling", "none"), SCALINGS, f"{where}: {section} scaling"),
                      refit_b=_get(t, "refit_b", bool, where, False, section),
                      codec=_codec(t["codec"], where, f"{section} codec") if "codec" in t else None)


def _parse_lqer_ranks(t: dict, where: str, section: str) -> tuple[tuple[str, int], ...] | None:
    """`[lqer.ranks]`: {tensor name or glob: rank >= 1}; replaces rank, top_k and names. An
    empty table means no correction (None)."""
    table = t["ranks"]
    if not isinstance(table, dict):
        raise ConfigError(f"{where}: {section} ranks must be a table of tensor name = rank")
    clash = [k for k in ("rank", "top_k", "names") if k in t]
    if clash:
        raise ConfigError(f"{where}: {section} give ranks or {clash[0]}, not both")
    out = []
    for pattern, r in table.items():
        if not pattern or not isinstance(r, int) or isinstance(r, bool) or r < 1:
            raise ConfigError(f"{where}: {section} ranks: {pattern!r} = {r!r} must be a whole number >= 1")
        out.append((pattern, r))
    return tuple(out) or None


def _parse_pm1(t, where: str) -> PrunePm1Config:
    section = "[prune_pm1]"
    if not isinstance(t, dict):
        raise ConfigError(f"{where}: {section} must be a table")
    _unknown(t, {"target_bytes", "budget", "among"}, where, section)
    target = _get(t, "target_bytes", int, where, None, section)
    if target is not None and target <= 0:
        raise ConfigError(f"{where}: {section} target_bytes = {target} must be positive")
    return PrunePm1Config(target_bytes=target, budget=_get(t, "budget", str, where, None, section),
                          among=_globs(t.get("among", ["*"]), f"{where}: {section} among"))


def _parse_calibration(t: dict, where: str) -> CalibrationConfig:
    return build_dataclass(CalibrationConfig, t, f"{where}: [calibration]")

"""The budget fit: measured candidates → solver → a recipe per tensor → the real blob, fitted.

Fixed costs are the shipped code files (as `submission.plan_files` writes them, counted as the
budget counts them: the runtime, a user's model file, counted code files such as train_gpt.py) and the container's residual: the real blob's size minus the Σ of the chosen
candidates' predicted bytes (header, manifest, passthrough tensors, and whatever the shared scale
and LQER streams gain or lose against their parts predicted alone). It is first taken from a
reference blob (every quantizable tensor at its cheapest candidate), then from each real blob.
The solver gets budget − code − residual; its choice is written as a `Recipe` (one rule per
tensor with its bits, clip, GPTQ, prune fraction and codec; each tensor's own LQER rank in an
`[lqer] ranks` table) and packed as `pack.pack_state_dict` packs it — tensor by tensor, each
(tensor, label) packed once per fit, so repair rounds redo only what changed — and the real blob
is measured. If it
is over the budget, the solver runs again with the overshoot taken off; if it left slack, with the
real residual. Bounded; the best real fit wins, and a final total above the budget is never
returned. `dry_run` stops after the first solve (predicted bytes and loss only).
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from artifact.budget import Budget, count_files
from artifact.container import build_blob
from artifact.runtime.errors import ArtifactError, ConfigError
from artifact.runtime.files import atomic_write_json, read_json_or_none
from artifact.measure import Choice, Measurement, cache_key, pin_matches
from artifact.pack import PackResult, pack_state_dict
from artifact.recipe import CalibrationConfig, Recipe, parse_recipe
from artifact.solve import Infeasible, Solution, solve
from artifact.submission import plan_files

MAX_ROUNDS = 6
# tensors of at most this many codes may share one ANS stream (one table, one state) with the
# other small ones of the same code width; kept only where the blob comes out smaller
SHARED_STREAM_MAX = 65_536
_CALIBRATION_KEYS = set(CalibrationConfig.__dataclass_fields__)


@dataclass
class FitResult:
    """The chosen labels per tensor, the solver's answer, and predicted vs real bytes."""

    choices: dict[str, str]
    solution: Solution
    recipe: Recipe
    code_bytes: int
    predicted_total: int  # Σ chosen + residual estimate + code, as the solver saw it
    predicted_loss: float
    real_total: int | None = None  # blob + code as shipped (None on a dry run)
    blob_bytes: int | None = None
    packed: PackResult | None = None
    rounds: list[dict] = field(default_factory=list)
    streams: dict[str, str] = field(default_factory=dict)  # tensor -> shared stream group

    @property
    def dry_run(self) -> bool:
        return self.packed is None


def counted_code_bytes(model_config: dict, eval_defaults: dict, budget: Budget, compact: bool = False,
                       extra_files: dict[str, bytes] | None = None) -> int:
    """Bytes of the shipped files other than the blob that `budget` counts (`extra_files`: the
    model file and code files shipped beside run.py)."""
    files = plan_files([], model_config, eval_defaults, compact, blob=b"", extra_files=extra_files)
    return count_files(files, budget).code_bytes


def recipe_data(choices: dict[str, str], calibration: dict | None = None, lqer_codec: str = "ans",
                scales_codec: str = "deinterleave2+brotli-11", name: str = "fit",
                streams: dict[str, str] | None = None) -> dict:
    """Recipe data (the TOML layout) with one rule per chosen tensor (label → bits, clip, GPTQ,
    prune fraction, rate-aware lambda, codec, and the shared stream group `streams` names) and,
    for the tensors whose label asks for a rank, a per-tensor `[lqer] ranks` table; other
    tensors fall to the baseline default."""
    rules, ranks = [], {}
    streams = streams or {}
    for tensor, label in choices.items():
        c = Choice.parse(label)
        rule = {"match": [tensor], "bits": c.bits, "clip": c.clip, "gptq": c.gptq}
        if c.prune:
            rule["prune"] = c.prune
        if c.rd:
            rule["rd"] = c.rd
        if tensor in streams:
            rule["stream"] = streams[tensor]
        rules.append({**rule, "codec": c.codec})
        if c.lqer_rank:
            ranks[tensor] = c.lqer_rank
    data = {"name": name, "description": "chosen per tensor by golf fit", "codec": "ans",
            "scales_codec": scales_codec, "rules": rules}
    if ranks:
        data["lqer"] = {"factors": "record", "scaling": "none", "codec": lqer_codec, "ranks": ranks}
    if calibration:
        data["calibration"] = {k: v for k, v in calibration.items() if k in _CALIBRATION_KEYS}
    return data


def build_recipe(choices: dict[str, str], calibration: dict | None = None, lqer_codec: str = "ans",
                 scales_codec: str = "deinterleave2+brotli-11", name: str = "fit",
                 streams: dict[str, str] | None = None) -> Recipe:
    """`recipe_data` parsed into a Recipe."""
    return parse_recipe(recipe_data(choices, calibration, lqer_codec, scales_codec, name, streams))


def shared_streams(choices: dict[str, str], numels: dict[str, int], max_numel: int = SHARED_STREAM_MAX) -> dict[str, str]:
    """{tensor: stream group} for the ANS-coded tensors of at most `max_numel` codes: one group
    per code width (tensors alone in their group keep their own stream)."""
    groups: dict[str, list[str]] = {}
    for n, label in choices.items():
        c = Choice.parse(label)
        if c.codec == "ans" and numels[n] <= max_numel:
            groups.setdefault(f"small-int{c.bits}", []).append(n)
    return {n: g for g, members in groups.items() if len(members) > 1 for n in members}


def _toml_value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, str):
        return json.dumps(v)
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    raise ConfigError(f"cannot write {v!r} as TOML")


def recipe_toml(data: dict) -> str:
    """`recipe_data` as a recipe file (`golf pack --recipe FILE` and `golf compare` read it)."""
    lines = [f"{k} = {_toml_value(v)}" for k, v in data.items() if not isinstance(v, (dict, list))]
    for rule in data.get("rules", []):
        lines += ["", "[[rules]]"] + [f"{k} = {_toml_value(v)}" for k, v in rule.items()]
    for table in ("lqer", "calibration"):
        if table in data:
            lines += _toml_table(table, data[table])
    return "\n".join(lines) + "\n"


def _toml_table(header: str, table: dict) -> list[str]:
    """A table and, after its plain keys, its sub-tables ([lqer.ranks]); keys are quoted when
    they are not bare TOML keys (tensor names hold dots)."""
    key = lambda k: k if k.replace("_", "").replace("-", "").isalnum() else json.dumps(k)
    lines = ["", f"[{header}]"] + [f"{key(k)} = {_toml_value(v)}" for k, v in table.items() if not isinstance(v, dict)]
    for k, v in table.items():
        if isinstance(v, dict):
            lines += _toml_table(f"{header}.{key(k)}", v)
    return lines


def _pin_predicates(pins: dict[str, str] | None, measurement: Measurement) -> dict:
    out = {}
    for name, pin in (pins or {}).items():
        if name not in measurement.tensors:
            raise ConfigError(f"pin names {name!r}, which is not a quantizable tensor "
                              f"(known: {', '.join(list(measurement.tensors)[:6])}, ...)")
        out[name] = lambda label, pin=pin: pin_matches(pin, label)
    return out


class _Packer:
    """Packs a choice tensor by tensor, remembering each (tensor, label), so the reference pack
    and the repair rounds re-quantize only tensors whose choice changed. The entries are those of
    one `pack_state_dict` of the whole recipe: pack treats every tensor alone when LQER targets
    are named per tensor and there is no ±1 pruning, as in a fit's recipe."""

    def __init__(self, state_dict, measurement: Measurement, hessians, calibration, share: bool = True):
        self.state, self.measurement, self.hessians, self.calibration = state_dict, measurement, hessians, calibration
        self.share = share
        self.done: dict[tuple[str, str | None], tuple] = {}

    def _recipe(self, choices: dict[str, str], streams: dict[str, str] | None = None) -> Recipe:
        g = self.measurement.grid
        return build_recipe(choices, self.calibration, g.lqer_codec, g.scales_codec, streams=streams)

    def _one(self, name: str, label: str | None) -> tuple:
        if (name, label) not in self.done:
            r = pack_state_dict({name: self.state[name]}, self._recipe({name: label} if label else {}),
                                self.hessians, predict_sizes=False)
            self.done[(name, label)] = (r.entries[0], r.rows[0], r.dequantized[name], bool(r.lqer_targets))
        return self.done[(name, label)]

    def pack(self, choices: dict[str, str]) -> tuple[PackResult, bytes, Recipe, dict[str, str]]:
        """(packed, blob, recipe, shared streams): small ANS tensors share a stream per code
        width when that makes the blob smaller (the weights are the same either way)."""
        recipe = self._recipe(choices)
        recipe.plan(self.state)  # the whole recipe's checks, once
        parts = {n: self._one(n, choices.get(n)) for n in self.state}
        packed = PackResult([p[0] for p in parts.values()], [p[1] for p in parts.values()],
                            {n: p[2] for n, p in parts.items()}, recipe.name, [n for n, p in parts.items() if p[3]])
        blob = build_blob(packed.entries)
        streams = shared_streams(choices, {n: self.measurement.tensors[n].params for n in choices}) if self.share else {}
        if streams:
            entries = [dataclasses.replace(e, stream=streams[e.name]) if e.name in streams else e for e in packed.entries]
            shared = build_blob(entries)
            if len(shared) < len(blob):
                packed = dataclasses.replace(packed, entries=entries)
                return packed, shared, self._recipe(choices, streams), streams
        return packed, blob, recipe, {}


def _pack(state_dict, measurement, choices, hessians, calibration) -> tuple[PackResult, bytes, Recipe, dict]:
    return _Packer(state_dict, measurement, hessians, calibration).pack(choices)


def _chosen_bytes(measurement: Measurement, choices: dict[str, str]) -> int:
    return sum(measurement.tensors[n].candidates[l]["bytes"] for n, l in choices.items())


def reference_residual(state_dict, measurement: Measurement, hessians, calibration=None, packer=None) -> int:
    """Real blob − Σ predicted bytes with every quantizable tensor at its cheapest candidate."""
    cheapest = {n: min(t.candidates, key=lambda l: (t.candidates[l]["bytes"], l))
                for n, t in measurement.tensors.items()}
    g = measurement.grid
    path = None
    if measurement.cache_dir is not None:  # a second fit from the same measurement skips this pack
        key = cache_key(measurement.checkpoint_hash, calibration, cheapest, g.scales_codec, g.lqer_codec,
                        getattr(packer, "share", True))
        path = Path(measurement.cache_dir) / f"residual-{key}.json"
        stored = read_json_or_none(path)
        if stored and isinstance(stored.get("residual"), int):
            return stored["residual"]
    packer = packer or _Packer(state_dict, measurement, hessians, calibration)
    _, blob, _, _ = packer.pack(cheapest)
    residual = len(blob) - _chosen_bytes(measurement, cheapest)
    if path is not None:
        atomic_write_json(path, {"residual": residual})
    return residual


def fit(state_dict, measurement: Measurement, budget: Budget, code_bytes: int, hessians,
        pins: dict[str, str] | None = None, dry_run: bool = False, calibration: dict | None = None,
        log: Callable[[str], None] | None = None, share_streams: bool = True) -> FitResult:
    """Choose a candidate per tensor so blob + code ≤ budget at the lowest predicted loss, and
    (unless `dry_run`) pack it, repairing the choice until the real blob fits. `log` hears one
    line per pack round. `share_streams`: let small ANS tensors share streams where it pays."""
    names, cands = measurement.solver_input()
    pin_of = _pin_predicates(pins, measurement)
    packer = _Packer(state_dict, measurement, hessians, calibration, share_streams)
    residual = reference_residual(state_dict, measurement, hessians, calibration, packer)
    best: FitResult | None = None
    rounds: list[dict] = []
    tried: dict[tuple, tuple] = {}
    for r in range(MAX_ROUNDS):
        try:
            sol = solve(cands, budget.bytes, fixed={"code": code_bytes, "container": residual}, pins=pin_of,
                        names=names)
        except Infeasible:
            # The container bytes were an estimate: the smallest allowed choice, packed for real,
            # either frees room for another round or is the honest figure to report.
            smallest = _smallest_choice(measurement, pin_of)
            _, blob, _, _ = packer.pack(smallest)
            real_residual = len(blob) - _chosen_bytes(measurement, smallest)
            if real_residual < residual:
                residual = real_residual
                continue
            raise ArtifactError(
                f"budget of {budget.bytes:,} bytes is infeasible: every tensor at its smallest"
                f"{' allowed' if pins else ''} candidate packs to {len(blob) + code_bytes:,} bytes as written "
                f"({len(blob):,} blob + {code_bytes:,} code); the fit cannot get below about that "
                f"(another choice may pack a few bytes smaller)") from None
        choices = dict(zip(names, sol.labels))
        predicted = sol.total_bytes
        if dry_run:
            recipe = build_recipe(choices, calibration, measurement.grid.lqer_codec, measurement.grid.scales_codec)
            return FitResult(choices, sol, recipe, code_bytes, predicted, sol.total_loss, rounds=rounds)
        if sol.labels not in tried:
            tried[sol.labels] = packer.pack(choices)
        packed, blob, recipe, streams = tried[sol.labels]
        real = len(blob) + code_bytes
        real_residual = len(blob) - _chosen_bytes(measurement, choices)
        rounds.append({"round": r + 1, "residual_assumed": residual, "predicted_total": predicted,
                       "real_total": real, "real_residual": real_residual, "predicted_loss": sol.total_loss})
        if log is not None:
            log(f"fit: round {r + 1}: predicted {predicted:,} B, real {real:,} B (limit {budget.bytes:,}), "
                f"predicted Δloss {sol.total_loss:.5f}")
        if real <= budget.bytes and (best is None or sol.total_loss < best.predicted_loss):
            best = FitResult(choices, sol, recipe, code_bytes, predicted, sol.total_loss, real, len(blob), packed,
                             streams=streams)
        if real > budget.bytes:  # take the overshoot off the solver's budget
            nxt = max(real_residual, residual + real - budget.bytes)
        else:
            nxt = real_residual  # reclaim the slack the estimate left
        if nxt == residual or (real <= budget.bytes and budget.bytes - real <= max(16, budget.bytes // 2000)):
            break
        residual = nxt
    if best is None:  # the smallest allowed choice, when it fits, is the answer of last resort
        best = _smallest_fit(cands, names, measurement, pin_of, packer, budget, code_bytes)
        if best is None:
            raise ArtifactError(f"fit: no packed choice fitted {budget.bytes:,} bytes after {len(rounds)} rounds "
                                f"(last real total {rounds[-1]['real_total']:,})")
        rounds.append({"round": len(rounds) + 1, "residual_assumed": None, "predicted_total": best.predicted_total,
                       "real_total": best.real_total, "real_residual": None, "predicted_loss": best.predicted_loss})
        if log is not None:
            log(f"fit: fallback: every tensor at its smallest candidate, real {best.real_total:,} B "
                f"(limit {budget.bytes:,})")
    best.rounds = rounds
    return best


def _smallest_choice(measurement: Measurement, pin_of: dict) -> dict[str, str]:
    """Every tensor at its smallest (allowed) candidate."""
    return {n: min((l for l in t.candidates if n not in pin_of or pin_of[n](l)),
                   key=lambda l, t=t: (t.candidates[l]["bytes"], l))
            for n, t in measurement.tensors.items()}


def _smallest_fit(cands, names, measurement, pin_of, packer, budget: Budget, code_bytes: int) -> FitResult | None:
    """The smallest allowed choice as a FitResult when its real pack fits the budget, else None."""
    smallest = _smallest_choice(measurement, pin_of)
    packed, blob, recipe, streams = packer.pack(smallest)
    real = len(blob) + code_bytes
    if real > budget.bytes:
        return None
    only = {n: (lambda label, want=want: label == want) for n, want in smallest.items()}
    residual = len(blob) - _chosen_bytes(measurement, smallest)
    sol = solve(cands, budget.bytes, fixed={"code": code_bytes, "container": residual}, pins=only, names=names)
    return FitResult(smallest, sol, recipe, code_bytes, sol.total_bytes, sol.total_loss, real, len(blob), packed,
                     streams=streams)

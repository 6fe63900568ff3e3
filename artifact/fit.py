"""The budget fit: measured candidates → solver → a recipe per tensor → the real blob, fitted.

Fixed costs are the shipped code files (as `submission.plan_files` writes them, counted as the
budget counts them) and the container's residual: the real blob's size minus the Σ of the chosen
candidates' predicted bytes (header, manifest, passthrough tensors, and whatever the shared scale
and LQER streams gain or lose against their parts predicted alone). It is first taken from a
reference blob (every quantizable tensor at its cheapest candidate), then from each real blob.
The solver gets budget − code − residual; its choice is written as a `Recipe` (one rule per
tensor, LQER by name) and packed by `pack.pack_state_dict`, and the real blob is measured. If it
is over the budget, the solver runs again with the overshoot taken off; if it left slack, with the
real residual. Bounded; the best real fit wins, and a final total above the budget is never
returned. `dry_run` stops after the first solve (predicted bytes and loss only).
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field

from artifact.budget import Budget, _matches
from artifact.container import build_blob
from artifact.errors import ArtifactError, ConfigError
from artifact.measure import Choice, Measurement, pin_matches
from artifact.pack import PackResult, pack_state_dict
from artifact.recipe import CalibrationConfig, Recipe, parse_recipe
from artifact.solve import Solution, solve
from artifact.submission import BLOB, plan_files

MAX_ROUNDS = 6
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

    @property
    def dry_run(self) -> bool:
        return self.packed is None


def counted_code_bytes(model_config: dict, eval_defaults: dict, ship_modules, budget: Budget,
                       compact: bool = False) -> int:
    """Bytes of the shipped files other than the blob that `budget` counts."""
    files = plan_files([], model_config, eval_defaults, ship_modules, compact, blob=b"")
    return sum(len(b) for rel, b in files.items() if rel != BLOB and not _matches(rel, budget.not_counted))


def recipe_data(choices: dict[str, str], calibration: dict | None = None, lqer_codec: str = "ans",
                scales_codec: str = "deinterleave2+brotli-11", name: str = "fit") -> dict:
    """Recipe data (the TOML layout) with one rule per chosen tensor (label → bits, clip, GPTQ,
    codec) and LQER on the tensors whose label asks for a rank; other tensors fall to the
    baseline default."""
    rules, ranked = [], {}
    for tensor, label in choices.items():
        c = Choice.parse(label)
        rules.append({"match": [tensor], "bits": c.bits, "clip": c.clip, "gptq": c.gptq, "codec": c.codec})
        if c.lqer_rank:
            ranked.setdefault(c.lqer_rank, []).append(tensor)
    if len(ranked) > 1:
        raise ConfigError(f"fit: one LQER rank per artifact is supported, got ranks {sorted(ranked)}")
    data = {"name": name, "description": "chosen per tensor by golf fit", "codec": "ans",
            "scales_codec": scales_codec, "rules": rules}
    if ranked:
        rank, names = next(iter(ranked.items()))
        data["lqer"] = {"rank": rank, "names": names, "factors": "record", "scaling": "none", "codec": lqer_codec}
    if calibration:
        data["calibration"] = {k: v for k, v in calibration.items() if k in _CALIBRATION_KEYS}
    return data


def build_recipe(choices: dict[str, str], calibration: dict | None = None, lqer_codec: str = "ans",
                 scales_codec: str = "deinterleave2+brotli-11", name: str = "fit") -> Recipe:
    """`recipe_data` parsed into a Recipe."""
    return parse_recipe(recipe_data(choices, calibration, lqer_codec, scales_codec, name))


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
            lines += ["", f"[{table}]"] + [f"{k} = {_toml_value(v)}" for k, v in data[table].items()]
    return "\n".join(lines) + "\n"


def _pin_predicates(pins: dict[str, str] | None, measurement: Measurement) -> dict:
    out = {}
    for name, pin in (pins or {}).items():
        if name not in measurement.tensors:
            raise ConfigError(f"pin names {name!r}, which is not a quantizable tensor "
                              f"(known: {', '.join(list(measurement.tensors)[:6])}, ...)")
        out[name] = lambda label, pin=pin: pin_matches(pin, label)
    return out


def _pack(state_dict, measurement, choices, hessians, calibration) -> tuple[PackResult, bytes, Recipe]:
    recipe = build_recipe(choices, calibration, measurement.grid.lqer_codec, measurement.grid.scales_codec)
    packed = pack_state_dict(state_dict, recipe, hessians, predict_sizes=False)
    return packed, build_blob(packed.entries), recipe


def _chosen_bytes(measurement: Measurement, choices: dict[str, str]) -> int:
    return sum(measurement.tensors[n].candidates[l]["bytes"] for n, l in choices.items())


def reference_residual(state_dict, measurement: Measurement, hessians, calibration=None) -> int:
    """Real blob − Σ predicted bytes with every quantizable tensor at its cheapest candidate."""
    cheapest = {n: min(t.candidates, key=lambda l: (t.candidates[l]["bytes"], l))
                for n, t in measurement.tensors.items()}
    _, blob, _ = _pack(state_dict, measurement, cheapest, hessians, calibration)
    return len(blob) - _chosen_bytes(measurement, cheapest)


def fit(state_dict, measurement: Measurement, budget: Budget, code_bytes: int, hessians,
        pins: dict[str, str] | None = None, dry_run: bool = False, calibration: dict | None = None,
        progress: bool = True) -> FitResult:
    """Choose a candidate per tensor so blob + code ≤ budget at the lowest predicted loss, and
    (unless `dry_run`) pack it, repairing the choice until the real blob fits."""
    names, cands = measurement.solver_input()
    pin_of = _pin_predicates(pins, measurement)
    residual = reference_residual(state_dict, measurement, hessians, calibration)
    best: FitResult | None = None
    rounds: list[dict] = []
    tried: dict[tuple, tuple] = {}
    for r in range(MAX_ROUNDS):
        sol = solve(cands, budget.bytes, fixed={"code": code_bytes, "container": residual}, pins=pin_of, names=names)
        choices = dict(zip(names, sol.labels))
        predicted = sol.total_bytes
        if dry_run:
            recipe = build_recipe(choices, calibration, measurement.grid.lqer_codec, measurement.grid.scales_codec)
            return FitResult(choices, sol, recipe, code_bytes, predicted, sol.total_loss, rounds=rounds)
        if sol.labels not in tried:
            tried[sol.labels] = _pack(state_dict, measurement, choices, hessians, calibration)
        packed, blob, recipe = tried[sol.labels]
        real = len(blob) + code_bytes
        real_residual = len(blob) - _chosen_bytes(measurement, choices)
        rounds.append({"round": r + 1, "residual_assumed": residual, "predicted_total": predicted,
                       "real_total": real, "real_residual": real_residual, "predicted_loss": sol.total_loss})
        if progress:
            print(f"fit: round {r + 1}: predicted {predicted:,} B, real {real:,} B (limit {budget.bytes:,}), "
                  f"predicted Δloss {sol.total_loss:.5f}", file=sys.stderr, flush=True)
        if real <= budget.bytes and (best is None or sol.total_loss < best.predicted_loss):
            best = FitResult(choices, sol, recipe, code_bytes, predicted, sol.total_loss, real, len(blob), packed)
        if real > budget.bytes:  # take the overshoot off the solver's budget
            nxt = max(real_residual, residual + real - budget.bytes)
        else:
            nxt = real_residual  # reclaim the slack the estimate left
        if nxt == residual or (real <= budget.bytes and budget.bytes - real <= max(16, budget.bytes // 2000)):
            break
        residual = nxt
    if best is None:
        raise ArtifactError(f"fit: no packed choice fitted {budget.bytes:,} bytes after {len(rounds)} rounds "
                            f"(last real total {rounds[-1]['real_total']:,})")
    best.rounds = rounds
    return best

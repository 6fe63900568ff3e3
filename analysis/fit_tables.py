"""The tables a fit writes beside its submission: one row per tensor (tensors.csv) and one per
measured candidate (candidates.csv, the report's rate–distortion curves)."""

from __future__ import annotations

import csv
import re
from pathlib import Path

from artifact.measure import Choice
from artifact.runtime.files import atomic_writer

# tensors.csv: bytes are what the tensor takes in the shipped blob (exact attribution,
# `artifact.container.inspect`) when there is a blob, else the measured prediction; predicted Δloss
# (nats) is the loss model's figure, distortion its input (trace(ΔW H ΔWᵀ), calibration-weighted)
CSV_COLUMNS = ("name", "layer", "kind", "params", "bits", "clip", "gptq", "lqer_rank", "prune", "rd", "codec", "bytes",
               "predicted_bytes", "bits_per_weight", "share_of_budget", "predicted_dloss", "distortion")
CANDIDATE_COLUMNS = ("name", "kind", "label", "bytes", "distortion", "predicted_dloss", "chosen")


_LAYER_NAME = re.compile(r"^blocks\.(\d+)\.(.+?)(?:\.weight)?$")


def layer_and_kind(name: str) -> tuple[int | None, str]:
    """(block index or None, tensor kind) from a state-dict name:
    'blocks.3.mlp.fc.weight' → (3, 'mlp.fc'); 'tok_emb.weight' → (None, 'tok_emb')."""
    m = _LAYER_NAME.match(name)
    if m:
        return int(m.group(1)), m.group(2)
    return None, name.removesuffix(".weight")


def candidate_rows(measurement, choices: dict[str, str]) -> list[dict]:
    """Every measured candidate of every tensor (CANDIDATE_COLUMNS), the fit's choice marked."""
    rows = []
    for name, t in measurement.tensors.items():
        kind = layer_and_kind(name)[1]
        for label, fig in t.candidates.items():
            rows.append({"name": name, "kind": kind, "label": label, "bytes": fig["bytes"],
                         "distortion": fig["distortion"], "predicted_dloss": t.predicted_dloss(label),
                         "chosen": choices.get(name) == label})
    return rows


def write_csv(path: Path, columns, rows: list[dict]) -> None:
    with atomic_writer(path, "w", encoding="utf-8", newline="") as f:
        w = csv.DictWriter(f, fieldnames=columns)
        w.writeheader()
        w.writerows(rows)


def tensor_rows(measurement, choices: dict[str, str], budget_bytes: int, shipped: dict | None = None) -> list[dict]:
    """The per-tensor table (CSV_COLUMNS) of a fit's choice; `shipped` ({name: bytes} in the
    written blob) gives the bytes column, else it holds the measured prediction."""
    rows = []
    for name, label in choices.items():
        t, c = measurement.tensors[name], Choice.parse(label)
        fig = t.candidates[label]
        layer, kind = layer_and_kind(name)
        nbytes = shipped[name] if shipped is not None else fig["bytes"]
        rows.append({"name": name, "layer": layer, "kind": kind,
                     "params": t.params, "bits": c.bits, "clip": c.clip, "gptq": c.gptq, "lqer_rank": c.lqer_rank,
                     "prune": c.prune, "rd": c.rd, "codec": c.codec, "bytes": nbytes, "predicted_bytes": fig["bytes"],
                     "bits_per_weight": nbytes * 8 / t.params, "share_of_budget": nbytes / budget_bytes,
                     "predicted_dloss": t.predicted_dloss(label), "distortion": fig["distortion"]})
    return rows

"""The figures a records folder needs, read from a train log as the challenge's scripts print it.

The baseline train_gpt.py and the records built on it log lines such as

    step:13780/20000 val_loss:2.0606 val_bpb:1.2172 train_time:600038ms step_avg:43.54ms
    stopping_early: wallclock_cap train_time: 599592ms step: 4945/20000
    Total submission size int8+zlib: 15863489 bytes
    final_int8_zlib_roundtrip val_loss:2.0727 val_bpb:1.2244 eval_time:1401ms
    final_int8_zlib_roundtrip_exact val_loss:2.07269931 val_bpb:1.22436570
    quantized_ttt_phased val_loss:2.31944212 val_bpb:1.05989454 eval_time:508785ms
    total_eval_time:508.8s

Rules (each figure remembers the line it came from, so a report can show it):
- val_loss, val_bpb: the LAST line carrying both (the script's final score: after quantization,
  sliding windows or TTT, whichever it prints last);
- eval_time_s: `total_eval_time:` when printed, else the eval_time of the last score line that
  has one (`eval_time:1401ms` or `…s`);
- artifact_bytes: the last `Total submission size …: N bytes`;
- steps: `stopping_early: … step: N/M` (a wallclock stop), else the last `step:N/M` or `N/M`
  training line;
- step_avg_ms: the last `step_avg:Xms`, else train_time / steps from the stop line;
- seed: the hyperparameter line `seed: N` (or `seed=N`), else `seed<N>` in the file name;
- code_bytes: the last `Code size …: N bytes` (informative: scripts differ in what they count).
A figure the log does not print is simply absent; the caller decides (a flag, or an error).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from artifact.runtime.errors import DataError

MAX_LOG_BYTES = 64 << 20  # train logs are kilobytes to a few hundred kilobytes
FIGURES = ("val_loss", "val_bpb", "artifact_bytes", "steps", "step_avg_ms", "eval_time_s")

_NUM = r"([0-9]+(?:\.[0-9]+)?(?:[eE][-+]?[0-9]+)?)"
_VAL_LOSS = re.compile(rf"\bval_loss[:=]\s*{_NUM}")
_VAL_BPB = re.compile(rf"\bval_bpb[:=]\s*{_NUM}")
_EVAL_TIME = re.compile(rf"\beval_time[:=]\s*{_NUM}\s*(ms|s)\b")
_TOTAL_EVAL = re.compile(rf"\btotal_eval_time[:=]\s*{_NUM}\s*(ms|s)\b")
_TOTAL_SIZE = re.compile(r"Total submission size[^:\n]*:\s*([0-9]+)\s*bytes")
_CODE_SIZE = re.compile(r"Code size[^:\n]*:\s*([0-9]+)\s*bytes")
_STOP = re.compile(r"stopping_early:.*?\bstep[:=]?\s*([0-9]+)/([0-9]+)")
_STOP_TIME = re.compile(r"stopping_early:.*?\btrain_time[:=]?\s*([0-9]+)ms")
_STEP = re.compile(r"^(?:step[:=]\s*)?([0-9]+)/([0-9]+)\s")
_STEP_AVG = re.compile(rf"\bstep_avg[:=]\s*{_NUM}ms")
_SEED_LINE = re.compile(r"^\s*seed\s*[:=]\s*([0-9]+)\s*$")
_SEED_NAME = re.compile(r"seed[_-]?([0-9]+)", re.IGNORECASE)


@dataclass
class LogFigures:
    """What one train log says: the figures found and, for each, (line number, line)."""

    path: Path
    seed: int | None = None
    figures: dict[str, float | int] = field(default_factory=dict)
    sources: dict[str, tuple[int, str]] = field(default_factory=dict)
    code_bytes: int | None = None

    def found(self, key: str, value, line_no: int, line: str) -> None:
        self.figures[key] = value
        self.sources[key] = (line_no, line.strip())


def _seconds(value: str, unit: str) -> float:
    return float(value) / 1000.0 if unit == "ms" else float(value)


def read_log_text(path: Path) -> str:
    """The log's text (bounded; undecodable bytes replaced: a log is not trusted input)."""
    try:
        size = path.stat().st_size
        if size > MAX_LOG_BYTES:
            raise DataError(f"{path}: {size:,} bytes is not a train log (limit {MAX_LOG_BYTES:,})")
        return path.read_bytes().decode("utf-8", errors="replace")
    except OSError as e:
        raise DataError(f"{path}: cannot read the log: {e.strerror or e}") from None


def parse_log(path: str | Path, text: str | None = None) -> LogFigures:
    """The figures of one train log (see the module docstring for the rules)."""
    path = Path(path)
    text = read_log_text(path) if text is None else text
    out = LogFigures(path)
    timed_score = stop = stop_avg = None
    for no, line in enumerate(text.splitlines(), 1):
        loss, bpb = _VAL_LOSS.search(line), _VAL_BPB.search(line)
        if loss and bpb:
            out.found("val_loss", float(loss.group(1)), no, line)
            out.found("val_bpb", float(bpb.group(1)), no, line)
            t = _EVAL_TIME.search(line)
            if t:
                timed_score = (_seconds(*t.groups()), no, line)
        if (m := _TOTAL_EVAL.search(line)) is not None:
            out.found("eval_time_s", _seconds(*m.groups()), no, line)
        if (m := _TOTAL_SIZE.search(line)) is not None:
            out.found("artifact_bytes", int(m.group(1)), no, line)
        if (m := _CODE_SIZE.search(line)) is not None:
            out.code_bytes = int(m.group(1))
        if (m := _STOP.search(line)) is not None:
            stop = (int(m.group(1)), no, line)
            t = _STOP_TIME.search(line)
            if t and int(m.group(1)) > 0:
                stop_avg = (round(int(t.group(1)) / int(m.group(1)), 2), no, line)
        elif stop is None and (m := _STEP.match(line.strip())) is not None:
            out.found("steps", int(m.group(1)), no, line)
        if (m := _STEP_AVG.search(line)) is not None:
            out.found("step_avg_ms", float(m.group(1)), no, line)
        if out.seed is None and (m := _SEED_LINE.match(line)) is not None:
            out.seed = int(m.group(1))
    if stop is not None:
        out.found("steps", *stop)
    if "step_avg_ms" not in out.figures and stop_avg is not None:
        out.found("step_avg_ms", *stop_avg)
    if "eval_time_s" not in out.figures and timed_score is not None:
        out.found("eval_time_s", *timed_score)
    if out.seed is None and (m := _SEED_NAME.search(path.name)) is not None:
        out.seed = int(m.group(1))
    return out

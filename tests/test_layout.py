"""The dependency direction of design.md: artifact/ (the packaging core) imports nothing from
train/ or analysis/ — except run.py's source (`shipped_run.py`), which runs inside a submission
beside the train/ modules it ships with."""

import re
from pathlib import Path

ARTIFACT = Path(__file__).resolve().parents[1] / "artifact"


def test_artifact_does_not_import_train_or_analysis():
    pattern = re.compile(r"^\s*(from|import)\s+(train|analysis)\b", re.M)
    offenders = [p.name for p in sorted(ARTIFACT.glob("*.py"))
                 if p.name != "shipped_run.py" and pattern.search(p.read_text())]
    assert offenders == []

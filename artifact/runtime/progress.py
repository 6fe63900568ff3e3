"""How long work reports how far it has come, without drawing anything.

Library functions take `progress`: None (silent) or a callable `progress(done, total, note)`;
the command line (analysis/) turns the calls into progress bars. `Reporter` throttles the calls.
"""

from __future__ import annotations

import time
from typing import Callable

Progress = Callable[[int, int, str], None]
PROGRESS_EVERY_S = 2.0


class Reporter:
    """Hands `progress` a report at most every PROGRESS_EVERY_S seconds, and at the end. `note`
    is a callable so that what it costs (a device sync for a running bpb) is paid only then."""

    def __init__(self, progress: Progress | None, total: int, label: str = ""):
        self.progress, self.total, self.label = progress, total, label
        self.last = time.perf_counter()

    def __call__(self, done: int, note: Callable[[], str] = str) -> None:
        if self.progress is None:
            return
        now = time.perf_counter()
        if now - self.last >= PROGRESS_EVERY_S or done >= self.total:
            self.last = now
            self.progress(done, self.total, f"{self.label} {note()}".strip())

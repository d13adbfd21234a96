"""Showing an ingest run's progress while it runs: a live line on a terminal, a log line now and then otherwise."""
from __future__ import annotations

import sys
import time
from typing import Any

from logmesh.ingest.summary import IngestSummary


class Progress:
    """A rich live line on a terminal, a plain log line every few seconds otherwise."""

    def __init__(self, enabled: bool | None, summary: IngestSummary, every_s: float = 5.0) -> None:
        self.summary = summary
        self.tty = sys.stderr.isatty() if enabled is None else enabled and sys.stderr.isatty()
        self.plain = enabled is not False and not self.tty
        self.every_s = every_s
        self._start = self._last = time.monotonic()
        self._rich: Any = None
        if self.tty:
            from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
            self._rich = Progress(SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn(),
                                  transient=False, refresh_per_second=4)
            self._task = self._rich.add_task("")
            self._rich.start()

    def _line(self, records: int, delivered: int, failed: int) -> str:
        elapsed = max(time.monotonic() - self._start, 1e-9)
        return (f"{records:,} lines  {records / elapsed:,.0f} lines/s  delivered {delivered:,}  "
                f"failed {failed:,}  unparsed {self.summary.unparsed:,}")

    def update(self, records: int, delivered: int, failed: int) -> None:
        now = time.monotonic()
        if self._rich is not None:
            self._rich.update(self._task, description=self._line(records, delivered, failed))
        elif self.plain and now - self._last >= self.every_s:
            self._last = now
            print(f"ingest: {self._line(records, delivered, failed)}", file=sys.stderr, flush=True)

    def close(self) -> None:
        if self._rich is not None:
            self._rich.stop()

"""What one ingest run did: counts, bytes, time, the first error; printed at the end, or as JSON."""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any


@dataclass
class IngestSummary:
    """What one ingest run did. `produced` counts lines the broker acknowledged."""

    topic: str
    bootstrap: str
    lines_read: int = 0
    produced: int = 0
    failed: int = 0
    unparsed: int = 0
    blank: int = 0
    bad_bytes: int = 0
    bytes: int = 0
    seconds: float = 0.0
    interrupted: bool = False
    first_error: str = ""

    @property
    def lines_per_s(self) -> float:
        return self.produced / self.seconds if self.seconds > 0 else 0.0

    @property
    def mb_per_s(self) -> float:
        return self.bytes / 1e6 / self.seconds if self.seconds > 0 else 0.0

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "lines_per_s": round(self.lines_per_s, 1), "mb_per_s": round(self.mb_per_s, 3)}

    def __str__(self) -> str:
        s = (f"read {self.lines_read:,} lines, produced {self.produced:,} to {self.topic} "
             f"({self.failed:,} failed, {self.unparsed:,} unparsed) in {self.seconds:.1f} s: "
             f"{self.lines_per_s:,.0f} lines/s, {self.mb_per_s:.1f} MB/s")
        if self.bad_bytes:
            s += f"; {self.bad_bytes:,} bad bytes replaced"
        if self.first_error:
            s += f"; first error: {self.first_error}"
        return s + (" (interrupted)" if self.interrupted else "")

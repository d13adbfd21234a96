"""What differs between log families, behind one small Protocol (issue 16).

A family turns a raw line into a `Parsed`: the `LineRecord` a detector sees (time, level, component,
message, session keys, template id, masked shape) and, apart from it, the line's ground-truth `label`
when the family carries one in the line itself (BGL's first column). A detector is handed only the
record; the label exists for evaluation, so it cannot leak into a verdict.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from typing import Protocol, runtime_checkable

UNKNOWN_TEMPLATE = "unknown"


@dataclasses.dataclass(frozen=True)
class LineRecord:
    """What a detector may read of one line. Never a label."""
    line_number: int
    time: float | None       # epoch seconds (UTC); None when the line has no readable time
    level: str
    component: str
    message: str
    session_keys: tuple[str, ...]  # HDFS: block ids; BGL: the node id
    template_id: str
    shape: str               # masked text: what the line members and the embedder see
    parsed: bool = True      # False: the line did not match the family's format (kept, counted)


@dataclasses.dataclass(frozen=True)
class Parsed:
    record: LineRecord
    #: ground truth carried by the line itself (BGL: None for a normal line "-", else the alert category);
    #: None for families whose labels live elsewhere (HDFS: the block-label CSV)
    label: str | None = None


@runtime_checkable
class LogFamily(Protocol):
    #: "hdfs", "bgl", ...: the value of `--format`
    name: str
    #: how a session is keyed, for people: "block id", "node id (and fixed line windows)"
    session_key: str

    def parse(self, text: str, line_number: int = 0) -> Parsed:
        """One raw line (without its line ending) -> the detector's record and, apart, its label."""

    def looks_like(self, lines: Iterable[str]) -> float:
        """Share of these first lines of a file that are in this family's format (0..1)."""

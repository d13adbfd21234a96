"""BGL (BlueGene/L, loghub / USENIX CFDR) as a log family.

`LABEL EPOCH DATE NODE TIMESTAMP NODE_REPEAT TYPE COMPONENT LEVEL MESSAGE...`: the first column is the
ground truth (`-` normal, else an alert category such as KERNDTLB). `parse` splits it off before anything
else, into `Parsed.label`; the `LineRecord` a detector reads has no trace of it. Sessions are keyed by the
node id (`R02-M1-N0-C:J12-U11`) and, for evaluation, by fixed line windows. Templates: loghub's 377
(ingest/bgl_templates.py) when given, "unknown" otherwise (Drain3 names those in training).
"""
from __future__ import annotations

import re
from collections.abc import Iterable

from logmesh.ingest.bgl_templates import BglTemplates
from logmesh.ingest.families.base import UNKNOWN_TEMPLATE, LineRecord, Parsed
from logmesh.ingest.masking import line_shape

# after the label: epoch, date, node, timestamp, node again, type, component, level, message (may be empty)
_REST = re.compile(r"^(\d+) (\d{4}\.\d\d\.\d\d) (\S+) (\d{4}-\d\d-\d\d-\d\d\.\d\d\.\d\d\.\d+) (\S+) (\S+) (\S+) (\S+) ?(.*)$",
                   re.S)
NORMAL = "-"


class BglFamily:
    name = "bgl"
    session_key = "node id (and fixed line windows)"

    def __init__(self, templates: BglTemplates | None = None) -> None:
        self.templates = templates

    def parse(self, text: str, line_number: int = 0) -> Parsed:
        text = text.rstrip("\r\n")
        label, _, rest = text.partition(" ")
        truth = None if label == NORMAL else label
        m = _REST.match(rest)
        if m is None:  # kept whole (without its label) and counted by the caller
            return Parsed(LineRecord(line_number, None, "", "", rest, (), UNKNOWN_TEMPLATE, line_shape("", rest),
                                     parsed=False), truth)
        epoch, _date, node, _stamp, _node2, _kind, component, level, message = m.groups()
        template = (self.templates.match(message) if self.templates else None) or UNKNOWN_TEMPLATE
        record = LineRecord(line_number, float(epoch), level, component, message, (node,), template,
                            line_shape(f"{component} {level}", message))
        return Parsed(record, truth)

    def looks_like(self, lines: Iterable[str]) -> float:
        lines = [l for l in lines if l.strip()]
        return sum(_REST.match(l.rstrip("\r\n").partition(" ")[2]) is not None for l in lines) / len(lines) if lines else 0.0

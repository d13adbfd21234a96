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
from logmesh.v1 import log_record_pb2 as lr

# after the label: epoch, date, node, timestamp, node again, type, component, level, message (may be empty)
_REST = re.compile(r"^(\d+) (\d{4}\.\d\d\.\d\d) (\S+) (\d{4}-\d\d-\d\d-\d\d\.\d\d\.\d\d\.\d+) (\S+) (\S+) (\S+) (\S+) ?(.*)$",
                   re.S)
NORMAL = "-"
# BGL prints registers, chip ids and addresses as bare hex words (`ffffffff`, `0b0f8cd4`, `FF:F2:9F:16:E5:54`) and
# names programs and folders by path; the common masking (ingest/masking.py) leaves those half-masked
# (`<NUM>b<NUM>f<NUM>cd<NUM>`), so every register dump and every user's program was a shape of its own: 991 shapes in
# BGL_16k's 16,000 lines, each one embedded and scored cold. Masked here they are the same kind of line.
_BARE_HEX = re.compile(r"\b(?:[0-9A-Fa-f]{2}:){3,}[0-9A-Fa-f]{1,2}\b"          # chip ids FF:F2:9F:...
                       r"|(?<![\w<])(?=[0-9A-Fa-f]*[A-Fa-f])(?=[0-9A-Fa-f]*\d)[0-9A-Fa-f]{4,}(?![\w>])"  # 0b0f8cd4
                       r"|(?<![\w<])[A-Fa-f]{8}(?![\w>])")                      # ffffffff
_PATH = re.compile(r"(?<![\w<.])/[^\s:,()]+")  # an absolute path, up to a separator


def message_shape(head: str, message: str) -> str:
    """The masked text BGL's line models read: `COMPONENT LEVEL: message` with hex words and paths masked too."""
    return line_shape(head, _PATH.sub("<PATH>", _BARE_HEX.sub("<HEX>", message)))
_LEVELS = {"INFO": lr.LEVEL_INFO, "WARNING": lr.LEVEL_WARN, "ERROR": lr.LEVEL_ERROR, "SEVERE": lr.LEVEL_ERROR,
           "FATAL": lr.LEVEL_FATAL, "FAILURE": lr.LEVEL_FATAL}  # the enum's nearest; level_name keeps the printed one


class BglFamily:
    name = "bgl"
    session_key = "node id (and fixed line windows)"

    def __init__(self, templates: BglTemplates | None = None) -> None:
        self.templates = templates

    def parse(self, text: str, line_number: int = 0) -> Parsed:
        """A line with its label column (loghub's files) or without it (a live BGL log: it starts with the
        epoch): the label, when there is one, goes to `Parsed.label` only."""
        text = text.rstrip("\r\n")
        if text[:1].isdigit() and _REST.match(text):  # no label column
            label, rest = NORMAL, text
        else:
            label, _, rest = text.partition(" ")
        truth = None if label == NORMAL else label
        m = _REST.match(rest)
        if m is None:  # kept whole (without its label) and counted by the caller
            return Parsed(LineRecord(line_number, None, "", "", rest, (), UNKNOWN_TEMPLATE, message_shape("", rest),
                                     parsed=False), truth)
        epoch, _date, node, _stamp, _node2, _kind, component, level, message = m.groups()
        template = (self.templates.match(message) if self.templates else None) or UNKNOWN_TEMPLATE
        record = LineRecord(line_number, float(epoch), level, component, message, (node,), template,
                            message_shape(f"{component} {level}", message))
        return Parsed(record, truth)

    def looks_like(self, lines: Iterable[str]) -> float:
        lines = [l for l in lines if l.strip()]
        return sum(self.parse(l).record.parsed for l in lines) / len(lines) if lines else 0.0

    def record(self, text: str, source: str = "", line_number: int = 0, labels: bool = False) -> lr.LogRecord:
        """One raw line as the LogRecord ingest produces and the scorer reads: family "bgl", the node id as its
        session key (block_ids), the printed level in level_name. The line's label goes into label and
        alert_category only with `labels` (replay and evaluation); detectors never read those fields."""
        parsed = self.parse(text, line_number)
        r = parsed.record
        record = lr.LogRecord(id=f"{source}:{line_number}" if source else f"line:{line_number}", source=source,
                              line_number=line_number, family=self.name, component=r.component,
                              message=r.message, template_id=r.template_id, level_name=r.level,
                              level=_LEVELS.get(r.level, lr.LEVEL_UNSPECIFIED))
        record.block_ids.extend(r.session_keys)
        if r.time is not None:
            record.event_time.FromNanoseconds(int(r.time * 1e9))
        if labels:
            record.label = lr.LABEL_ANOMALY if parsed.label else lr.LABEL_NORMAL
            record.alert_category = parsed.label or ""
        return record


def record_shape(record: lr.LogRecord) -> str:
    """The masked text BGL's line models read (as in training: component and printed level, then the message)."""
    return message_shape(f"{record.component} {record.level_name}" if record.component else "", record.message)

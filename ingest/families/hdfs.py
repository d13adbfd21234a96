"""HDFS_v1 as a log family: a thin wrapper over ingest/hdfs.py (its parsing), ingest/templates.py (loghub's
E1..E30) and ingest/labels.py (labels are per block, in anomaly_label.csv, never in the line)."""
from __future__ import annotations

import datetime as dt
from collections.abc import Iterable

from logmesh.ingest.families.base import UNKNOWN_TEMPLATE, LineRecord, Parsed
from logmesh.ingest.hdfs import block_ids, match_line
from logmesh.ingest.labels import read_block_labels
from logmesh.ingest.masking import line_shape
from logmesh.ingest.templates import match_template


class HdfsFamily:
    name = "hdfs"
    session_key = "block id"

    def parse(self, text: str, line_number: int = 0) -> Parsed:
        text = text.rstrip("\r\n")
        m = match_line(text)
        if m is None:
            return Parsed(LineRecord(line_number, None, "", "", text, tuple(block_ids(text)), UNKNOWN_TEMPLATE,
                                     line_shape("", text), parsed=False))
        date, clock, _pid, level, component, message = m.groups()
        try:
            when = dt.datetime.strptime(date + clock, "%y%m%d%H%M%S").replace(tzinfo=dt.timezone.utc).timestamp()
        except ValueError:
            when = None
        return Parsed(LineRecord(line_number, when, level, component, message, tuple(block_ids(message)),
                                 match_template(message) or UNKNOWN_TEMPLATE, line_shape(component, message)))

    def looks_like(self, lines: Iterable[str]) -> float:
        lines = [l for l in lines if l.strip()]
        return sum(match_line(l.rstrip("\r\n")) is not None for l in lines) / len(lines) if lines else 0.0

    @staticmethod
    def labels(path) -> dict[str, int]:
        """{block id: 0 normal / 1 anomaly}, from loghub's anomaly_label.csv (the one label reader)."""
        return read_block_labels(path)

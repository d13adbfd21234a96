"""Parsing raw loghub HDFS_v1 lines into LogRecords.

A line looks like ``081109 203518 143 INFO dfs.DataNode$DataXceiver: Receiving block blk_-16... src: ...``:
date (yymmdd), time (hhmmss), pid, level, component, then the message.
"""
from __future__ import annotations

import datetime as dt
import re

from logmesh.ingest.templates import match_template
from logmesh.v1 import log_record_pb2 as lr

_LINE = re.compile(r"^(\d{6}) (\d{6}) (\d+) ([A-Z]+) ([^\s:]+): ?(.*)$", re.S)
_BLOCK_ID = re.compile(r"blk_-?\d+")
_LEVELS = {
    "DEBUG": lr.LEVEL_DEBUG, "INFO": lr.LEVEL_INFO, "WARN": lr.LEVEL_WARN, "WARNING": lr.LEVEL_WARN,
    "ERROR": lr.LEVEL_ERROR, "FATAL": lr.LEVEL_FATAL,
}
UNKNOWN_TEMPLATE = "unknown"


def block_ids(text: str) -> list[str]:
    """Every HDFS block id named in `text`, in order, without repeats."""
    return list(dict.fromkeys(_BLOCK_ID.findall(text)))


def match_line(line: str) -> re.Match | None:
    """The fields of a line in HDFS format (groups: date, time, pid, level, component, message), else None:
    what parse_line reads, for readers that want speed more than a LogRecord (training's fast path)."""
    return _LINE.match(line)


def parse_line(line: str, source: str = "", line_number: int = 0) -> lr.LogRecord:
    """Parses one raw HDFS line. A line that does not parse keeps its whole text as the message and
    template "unknown", so nothing is lost; callers decide whether that is an error."""
    line = line.rstrip("\r\n")
    record = lr.LogRecord(id=f"{source}:{line_number}" if source else f"line:{line_number}",
                          source=source, line_number=line_number)
    m = _LINE.match(line)
    if m is None:
        record.message = line
        record.block_ids.extend(block_ids(line))
        record.template_id = UNKNOWN_TEMPLATE
        return record
    date, time, pid, level, component, message = m.groups()
    try:
        when = dt.datetime.strptime(date + time, "%y%m%d%H%M%S").replace(tzinfo=dt.timezone.utc)
        record.event_time.FromDatetime(when)
    except ValueError:
        pass  # an impossible date (e.g. month 13) leaves event_time unset rather than guessing
    record.pid = int(pid) if int(pid) < 2**32 else 0
    record.level = _LEVELS.get(level, lr.LEVEL_UNSPECIFIED)
    record.component = component
    record.message = message
    record.block_ids.extend(block_ids(message))
    record.template_id = match_template(message) or UNKNOWN_TEMPLATE
    return record


def is_parsed(record: lr.LogRecord) -> bool:
    """True when the record came from a line in HDFS format (it has a component)."""
    return bool(record.component)

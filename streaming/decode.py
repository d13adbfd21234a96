"""Decoding Kafka values into LogRecords; what does not decode is kept, byte for byte, for the DLQ."""
from __future__ import annotations

import dataclasses

from google.protobuf import unknown_fields
from google.protobuf.message import DecodeError

from logmesh.v1 import log_record_pb2

MAX_VALUE_BYTES = 1 << 20  # a log line is < 64 KiB; a megabyte is something else


@dataclasses.dataclass(frozen=True)
class KafkaRow:
    """One consumed message with its coordinates."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    traceparent: str | None = None  # its W3C trace context from the Kafka headers, when the job traces

    @property
    def coordinates(self) -> str:
        """Data-derived identity of the message: the id of its Qdrant line point."""
        return f"{self.topic}/{self.partition}/{self.offset}"


@dataclasses.dataclass(frozen=True)
class Rejected:
    row: KafkaRow
    reason: str


def decode(row: KafkaRow) -> log_record_pb2.LogRecord | Rejected:
    """The row's LogRecord, or why it is not one."""
    value = row.value
    if not value:
        return Rejected(row, "empty value: not a LogRecord")
    if len(value) > MAX_VALUE_BYTES:
        return Rejected(row, f"value is {len(value)} bytes; a LogRecord is at most {MAX_VALUE_BYTES}")
    try:
        record = log_record_pb2.LogRecord.FromString(value)
    except DecodeError as exc:
        return Rejected(row, f"not a LogRecord: {exc}")
    if len(unknown_fields.UnknownFieldSet(record)):
        return Rejected(row, "not a LogRecord: it carries fields LogRecord does not have (another message type?)")
    if not record.id or not (record.message or (record.family == "bgl" and record.component)):  # BGL: may print none
        return Rejected(row, "LogRecord without id or message: nothing to score")
    return record

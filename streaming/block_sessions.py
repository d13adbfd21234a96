"""Per-block state in Spark: each block's events so far, kept by `applyInPandasWithState`.

Grouped by the Kafka key (the block id, set by `logmesh ingest`), the state function passes every
message through to the sink unchanged and adds one summary row per block that changed in the
micro-batch: its events in log order and whether it is now closed. A block closes when it has been
quiet for `quiet_ms` of processing time; the timeout fires even in a micro-batch without new data.
Spark checkpoints the state, so a restart resumes each block's story where it was.
"""
from __future__ import annotations

from typing import Iterator

import pandas as pd

LINE, BLOCK = "line", "block"
NO_BLOCK = ""  # messages without a key (or not LogRecords) share this group and keep no state

OUTPUT_SCHEMA = ("kind string, topic string, partition int, offset long, key binary, value binary, "
                 "block_id string, events array<string>, closed boolean, first_time string, last_time string")
# events as one space-joined string: pyspark 4.3's worker fails to read an array type back from the
# state schema (KeyError 'elementType' in ArrayType.fromJson)
STATE_SCHEMA = "events string, first_time string, last_time string"


def _decoded(value: bytes | None) -> tuple[str, str] | None:
    """(template id, event time) of a LogRecord value, or None when it is not one (the sink DLQs it)."""
    from google.protobuf.message import DecodeError

    from logmesh.v1 import log_record_pb2
    if not value:
        return None
    try:
        record = log_record_pb2.LogRecord.FromString(value)
    except DecodeError:
        return None
    if not record.id or not record.message:
        return None
    return record.template_id, record.event_time.ToJsonString() if record.HasField("event_time") else ""


def track_blocks(quiet_ms: int):  # type: ignore[no-untyped-def]
    """The state function for `applyInPandasWithState`, closing blocks after `quiet_ms` of quiet."""

    def update(key: tuple, frames: Iterator[pd.DataFrame], state) -> Iterator[pd.DataFrame]:  # type: ignore[no-untyped-def]
        block_id = key[0] or NO_BLOCK
        if state.hasTimedOut:
            events, first, last = state.get
            state.remove()
            yield _summary(block_id, events.split(), True, first, last)
            return
        rows = pd.concat(list(frames), ignore_index=True).sort_values(["partition", "offset"])
        lines = rows.assign(kind=LINE, block_id=block_id, events=None, closed=None, first_time=None, last_time=None)
        yield lines[["kind", "topic", "partition", "offset", "key", "value", "block_id", "events", "closed",
                     "first_time", "last_time"]]
        if block_id == NO_BLOCK:
            return
        events, first, last = (state.get[0].split(), state.get[1], state.get[2]) if state.exists else ([], "", "")
        for value in rows["value"]:
            decoded = _decoded(value)
            if decoded is None:
                continue
            template, when = decoded
            events.append(template)
            if when:
                first = min(first, when) if first else when
                last = max(last, when) if last else when
        if not events:
            return
        state.update((" ".join(events), first, last))
        state.setTimeoutDuration(quiet_ms)
        yield _summary(block_id, events, False, first, last)

    return update


def _summary(block_id: str, events: list[str], closed: bool, first: str, last: str) -> pd.DataFrame:
    return pd.DataFrame([{"kind": BLOCK, "topic": None, "partition": None, "offset": None, "key": None,
                          "value": None, "block_id": block_id, "events": events, "closed": closed,
                          "first_time": first, "last_time": last}])


def with_block_sessions(source, quiet_ms: int):  # type: ignore[no-untyped-def]
    """Kafka rows -> line rows plus block summary rows, keyed and stateful per block."""
    from pyspark.sql import functions as F
    keyed = source.select(F.coalesce(F.col("key").cast("string"), F.lit(NO_BLOCK)).alias("block_key"),
                          "topic", "partition", "offset", "key", "value")
    return keyed.groupBy("block_key").applyInPandasWithState(
        track_blocks(quiet_ms), OUTPUT_SCHEMA, STATE_SCHEMA, "Update", "ProcessingTimeTimeout")

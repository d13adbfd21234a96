"""Per-block state in Spark: each block's events so far, kept by `applyInPandasWithState`.

The stream is the union of two branches over the same Kafka source: every message passes through
unchanged as a "line" row for the sink, and a stateful branch keyed by the Kafka key (the block id, set
by `logmesh ingest`) keeps each block's events and emits one "block" summary row per block that changed
in the micro-batch, or closed. A block closes after `quiet_ms` of processing time without a new line;
the timeout fires even in a micro-batch without new data. Spark checkpoints the state, so a restart
resumes each block's story where it was.

The stateful branch sees only (block, template id, event time), decoded once per Arrow batch before the
shuffle: the state function runs once per block, and keeping its input small keeps it cheap.
"""
from __future__ import annotations

from typing import Iterator

import pandas as pd

LINE, BLOCK = "line", "block"
OUTPUT_SCHEMA = ("kind string, topic string, partition int, offset long, key binary, value binary, "
                 "block_id string, events array<string>, closed boolean, first_time string, last_time string")
SUMMARY_SCHEMA = "block_id string, events array<string>, closed boolean, first_time string, last_time string"
# events as one space-joined string: pyspark 4.3's worker fails to read an array type back from the
# state schema (KeyError 'elementType' in ArrayType.fromJson)
STATE_SCHEMA = "events string, first_time string, last_time string"


def _template_and_time(values: pd.Series) -> pd.DataFrame:
    """(template id, event time) per Kafka value; nulls for values that are not LogRecords (the sink DLQs those)."""
    from google.protobuf.message import DecodeError

    from logmesh.v1 import log_record_pb2
    templates, times = [], []
    for value in values:
        template = when = None
        if value:
            try:
                record = log_record_pb2.LogRecord.FromString(value)
                if record.id and record.message:
                    template = record.template_id
                    when = record.event_time.ToJsonString() if record.HasField("event_time") else ""
            except DecodeError:
                pass
        templates.append(template)
        times.append(when)
    return pd.DataFrame({"template": templates, "event_time": times})


def track_blocks(quiet_ms: int):  # type: ignore[no-untyped-def]
    """The state function for `applyInPandasWithState`, closing blocks after `quiet_ms` of quiet."""

    def update(key: tuple, frames: Iterator[pd.DataFrame], state) -> Iterator[pd.DataFrame]:  # type: ignore[no-untyped-def]
        block_id = key[0]
        if state.hasTimedOut:
            events, first, last = state.get
            state.remove()
            yield _summary(block_id, events.split(), True, first, last)
            return
        rows = pd.concat(list(frames), ignore_index=True).sort_values(["partition", "offset"])
        events, first, last = (state.get[0].split(), state.get[1], state.get[2]) if state.exists else ([], "", "")
        events.extend(rows["template"])
        times = [t for t in rows["event_time"] if t]
        if times:
            first = min([first, *times]) if first else min(times)
            last = max([last, *times]) if last else max(times)
        state.update((" ".join(events), first, last))
        state.setTimeoutDuration(quiet_ms)
        yield _summary(block_id, events, False, first, last)

    return update


def _summary(block_id: str, events: list[str], closed: bool, first: str, last: str) -> pd.DataFrame:
    return pd.DataFrame([{"block_id": block_id, "events": events, "closed": closed,
                          "first_time": first, "last_time": last}])


def with_block_sessions(source, quiet_ms: int):  # type: ignore[no-untyped-def]
    """Kafka rows -> line rows plus block summary rows, keyed and stateful per block."""
    from pyspark.sql import functions as F
    from pyspark.sql.functions import pandas_udf

    decode = pandas_udf(_template_and_time, "template string, event_time string")
    empty = {c: F.lit(None).cast(t) for c, t in (("block_id", "string"), ("events", "array<string>"),
                                                  ("closed", "boolean"), ("first_time", "string"),
                                                  ("last_time", "string"))}
    lines = source.select(F.lit(LINE).alias("kind"), "topic", "partition", "offset", "key", "value",
                          *(v.alias(c) for c, v in empty.items()))
    facts = (source.select(F.col("key").cast("string").alias("block_id"), "partition", "offset",
                           decode("value").alias("d"))
             .where(F.col("block_id").isNotNull() & F.col("d.template").isNotNull())
             .select("block_id", "partition", "offset", "d.template", "d.event_time"))
    summaries = facts.groupBy("block_id").applyInPandasWithState(
        track_blocks(quiet_ms), SUMMARY_SCHEMA, STATE_SCHEMA, "Update", "ProcessingTimeTimeout")
    blocks = summaries.select(F.lit(BLOCK).alias("kind"), *(F.lit(None).cast(t).alias(c) for c, t in (
        ("topic", "string"), ("partition", "int"), ("offset", "long"), ("key", "binary"), ("value", "binary"))),
        "block_id", "events", "closed", "first_time", "last_time")
    return lines.unionByName(blocks)

"""Per-block state in Spark: each block's events so far, kept by `applyInPandasWithState`.

Every Kafka message reaches the sink unchanged as a "line" row, and the block state (the block is the
Kafka key, set by `logmesh ingest`) adds one "block" summary row per block that changed in the
micro-batch, or ended. Quiet is relative to the stream: a block closes as complete only once the
stream went on for `quiet_ms` after its last line, on one of two clocks:

- processing (the default): the stream's clock is the newest Kafka record time the job has read (a
  watermark on the messages' `timestamp`, the time `logmesh ingest` produced them). A block closes
  (rule "quiet", judged as a whole session) once lines produced `quiet_ms` after its last line have
  been read. When the whole input stops (a replay ended, ingest is down) that clock stands still and
  no block closes as complete: a write pipeline the end of a replay cut off is not a session with
  missing steps. If the clock stands still for `stall_ms` of wall time, the blocks still open are
  finalized as cut prefixes (rule "stream-stopped", closed=False: judged without missing-step
  evidence). They stay in the state: if the stream comes back, their story goes on, and they can
  close as complete once the stream has run `quiet_ms` past its return.
- event time: `quiet_ms` of log time after its last line's timestamp, once the stream's watermark (the
  newest line's time less `lateness_ms`) has passed it. Verdicts are the same at any replay speed, and
  blocks still active at the end of a replay stay open until newer lines move the watermark. Lines later
  than the watermark are still scored, but Spark drops them from the block state; lines without a
  timestamp cannot be placed and are left out of it.

Each summary says which rule ended the block (`ended`: "" while open, "quiet", "stream-stopped"). On
the processing clock the timers run on wall time (ProcessingTimeTimeout), so Spark drops no late rows
before the state function (it filters by the watermark only for EventTimeTimeout); they fire in
micro-batches without new data too. Spark checkpoints the state and the watermark, so a restart resumes
each block's story where it was. The state is keyed by a bucket of blocks, so the state function runs a
few times per micro-batch rather than once per block.

Two plans (PLANS), fixed per checkpoint (Spark refuses to restart a checkpoint with a different number
of sources, and the state is keyed by the bucket count):
- single-pass (processing clock, new checkpoints): one Kafka read; every message goes through the state
  function, which decodes it, extends its block and passes it on as a line row. One Python stage per
  micro-batch.
- two-branch (the event clock, and checkpoints started before the single pass): the union of a
  stateless branch of line rows and a stateful branch that sees only (block, template, event time,
  record time), decoded by a pandas UDF before the shuffle. The event clock needs it: with a watermark
  and EventTimeTimeout Spark drops rows behind it before the state function, and those lines must still
  reach the sink. Two Kafka reads and two Python stages per micro-batch: at 2,000 lines/s, 437-523 ms per
  micro-batch against 242-337 ms for the single pass (Spark's part alone; docs/benchmarks.md, "One pass
  over Kafka").

Both Python functions freeze their worker's heap once (_freeze_worker_heap): pyspark's per-task
`gc.collect()` was half of the job's Python CPU.
"""
from __future__ import annotations

import datetime as dt
import gc
import json
import os
from typing import Iterator

import pandas as pd

LINE, BLOCK = "line", "block"
# Which rule ended a block (the summaries' `ended`; "" while it is open).
QUIET = "quiet"  # the stream went on for quiet_ms without the block: its whole story, judged closed
STREAM_STOPPED = "stream-stopped"  # the stream's clock stood still for stall_ms: judged as a cut prefix
OUTPUT_SCHEMA = ("kind string, topic string, partition int, offset long, key binary, value binary, "
                 "block_id string, events array<string>, closed boolean, first_time string, last_time string, "
                 "ended string")
OUTPUT_COLUMNS = [column.split()[0] for column in OUTPUT_SCHEMA.split(", ")]
SUMMARY_SCHEMA = ("block_id string, events array<string>, closed boolean, first_time string, last_time string, "
                  "ended string")
SUMMARY_COLUMNS = [column.split()[0] for column in SUMMARY_SCHEMA.split(", ")]
# one JSON string: pyspark 4.3's worker fails to read an array type back from the state schema
# (KeyError 'elementType' in ArrayType.fromJson). See _load for what it holds.
STATE_SCHEMA = "blocks string"
CLOCKS = ("processing", "event")
PLANS = ("single-pass", "two-branch")
# Spark calls the state function once per key and micro-batch, and that call (an Arrow stream to a Python
# worker) costs far more than the work inside it; keying by a bucket of blocks instead of the block
# makes it a few dozen calls per micro-batch instead of one per block.
BUCKETS = 32
# The single pass (below) runs the state function on every message, so each call also carries the lines
# and the fewer calls the better: at 2,000 lines/s (Spark's plan alone, no sink, four rounds), 32 buckets
# gave 318-392 ms per micro-batch, 2 buckets 242-337 ms (docs/benchmarks.md, "One pass over Kafka").
# Fixed per checkpoint, like BUCKETS: the state is keyed by it.
SINGLE_PASS_BUCKETS = 2
_heap_frozen = False


def _freeze_worker_heap() -> None:
    """Once per pyspark worker process: move what is alive now (pyspark, pandas, pyarrow, protobuf, all
    imported by the time a UDF runs) into the GC's permanent generation.

    A reused pyspark worker runs `gc.collect()` after every task (pyspark/daemon.py). With those modules
    loaded a full collection walks ~77k objects, 70-100 ms on this box, and a micro-batch runs 6 Python
    tasks (4 decode, 2 state), empty ones included: py-spy put 48% of the job's Python samples on that one
    line. Frozen objects are skipped, so the collection sees only what the task left behind; refcounting
    still frees frozen objects. SPARK_REUSE_WORKER is set by Spark exactly when the daemon reuses workers
    (and so collects after each task); elsewhere (the driver, tests calling these functions) nothing is
    frozen."""
    global _heap_frozen
    if not _heap_frozen and os.environ.get("SPARK_REUSE_WORKER"):
        gc.freeze()
        _heap_frozen = True


def _template_and_time(values: pd.Series) -> pd.DataFrame:
    """(template id, event time, block) per Kafka value; nulls for values that are not LogRecords (the sink
    DLQs those). The block is the record's first block id, None for a line that names no block: ingest
    keys such a line by its own record id, and a one-line "block" of it (a DataNode's GC warning, an OOM)
    must not be judged as a session."""
    from google.protobuf.message import DecodeError

    from logmesh.v1 import log_record_pb2
    _freeze_worker_heap()
    templates, times, blocks = [], [], []
    for value in values:
        template = when = block = None
        if value:
            try:
                record = log_record_pb2.LogRecord.FromString(value)
                if record.id and record.message:
                    template = record.template_id
                    when = record.event_time.ToJsonString() if record.HasField("event_time") else ""
                    block = record.block_ids[0] if record.block_ids else None
            except DecodeError:
                pass
        templates.append(template)
        times.append(when)
        blocks.append(block)
    return pd.DataFrame({"template": templates, "event_time": times, "block": blocks})


def _epoch_ms(when: str) -> int:
    """Milliseconds since the epoch of an RFC 3339 time as LogRecord.event_time.ToJsonString() writes it."""
    return int(dt.datetime.fromisoformat(when).timestamp() * 1000)


def _load(state) -> tuple[dict[str, list], list | None]:  # type: ignore[no-untyped-def]
    """The bucket's blocks and its view of the stream's clock from the state's JSON.

    Blocks: block id -> [events, first time, last time, its last line on the closing clock (ms), the
    stream clock when it was finalized as cut (None: not cut)]. Clock (processing clock only): [the
    stream clock this bucket last saw, the wall time it first saw it], to tell a stopped stream. State
    written before the stream clock was kept is a bare {block id: [events, first, last, seen]}."""
    if not state.exists:
        return {}, None
    data = json.loads(state.get[0])
    if isinstance(data.get("v"), int):
        return data["blocks"], data.get("clock")
    return {b: [*entry[:4], None] for b, entry in data.items()}, None


def _store(state, blocks: dict[str, list], clock: list | None) -> None:  # type: ignore[no-untyped-def]
    state.update((json.dumps({"v": 2, "blocks": blocks, "clock": clock}),))


def _close_and_report(blocks: dict[str, list], changed: set[str], now: int, quiet_ms: int, state,  # type: ignore[no-untyped-def]
                      event_time: bool, stream_ms: int = 0, stall_ms: int | None = None,
                      clock: list | None = None) -> list[tuple]:
    """Ends the bucket's blocks that a rule ends, returns a summary per changed or ended block, and stores
    what stays (with the bucket's next timer).

    Event clock: `now` is the watermark; a block closes when it passed the block's last line by quiet_ms.
    Processing clock: `stream_ms` is the stream's clock (the watermark on the Kafka record time) and
    `now` the wall clock; a block closes when the stream's clock passed its last line by quiet_ms, and
    when that clock has stood still for `stall_ms` of wall time, the open blocks are finalized as cut."""
    out = []
    if event_time:
        for block_id in list(blocks):
            events, first, last, seen = blocks[block_id][:4]
            if now > 0 and now - seen >= quiet_ms:  # nothing closes before the first watermark (0)
                out.append((block_id, events, True, first, last, QUIET))
                del blocks[block_id]
            elif block_id in changed:
                out.append((block_id, events, False, first, last, ""))
    else:
        if clock is None or stream_ms > clock[0]:
            clock = [stream_ms, now]
        stalled = stall_ms is not None and now - clock[1] >= stall_ms
        for block_id in list(blocks):
            entry = blocks[block_id]
            events, first, last, seen, cut_at = entry
            if cut_at is not None and stream_ms > cut_at:
                # the stream came back: the block is open again, quiet counted from the stream's return
                entry[3] = seen = max(seen, stream_ms)
                entry[4] = cut_at = None
            if stream_ms > 0 and stream_ms - seen >= quiet_ms:
                out.append((block_id, events, True, first, last, QUIET))
                del blocks[block_id]
            elif stalled and cut_at is None:
                out.append((block_id, events, False, first, last, STREAM_STOPPED))
                entry[4] = stream_ms
            elif block_id in changed:
                out.append((block_id, events, False, first, last, ""))
    if blocks:
        _store(state, blocks, None if event_time else clock)
        if event_time:  # fires once the watermark passes the earliest close (always ahead of it here)
            state.setTimeoutTimestamp(min(entry[3] for entry in blocks.values()) + quiet_ms)
        else:  # the wall clock: to see the stream's clock move (or stand still) without data here
            state.setTimeoutDuration(quiet_ms)
    elif state.exists:
        state.remove()
    return out


def _extend(blocks: dict[str, list], rows: pd.DataFrame, now: int, event_time: bool) -> set[str]:
    """Appends each row's template to its block, in (partition, offset) order; returns the blocks touched.
    `rows` has block_id, template, event_time and (processing clock) record_ms, the Kafka record time;
    rows without a block or a template are not in any story."""
    changed: set[str] = set()
    records = rows["record_ms"] if "record_ms" in rows else [now] * len(rows)
    for block_id, template, when, record_ms in zip(rows["block_id"], rows["template"], rows["event_time"], records):
        if block_id is None or template is None:
            continue
        events, first, last, seen, _ = blocks.get(block_id) or ([], "", "", 0, None)
        events.append(template)
        if when:
            first, last = (min(first, when) if first else when), max(last, when)
        seen = (max(seen, _epoch_ms(when)) if when else seen) if event_time else max(seen, int(record_ms))
        blocks[block_id] = [events, first, last, seen, None]
        changed.add(block_id)
    return changed


def track_blocks(quiet_ms: int, clock: str = "processing", stall_ms: int | None = None):  # type: ignore[no-untyped-def]
    """The state function of the two-branch plan, keyed by a bucket of blocks (see BUCKETS); its rows are
    the decoded facts (block, template, event time, record time) of the stateful branch.

    The bucket's state maps each open block to its story (see _load). A call with new lines extends their
    blocks; every call (with data, or when the bucket's timer fires) ends the blocks a rule ends (see
    _close_and_report) and emits one summary per changed or ended block."""
    if clock not in CLOCKS:
        raise ValueError(f"block clock must be one of {CLOCKS}, not {clock!r}")
    event_time = clock == "event"

    def update(key: tuple, frames: Iterator[pd.DataFrame], state) -> Iterator[pd.DataFrame]:  # type: ignore[no-untyped-def]
        _freeze_worker_heap()
        now = state.getCurrentWatermarkMs() if event_time else state.getCurrentProcessingTimeMs()
        stream_ms = 0 if event_time else state.getCurrentWatermarkMs()
        blocks, bucket_clock = _load(state)
        changed: set[str] = set()
        if not state.hasTimedOut:
            rows = pd.concat(list(frames), ignore_index=True).sort_values(["partition", "offset"])
            changed = _extend(blocks, rows, now, event_time)
        out = _close_and_report(blocks, changed, now, quiet_ms, state, event_time, stream_ms, stall_ms, bucket_clock)
        if out:
            yield pd.DataFrame(out, columns=SUMMARY_COLUMNS)

    return update


def track_lines_and_blocks(quiet_ms: int, stall_ms: int | None = None):  # type: ignore[no-untyped-def]
    """The state function of the single-pass plan (processing clock), keyed by a bucket of blocks (see
    SINGLE_PASS_BUCKETS); its rows are the Kafka messages themselves. It decodes each value once, extends
    and ends blocks as `track_blocks` does, and emits every message unchanged as a line row (messages
    that are not LogRecords too: the sink dead-letters them) followed by the block summaries."""
    def update(key: tuple, frames: Iterator[pd.DataFrame], state) -> Iterator[pd.DataFrame]:  # type: ignore[no-untyped-def]
        _freeze_worker_heap()
        now, stream_ms = state.getCurrentProcessingTimeMs(), state.getCurrentWatermarkMs()
        blocks, bucket_clock = _load(state)
        out, changed = [], set()
        if not state.hasTimedOut:
            rows = pd.concat(list(frames), ignore_index=True).sort_values(["partition", "offset"])
            # the story's block is the record's own (the Kafka key chose the bucket; for a line without a
            # block ingest keys it by record id, which is no block)
            decoded = _template_and_time(rows["value"])
            facts = decoded.assign(block_id=[b if b is not None and b == k else None
                                             for b, k in zip(decoded["block"], rows["block_id"])],
                                   record_ms=rows["record_ms"].to_numpy())
            changed = _extend(blocks, facts, now, False)
            out = [(LINE, t, p, o, k, v, None, None, None, None, None, None) for t, p, o, k, v in zip(
                rows["topic"], rows["partition"], rows["offset"], rows["key"], rows["value"])]
        out += [(BLOCK, None, None, None, None, None, *summary) for summary in _close_and_report(
            blocks, changed, now, quiet_ms, state, False, stream_ms, stall_ms, bucket_clock)]
        if out:
            yield pd.DataFrame(out, columns=OUTPUT_COLUMNS, dtype=object)  # object: ints stay ints beside None

    return update


def _record_time(source):  # type: ignore[no-untyped-def]
    """The Kafka rows with the stream's clock: a watermark on each message's record time (the time ingest
    produced it), delay 0, plus that time as epoch ms for the state function (record_ms). The watermark
    column must stay in the rows the state function sees, else Spark hides the watermark from it."""
    from pyspark.sql import functions as F
    return source.withWatermark("timestamp", "0 milliseconds").withColumn("record_ms", F.unix_millis("timestamp"))


def with_block_sessions(source, quiet_ms: int, clock: str = "processing",  # type: ignore[no-untyped-def]
                        lateness_ms: int = 10_000, plan: str = "two-branch", stall_ms: int | None = None):
    """Kafka rows -> line rows plus block summary rows, keyed and stateful per block, ended on `clock`
    (and, on the processing clock, finalized as cut after `stall_ms` of a stopped stream; None: never),
    by one of PLANS (the single pass needs the processing clock)."""
    if plan not in PLANS:
        raise ValueError(f"block plan must be one of {PLANS}, not {plan!r}")
    if plan == "single-pass" and clock != "processing":
        raise ValueError("the single-pass plan closes blocks on the processing clock only: with a watermark, "
                         "Spark drops late rows before the state function, and late lines must still be scored")
    from pyspark.sql import functions as F
    from pyspark.sql.functions import pandas_udf

    if plan == "single-pass":
        rows = _record_time(source).select("topic", "partition", "offset", "key", "value", "timestamp", "record_ms",
                                           F.col("key").cast("string").alias("block_id"))
        buckets = rows.withColumn("bucket", F.pmod(F.hash("block_id"), F.lit(SINGLE_PASS_BUCKETS))).groupBy("bucket")
        return buckets.applyInPandasWithState(track_lines_and_blocks(quiet_ms, stall_ms), OUTPUT_SCHEMA, STATE_SCHEMA,
                                              "Update", "ProcessingTimeTimeout")

    decode = pandas_udf(_template_and_time, "template string, event_time string, block string")
    empty = {c: F.lit(None).cast(t) for c, t in (("block_id", "string"), ("events", "array<string>"),
                                                  ("closed", "boolean"), ("first_time", "string"),
                                                  ("last_time", "string"), ("ended", "string"))}
    lines = source.select(F.lit(LINE).alias("kind"), "topic", "partition", "offset", "key", "value",
                          *(v.alias(c) for c, v in empty.items()))
    timed = source if clock == "event" else _record_time(source)
    facts = (timed.select(F.col("key").cast("string").alias("block_id"), "partition", "offset",
                          decode("value").alias("d"), *(() if clock == "event" else ("timestamp", "record_ms")))
             # a line that names no block is keyed by its record id: no story (see _template_and_time)
             .where((F.col("block_id") == F.col("d.block")) & F.col("d.template").isNotNull())
             .select("block_id", "partition", "offset", "d.template", "d.event_time",
                     *(() if clock == "event" else ("timestamp", "record_ms"))))
    timeout = "ProcessingTimeTimeout"
    if clock == "event":
        facts = (facts.withColumn("event_ts", F.col("event_time").cast("timestamp"))
                 .where(F.col("event_ts").isNotNull())
                 .withWatermark("event_ts", f"{lateness_ms} milliseconds"))
        timeout = "EventTimeTimeout"
    buckets = facts.withColumn("bucket", F.pmod(F.hash("block_id"), F.lit(BUCKETS))).groupBy("bucket")
    summaries = buckets.applyInPandasWithState(
        track_blocks(quiet_ms, clock, stall_ms), SUMMARY_SCHEMA, STATE_SCHEMA, "Update", timeout)
    blocks = summaries.select(F.lit(BLOCK).alias("kind"), *(F.lit(None).cast(t).alias(c) for c, t in (
        ("topic", "string"), ("partition", "int"), ("offset", "long"), ("key", "binary"), ("value", "binary"))),
        "block_id", "events", "closed", "first_time", "last_time", "ended")
    return lines.unionByName(blocks)

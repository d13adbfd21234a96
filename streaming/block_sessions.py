"""Per-block state in Spark: each block's story so far, kept by `applyInPandasWithState`; and, in the job,
where the executors do the work.

With the job's `work` settings (work.WorkSettings) the state function (single pass) decodes, embeds and
scores every message in the executor's task (work.py), keeps each block's events, running vector sum,
line count, anomalous record ids and alert status in the state (blocks.py), scores the blocks that
changed or ended, and emits work.WORK_SCHEMA rows: a ScoreResult or dead letter per message and a
verdict (with its ALERT/FINAL flags and vector-store point) per block, which sink.py writes. Nothing is
read back from the vector store. Without `work` (bench/bench_block_plan.py) it is Spark's part alone:
every Kafka message comes out unchanged as a "line" row, plus one "block" summary row per block (the
block is the Kafka key, set by `logmesh ingest`) that changed in the micro-batch, or ended. Quiet is relative to the stream: a block closes as complete only once the
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
  With the services, the lines branch scores every message (mapInPandas) and the stateful branch's
  decode UDF embeds and scores the same lines again for the blocks' sums (_scored_facts): twice the RPCs
  of the single pass, in this plan only.

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

from logmesh.streaming import blocks

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


def _murmur3_int(value: int, seed: int = 42) -> int:
    """Spark's hash of an int column (Murmur3 x86_32 of its 4 bytes, seed 42: what HashPartitioning uses)."""
    def rotl(x: int, r: int) -> int:
        return ((x << r) | (x >> (32 - r))) & 0xFFFFFFFF
    k = rotl((value & 0xFFFFFFFF) * 0xCC9E2D51 & 0xFFFFFFFF, 15) * 0x1B873593 & 0xFFFFFFFF
    h = (rotl(seed ^ k, 13) * 5 + 0xE6546B64) & 0xFFFFFFFF
    h ^= 4
    h = (h ^ (h >> 16)) * 0x85EBCA6B & 0xFFFFFFFF
    h = (h ^ (h >> 13)) * 0xC2B2AE35 & 0xFFFFFFFF
    h ^= h >> 16
    return h - (1 << 32) if h >= 1 << 31 else h


def spread_bucket_keys(buckets: int, partitions: int) -> list[int]:
    """Bucket keys that Spark's shuffle (hash partitioning on the key, `partitions` ways) sends to partitions
    0, 1, ..., partitions - 1, 0, ... in turn: the i-th is the smallest unused int whose hash lands in
    partition i % partitions.

    With the keys 0 and 1 of pmod(hash(block), 2), both buckets hash to shuffle partition 1 of 2: the state
    function, which decodes, embeds and scores every line in the single pass, ran in one task while the other
    task got no rows, one core idle (docs/benchmarks.md, "After the executor rework")."""
    keys: list[int] = []
    candidate = 0
    while len(keys) < buckets:
        wanted = len(keys) % partitions
        while _murmur3_int(candidate) % partitions != wanted or candidate in keys:
            candidate += 1
        keys.append(candidate)
        candidate = 0
    return keys


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


def _load(state) -> tuple[dict[str, list], list | None, dict[str, int]]:  # type: ignore[no-untyped-def]
    """The bucket's blocks, its view of the stream's clock and its recently closed alerted blocks, from the
    state's JSON.

    Blocks: block id -> [events, first time, last time, its last line on the closing clock (ms), the
    stream clock when it was finalized as cut (None: not cut), and what blocks.py keeps: vector sum, line
    count, anomalous record ids, alert status, label]. Clock (processing clock only): [the stream clock
    this bucket last saw, the wall time it first saw it], to tell a stopped stream. Alerted: closed blocks
    that alerted -> the stream clock when they closed (blocks.ALERTED_RETENTION_MS). State written before
    the stream clock was kept is a bare {block id: [events, first, last, seen]}."""
    if not state.exists:
        return {}, None, {}
    data = json.loads(state.get[0])
    if isinstance(data.get("v"), int):
        return ({b: blocks.pad(e) for b, e in data["blocks"].items()}, data.get("clock"),
                dict(data.get("alerted") or {}))
    return {b: blocks.pad(entry[:4]) for b, entry in data.items()}, None, {}


def _store(state, entries: dict[str, list], clock: list | None, alerted: dict[str, int] | None = None) -> None:  # type: ignore[no-untyped-def]
    value = {"v": 2, "blocks": entries, "clock": clock}
    if alerted:
        value["alerted"] = alerted
    state.update((json.dumps(value),))


def _close_and_report(entries: dict[str, list], changed: set[str], now: int, quiet_ms: int, state,  # type: ignore[no-untyped-def]
                      event_time: bool, stream_ms: int = 0, stall_ms: int | None = None,
                      clock: list | None = None) -> list[tuple]:
    """Ends the bucket's blocks that a rule ends (see _end), stores what stays and returns the summaries."""
    out, _, _, clock = _end(entries, changed, now, quiet_ms, event_time, stream_ms, stall_ms, clock)
    _persist(state, entries, clock, {}, event_time, quiet_ms, now)
    return out


def _end(entries: dict[str, list], changed: set[str], now: int, quiet_ms: int, event_time: bool,
         stream_ms: int = 0, stall_ms: int | None = None,
         clock: list | None = None) -> tuple[list[tuple], dict[str, list], dict[str, float], list | None]:
    """Ends the bucket's blocks that a rule ends; returns a summary per changed or ended block (block id,
    events, closed, first, last, ended), the entries of the blocks it closed (removed from `entries`), how
    long the stream went on without each closed block (seconds), and the bucket's clock.

    Event clock: `now` is the watermark; a block closes when it passed the block's last line by quiet_ms.
    Processing clock: `stream_ms` is the stream's clock (the watermark on the Kafka record time) and
    `now` the wall clock; a block closes when the stream's clock passed its last line by quiet_ms, and
    when that clock has stood still for `stall_ms` of wall time, the open blocks are finalized as cut."""
    out, closed, quiet_s = [], {}, {}
    if event_time:
        for block_id in list(entries):
            events, first, last, seen = entries[block_id][:4]
            if now > 0 and now - seen >= quiet_ms:  # nothing closes before the first watermark (0)
                out.append((block_id, events, True, first, last, QUIET))
                closed[block_id], quiet_s[block_id] = entries.pop(block_id), (now - seen) / 1000
            elif block_id in changed:
                out.append((block_id, events, False, first, last, ""))
    else:
        if clock is None or stream_ms > clock[0]:
            clock = [stream_ms, now]
        stalled = stall_ms is not None and now - clock[1] >= stall_ms
        for block_id in list(entries):
            entry = entries[block_id]
            events, first, last, seen, cut_at = entry[:5]
            if cut_at is not None and stream_ms > cut_at:
                # the stream came back: the block is open again, quiet counted from the stream's return
                entry[3] = seen = max(seen, stream_ms)
                entry[4] = cut_at = None
            if stream_ms > 0 and stream_ms - seen >= quiet_ms:
                out.append((block_id, events, True, first, last, QUIET))
                closed[block_id], quiet_s[block_id] = entries.pop(block_id), (stream_ms - seen) / 1000
            elif stalled and cut_at is None:
                out.append((block_id, events, False, first, last, STREAM_STOPPED))
                entry[4] = stream_ms
            elif block_id in changed:
                out.append((block_id, events, False, first, last, ""))
    return out, closed, quiet_s, clock


def _persist(state, entries: dict[str, list], clock: list | None, alerted: dict[str, int],  # type: ignore[no-untyped-def]
             event_time: bool, quiet_ms: int, now: int) -> None:
    """Stores the bucket's open blocks (and recently closed alerted ones) with its next timer, or removes
    the state when nothing is left."""
    if entries or alerted:
        _store(state, entries, None if event_time else clock, alerted)
        if event_time:  # fires once the watermark passes the earliest close (always ahead of it here)
            state.setTimeoutTimestamp(min([e[3] + quiet_ms for e in entries.values()] +
                                          [at + blocks.ALERTED_RETENTION_MS + 1 for at in alerted.values()]))
        else:  # the wall clock: to see the stream's clock move (or stand still) without data here
            state.setTimeoutDuration(quiet_ms)
    elif state.exists:
        state.remove()


def _extend(entries: dict[str, list], rows: pd.DataFrame, now: int, event_time: bool,
            alerted: dict[str, int] | None = None) -> set[str]:
    """Appends each row's template to its block, in (partition, offset) order; returns the blocks touched.
    `rows` has block_id, template, event_time and (processing clock) record_ms, the Kafka record time;
    rows without a block or a template are not in any story. A block that alerted and closed recently
    (`alerted`) starts its new story as alerted."""
    changed: set[str] = set()
    records = rows["record_ms"] if "record_ms" in rows else [now] * len(rows)
    for block_id, template, when, record_ms in zip(rows["block_id"], rows["template"], rows["event_time"], records):
        if block_id is None or template is None:
            continue
        entry = entries.get(block_id)
        if entry is None:
            entry = entries[block_id] = blocks.new_entry(bool(alerted) and block_id in alerted)
        entry[0].append(template)
        if when:
            entry[1], entry[2] = (min(entry[1], when) if entry[1] else when), max(entry[2], when)
        entry[3] = (max(entry[3], _epoch_ms(when)) if when else entry[3]) if event_time else max(entry[3], int(record_ms))
        entry[4] = None  # a line: the block is no longer a cut prefix
        changed.add(block_id)
    return changed


def _add_scored(entries: dict[str, list], block_ids, lines) -> None:  # type: ignore[no-untyped-def]
    """Adds the scored lines (work.Lines, by position; `block_ids` the story each belongs to, or None) to
    their blocks' vector sums, counts and anomalous ids."""
    by_block: dict[str, tuple[list, list, int]] = {}
    for i, block_id in enumerate(block_ids):
        if block_id is None or block_id not in entries or lines.results[i] is None:
            continue
        vectors, anomalous, label = by_block.setdefault(block_id, ([], [], 0))
        vectors.append(lines.vectors[i])
        if lines.anomalous(i):
            anomalous.append(lines.results[i].record_id)
        if lines.records[i].label:
            by_block[block_id] = (vectors, anomalous, lines.records[i].label)
    for block_id, (vectors, anomalous, label) in by_block.items():
        blocks.add_lines(entries[block_id], vectors, anomalous, label)


def _story_block(record, key: str | None) -> str | None:  # type: ignore[no-untyped-def]
    """The block whose story a decoded record joins: its first block id, only when it is the Kafka key (a
    line that names no block is keyed by its record id: no story, see _template_and_time)."""
    if record is None or not record.block_ids or record.block_ids[0] != key:
        return None
    return record.block_ids[0]


def _work_facts(lines, keys) -> pd.DataFrame:  # type: ignore[no-untyped-def]
    """The facts _extend reads, from decoded records (work.Lines) and their Kafka keys as strings."""
    facts = {"block_id": [], "template": [], "event_time": []}
    for record, key in zip(lines.records, keys):
        block = _story_block(record, key)
        facts["block_id"].append(block)
        facts["template"].append(record.template_id if block is not None else None)
        facts["event_time"].append((record.event_time.ToJsonString() if record.HasField("event_time") else "")
                                   if block is not None else None)
    return pd.DataFrame(facts)


def _judge_and_persist(state, entries: dict[str, list], changed: set[str], now: int, quiet_ms: int,  # type: ignore[no-untyped-def]
                       event_time: bool, stream_ms: int, stall_ms: int | None, clock: list | None,
                       alerted: dict[str, int], work) -> list[tuple]:
    """With the services: ends blocks (_end), scores the changed and ended ones and applies the alert rule
    (blocks.judge), then stores the state. WORK rows for the blocks."""
    summaries, ended, quiet_s, clock = _end(entries, changed, now, quiet_ms, event_time, stream_ms, stall_ms, clock)
    clock_ms = now if event_time else stream_ms
    blocks.prune_alerted(alerted, clock_ms)
    rows = blocks.judge(summaries, {**ended, **entries}, quiet_s, alerted, clock_ms, work)
    _persist(state, entries, clock, alerted, event_time, quiet_ms, now)
    return rows


def track_blocks(quiet_ms: int, clock: str = "processing", stall_ms: int | None = None, work=None):  # type: ignore[no-untyped-def]
    """The state function of the two-branch plan, keyed by a bucket of blocks (see BUCKETS); its rows are
    the decoded facts (block, template, event time, record time) of the stateful branch.

    The bucket's state maps each open block to its story (see _load). A call with new lines extends their
    blocks; every call (with data, or when the bucket's timer fires) ends the blocks a rule ends (see
    _end) and emits one summary per changed or ended block. With `work` (work.WorkSettings) the facts
    also carry each scored line's vector, verdict and label (_scored_facts): the blocks' sums grow, the
    changed and ended blocks are scored and the alert rule applied, and the rows are WORK rows."""
    if clock not in CLOCKS:
        raise ValueError(f"block clock must be one of {CLOCKS}, not {clock!r}")
    event_time = clock == "event"

    def update(key: tuple, frames: Iterator[pd.DataFrame], state) -> Iterator[pd.DataFrame]:  # type: ignore[no-untyped-def]
        _freeze_worker_heap()
        now = state.getCurrentWatermarkMs() if event_time else state.getCurrentProcessingTimeMs()
        stream_ms = 0 if event_time else state.getCurrentWatermarkMs()
        entries, bucket_clock, alerted = _load(state)
        changed: set[str] = set()
        rows = None
        if not state.hasTimedOut:
            rows = pd.concat(list(frames), ignore_index=True).sort_values(["partition", "offset"])
            changed = _extend(entries, rows, now, event_time, alerted if work else None)
        if work is None:
            out = _close_and_report(entries, changed, now, quiet_ms, state, event_time, stream_ms, stall_ms,
                                    bucket_clock)
            if out:
                yield pd.DataFrame(out, columns=SUMMARY_COLUMNS)
            return
        from logmesh.streaming.work import WORK_COLUMNS, TaskLogs
        with TaskLogs() as logs:
            if rows is not None:
                _add_fact_vectors(entries, rows)
            out = _judge_and_persist(state, entries, changed, now, quiet_ms, event_time, stream_ms, stall_ms,
                                     bucket_clock, alerted, work)
        if logs.row():
            out.append(logs.row())
        if out:
            yield pd.DataFrame(out, columns=WORK_COLUMNS, dtype=object)

    return update


def _add_fact_vectors(entries: dict[str, list], rows: pd.DataFrame) -> None:
    """The two-branch plan's facts (with vector, anomalous, record_id, label) added to the blocks' sums."""
    import numpy as np
    by_block: dict[str, tuple[list, list, int]] = {}
    for block_id, vector, anomalous, record_id, label in zip(rows["block_id"], rows["vector"], rows["anomalous"],
                                                             rows["record_id"], rows["label"]):
        if vector is None or block_id not in entries:
            continue
        vectors, flagged, known = by_block.setdefault(block_id, ([], [], 0))
        vectors.append(np.frombuffer(bytes(vector), np.float32))
        if anomalous:
            flagged.append(record_id)
        by_block[block_id] = (vectors, flagged, int(label) or known)
    for block_id, (vectors, flagged, label) in by_block.items():
        blocks.add_lines(entries[block_id], vectors, flagged, label)


FACTS_SCHEMA = ("template string, event_time string, block string, vector binary, anomalous boolean, "
                "record_id string, label int")


def _scored_facts(work):  # type: ignore[no-untyped-def]
    """The two-branch plan's decode UDF with the services: per Kafka value, what _template_and_time gives
    plus the line's vector, verdict, record id and label (None where it was not scored). The lines branch
    scores the same lines for their outputs: in this plan a line is embedded and scored twice (the single
    pass does it once)."""
    def facts(values: pd.Series) -> pd.DataFrame:
        import numpy as np

        from logmesh.streaming.decode import KafkaRow
        from logmesh.streaming.work import score_messages
        _freeze_worker_heap()
        lines = score_messages([KafkaRow("", 0, i, None, None if v is None else bytes(v)) for i, v in enumerate(values)],
                               work, f"{len(values)} block facts")
        out = {c.split()[0]: [] for c in FACTS_SCHEMA.split(", ")}
        for i, record in enumerate(lines.records):
            result, ok = lines.results[i], record is not None
            out["template"].append(record.template_id if ok else None)
            out["event_time"].append((record.event_time.ToJsonString() if record.HasField("event_time") else "")
                                     if ok else None)
            out["block"].append(record.block_ids[0] if ok and record.block_ids else None)
            out["vector"].append(np.ascontiguousarray(lines.vectors[i], np.float32).tobytes() if result else None)
            out["anomalous"].append(lines.anomalous(i) if result else None)
            out["record_id"].append(result.record_id if result else None)
            out["label"].append(int(record.label) if ok else 0)
        return pd.DataFrame(out)
    return facts


def score_lines_task(work):  # type: ignore[no-untyped-def]
    """The two-branch plan's lines branch with the services (mapInPandas): every Kafka message of the task
    decoded, embedded and scored at once; WORK rows for lines and dead letters."""
    def run(frames: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        from logmesh.streaming.work import WORK_COLUMNS, TaskLogs, kafka_rows, line_rows, score_messages
        _freeze_worker_heap()
        parts = list(frames)
        frame = pd.concat(parts, ignore_index=True) if parts else None
        if frame is None or frame.empty:
            return
        with TaskLogs() as logs:
            out = line_rows(score_messages(kafka_rows(frame), work, f"{len(frame)} lines"), work)
        if logs.row():
            out.append(logs.row())
        yield pd.DataFrame(out, columns=WORK_COLUMNS, dtype=object)
    return run


def track_lines_and_blocks(quiet_ms: int, stall_ms: int | None = None, work=None):  # type: ignore[no-untyped-def]
    """The state function of the single-pass plan (processing clock), keyed by a bucket of blocks (see
    SINGLE_PASS_BUCKETS); its rows are the Kafka messages themselves. It decodes each value once, extends
    and ends blocks as `track_blocks` does, and emits every message unchanged as a line row (messages
    that are not LogRecords too: the sink dead-letters them) followed by the block summaries.

    With `work` (work.WorkSettings) this is where the job's work happens, in the executor's task: the
    messages are decoded, embedded and scored (work.score_messages), the blocks' vector sums, anomalous
    ids and alert status grow in the state, the changed and ended blocks are scored, and the rows are
    WORK rows (ScoreResults, dead letters, block verdicts with alert flags, vector-store points)."""
    def update(key: tuple, frames: Iterator[pd.DataFrame], state) -> Iterator[pd.DataFrame]:  # type: ignore[no-untyped-def]
        _freeze_worker_heap()
        now, stream_ms = state.getCurrentProcessingTimeMs(), state.getCurrentWatermarkMs()
        entries, bucket_clock, alerted = _load(state)
        out, changed = [], set()
        if work is not None:
            yield from _single_pass_work(frames, state, entries, bucket_clock, alerted, now, stream_ms, quiet_ms,
                                         stall_ms, work)
            return
        if not state.hasTimedOut:
            rows = pd.concat(list(frames), ignore_index=True).sort_values(["partition", "offset"])
            # the story's block is the record's own (the Kafka key chose the bucket; for a line without a
            # block ingest keys it by record id, which is no block)
            decoded = _template_and_time(rows["value"])
            facts = decoded.assign(block_id=[b if b is not None and b == k else None
                                             for b, k in zip(decoded["block"], rows["block_id"])],
                                   record_ms=rows["record_ms"].to_numpy())
            changed = _extend(entries, facts, now, False)
            out = [(LINE, t, p, o, k, v, None, None, None, None, None, None) for t, p, o, k, v in zip(
                rows["topic"], rows["partition"], rows["offset"], rows["key"], rows["value"])]
        out += [(BLOCK, None, None, None, None, None, *summary) for summary in _close_and_report(
            entries, changed, now, quiet_ms, state, False, stream_ms, stall_ms, bucket_clock)]
        if out:
            yield pd.DataFrame(out, columns=OUTPUT_COLUMNS, dtype=object)  # object: ints stay ints beside None

    return update


def _single_pass_work(frames, state, entries, clock, alerted, now, stream_ms, quiet_ms, stall_ms,  # type: ignore[no-untyped-def]
                      work) -> Iterator[pd.DataFrame]:
    from logmesh.streaming.work import WORK_COLUMNS, TaskLogs, kafka_rows, line_rows, score_messages
    out: list[tuple] = []
    changed: set[str] = set()
    with TaskLogs() as logs:
        if not state.hasTimedOut:
            rows = pd.concat(list(frames), ignore_index=True).sort_values(["partition", "offset"])
            lines = score_messages(kafka_rows(rows), work, f"{len(rows)} lines")
            facts = _work_facts(lines, rows["block_id"]).assign(record_ms=rows["record_ms"].to_numpy())
            changed = _extend(entries, facts, now, False, alerted)
            _add_scored(entries, facts["block_id"], lines)
            out = line_rows(lines, work)
        out += _judge_and_persist(state, entries, changed, now, quiet_ms, False, stream_ms, stall_ms, clock,
                                  alerted, work)
    if logs.row():
        out.append(logs.row())
    if out:
        yield pd.DataFrame(out, columns=WORK_COLUMNS, dtype=object)


def _record_time(source):  # type: ignore[no-untyped-def]
    """The Kafka rows with the stream's clock: a watermark on each message's record time (the time ingest
    produced it), delay 0, plus that time as epoch ms for the state function (record_ms). The watermark
    column must stay in the rows the state function sees, else Spark hides the watermark from it."""
    from pyspark.sql import functions as F
    return source.withWatermark("timestamp", "0 milliseconds").withColumn("record_ms", F.unix_millis("timestamp"))


def with_block_sessions(source, quiet_ms: int, clock: str = "processing",  # type: ignore[no-untyped-def]
                        lateness_ms: int = 10_000, plan: str = "two-branch", stall_ms: int | None = None,
                        work=None, bucket_keys: list[int] | None = None):
    """Kafka rows -> line rows plus block summary rows, keyed and stateful per block, ended on `clock`
    (and, on the processing clock, finalized as cut after `stall_ms` of a stopped stream; None: never),
    by one of PLANS (the single pass needs the processing clock). With `work` (work.WorkSettings: what
    the job passes) the executors decode, embed and score there and the rows are work.WORK_SCHEMA rows;
    without, Spark's part alone (bench/bench_block_plan.py)."""
    if plan not in PLANS:
        raise ValueError(f"block plan must be one of {PLANS}, not {plan!r}")
    if plan == "single-pass" and clock != "processing":
        raise ValueError("the single-pass plan closes blocks on the processing clock only: with a watermark, "
                         "Spark drops late rows before the state function, and late lines must still be scored")
    from pyspark.sql import functions as F
    from pyspark.sql.functions import pandas_udf

    if work is not None:
        from logmesh.streaming.work import WORK_SCHEMA
    # the records' trace context (runtime/tracing.header_column), when the job traces
    traced = [c for c in ("traceparent",) if c in source.columns]
    if plan == "single-pass":
        rows = _record_time(source).select("topic", "partition", "offset", "key", "value", "timestamp", "record_ms",
                                           F.col("key").cast("string").alias("block_id"), *traced)
        # keys that land in distinct shuffle partitions (spread_bucket_keys), one bucket each; None: 0, 1
        bucket = F.pmod(F.hash("block_id"), F.lit(len(bucket_keys) if bucket_keys else SINGLE_PASS_BUCKETS))
        if bucket_keys:
            bucket = F.element_at(F.array(*(F.lit(k) for k in bucket_keys)), bucket + 1)
        buckets = rows.withColumn("bucket", bucket).groupBy("bucket")
        return buckets.applyInPandasWithState(track_lines_and_blocks(quiet_ms, stall_ms, work),
                                              OUTPUT_SCHEMA if work is None else WORK_SCHEMA, STATE_SCHEMA,
                                              "Update", "ProcessingTimeTimeout")

    if work is None:
        decode = pandas_udf(_template_and_time, "template string, event_time string, block string")
        extra: tuple = ()
    else:
        decode = pandas_udf(_scored_facts(work), FACTS_SCHEMA)
        extra = ("d.vector", "d.anomalous", "d.record_id", "d.label")
    empty = {c: F.lit(None).cast(t) for c, t in (("block_id", "string"), ("events", "array<string>"),
                                                  ("closed", "boolean"), ("first_time", "string"),
                                                  ("last_time", "string"), ("ended", "string"))}
    if work is None:
        lines = source.select(F.lit(LINE).alias("kind"), "topic", "partition", "offset", "key", "value",
                              *(v.alias(c) for c, v in empty.items()))
    else:
        lines = source.select("topic", "partition", "offset", "key", "value", *traced).mapInPandas(
            score_lines_task(work), WORK_SCHEMA)
    timed = source if clock == "event" else _record_time(source)
    facts = (timed.select(F.col("key").cast("string").alias("block_id"), "partition", "offset",
                          decode("value").alias("d"), *(() if clock == "event" else ("timestamp", "record_ms")))
             # a line that names no block is keyed by its record id: no story (see _template_and_time)
             .where((F.col("block_id") == F.col("d.block")) & F.col("d.template").isNotNull())
             .select("block_id", "partition", "offset", "d.template", "d.event_time", *extra,
                     *(() if clock == "event" else ("timestamp", "record_ms"))))
    timeout = "ProcessingTimeTimeout"
    if clock == "event":
        facts = (facts.withColumn("event_ts", F.col("event_time").cast("timestamp"))
                 .where(F.col("event_ts").isNotNull())
                 .withWatermark("event_ts", f"{lateness_ms} milliseconds"))
        timeout = "EventTimeTimeout"
    buckets = facts.withColumn("bucket", F.pmod(F.hash("block_id"), F.lit(BUCKETS))).groupBy("bucket")
    summaries = buckets.applyInPandasWithState(
        track_blocks(quiet_ms, clock, stall_ms, work), SUMMARY_SCHEMA if work is None else WORK_SCHEMA,
        STATE_SCHEMA, "Update", timeout)
    if work is not None:
        return lines.unionByName(summaries)
    blocks_ = summaries.select(F.lit(BLOCK).alias("kind"), *(F.lit(None).cast(t).alias(c) for c, t in (
        ("topic", "string"), ("partition", "int"), ("offset", "long"), ("key", "binary"), ("value", "binary"))),
        "block_id", "events", "closed", "first_time", "last_time", "ended")
    return lines.unionByName(blocks_)

"""The block-state functions of streaming/block_sessions.py, called directly (no Spark): decoding, each
block's events in log order, blocks closed once the stream went on without them, blocks of a stopped
stream finalized as cut prefixes (never as complete), and the worker-heap freeze left off outside
pyspark workers."""
from __future__ import annotations

import gc
import json

import pandas as pd
import pytest

from logmesh.ingest.hdfs import parse_line
from logmesh.streaming import block_sessions
from logmesh.streaming.block_sessions import OUTPUT_COLUMNS, _template_and_time, track_blocks, track_lines_and_blocks

LINES = [
    "081109 203518 143 INFO dfs.DataNode$DataXceiver: Receiving block blk_1 src: /10.250.19.102:54106 dest: /10.250.19.102:50010",
    "081109 203518 35 INFO dfs.FSNamesystem: BLOCK* NameSystem.allocateBlock: /mnt/hadoop/mapred/system/job_1/job.jar. blk_1",
    "081109 203519 145 INFO dfs.DataNode$PacketResponder: PacketResponder 0 for block blk_2 terminating",
]


class FakeState:
    """The part of pyspark's GroupState the function uses, with a settable clock."""

    def __init__(self, now: int, value: tuple | None = None, timed_out: bool = False, watermark: int = 0) -> None:
        self.now, self.value, self.hasTimedOut, self.timeout = now, value, timed_out, None
        self.watermark, self.timeout_at = watermark, None

    def getCurrentProcessingTimeMs(self) -> int:
        return self.now

    def getCurrentWatermarkMs(self) -> int:
        return self.watermark

    def setTimeoutTimestamp(self, ms: int) -> None:
        assert ms > self.watermark, "Spark refuses a timeout at or before the watermark"
        self.timeout_at = ms

    @property
    def exists(self) -> bool:
        return self.value is not None

    @property
    def get(self) -> tuple:
        return self.value

    def update(self, value: tuple) -> None:
        self.value = value

    def remove(self) -> None:
        self.value = None

    def setTimeoutDuration(self, ms: int) -> None:
        self.timeout = ms


def _facts(rows: list[tuple[int, int, int]], record_ms: int = 0) -> pd.DataFrame:
    """(line index, partition, offset) -> the stateful branch's rows, decoded as Spark's decode UDF does,
    all with Kafka record time `record_ms`."""
    records = [parse_line(LINES[i], "t", i) for i, _, _ in rows]
    decoded = _template_and_time(pd.Series([r.SerializeToString() for r in records]))
    return pd.DataFrame({"block_id": [r.block_ids[0] for r in records], "partition": [p for _, p, _ in rows],
                         "offset": [o for _, _, o in rows], "template": decoded["template"],
                         "event_time": decoded["event_time"], "record_ms": record_ms, "bucket": 0})


def _ended(frame: pd.DataFrame) -> list[tuple]:
    return [(b, bool(c), e) for b, c, e in zip(frame["block_id"], frame["closed"], frame["ended"]) if e]


def _blocks_in(state: "FakeState") -> set[str]:
    return set(json.loads(state.value[0])["blocks"])


def test_decode_gives_template_time_and_block_and_nulls_for_junk():
    out = _template_and_time(pd.Series([parse_line(LINES[0], "t", 0).SerializeToString(), b"junk", None]))
    assert out["template"][0] == parse_line(LINES[0], "t", 0).template_id and out["event_time"][0]
    assert out["block"][0] == "blk_1"
    assert out["template"][1:].isna().all() and out["block"][1:].isna().all()


def test_a_line_that_names_no_block_is_scored_but_is_no_story():
    """ingest keys a line without a block id (a DataNode's GC warning, an OOM) by its record id: the single
    pass passes it on as a line row, but no one-line "block" of it is tracked or judged."""
    from logmesh.v1 import log_record_pb2
    update = track_lines_and_blocks(quiet_ms=1000)
    rows = _messages([(0, 0, 10)], 1_000)
    orphan = log_record_pb2.LogRecord(id="t:99", message="GC pause 900 ms", template_id="E99")
    rows = pd.concat([rows, pd.DataFrame({"topic": "logmesh.logs", "partition": 0, "offset": [11], "key": [b"t:99"],
                                          "value": [orphan.SerializeToString()], "block_id": ["t:99"],
                                          "record_ms": 1_000, "bucket": 0})], ignore_index=True)
    state = FakeState(now=1_000)
    out = pd.concat(list(update((0,), iter([rows]), state)), ignore_index=True)
    assert sorted(out.loc[out["kind"] == "line", "offset"]) == [10, 11]
    assert list(out.loc[out["kind"] == "block", "block_id"]) == ["blk_1"] and _blocks_in(state) == {"blk_1"}


def test_blocks_keep_log_order_across_calls_and_close_when_the_stream_went_on():
    """Processing clock: the stream's clock is the watermark on Kafka record time (state.watermark here);
    a block closes as complete once that clock passed its last line by quiet_ms."""
    update = track_blocks(quiet_ms=1000)
    t0, t1, t2 = (parse_line(line, "t", i).template_id for i, line in enumerate(LINES))
    state = FakeState(now=1_000, watermark=0)
    # offsets, not arrival order inside the call, give the order; chunks of one bucket are concatenated
    chunks = [_facts([(1, 0, 11)], 1_000), _facts([(0, 0, 10), (2, 1, 5)], 1_000)]
    out = pd.concat(list(update((0,), iter(chunks), state)), ignore_index=True)
    assert {b: (list(e), c) for b, e, c in zip(out["block_id"], out["events"], out["closed"])} == {
        "blk_1": ([t0, t1], False), "blk_2": ([t2], False)}
    assert state.timeout == 1000 and _blocks_in(state) == {"blk_1", "blk_2"}

    state.now = state.watermark = 1_500  # a later micro-batch extends blk_1 only; only blk_1 is reported
    out = pd.concat(list(update((0,), iter([_facts([(1, 0, 12)], 1_500)]), state)), ignore_index=True)
    assert list(out["block_id"]) == ["blk_1"] and list(out["events"][0]) == [t0, t1, t1]

    # timer calls (no data here) while the stream goes on elsewhere: blk_2 (last line at 1,000) closes
    # when the stream's clock reaches 2,000, blk_1 (1,500) at 2,500; then no state
    state.now, state.watermark, state.hasTimedOut = 2_000, 2_000, True
    closed = pd.concat(list(update((0,), iter([]), state)), ignore_index=True)
    assert _ended(closed) == [("blk_2", True, "quiet")] and state.exists
    state.now = state.watermark = 2_500
    closed = pd.concat(list(update((0,), iter([]), state)), ignore_index=True)
    assert _ended(closed) == [("blk_1", True, "quiet")] and not state.exists


def test_a_stream_that_stops_closes_nothing_as_complete_and_finalizes_open_blocks_as_cut():
    """The end of a replay: the stream's clock stands still, however long the wall clock runs, so no block
    is judged as a whole session (a cut write pipeline looks like missing steps). After stall_ms of a
    still clock the open blocks are finalized once as cut prefixes (closed=False, "stream-stopped") and
    kept: when the stream comes back their story goes on, and one that gets no more lines closes as
    complete only after the stream has run quiet_ms past its return."""
    update = track_blocks(quiet_ms=1000, stall_ms=10_000)
    state = FakeState(now=5_000, watermark=4_000)
    list(update((0,), iter([_facts([(0, 0, 10), (1, 0, 11), (2, 1, 5)], 4_900)]), state))
    state.hasTimedOut = True
    for now in (6_000, 9_000, 14_000):  # the wall clock runs on, the stream's does not: nothing ends
        state.now = now
        assert list(update((0,), iter([]), state)) == []
    state.now = 15_000  # 10 s after this bucket first saw the clock at 4,000: the stream stopped
    cut = pd.concat(list(update((0,), iter([]), state)), ignore_index=True)
    assert sorted(_ended(cut)) == [("blk_1", False, "stream-stopped"), ("blk_2", False, "stream-stopped")]
    assert _blocks_in(state) == {"blk_1", "blk_2"} and state.timeout == 1000
    state.now = 60_000  # finalized once, not again on every timer
    assert list(update((0,), iter([]), state)) == []

    # the stream comes back (its clock jumps past both blocks' last lines): blk_1 gets a line and goes on,
    # blk_2 stays open and is quiet-counted from the return, not from its last line before the stop
    state.hasTimedOut, state.now, state.watermark = False, 61_000, 60_500
    out = pd.concat(list(update((0,), iter([_facts([(1, 0, 12)], 60_900)]), state)), ignore_index=True)
    assert list(zip(out["block_id"], out["closed"], out["ended"])) == [("blk_1", False, "")]
    assert len(out["events"][0]) == 3  # its whole story, the lines before the stop included
    state.hasTimedOut, state.now, state.watermark = True, 62_000, 61_400
    assert list(update((0,), iter([]), state)) == []
    state.now, state.watermark = 62_500, 61_500  # 1,000 past the return for blk_2; 600 past blk_1's line
    closed = pd.concat(list(update((0,), iter([]), state)), ignore_index=True)
    assert _ended(closed) == [("blk_2", True, "quiet")] and _blocks_in(state) == {"blk_1"}


def test_state_written_before_the_stream_clock_is_read():
    """A bucket's state from before (a bare {block: [events, first, last, seen]}) goes on as open blocks."""
    update = track_blocks(quiet_ms=1000)
    t0 = parse_line(LINES[0], "t", 0).template_id
    state = FakeState(now=9_000, value=(json.dumps({"blk_1": [[t0], "", "", 1_000]}),), timed_out=True, watermark=1_500)
    assert list(update((0,), iter([]), state)) == [] and _blocks_in(state) == {"blk_1"}
    state.watermark = 2_000
    closed = pd.concat(list(update((0,), iter([]), state)), ignore_index=True)
    assert _ended(closed) == [("blk_1", True, "quiet")] and list(closed["events"][0]) == [t0]


def _messages(rows: list[tuple[int | None, int, int]], record_ms: int = 0) -> pd.DataFrame:
    """(line index or None for a message that is not a LogRecord, partition, offset) -> Kafka rows as the
    single pass's state function gets them, all with Kafka record time `record_ms`."""
    records = [parse_line(LINES[i], "t", i) if i is not None else None for i, _, _ in rows]
    return pd.DataFrame({
        "topic": "logmesh.logs", "partition": [p for _, p, _ in rows], "offset": [o for _, _, o in rows],
        "key": [r.block_ids[0].encode() if r else None for r in records],
        "value": [r.SerializeToString() if r else b"junk" for r in records],
        "block_id": [r.block_ids[0] if r else None for r in records], "record_ms": record_ms, "bucket": 0})


def test_single_pass_passes_every_message_on_and_keeps_the_same_block_story():
    """The single pass's state function: every Kafka message comes out as a line row with its bytes
    intact (junk too: the sink dead-letters it), and blocks are extended and closed as in the two-branch
    plan's function."""
    update, twin = track_lines_and_blocks(quiet_ms=1000), track_blocks(quiet_ms=1000)
    state, twin_state = FakeState(now=1_000), FakeState(now=1_000)
    chunks = [_messages([(1, 0, 11), (None, 2, 3)], 1_000), _messages([(0, 0, 10), (2, 1, 5)], 1_000)]
    out = pd.concat(list(update((0,), iter(chunks), state)), ignore_index=True)
    assert list(out.columns) == OUTPUT_COLUMNS
    lines, blocks = out[out["kind"] == "line"], out[out["kind"] == "block"]
    assert list(zip(lines["partition"], lines["offset"])) == [(0, 10), (0, 11), (1, 5), (2, 3)]
    sent = pd.concat(chunks).set_index("offset")
    assert all(bytes(v) == sent.loc[o, "value"] for o, v in zip(lines["offset"], lines["value"]))
    assert lines["key"].iloc[3] is None and lines["block_id"].isna().all()

    expected = pd.concat(list(twin((0,), iter([_facts([(1, 0, 11)], 1_000), _facts([(0, 0, 10), (2, 1, 5)], 1_000)]),
                                   twin_state)))
    assert [(b, list(e), c) for b, e, c in zip(blocks["block_id"], blocks["events"], blocks["closed"])] == [
        (b, list(e), c) for b, e, c in zip(expected["block_id"], expected["events"], expected["closed"])]
    assert state.value == twin_state.value and state.timeout == 1000

    state.now, state.hasTimedOut = 60_000, True  # a timer call long after, the stream stopped: nothing closes
    assert list(update((0,), iter([]), state)) == [] and state.exists
    state.watermark = 2_000  # the stream went on (elsewhere) past both blocks: both close as complete
    closed = pd.concat(list(update((0,), iter([]), state)), ignore_index=True)
    assert set(closed["kind"]) == {"block"} and closed["closed"].all() and len(closed) == 2
    assert set(closed["ended"]) == {"quiet"} and not state.exists


def test_heap_is_frozen_only_in_reused_pyspark_workers(monkeypatch):
    calls = []
    monkeypatch.setattr(gc, "freeze", lambda: calls.append(1))
    monkeypatch.setattr(block_sessions, "_heap_frozen", False)
    monkeypatch.delenv("SPARK_REUSE_WORKER", raising=False)
    block_sessions._freeze_worker_heap()
    assert calls == []
    monkeypatch.setenv("SPARK_REUSE_WORKER", "1")
    block_sessions._freeze_worker_heap()
    block_sessions._freeze_worker_heap()
    assert calls == [1]  # once per process


def test_event_clock_closes_blocks_by_log_time_once_the_watermark_passes():
    """--block-clock event: a block closes when the watermark has passed its last line's own timestamp by
    quiet_ms, whatever the wall clock does; the bucket's timer is set to the earliest such moment."""
    update = track_blocks(quiet_ms=5_000, clock="event")
    t18 = block_sessions._epoch_ms("2008-11-09T20:35:18Z")  # LINES[0..1] (blk_1); LINES[2] (blk_2) is 1 s later
    state = FakeState(now=10**12, watermark=0)  # no watermark yet: nothing closes, however late the wall clock
    out = pd.concat(list(update((0,), iter([_facts([(0, 0, 10), (1, 0, 11), (2, 1, 5)])]), state)))
    assert not out["closed"].any() and state.timeout_at == t18 + 5_000

    state.hasTimedOut, state.watermark = True, t18 + 4_999
    assert list(update((0,), iter([]), state)) == []
    state.watermark, state.now = t18 + 5_000, 0  # the wall clock going back changes nothing
    closed = pd.concat(list(update((0,), iter([]), state)))
    assert list(zip(closed["block_id"], closed["closed"])) == [("blk_1", True)]
    assert _blocks_in(state) == {"blk_2"} and state.timeout_at == t18 + 1_000 + 5_000


def test_an_unknown_block_clock_is_refused():
    with pytest.raises(ValueError, match="block clock"):
        track_blocks(1000, clock="wall")


# --- the single pass with the services: the work in the state function, the block's story in the state ---

FAILING = "blk_-3102267849859399193"  # writeBlock exceptions at lines 6,336 and 6,493 of HDFS_20000.log


def test_the_state_keeps_the_blocks_vector_sum_and_alert_status_and_alerts_once(embedder_server, scorer_server,
                                                                                data_dir):
    """The single pass's state function with the real embedder and scorer (what the job runs in its
    executors): lines come out scored, the block's vector sum, line count and anomalous ids grow in the
    state (nothing is read from a vector store), its first anomalous verdict is an ALERT and only that
    one, and when the stream goes on without it, it closes FINAL with quiet_seconds filled."""
    import numpy as np

    from logmesh.streaming import blocks
    from logmesh.streaming.work import WorkSettings
    from logmesh.v1 import score_pb2
    with open(data_dir / "HDFS_20000.log", encoding="utf-8") as f:
        story = [(n, line) for n, line in enumerate(f) if FAILING in line]
    records = [parse_line(line, "HDFS_20000.log", n + 1) for n, line in story]

    def messages(part: range, record_ms: int) -> pd.DataFrame:
        return pd.DataFrame({"topic": "logmesh.logs", "partition": 0, "offset": [story[i][0] for i in part],
                             "key": [FAILING.encode()] * len(part),
                             "value": [records[i].SerializeToString() for i in part],
                             "block_id": FAILING, "record_ms": record_ms, "bucket": 0})

    update = track_lines_and_blocks(quiet_ms=1000, work=WorkSettings(embedder_server.address, scorer_server.address))
    state = FakeState(now=1_000)
    half = len(story) // 2
    calls = []
    for part, record_ms in ((range(half), 1_000), (range(half, len(story)), 1_100)):
        state.watermark = record_ms - 100
        calls.append(pd.concat(list(update((0,), iter([messages(part, record_ms)]), state)), ignore_index=True))
    entry = json.loads(state.value[0])["blocks"][FAILING]
    assert entry[blocks.LINES] == len(story) and len(entry[blocks.EVENTS]) == len(story)
    lines = pd.concat([c[c["kind"] == "line"] for c in calls])
    assert len(lines) == len(story) and all(score_pb2.ScoreResult.FromString(bytes(v)).record_id for v in lines["value"])
    flagged = [r for r, a in zip(lines["record_id"], lines["anomalous"]) if a]
    assert entry[blocks.ANOMALOUS] == flagged and entry[blocks.ALERTED]
    block_rows = pd.concat([c[c["kind"] == "block"] for c in calls])
    assert list(block_rows["alert"]).count(True) == 1 and not block_rows["final"].any()
    point = json.loads(block_rows["payload"].iloc[-1])
    assert point["lines"] == len(story) and point["alerted"] and point["events"] == entry[blocks.EVENTS]
    vector = np.frombuffer(bytes(block_rows["vector"].iloc[-1]), np.float32)
    assert np.allclose(vector, blocks.mean_vector(entry))

    state.hasTimedOut, state.now, state.watermark = True, 5_000, 3_000  # the stream went on without it
    closed = pd.concat(list(update((0,), iter([]), state)), ignore_index=True)
    [row] = closed[closed["kind"] == "block"].itertuples()
    verdict = score_pb2.BlockVerdict.FromString(bytes(row.value))
    assert row.ended == "quiet" and row.final and not row.alert and verdict.kind == score_pb2.BLOCK_VERDICT_KIND_FINAL
    assert json.loads(state.value[0])["alerted"] == {FAILING: 3_000}  # remembered: a reopened story does not re-alert
    assert json.loads(state.value[0])["blocks"] == {}

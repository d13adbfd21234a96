"""The block-state functions of streaming/block_sessions.py, called directly (no Spark): decoding, each
block's events in log order, quiet blocks closed by the timer, and the worker-heap freeze left off
outside pyspark workers."""
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


def _facts(rows: list[tuple[int, int, int]]) -> pd.DataFrame:
    """(line index, partition, offset) -> the stateful branch's rows, decoded as Spark's decode UDF does."""
    records = [parse_line(LINES[i], "t", i) for i, _, _ in rows]
    decoded = _template_and_time(pd.Series([r.SerializeToString() for r in records]))
    return pd.DataFrame({"block_id": [r.block_ids[0] for r in records], "partition": [p for _, p, _ in rows],
                         "offset": [o for _, _, o in rows], "template": decoded["template"],
                         "event_time": decoded["event_time"], "bucket": 0})


def test_decode_gives_template_and_time_and_nulls_for_junk():
    out = _template_and_time(pd.Series([parse_line(LINES[0], "t", 0).SerializeToString(), b"junk", None]))
    assert out["template"][0] == parse_line(LINES[0], "t", 0).template_id and out["event_time"][0]
    assert out["template"][1:].isna().all()


def test_blocks_keep_log_order_across_calls_and_close_when_quiet():
    update = track_blocks(quiet_ms=1000)
    t0, t1, t2 = (parse_line(line, "t", i).template_id for i, line in enumerate(LINES))
    state = FakeState(now=1_000)
    # offsets, not arrival order inside the call, give the order; chunks of one bucket are concatenated
    chunks = [_facts([(1, 0, 11)]), _facts([(0, 0, 10), (2, 1, 5)])]
    out = pd.concat(list(update((0,), iter(chunks), state)), ignore_index=True)
    assert {b: (list(e), c) for b, e, c in zip(out["block_id"], out["events"], out["closed"])} == {
        "blk_1": ([t0, t1], False), "blk_2": ([t2], False)}
    assert state.timeout == 1000 and set(json.loads(state.value[0])) == {"blk_1", "blk_2"}

    state.now = 1_500  # a later micro-batch extends blk_1 only; only blk_1 is reported
    out = pd.concat(list(update((0,), iter([_facts([(1, 0, 12)])]), state)), ignore_index=True)
    assert list(out["block_id"]) == ["blk_1"] and list(out["events"][0]) == [t0, t1, t1]

    # timer calls (no data): blk_2 (last seen at 1,000) closes at 2,000, blk_1 (1,500) at 2,500; then no state
    state.now, state.hasTimedOut = 2_000, True
    closed = pd.concat(list(update((0,), iter([]), state)), ignore_index=True)
    assert list(zip(closed["block_id"], closed["closed"])) == [("blk_2", True)] and state.exists
    state.now = 2_500
    closed = pd.concat(list(update((0,), iter([]), state)), ignore_index=True)
    assert list(zip(closed["block_id"], closed["closed"])) == [("blk_1", True)] and not state.exists


def _messages(rows: list[tuple[int | None, int, int]]) -> pd.DataFrame:
    """(line index or None for a message that is not a LogRecord, partition, offset) -> Kafka rows as the
    single pass's state function gets them."""
    records = [parse_line(LINES[i], "t", i) if i is not None else None for i, _, _ in rows]
    return pd.DataFrame({
        "topic": "logmesh.logs", "partition": [p for _, p, _ in rows], "offset": [o for _, _, o in rows],
        "key": [r.block_ids[0].encode() if r else None for r in records],
        "value": [r.SerializeToString() if r else b"junk" for r in records],
        "block_id": [r.block_ids[0] if r else None for r in records], "bucket": 0})


def test_single_pass_passes_every_message_on_and_keeps_the_same_block_story():
    """The single pass's state function: every Kafka message comes out as a line row with its bytes
    intact (junk too: the sink dead-letters it), and blocks are extended and closed as in the two-branch
    plan's function."""
    update, twin = track_lines_and_blocks(quiet_ms=1000), track_blocks(quiet_ms=1000)
    state, twin_state = FakeState(now=1_000), FakeState(now=1_000)
    chunks = [_messages([(1, 0, 11), (None, 2, 3)]), _messages([(0, 0, 10), (2, 1, 5)])]
    out = pd.concat(list(update((0,), iter(chunks), state)), ignore_index=True)
    assert list(out.columns) == OUTPUT_COLUMNS
    lines, blocks = out[out["kind"] == "line"], out[out["kind"] == "block"]
    assert list(zip(lines["partition"], lines["offset"])) == [(0, 10), (0, 11), (1, 5), (2, 3)]
    sent = pd.concat(chunks).set_index("offset")
    assert all(bytes(v) == sent.loc[o, "value"] for o, v in zip(lines["offset"], lines["value"]))
    assert lines["key"].iloc[3] is None and lines["block_id"].isna().all()

    expected = pd.concat(list(twin((0,), iter([_facts([(1, 0, 11)]), _facts([(0, 0, 10), (2, 1, 5)])]), twin_state)))
    assert [(b, list(e), c) for b, e, c in zip(blocks["block_id"], blocks["events"], blocks["closed"])] == [
        (b, list(e), c) for b, e, c in zip(expected["block_id"], expected["events"], expected["closed"])]
    assert state.value == twin_state.value and state.timeout == 1000

    state.now, state.hasTimedOut = 2_000, True  # a timer call: no lines, both blocks close
    closed = pd.concat(list(update((0,), iter([]), state)), ignore_index=True)
    assert set(closed["kind"]) == {"block"} and closed["closed"].all() and len(closed) == 2
    assert not state.exists


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
    assert set(json.loads(state.value[0])) == {"blk_2"} and state.timeout_at == t18 + 1_000 + 5_000


def test_an_unknown_block_clock_is_refused():
    with pytest.raises(ValueError, match="block clock"):
        track_blocks(1000, clock="wall")

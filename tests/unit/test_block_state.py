"""The block operator's state text (streaming/block_sessions._store and _load, version 3): every block's
head in columns, its events, vector sum and anomalous ids as a body that a call parses only when it
touches the block and otherwise writes back as it was; and state of version 2 (one JSON object) read on."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd

from logmesh.streaming import block_sessions, blocks
from logmesh.streaming.block_sessions import _end, _extend, _load, _store


class State:
    """The part of pyspark's GroupState that _load and _store use."""

    def __init__(self, value: tuple | None = None) -> None:
        self.value = value

    @property
    def exists(self) -> bool:
        return self.value is not None

    @property
    def get(self) -> tuple:
        return self.value

    def update(self, value: tuple) -> None:
        self.value = value


def _entry(events: list[str], seen: int, vector: float | None = None, anomalous: list[str] = (), cut=None,
           alerted: bool = False, label: int = 0) -> list:
    entry = blocks.new_entry(alerted)
    entry[blocks.EVENTS] += events
    entry[blocks.FIRST], entry[blocks.LAST] = "2005-06-03T15:42:50Z", "2005-06-03T15:42:51Z"
    entry[blocks.SEEN], entry[blocks.CUT] = seen, cut
    if vector is not None:
        blocks.add_lines(entry, [np.full(384, vector, np.float32)] * len(events), list(anomalous), label)
    return entry


def _bucket() -> dict[str, list]:
    return {"R02-M1-N0-C:J12-U11": _entry(["E12", "E7"], 1_000, 0.5, ["r1"], label=3),
            "R02-M1-N0-C:J12-U01": _entry(["E3"], 1_200, 0.25, cut=900, alerted=True),
            "no vector yet": _entry(["E9"], 1_300),  # its lines all failed to score: no sum
            'odd\tid\n"quoted" ü': _entry(["E1"], 1_400, 1.0)}


def test_the_state_round_trips_every_field_of_every_block():
    bucket, state = _bucket(), State()
    _store(state, bucket, [5_000, 6_000], {"gone": 700})
    assert state.value[0].startswith("logmesh block state v3\n")
    entries, clock, alerted = _load(state)
    assert clock == [5_000, 6_000] and alerted == {"gone": 700}
    assert list(entries) == list(bucket)
    assert [blocks.read(e) for e in entries.values()] == list(bucket.values())
    read = blocks.read(entries["R02-M1-N0-C:J12-U11"])
    assert np.allclose(blocks.mean_vector(read), 0.5) and read[blocks.ANOMALOUS] == ["r1"] and read[blocks.LABEL] == 3
    assert blocks.mean_vector(blocks.read(entries["no vector yet"])) is None
    _store(state, {}, None, {})
    assert _load(state) == ({}, None, {})


def test_a_call_parses_only_the_blocks_it_touches_and_writes_the_others_back_as_they_were():
    state = State()
    _store(state, _bucket(), [1_500, 1], {})
    before = state.value[0]
    entries, clock, _ = _load(state)
    facts = pd.DataFrame({"block_id": ["R02-M1-N0-C:J12-U11"], "template": ["E4"], "event_time": [""],
                          "record_ms": [1_500]})
    changed = _extend(entries, facts, 2, False)
    out, closed, _, clock = _end(entries, changed, 2, 1_000, False, 2_300, None, clock)
    # the changed block and the one the stream's clock closed (seen 1,300 + quiet 1,000 <= 2,300) are parsed;
    # the cut one is open again (the stream came back past its cut), its head changed, its body not read
    assert [(b, list(e), c, how) for b, e, c, _, _, how in out] == [
        ("R02-M1-N0-C:J12-U11", ["E12", "E7", "E4"], False, ""), ("no vector yet", ["E9"], True, "quiet")]
    assert list(closed) == ["no vector yet"]
    untouched = ["R02-M1-N0-C:J12-U01", 'odd\tid\n"quoted" ü']
    assert all(type(entries[b][blocks.EVENTS]) is str for b in untouched)  # never parsed
    _store(state, entries, clock, {})
    body = lambda text, i: text.split("\n")[2 + i]  # noqa: E731 - the i-th block's stored body
    assert [body(state.value[0], 1), body(state.value[0], 2)] == [body(before, 1), body(before, 3)]  # as they were
    again, _, _ = _load(state)
    assert list(again) == ["R02-M1-N0-C:J12-U11", *untouched]
    assert blocks.read(again["R02-M1-N0-C:J12-U11"])[blocks.EVENTS] == ["E12", "E7", "E4"]
    reopened = blocks.read(again["R02-M1-N0-C:J12-U01"])
    assert reopened[blocks.SEEN] == 2_300 and reopened[blocks.CUT] is None and reopened[blocks.EVENTS] == ["E3"]
    assert reopened[blocks.ALERTED] and np.allclose(blocks.mean_vector(reopened), 0.25)


def test_state_of_version_2_is_read_and_its_blocks_go_on():
    """A checkpoint written before version 3 (one JSON object with base64 vector sums) goes on: its blocks
    keep their stories, and the next call writes version 3."""
    bucket = _bucket()
    v2 = json.dumps({"v": 2, "blocks": bucket, "clock": [1_500, 1], "alerted": {"gone": 700}})
    state = State((v2,))
    entries, clock, alerted = _load(state)
    assert entries == bucket and clock == [1_500, 1] and alerted == {"gone": 700}
    _store(state, entries, clock, alerted)
    assert [blocks.read(e) for e in _load(state)[0].values()] == list(bucket.values())


def test_the_two_branch_state_function_gives_the_same_verdicts_whatever_the_state_holds():
    """track_blocks over three calls, its state stored and loaded between them as Spark does, against
    the same calls with the first state in version 2: the same summaries, the same final state."""
    update = block_sessions.track_blocks(quiet_ms=1_000)

    class Timed(State):
        hasTimedOut = False

        def __init__(self, value=None, now=0, watermark=0):  # type: ignore[no-untyped-def]
            super().__init__(value)
            self.now, self.watermark = now, watermark

        def getCurrentProcessingTimeMs(self) -> int:
            return self.now

        def getCurrentWatermarkMs(self) -> int:
            return self.watermark

        def setTimeoutDuration(self, ms: int) -> None:
            pass

    def facts(rows: list[tuple[str, str, int]]) -> pd.DataFrame:
        return pd.DataFrame({"block_id": [b for b, _, _ in rows], "template": [t for _, t, _ in rows],
                             "event_time": "", "partition": 0, "offset": range(len(rows)),
                             "record_ms": [ms for _, _, ms in rows]})
    calls = [facts([("b1", "E1", 1_000), ("b2", "E2", 1_000)]), facts([("b1", "E3", 1_500), ("b3", "E1", 1_600)]),
             facts([("b3", "E4", 2_700)])]
    bucket = _bucket()
    runs = []
    for first in (None, json.dumps({"v": 2, "blocks": bucket, "clock": None})):
        state, seen = Timed((first,) if first else None), []
        if first is None:
            _store(state, bucket, None, {})
        for i, rows in enumerate(calls):
            state.now, state.watermark = 10 * i, int(rows["record_ms"].max())
            seen += [tuple((b, list(e), c, how)) for out in update((0,), iter([rows]), state)
                     for b, e, c, how in zip(out["block_id"], out["events"], out["closed"], out["ended"])]
        runs.append((seen, [blocks.read(e) for e in _load(state)[0].values()], list(_load(state)[0])))
    assert runs[0] == runs[1]
    summaries, _, open_blocks = runs[0]
    assert ("b2", ["E2"], True, "quiet") in summaries and open_blocks == ["b3"]


def test_a_blocks_times_parse_to_the_timestamps_protobuf_gives():
    """blocks.timestamp (judging's parse of a block's first and last time) against Timestamp.FromJsonString,
    on what ToJsonString writes (0, 3, 6 and 9 fractional digits, before 1970, the last second of 9999) and
    on strings it does not write, which go to FromJsonString as before."""
    import pytest
    from google.protobuf.timestamp_pb2 import Timestamp

    from logmesh.streaming import work
    written = [Timestamp(seconds=s, nanos=n).ToJsonString() for s, n in (
        (0, 0), (1_117_838_570, 0), (1_117_838_570, 5_000_000), (1_117_838_570, 123_456_000),
        (1_117_838_570, 123_456_789), (-34_560_000, 1), (951_782_400, 999_000_000), (253_402_300_799, 999_999_999))]
    assert {len(w) for w in written} == {20, 24, 27, 30}  # no fraction, 3, 6 and 9 digits
    for value in [*written, "2005-06-03T15:42:50+01:00", "2005-06-03T15:42:50.1Z"]:
        assert blocks.timestamp(value) == work.timestamp(value), value
    assert blocks.timestamp("") is None and blocks.timestamp(None) is None
    with pytest.raises(ValueError):
        blocks.timestamp("2005-06-03 15:42:50")

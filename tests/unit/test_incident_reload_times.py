"""Incidents whose lines carry no event time (a log whose timestamps did not parse, the replica tests' lines)
have the history's recording times as first/last seen. Read back at a restart or a takeover, those wall-clock
times must not be taken for event times: a new incident of such lines opened afterwards stayed open only
until the next round, closed at once as a window older than the 'watermark' the reload took from the stored
incident (the fenced-write integration test found it). Real AnomalyHistory, IncidentBook and
MemoryIncidentStore."""
from __future__ import annotations

import time

from logmesh.scorer.analyst.grouping import OPEN
from logmesh.scorer.analyst.incident_store import MemoryIncidentStore
from logmesh.scorer.analyst.incidents import IncidentBook
from logmesh.scorer.history import AnomalyHistory
from logmesh.v1 import score_pb2
from test_incident_grouping import ANOMALY, line


def _untimed(record_id: str, block: str) -> score_pb2.Anomaly:
    """A line as the job writes one whose timestamp did not parse: no event_time."""
    entry = line(record_id, block, 0.0)
    entry.line.ClearField("event_time")
    assert entry.line.verdict == ANOMALY
    return entry


def _states(book: IncidentBook) -> dict[str, int]:
    found, _ = book.page(100, None, include_suppressed=True)
    return {i.session_keys[0]: i.state for i in found}


def test_incidents_without_event_times_stay_open_after_a_reload() -> None:
    store = MemoryIncidentStore()
    first_history = AnomalyHistory()
    first = IncidentBook(first_history, store, window_s=300.0).start()
    try:
        first_history.add([_untimed("r1", "blk_1")])
        assert first.wait_idle(10)
        (stored,) = first.page(10, None)[0]
        assert not any(e.HasField("event_time") for e in stored.evidence)  # its last_seen_time: the recording time
        assert abs(stored.last_seen_time.seconds - time.time()) < 60
    finally:
        first.stop()

    history = AnomalyHistory()  # a restart: the history entered again, the incident read back from the store
    history.add([_untimed("r1", "blk_1")])
    book = IncidentBook(history, store, window_s=300.0).start()
    try:
        assert book.wait_idle(10)
        history.add([_untimed("r2", "blk_2")])  # the round that opens its incident checks what went stale
        assert book.wait_idle(10)
        assert _states(book) == {"blk_1": OPEN, "blk_2": OPEN}  # without the fix: blk_2 CLOSED at once
    finally:
        book.stop()

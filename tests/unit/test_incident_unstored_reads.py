"""Readers of the incident book see only stored changes, also while a round is under way. A round opens a new
incident (update id 0 until the round numbers it) and then, outside the book's lock, asks the vector store and
the feedback book about it before it numbers and stores it: meanwhile ListIncidents, GetIncident and
WatchIncidents must not serve it, and a watcher must not be moved past changes it was not sent (the feed used to
stop at the first update id at or below the watcher's, which the unnumbered incident at the end is). Real
AnomalyHistory and IncidentBook (in-memory store); the suppression callback, the feedback book's hook, holds the
round at that point."""
from __future__ import annotations

import threading

from logmesh.scorer.analyst.incidents import IncidentBook
from logmesh.scorer.history import AnomalyHistory
from test_incident_grouping import T0, line
from waiting import wait_for


def test_an_incident_a_round_has_not_stored_is_not_served() -> None:
    hold, held, release = threading.Event(), threading.Event(), threading.Event()

    def suppression(incident) -> str:  # type: ignore[no-untyped-def]
        if hold.is_set() and incident.incident_id == "inc-000002":
            held.set()
            release.wait(10)
        return ""

    history = AnomalyHistory()
    book = IncidentBook(history, suppression=suppression).start()
    try:
        history.add([line("r1", "blk_1", T0)])
        assert book.wait_idle(10)
        first, _ = book.page(10, None)
        assert [(i.incident_id, i.update_id) for i in first] == [("inc-000001", 1)]

        hold.set()
        history.add([line("r2", "blk_2", T0 + 3600, node="10.0.0.2")])  # another node, an hour on: a new incident
        wait_for(held.is_set, 10, "the round to reach the suppression check")
        served, _ = book.page(10, None, include_suppressed=True)
        assert [i.incident_id for i in served] == ["inc-000001"], [(i.incident_id, i.update_id) for i in served]
        assert book.get("inc-000002") is None
        changes, last = book.changes_after(0, timeout=0)
        assert [i.incident_id for i in changes] == ["inc-000001"] and last == 1

        release.set()
        assert book.wait_idle(10)
        served, _ = book.page(10, None)  # the round also closed inc-000001 (the event time moved an hour on)
        assert sorted((i.incident_id, i.update_id) for i in served) == [("inc-000001", 3), ("inc-000002", 2)]
        changes, last = book.changes_after(1, timeout=0)
        assert [i.incident_id for i in changes] == ["inc-000002", "inc-000001"] and last == 3
    finally:
        release.set()
        book.stop()

"""Readers of the incident book see an incident a round is changing as it was last stored, until the round is
stored: ListIncidents, GetIncident and WatchIncidents must not serve the round's new content under the update
id of the old version (a watcher, or a page token, holding that id would then take the unstored content for the
stored one, and the stored change would come under an id it thinks it has), nor drop the incident from a page
while its new version is being written.

Real AnomalyHistory and IncidentBook. The round is held at two points: at the suppression check (the feedback
book's hook, outside the book's lock, before the round numbers its changes), and in the store's write (a
MemoryIncidentStore whose put waits on an event: a slow write, the fault a real store cannot be made to place
on cue)."""
from __future__ import annotations

import threading

from logmesh.scorer.analyst.incident_store import MemoryIncidentStore
from logmesh.scorer.analyst.incidents import IncidentBook
from logmesh.scorer.history import AnomalyHistory
from test_incident_grouping import T0, line
from waiting import wait_for


class SlowStore(MemoryIncidentStore):
    """A MemoryIncidentStore whose write waits while `hold` is set (until `release`)."""

    def __init__(self) -> None:
        super().__init__()
        self.hold, self.held, self.release = threading.Event(), threading.Event(), threading.Event()

    def put(self, incidents, cursor=None, cursor_ids=None) -> None:  # type: ignore[no-untyped-def,override]
        if self.hold.is_set():
            self.held.set()
            self.release.wait(10)
        super().put(incidents, cursor, cursor_ids)


def _served(book: IncidentBook) -> dict[str, tuple[int, list[str]]]:
    """What each reader serves of inc-000001: (update id, cited record ids)."""
    page, _ = book.page(10, None, include_suppressed=True)
    got = book.get("inc-000001")
    changes, _ = book.changes_after(0, timeout=0)
    out = {}
    for name, found in (("page", [i for i in page if i.incident_id == "inc-000001"]), ("get", [got] if got else []),
                        ("watch", [i for i in changes if i.incident_id == "inc-000001"])):
        out[name] = (found[0].update_id, sorted(e.record_id for e in found[0].evidence)) if found else None
    return out


def test_an_incident_a_round_changes_is_served_as_stored_until_the_round_is_stored() -> None:
    hold_check, at_check, release_check = threading.Event(), threading.Event(), threading.Event()

    def suppression(incident) -> str:  # type: ignore[no-untyped-def]
        if hold_check.is_set():
            at_check.set()
            release_check.wait(10)
        return ""

    history, store = AnomalyHistory(), SlowStore()
    book = IncidentBook(history, store, window_s=3600.0, suppression=suppression).start()
    stored_v1 = {"page": (1, ["r1"]), "get": (1, ["r1"]), "watch": (1, ["r1"])}
    try:
        history.add([line("r1", "blk_1", T0)])
        assert book.wait_idle(10)
        assert _served(book) == stored_v1

        hold_check.set()
        history.add([line("r2", "blk_1", T0 + 1)])  # the same block: the round changes inc-000001
        wait_for(at_check.is_set, 10, "the round to reach the suppression check", every=0.01)
        assert _served(book) == stored_v1  # not its new evidence under update 1

        store.hold.set()
        hold_check.clear()
        release_check.set()
        wait_for(store.held.is_set, 10, "the round to write", every=0.01)
        assert _served(book) == stored_v1  # numbered 2 but not stored: still the stored version, still listed

        store.release.set()
        assert book.wait_idle(10)
        assert _served(book) == {"page": (2, ["r1", "r2"]), "get": (2, ["r1", "r2"]), "watch": (2, ["r1", "r2"])}
        changes, last = book.changes_after(1, timeout=0)
        assert [(i.incident_id, i.update_id) for i in changes] == [("inc-000001", 2)] and last == 2
    finally:
        release_check.set()
        store.release.set()
        book.stop()

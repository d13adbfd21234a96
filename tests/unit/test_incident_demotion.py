"""A replica that loses the book with a round it could not store (the new owner's fence refused its write, or
the lease went in the middle of a round) must serve only what is stored: its memory still holds the unstored
changes, numbered with update ids the new owner gives to other changes. Real AnomalyHistory and IncidentBook;
the store is SharedStore (tests/unit/test_incident_cursor.py) that refuses writes on demand and hands its
follower what another owner stored, the lease a twin that can be lost (the broker-backed case:
tests/integration/test_incident_fencing.py, the stalled owner that wakes)."""
from __future__ import annotations

import threading

from logmesh.scorer.analyst.incidents import IncidentBook
from logmesh.scorer.history import AnomalyHistory
from logmesh.v1 import incident_pb2
from test_incident_cursor import Held, SharedStore, _entry
from waiting import wait_for


class FencedStore(SharedStore):
    def __init__(self) -> None:
        super().__init__()
        self.fenced = False
        self.others: list[incident_pb2.Incident] = []  # stored by the new owner, for the follower to read

    def put(self, incidents, cursor=None, cursor_ids=None) -> None:  # type: ignore[no-untyped-def]
        if self.fenced:
            raise RuntimeError("This instance has been fenced by a newer instance")
        super().put(incidents, cursor, cursor_ids)

    def follow(self, timeout: float) -> list:
        out, self.others = self.others, []
        return out


def _served(book: IncidentBook) -> dict[str, list[str]]:
    found, _ = book.page(100, None, include_suppressed=True)
    return {i.incident_id: sorted(e.record_id for e in i.evidence) for i in found}


def test_a_replica_that_loses_the_book_serves_only_what_was_stored() -> None:
    history, store, lease = AnomalyHistory(), FencedStore(), Held()
    book = IncidentBook(history, store, lease=lease).start()  # type: ignore[arg-type]
    try:
        history.add([_entry(1, 1, 0, 0)])
        assert book.wait_idle(10)
        assert _served(book) == {"inc-000001": ["r1-1"]}
        store.fenced = True  # another replica took the book over; this one has not noticed yet
        history.add([_entry(1, 2, 0, 1)])  # its round grows inc-000001 in memory; the write is refused
        wait_for(lambda: book.status.startswith("store failing"), 10, "the refused write")
        lease.owner.clear()  # the lease sees the loss
        # the new owner stores an incident of its own, under the next update id
        stored = store.load(threading.Event())
        theirs = incident_pb2.Incident(incident_id="inc-000002", update_id=stored[-1].update_id + 1,
                                       session_keys=["blk_9"])
        theirs.evidence.add(record_id="r9-1")
        SharedStore.put(store, [theirs])  # its producer, not the fenced one
        store.others.append(theirs)
        lease.on_change()  # wakes the book
        wait_for(lambda: "inc-000002" in _served(book), 10, "the follower to serve the new owner's incident")
        assert _served(book) == {"inc-000001": ["r1-1"], "inc-000002": ["r9-1"]}  # not r1-2: never stored
    finally:
        book.stop()

"""The incident book's cursor across a recreated anomalies topic (deleted and created again: offsets restart
at 0). Real AnomalyHistory (with its file store, for the reload) and IncidentBook; the store and the lease are
the in-memory twins of tests/unit/test_incident_cursor.py, with the end offsets the broker would report (the
broker-backed run: tests/integration/test_incident_recreated_topic.py)."""
from __future__ import annotations

from logmesh.scorer.analyst.incidents import IncidentBook
from logmesh.scorer.history import AnomalyHistory
from logmesh.scorer.state import FileHistoryStore
from test_incident_cursor import TOPIC, Held, SharedStore, _entry

P0 = f"{TOPIC}/0"


class EndsStore(SharedStore):
    """SharedStore that reports the anomalies partitions' end offsets, as TopicIncidentStore asks the broker."""

    def __init__(self, ends: dict[str, int]) -> None:
        super().__init__()
        self.ends = ends

    def anomaly_ends(self, partitions) -> dict[str, int]:  # type: ignore[no-untyped-def]
        return {p: self.ends[p] for p in partitions if p in self.ends}


def _cited(book: IncidentBook) -> list[str]:
    found, _ = book.page(100, None, include_suppressed=True)
    return sorted(e.record_id for i in found for e in i.evidence)


def _old() -> list:
    return [_entry(b, 1, 0, b) for b in range(3)]  # blocks 0-2 at offsets 0-2


def _new() -> list:
    return [_entry(10 + k, 1, 0, k) for k in range(2)]  # blocks 10-11 at offsets 0-1 of the new topic


def test_an_owner_follows_its_history_back_to_the_new_topics_start() -> None:
    history, store = AnomalyHistory(), EndsStore({})
    history.add(_old())
    book = IncidentBook(history, store, lease=Held()).start()  # type: ignore[arg-type]
    try:
        assert book.wait_idle(10)
        assert store.committed() == {P0: 3}
        history.rewind(P0, 0)  # the feed found the partition shorter than what it read
        history.add(_new())
        assert book.wait_idle(10)
        assert _cited(book) == ["r0-1", "r1-1", "r10-1", "r11-1", "r2-1"]
        assert store.committed() == {P0: 2}
    finally:
        book.stop()


def test_a_stored_cursor_beyond_the_partitions_end_restarts_it() -> None:
    """A former owner that had not noticed stored the old topic's cursor (3); the new topic ends at 2 and this
    replica's history read only the new topic."""
    store = EndsStore({P0: 2})
    store.put([], {P0: 3})
    history = AnomalyHistory()
    history.add(_new())
    book = IncidentBook(history, store, lease=Held()).start()  # type: ignore[arg-type]
    try:
        assert book.wait_idle(10)
        assert _cited(book) == ["r10-1", "r11-1"]  # without the check: both count as grouped
        assert store.committed() == {P0: 2}
    finally:
        book.stop()


def test_a_reloaded_history_knows_its_rewind_and_a_new_topic_cursor_groups_on(tmp_path) -> None:
    """The history's entries say where the offsets went back (a restart forgets the feed's rewind call); the
    stored cursor (1) is the new topic's, so the old topic's entries count as grouped and only r11 is new."""
    first = AnomalyHistory(store=FileHistoryStore(tmp_path / "history.bin"))
    first.add(_old())
    first.rewind(P0, 0)
    first.add(_new())
    del first
    history = AnomalyHistory(store=FileHistoryStore(tmp_path / "history.bin"))
    assert [(r.after_id, r.where, r.offset) for r in history.rewinds()] == [(3, P0, 0)]
    assert history.positions() == {P0: 2}  # the new topic's, not the old topic's highest
    store = EndsStore({P0: 2})
    store.put([], {P0: 1})
    book = IncidentBook(history, store, lease=Held()).start()  # type: ignore[arg-type]
    try:
        assert book.wait_idle(10)
        assert _cited(book) == ["r11-1"]
        assert store.committed() == {P0: 2}
    finally:
        book.stop()

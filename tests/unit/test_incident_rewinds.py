"""The incident book's cursor across a recreated anomalies topic (deleted and created again: offsets restart
at 0). Real AnomalyHistory (with its file store, for the reload) and IncidentBook; the store and the lease are
the in-memory twins of tests/unit/test_incident_cursor.py, with the end offsets the broker would report (the
broker-backed run: tests/integration/test_incident_recreated_topic.py)."""
from __future__ import annotations

import pytest

from logmesh.scorer.analyst.incidents import IncidentBook
from logmesh.scorer.history import AnomalyHistory
from logmesh.scorer.state import FileHistoryStore
from test_incident_cursor import TOPIC, Held, SharedStore, _entry

P0 = f"{TOPIC}/0"


class EndsStore(SharedStore):
    """SharedStore that reports the anomalies partitions' end offsets and the topics' ids (`ids`: topic -> id;
    set it anew to recreate a topic), as TopicIncidentStore asks the broker."""

    def __init__(self, ends: dict[str, int], ids: dict[str, str] | None = None) -> None:
        super().__init__()
        self.ends, self.ids = ends, dict(ids or {})

    def anomaly_ends(self, partitions) -> dict[str, int]:  # type: ignore[no-untyped-def]
        return {p: self.ends[p] for p in partitions if p in self.ends}

    def anomaly_topic_ids(self, topics) -> dict[str, str]:  # type: ignore[no-untyped-def]
        return {t: self.ids[t] for t in topics if t in self.ids}


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


def _four_new() -> list:
    return [_entry(10 + k, 1, 0, k) for k in range(4)]  # blocks 10-13 at offsets 0-3 of the new topic


@pytest.mark.parametrize("stored_id, grouped", [
    ("old-id", ["r10-1", "r11-1", "r12-1", "r13-1"]),  # the old topic's cursor (3): the new topic from its start
    ("new-id", ["r11-1", "r12-1", "r13-1"]),  # the new topic's cursor (1): on from there
    ("", ["r13-1"]),  # stored before the ids: within the end (4), taken for the new topic's, as before
])
def test_a_takeover_tells_an_old_topics_cursor_within_the_new_end_by_its_topic_id(stored_id: str,
                                                                                   grouped: list[str]) -> None:
    """A former owner stored a cursor below the new topic's end (4): 3 after the old topic's three entries (an
    owner that had not noticed), or 1 after the new topic's first. Not past the end, so only the topic id
    stored with it says which topic it counts in. This replica's history read the old topic, rewound, then read
    the new one."""
    history = AnomalyHistory()
    history.add(_old())
    history.rewind(P0, 0)
    history.add(_four_new())
    store = EndsStore({P0: 4}, {TOPIC: "new-id"})
    store.put([], {P0: 3 if stored_id != "new-id" else 1}, {P0: stored_id} if stored_id else None)
    book = IncidentBook(history, store, lease=Held()).start()  # type: ignore[arg-type]
    try:
        assert book.wait_idle(10)
        assert _cited(book) == grouped  # without the id: ["r13-1"] for the old topic's cursor too
        assert store.committed() == {P0: 4}
        assert store.cursor_topic_ids() == {P0: "new-id"}  # stored with the id from now on
    finally:
        book.stop()


def test_the_cursor_carries_the_id_of_the_topic_its_offsets_count_in() -> None:
    """An owner whose history has not noticed a recreation yet (it still reads the old topic's entries) stores
    its cursor with the old topic's id, though the topic now has another: the next owner must not take those
    offsets for the new topic's. Once the history rewinds, the cursor counts in the new topic and says so."""
    history, store = AnomalyHistory(), EndsStore({}, {TOPIC: "old-id"})
    history.add(_old()[:2])
    book = IncidentBook(history, store, lease=Held()).start()  # type: ignore[arg-type]
    try:
        assert book.wait_idle(10)
        assert store.committed() == {P0: 2} and store.cursor_topic_ids() == {P0: "old-id"}
        store.ids[TOPIC] = "new-id"  # deleted and created again; the history reads the old topic's last entry
        history.add(_old()[2:])
        assert book.wait_idle(10)
        assert store.committed() == {P0: 3} and store.cursor_topic_ids() == {P0: "old-id"}
        history.rewind(P0, 0)
        history.add(_new())
        assert book.wait_idle(10)
        assert store.committed() == {P0: 2} and store.cursor_topic_ids() == {P0: "new-id"}
        assert _cited(book) == ["r0-1", "r1-1", "r10-1", "r11-1", "r2-1"]
    finally:
        book.stop()

"""The incident book's cursor in the anomalies topic: a new owner whose history numbers a 3-partition topic's
anomalies in another order than the former owner's resumes each partition after the stored offsets, so every
alert is grouped once. Real AnomalyHistory and IncidentBook; the store and the lease are in-memory twins of
TopicIncidentStore's replica interface and IncidentLease (the broker-backed ones: tests/integration/
test_incident_fencing.py)."""
from __future__ import annotations

import threading

from logmesh.scorer.analyst.incident_store import MemoryIncidentStore
from logmesh.scorer.analyst.incidents import IncidentBook
from logmesh.scorer.history import AnomalyHistory
from test_incident_grouping import T0, line

TOPIC = "t.anomalies"


class SharedStore(MemoryIncidentStore):
    """MemoryIncidentStore with the replica calls TopicIncidentStore has (nothing to fence or follow here)."""

    def fence(self) -> None:
        pass

    def stop_following(self) -> None:
        pass

    def drop_producer(self) -> None:
        pass

    def follow(self, timeout: float) -> list:
        return []


class Held:
    """An IncidentLease twin that this replica holds from the start."""

    def __init__(self) -> None:
        self.owner = threading.Event()
        self.owner.set()
        self.assignments = 1
        self.rejoins = 0
        self.on_change = lambda: None

    def start(self) -> "Held":
        return self

    def rejoin(self) -> None:
        self.rejoins += 1

    def close(self) -> None:
        pass


def _entry(block: int, n: int, partition: int, offset: int):  # type: ignore[no-untyped-def]
    entry = line(f"r{block}-{n}", f"blk_{block}", T0 + 3600 * block, node=f"10.0.0.{block}")
    entry.source = f"{TOPIC}/{partition}/{offset}"
    return entry


def _topic() -> dict[int, list]:
    """partition -> its anomalies in offset order: blocks 0-8 spread over three partitions, two lines each."""
    out: dict[int, list] = {0: [], 1: [], 2: []}
    for block in range(9):
        p = block % 3
        for n in (1, 2):
            out[p].append(_entry(block, n, p, len(out[p])))
    return out


def test_grouped_prefix_stops_at_the_first_entry_past_the_cursor() -> None:
    history = AnomalyHistory()
    parts = _topic()
    history.add([parts[0][0], parts[1][0], parts[0][1], parts[2][0]])
    assert history.grouped_prefix({f"{TOPIC}/0": 2, f"{TOPIC}/1": 1}) == 3  # p2's offset 0 is not covered
    assert history.grouped_prefix({f"{TOPIC}/0": 2, f"{TOPIC}/1": 1, f"{TOPIC}/2": 1}) == 4
    assert history.grouped_prefix({}) == 0


def test_a_new_owner_with_another_numbering_groups_every_alert_once() -> None:
    parts = _topic()
    store = SharedStore()
    # the first owner read the topic as it landed: partitions interleaved; it grouped the first 9 entries
    interleaved = [e for k in range(6) for p in (0, 1, 2) for e in parts[p][k:k + 1]]
    first_history = AnomalyHistory()
    first_history.add(interleaved[:9])
    first = IncidentBook(first_history, store, lease=Held()).start()  # type: ignore[arg-type]
    assert first.wait_idle(10)
    first.stop()
    assert store.committed() == {f"{TOPIC}/0": 3, f"{TOPIC}/1": 3, f"{TOPIC}/2": 3}
    # the new owner's history read the whole topic at once, partition by partition: other ids for the same entries
    second_history = AnomalyHistory()
    second_history.add([e for p in (0, 1, 2) for e in parts[p]])
    second = IncidentBook(second_history, store, lease=Held()).start()  # type: ignore[arg-type]
    try:
        assert second.wait_idle(10)
        found, _ = second.page(100, None, include_suppressed=True)
        cited = sorted(e.record_id for i in found for e in i.evidence)
        assert cited == sorted(f"r{b}-{n}" for b in range(9) for n in (1, 2)), "each alert grouped exactly once"
        assert len(found) == 9 and all(len(i.anomaly_ids) == 2 for i in found)
        for incident in found:  # the topic's coordinates, the same whichever owner numbered and stored them
            b = int(incident.session_keys[0].removeprefix("blk_"))
            assert list(incident.anomaly_sources) == [e.source for e in parts[b % 3] if e.line.record_id.startswith(f"r{b}-")]
        assert sorted(i.incident_id for i in found) == [f"inc-{n:06d}" for n in range(1, 10)]
        assert store.committed() == {f"{TOPIC}/0": 6, f"{TOPIC}/1": 6, f"{TOPIC}/2": 6}
    finally:
        second.stop()

"""A stalled owner of an incident book whose write was refused (the new owner's init_transactions fenced its
producer) must not take the book back while its lease still believes in the assignment it lost: a takeover is
a fence of its own (init_transactions of the book's transactional id), and it would refuse the real owner's
next write. It demotes itself at once (follows the topic, serves only what is stored), asks its lease to rejoin
the group, and owns again only under a later assignment of the lease partition.

Real parts: IncidentBooks with their real AnomalyHistory and TopicIncidentStore on the real broker (one
transactional id, one book), so the refusal is the broker's. The leases are twins whose assignments the test
makes: the stale view (a lease that has not noticed its loss yet) is the fault a SIGSTOP cannot reliably place
between the refused write and the lease's own wake-up (the processes' version, where it races:
tests/integration/test_incident_fencing.py). The real IncidentLease's rejoin is checked on its own below."""
from __future__ import annotations

import logging
import threading
import time
import uuid

import pytest
from confluent_kafka import ConsumerGroupState

from anomaly_topic import BOOTSTRAP, fresh_topic, line
from incident_replicas_setup import stored_incidents
from logmesh.scorer.analyst.incident_lease import IncidentLease
from logmesh.scorer.analyst.incident_store import TopicIncidentStore
from logmesh.scorer.analyst.incidents import IncidentBook
from logmesh.scorer.history import AnomalyHistory
from test_incidents import fresh_compacted
from waiting import wait_for


class Lease:
    """An IncidentLease twin: the test gives and takes its assignments, as the broker would."""

    def __init__(self) -> None:
        self.owner = threading.Event()
        self.assignments = 0
        self.rejoins = 0
        self.on_change = lambda: None

    def gain(self) -> None:  # a new assignment of the partition to this member
        self.assignments += 1
        self.owner.set()
        self.on_change()

    def lose(self) -> None:
        self.owner.clear()
        self.on_change()

    def rejoin(self) -> None:
        self.rejoins += 1

    def start(self) -> "Lease":
        return self

    def close(self) -> None:
        pass


class Replica:
    """One replica of the book: its own history (fed the same anomalies topic's entries) and book."""

    def __init__(self, anomalies: str, incidents: str, transactional_id: str, book: str) -> None:
        self.anomalies = anomalies
        self.history, self.lease = AnomalyHistory(), Lease()
        store = TopicIncidentStore(BOOTSTRAP, incidents, transactional_id, owner=book)
        self.book = IncidentBook(self.history, store, window_s=3600.0, lease=self.lease).start()  # type: ignore[arg-type]

    def add(self, rid: str, block: str, offset: int) -> None:
        entry = line(rid, block_id=block)
        entry.source = f"{self.anomalies}/0/{offset}"
        self.history.add([entry])

    def served(self) -> dict[str, list[str]]:
        found, _ = self.book.page(100, None, include_suppressed=True)
        return {i.incident_id: sorted(e.record_id for e in i.evidence) for i in found}

    def owning(self) -> bool:
        return self.book.role == "owner" and self.book.status == "live"


def _refusals(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.getMessage().startswith("incidents not stored")]


def test_a_fenced_owner_takes_the_book_back_only_under_a_new_assignment(admin, caplog) -> None:
    caplog.set_level(logging.INFO, logger="logmesh.scorer.incidents")
    anomalies, incidents = fresh_topic(admin, "t-stale-owner"), fresh_compacted(admin)
    book, shared = f"t-stale-{uuid.uuid4().hex[:8]}", f"logmesh-incidents-t{uuid.uuid4().hex[:12]}"
    a = Replica(anomalies, incidents, shared, book)
    b = Replica(anomalies, incidents, shared, book)
    replicas = (a, b)

    def stored() -> dict[str, list[str]]:
        latest = {i.incident_id: sorted(e.record_id for e in i.evidence) for i in stored_incidents(incidents, book)}
        return dict(sorted(latest.items()))
    try:
        a.lease.gain()
        wait_for(a.owning, 60, "the first replica to take the book")
        for r in replicas:
            r.add("r1-1", "blk_1", 0)
        wait_for(lambda: b.served() == {"inc-000001": ["rec-r1-1"]}, 30, "the follower to serve the owner's incident")

        b.lease.gain()  # the broker gave the partition to b: a's session lapsed, a has not noticed (its lease holds)
        wait_for(b.owning, 60, "the second replica to take the book over (its fence)")
        b.add("r1-2", "blk_1", 1)
        wait_for(lambda: stored() == {"inc-000001": ["rec-r1-1", "rec-r1-2"]}, 30, "the new owner to store its round")

        a.add("r1-2", "blk_1", 1)  # the stale owner wakes with a round to write: refused by the broker
        wait_for(lambda: _refusals(caplog), 30, "the stale owner's write to be refused")
        assert "fenced" in _refusals(caplog)[0].__dict__.get("error", ""), _refusals(caplog)[0].__dict__
        # a takeover under the assignment it still believes in would fence b: it follows instead
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            assert a.book.role == "follower", f"the fenced replica took the book again ({a.book.status})"
            time.sleep(0.1)
        assert a.lease.owner.is_set() and a.lease.rejoins == 1 and a.book.status == "following"
        wait_for(lambda: a.served() == {"inc-000001": ["rec-r1-1", "rec-r1-2"]}, 30, "the demoted replica to serve b's")

        for r in replicas:  # the real owner's next rounds are stored: nobody fenced it
            r.add("r2-1", "blk_2", 2)
        wait_for(lambda: stored() == {"inc-000001": ["rec-r1-1", "rec-r1-2"], "inc-000002": ["rec-r2-1"]}, 30,
                 "the real owner to store its next round")
        wait_for(lambda: a.served() == stored(), 30, "the demoted replica to follow it")
        assert b.owning() and a.book.role == "follower"
        assert len(_refusals(caplog)) == 1, [r.__dict__.get("error") for r in _refusals(caplog)]

        # a later assignment: b's lease went (its process stopped), the broker gives the partition to a again
        b.lease.lose()
        a.lease.gain()
        wait_for(a.owning, 60, "the first replica to take the book over under its new assignment")
        for r in replicas:
            r.add("r2-2", "blk_2", 3)
        wait_for(lambda: stored() == {"inc-000001": ["rec-r1-1", "rec-r1-2"], "inc-000002": ["rec-r2-1", "rec-r2-2"]}, 30,
                 "the owner under the new assignment to store its round")
        wait_for(lambda: b.served() == stored(), 30, "the other replica to follow it")
        assert len(_refusals(caplog)) == 1
        updates = [i.update_id for i in stored_incidents(incidents, book)]
        assert updates == sorted(set(updates)), updates
    finally:
        for r in replicas:
            r.book.stop()


def _settled(admin, group: str, members: int) -> bool:  # type: ignore[no-untyped-def]
    """The broker's view: `group` is stable with `members` members, one of them assigned the lease partition."""
    described = admin.describe_consumer_groups([group])[group].result(10)
    held = [m for m in described.members if m.assignment and m.assignment.topic_partitions]
    return described.state == ConsumerGroupState.STABLE and len(described.members) == members and len(held) == 1


def test_a_lease_that_rejoins_is_assigned_anew(admin) -> None:
    """IncidentLease.rejoin on the real broker, static members as the scorer makes them: the partition is given
    up (the owner event clears) and the broker assigns it again: to the member that rejoined when it is alone
    (its assignment count moves on), and to one member only when there are two."""
    topic, book = fresh_compacted(admin), f"t-rejoin-{uuid.uuid4().hex[:8]}"
    changes: list[bool] = []
    a = IncidentLease(BOOTSTRAP, topic, book, session_timeout_s=6.0, member=f"t-a-{uuid.uuid4().hex[:6]}")
    a.on_change = lambda: changes.append(a.owner.is_set())
    a.start()
    other = None
    try:
        wait_for(a.owner.is_set, 30, "the lone member to hold the lease")
        assert a.assignments == 1
        a.rejoin()
        wait_for(lambda: a.assignments == 2 and a.owner.is_set(), 30, "the lone member to be assigned again")
        assert changes == [True, False, True]

        other = IncidentLease(BOOTSTRAP, topic, book, session_timeout_s=6.0, member=f"t-b-{uuid.uuid4().hex[:6]}")
        other.start()
        # the second member joins (the group settles with both); the sticky assignor leaves the partition where it is
        wait_for(lambda: _settled(admin, a.group, 2), 30, "the second member to join the group")
        assert a.owner.is_set() and not other.owner.is_set() and a.assignments == 2
        a.rejoin()
        wait_for(lambda: a.owner.is_set() != other.owner.is_set(), 30, "one member to hold the lease again")
        time.sleep(3)
        assert a.owner.is_set() != other.owner.is_set()
        assert (a.assignments, other.assignments) in ((3, 0), (2, 1)), (a.assignments, other.assignments)
        assert False in changes[3:]  # a gave the partition up before whoever holds it now was given it
    finally:
        a.close()
        if other is not None:
            other.close()

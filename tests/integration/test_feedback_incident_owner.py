"""The FeedbackBook of a replica numbers labels only while its incident book may be owned there, by the book's
own rule (IncidentBook.owning_assignment), not by the lease's owner event: a replica whose incident write was
refused (fenced) demotes itself and owns again only under a later lease assignment, while its lease may still
say it holds the partition. And a label write refused as fenced demotes the book the same way: the replica does
not fence the labels' writer back from the real owner under the assignment it lost.

Real parts: per replica an AnomalyHistory, an IncidentBook over a TopicIncidentStore and a FeedbackBook over a
FeedbackTopic, all on the real broker (one incident transactional id, so the refusals are the broker's), wired
as serve wires them (FeedbackBook.attach). The leases are the twins of test_incident_stale_owner.py, whose
assignments the test makes: a lease that has not noticed its loss is the fault a SIGSTOP cannot place on cue."""
from __future__ import annotations

import time
import uuid

import pytest

from anomaly_topic import BOOTSTRAP, fresh_topic, line
from logmesh.scorer.analyst.feedback import FeedbackBook, FeedbackUnavailable
from logmesh.scorer.analyst.feedback_topic import FeedbackTopic
from logmesh.scorer.analyst.incident_store import TopicIncidentStore
from logmesh.scorer.analyst.incidents import IncidentBook
from logmesh.scorer.history import AnomalyHistory
from logmesh.v1 import feedback_pb2 as fpb
from test_incident_stale_owner import Lease
from test_incidents import fresh_compacted
from waiting import wait_for


class Replica:
    """One scorer replica's history, incident book and feedback book (the book's lease a twin)."""

    def __init__(self, anomalies: str, incidents: str, feedback: str, transactional_id: str, book: str) -> None:
        self.anomalies = anomalies
        self.history, self.lease = AnomalyHistory(), Lease()
        store = TopicIncidentStore(BOOTSTRAP, incidents, transactional_id, owner=book)
        self.book = IncidentBook(self.history, store, window_s=3600.0, lease=self.lease)  # type: ignore[arg-type]
        self.labels = FeedbackBook(FeedbackTopic(BOOTSTRAP, feedback), self.history.find)
        self.labels.attach(self.book, replicas=True)
        self.book.start()
        self.labels.start()

    def add(self, tag: str, block: str, offset: int) -> None:
        entry = line(tag, block_id=block)
        entry.source = f"{self.anomalies}/0/{offset}"
        self.history.add([entry])

    def label(self, tag: str) -> str:
        stored, _ = self.labels.submit(fpb.Feedback(record_id=f"rec-{tag}", label=fpb.FEEDBACK_LABEL_FALSE_ALARM,
                                                    scope=fpb.FEEDBACK_SCOPE_ITEM,
                                                    action=fpb.FEEDBACK_ACTION_LEARN), "t")
        return stored.feedback_id

    def owning(self) -> bool:
        return self.book.role == "owner" and self.book.status == "live"

    def stop(self) -> None:
        self.labels.close()
        self.book.stop()


def _scene(admin, prefix: str) -> tuple[Replica, Replica, str]:  # type: ignore[no-untyped-def]
    anomalies, incidents, feedback = fresh_topic(admin, prefix), fresh_compacted(admin), fresh_compacted(admin)
    book, shared = f"{prefix}-{uuid.uuid4().hex[:8]}", f"logmesh-incidents-t{uuid.uuid4().hex[:12]}"
    a = Replica(anomalies, incidents, feedback, shared, book)
    b = Replica(anomalies, incidents, feedback, shared, book)
    assert a.labels.wait_loaded(30) and b.labels.wait_loaded(30)
    return a, b, feedback


def _stays_follower(r: Replica, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        assert r.book.role == "follower", f"the barred replica took the book again ({r.book.status})"
        time.sleep(0.1)


def _stored_ids(feedback: str) -> list[str]:
    return [fb.feedback_id for fb in FeedbackTopic(BOOTSTRAP, feedback).read_all()]


def test_a_replica_whose_incident_write_was_fenced_takes_no_labels(admin) -> None:
    a, b, feedback = _scene(admin, "t-fb-owner")
    try:
        a.lease.gain()
        wait_for(a.owning, 60, "the first replica to take the book")
        for r in (a, b):
            r.add("o1", "blk_1", 0)
        assert a.label("o1") == "fb-000001"

        b.lease.gain()  # the broker gave the partition to b; a's lease has not noticed (its owner event holds)
        wait_for(b.owning, 60, "the second replica to take the book over")
        a.add("o2", "blk_1", 1)  # a's round is refused: its book demotes itself, barred under assignment 1
        wait_for(lambda: a.book.role == "follower" and a.lease.rejoins == 1, 30, "the stale owner's write refused")
        assert a.lease.owner.is_set() and a.book.owning_assignment() == 0

        with pytest.raises(FeedbackUnavailable, match="only the owner numbers labels"):
            a.label("o1")  # a lease-based owner check took it, fencing the real owner's label writer
        b.add("o2", "blk_1", 1)
        assert b.label("o1") == "fb-000002"
        assert b.label("o1") == "fb-000003"  # nobody fenced b's writer in between
        assert _stored_ids(feedback) == ["fb-000001", "fb-000002", "fb-000003"]

        b.lease.lose()  # a later assignment: a owns the book again, and numbers after every stored label
        a.lease.gain()
        wait_for(a.owning, 60, "the first replica to own under its new assignment")
        assert a.label("o1") == "fb-000004"
    finally:
        a.stop()
        b.stop()


def test_a_fenced_label_write_demotes_the_replica_under_its_assignment(admin) -> None:
    a, b, feedback = _scene(admin, "t-fb-fenced")
    try:
        a.lease.gain()
        wait_for(a.owning, 60, "the first replica to take the book")
        for r in (a, b):
            r.add("f1", "blk_1", 0)
        assert a.label("f1") == "fb-000001"  # a's label writer fenced and read under assignment 1

        b.lease.gain()  # a's lease has not noticed its loss; a's book writes nothing (no round to store)
        wait_for(b.owning, 60, "the second replica to take the book over")
        assert b.label("f1") == "fb-000002"  # b's writer fences a's

        with pytest.raises(FeedbackUnavailable, match="fenced"):
            a.label("f1")  # refused by the broker: nothing stored, and the incident book is told
        wait_for(lambda: a.book.role == "follower" and a.lease.rejoins == 1, 30, "the replica to demote itself")
        assert a.book.owning_assignment() == 0 and a.lease.owner.is_set()
        with pytest.raises(FeedbackUnavailable, match="only the owner numbers labels"):
            a.label("f1")  # no fence of its own under the assignment it lost
        _stays_follower(a, 3)
        assert b.label("f1") == "fb-000003" and b.owning()  # b's writer and book were not fenced back
        assert _stored_ids(feedback) == ["fb-000001", "fb-000002", "fb-000003"]

        b.lease.lose()
        a.lease.gain()
        wait_for(a.owning, 60, "the first replica to own under its new assignment")
        assert a.label("f1") == "fb-000004"
    finally:
        a.stop()
        b.stop()

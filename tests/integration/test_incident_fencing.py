"""Replicas of one incident book across a stalled owner and a multi-partition anomalies topic, on two real
`logmesh serve scorer` processes and the real broker (tests/incident_replicas_setup.py).

- A stalled owner (SIGSTOP: a real fault; its session lapses, the other replica takes the book over) that
  wakes (SIGCONT) with a label submission pending must not store it under an id the new owner gave: every
  feedback id in the topic is unique, and the woken owner's pending submission fails (UNAVAILABLE) or gets an
  id of its own.
- With a 3-partition anomalies topic each replica's history numbers the anomalies its own way; a new owner
  resumes each partition after the book's committed offsets, so every alert is grouped exactly once across
  the takeover (the former owner's highest history id would skip some and regroup others), and each
  incident names its anomalies by their topic coordinates (anomaly_sources), the same whoever grouped them."""
from __future__ import annotations

import collections
import signal
import time
import uuid

import grpc
import pytest

from anomaly_topic import BOOTSTRAP, line
from incident_replicas_setup import LEASE_S, replica_scene, written_sources
from logmesh.scorer.analyst.feedback_topic import FeedbackTopic
from logmesh.v1 import feedback_pb2 as fpb, feedback_service_pb2 as fspb
from test_incidents import fresh_compacted
from waiting import wait_for


def _blocks(n: int) -> list[str]:
    return [f"blk_{uuid.uuid4().int % 10**12}" for _ in range(n)]


def test_a_stalled_owner_that_wakes_cannot_reuse_a_feedback_id(admin, trained_models, embedder_server,
                                                                tmp_path) -> None:
    with replica_scene(admin, trained_models, embedder_server.address, tmp_path, "t-fencing") as scene:
        replicas, writer, topics = scene.replicas, scene.writer, scene.topics
        stalled = None
        try:
            wait_for(lambda: sum(r.owns() for r in replicas) == 1, 30, "one replica to own the book")
            owner, other = sorted(replicas, key=lambda r: not r.owns())
            blocks = _blocks(3)
            writer.write([line(f"{b}-1", block_id=b) for b in blocks])
            wait_for(lambda: len(other.incidents()) == 3, 30, "the follower to serve three incidents")
            ids = sorted(i.incident_id for i in other.incidents())
            first = owner.label(ids[0])
            wait_for(lambda: other.labels() == [first.feedback_id], 10, "the follower to serve the label")

            wait_for(lambda: all(i.notified_targets for i in other.incidents()) and len(scene.notified()) == 3, 30,
                     "the owner to notify and mark its incidents")
            owner.process.send_signal(signal.SIGSTOP)
            stalled = owner
            # sent to the stopped process: it waits in its socket until SIGCONT, then runs as a stale owner
            pending = owner.feedback.SubmitFeedback.future(fspb.SubmitFeedbackRequest(feedback=fpb.Feedback(
                incident_id=ids[1], label=fpb.FEEDBACK_LABEL_FALSE_ALARM, scope=fpb.FEEDBACK_SCOPE_ITEM,
                action=fpb.FEEDBACK_ACTION_LEARN, comment="from the stalled owner")), timeout=120)
            wait_for(other.owns, LEASE_S * 6, "the follower to take the book over from the stalled owner")
            taken = other.label(ids[2])
            assert int(taken.feedback_id[3:]) > int(first.feedback_id[3:])

            owner.process.send_signal(signal.SIGCONT)
            stalled = None
            try:
                woke = pending.result(90)
                outcome = woke.feedback.feedback_id
            except grpc.RpcError as exc:
                assert exc.code() == grpc.StatusCode.UNAVAILABLE, exc.details()
                outcome = f"refused: {exc.details()}"
            # the woken replica learns it lost the lease, and refuses labels from then on
            wait_for(lambda: not owner.owns(), LEASE_S * 6, "the woken replica to see it follows")
            with pytest.raises(grpc.RpcError) as refused:
                owner.label(ids[1])
            assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
            last = other.label(ids[1])

            stored = FeedbackTopic(BOOTSTRAP, topics["feedback"]).read_all()
            counted = collections.Counter(fb.feedback_id for fb in stored)
            assert all(n == 1 for n in counted.values()), f"a feedback id stored twice: {counted} ({outcome})"
            expected = {first.feedback_id, taken.feedback_id, last.feedback_id}
            assert expected <= set(counted) and len(counted) == 3 + (not outcome.startswith("refused"))
            wait_for(lambda: other.labels() == sorted(counted) and owner.labels() == sorted(counted), 15,
                     "both replicas to serve every stored label")
            # and no incident was notified twice (the woken owner's notifier had nothing left to send)
            notified = scene.notified()
            assert all(n == 1 for n in notified.values()), f"notified twice: {notified}"
            print(f"stalled owner's pending label: {outcome}")
        finally:
            if stalled is not None:  # before the scene stops it
                stalled.process.send_signal(signal.SIGCONT)


def test_takeover_resumes_each_partition_of_a_three_partition_topic(admin, trained_models, embedder_server,
                                                                    tmp_path) -> None:
    written: dict[str, list[str]] = collections.defaultdict(list)  # block -> its lines' record ids

    def write(lines: list[tuple[str, int]]) -> None:
        scene.writer.write([line(f"{b}-{n}", block_id=b) for b, n in lines])
        for b, n in lines:
            written[b].append(f"rec-{b}-{n}")

    with replica_scene(admin, trained_models, embedder_server.address, tmp_path, "t-partitions", partitions=3,
                       names=("a",)) as scene:
        a = scene.replicas[0]
        wait_for(a.owns, 30, "the first replica to own the book")
        early = _blocks(9)  # keyed by record id: spread over the three partitions
        for chunk in (early[:3], early[3:6], early[6:]):  # a reads each as it lands, interleaving partitions
            write([(b, 1) for b in chunk])
            wait_for(lambda: {b for i in a.incidents() for b in i.session_keys} >= set(chunk), 30,
                     "the owner to group the alerts")
        # notified and marked so (else a new owner sends it again: at least once, by design)
        wait_for(lambda: all(i.notified_targets for i in a.incidents()) and len(scene.notified()) == 9, 30,
                 "the owner to notify and mark its incidents")
        grouped_by_a = {i.session_keys[0]: list(i.anomaly_sources) for i in a.incidents()}
        assert len(grouped_by_a) == 9 and all(len(s) == 1 and s[0] for s in grouped_by_a.values()), grouped_by_a
        a.process.send_signal(signal.SIGKILL)
        a.process.wait(10)
        late = _blocks(6)
        write([(b, 1) for b in late] + [(b, 2) for b in early[:6]])
        # b reads the whole topic only now, partition by partition: its history ids are not a's
        b = scene.start("b")
        wait_for(b.owns, LEASE_S * 6, "the second replica to take the book over")
        everything = {r for records in written.values() for r in records}

        def grouped() -> bool:
            found = b.incidents()
            return {e.record_id for i in found for e in i.evidence} >= everything
        wait_for(grouped, 60, "the new owner to group every alert")
        time.sleep(2)  # room for a wrong second grouping to land
        after = b.incidents()
        assert len(after) == len(written) == 15
        at = written_sources(scene.topics["anomalies"], 3, len(everything))
        for incident in after:
            assert len(incident.session_keys) == 1, incident.session_keys
            block = incident.session_keys[0]
            cited = sorted(e.record_id for e in incident.evidence)
            assert cited == sorted(written[block]), f"{block}: grouped {cited}, written {written[block]}"
            assert len(incident.anomaly_ids) == len(written[block])
            # named by where they lie in the topic, as a named them: not by b's history ids
            assert sorted(incident.anomaly_sources) == sorted(at[r] for r in written[block]), block
            assert incident.anomaly_sources[:len(grouped_by_a.get(block, []))] == grouped_by_a.get(block, [])
        numbers = sorted(int(i.incident_id[4:]) for i in after)
        assert numbers == list(range(1, 16)), numbers
        notified = scene.notified()
        assert all(n == 1 for n in notified.values()) and len(notified) == 15, notified


def test_an_owner_that_has_not_noticed_its_loss_cannot_store_under_a_given_id(admin) -> None:
    """The write path a stall can leave: a replica past its owner check when the other took the book over. Two
    FeedbackBooks on the real broker that both believe they own the book (`owner` always True: the stale
    lease view is the fault a SIGSTOP cannot reliably place between the check and the write)."""
    from logmesh.scorer.analyst.feedback import FeedbackBook, FeedbackUnavailable
    from logmesh.v1 import score_pb2

    topic = fresh_compacted(admin)
    shared = f"logmesh-incidents-t{uuid.uuid4().hex[:8]}-feedback"
    flagged = [score_pb2.Anomaly(id=1, line=score_pb2.ScoreResult(record_id="r1", score=0.9))]

    def find(record_id: str = "", block_id: str = "") -> list:
        return flagged if record_id == "r1" else []

    def label(book: FeedbackBook) -> str:
        stored, _ = book.submit(fpb.Feedback(record_id="r1", label=fpb.FEEDBACK_LABEL_FALSE_ALARM,
                                             scope=fpb.FEEDBACK_SCOPE_ITEM, action=fpb.FEEDBACK_ACTION_LEARN), "t")
        return stored.feedback_id

    books = []
    for _ in range(2):
        book = FeedbackBook(FeedbackTopic(BOOTSTRAP, topic, transactional_id=shared), find)
        book.owner = lambda: True
        books.append(book.start())
    stale, new = books
    try:
        assert all(b.wait_loaded(30) for b in books)
        assert label(stale) == "fb-000001"
        assert label(new) == "fb-000002"  # the new owner fenced the stale one's producer, then read to the end
        with pytest.raises(FeedbackUnavailable, match="nothing was stored"):
            label(stale)  # its producer is fenced: the stale id it numbered is not stored
        assert label(stale) == "fb-000003"  # it fences and reads again first: no id given twice
        with pytest.raises(FeedbackUnavailable):
            label(new)
        assert label(new) == "fb-000004"
        ids = [fb.feedback_id for fb in FeedbackTopic(BOOTSTRAP, topic).read_all()]
        assert ids == ["fb-000001", "fb-000002", "fb-000003", "fb-000004"]
    finally:
        for b in books:
            b.close()

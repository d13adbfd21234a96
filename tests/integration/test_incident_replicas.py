"""Two scorer replicas of one incident book (`--incidents-book`), as two real `logmesh serve scorer` processes
on the real broker (shared anomalies, incidents and feedback topics; each its own state dir), notifying a real
HTTP receiver: exactly one owns the book (groups, numbers, notifies), the other serves the owner's incidents;
the owner is killed (SIGKILL: no goodbye to the broker), the other takes the book over within the lease
timeout, numbers its incidents after every id the topic holds, groups every alert once, and notifies no
incident a second time."""
from __future__ import annotations

import collections
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import grpc
import httpx
import pytest

from anomaly_topic import AnomalyWriter, fresh_topic, line
from llm_server import free_port as _port
from logmesh.client import IncidentClient, ScorerClient
from logmesh.v1 import feedback_pb2 as fpb, feedback_service_pb2 as fspb, feedback_service_pb2_grpc as fsgrpc
from test_incidents import fresh_compacted
from waiting import wait_for
from webhook_receiver import WebhookReceiver

LOGMESH = str(Path(sys.executable).with_name("logmesh"))
LEASE_S = 6.0  # the broker's group.min.session.timeout.ms (6 s by default) is the least it takes


class Replica:
    def __init__(self, name: str, models: Path, embedder: str, topics: dict[str, str], book: str, state: Path,
                 hook: str) -> None:
        self.name, self.port, self.metrics = name, _port(), _port()
        state.mkdir(parents=True)
        self.log = state.parent / f"{name}.log"
        cmd = [LOGMESH, "serve", "scorer", "--port", str(self.port), "--metrics-port", str(self.metrics),
               "--model-dir", str(models), "--embedder", embedder, "--reload-interval", "3600",
               "--state-dir", str(state), "--anomalies-topic", topics["anomalies"],
               "--incidents-topic", topics["incidents"], "--feedback-topic", topics["feedback"],
               "--incidents-book", book, "--incident-lease-timeout", str(LEASE_S),
               "--notify-url", hook, "--notify-wait", "0"]
        self.process = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=self.log.open("wb"))
        ScorerClient(f"127.0.0.1:{self.port}").wait_until_serving(60)
        self.client = IncidentClient(f"127.0.0.1:{self.port}")
        self.feedback = fsgrpc.FeedbackServiceStub(self.client.channel)

    def label(self, incident_id: str) -> fpb.Feedback:
        return self.feedback.SubmitFeedback(fspb.SubmitFeedbackRequest(feedback=fpb.Feedback(
            incident_id=incident_id, label=fpb.FEEDBACK_LABEL_TRUE_ALARM, scope=fpb.FEEDBACK_SCOPE_ITEM,
            action=fpb.FEEDBACK_ACTION_LEARN)), timeout=30).feedback

    def labels(self) -> list[str]:
        reply = self.feedback.ListFeedback(fspb.ListFeedbackRequest(page_size=100), timeout=10)
        return sorted(f.feedback_id for f in reply.feedback)

    def owns(self) -> bool:
        text = httpx.get(f"http://127.0.0.1:{self.metrics}/metrics", timeout=5).text
        return "logmesh_incident_book_owner 1.0" in text

    def incidents(self) -> list:
        found, _ = self.client.list(10_000, include_suppressed=True)
        return found

    def stop(self) -> None:
        self.client.close()
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                self.process.kill()


def _notified(receiver: WebhookReceiver) -> collections.Counter:
    with receiver.lock:
        return collections.Counter(body["groupLabels"]["incident_id"] for _, body in receiver.posts)


def _sessions(incidents) -> set[str]:  # type: ignore[no-untyped-def]
    return {s for i in incidents for s in i.session_keys}


def test_one_replica_owns_the_book_and_the_other_takes_over_when_it_dies(
        admin, trained_models, embedder_server, tmp_path) -> None:
    topics = {"anomalies": fresh_topic(admin, "t-replicas"), "incidents": fresh_compacted(admin),
              "feedback": fresh_compacted(admin)}
    book = f"t-book-{uuid.uuid4().hex[:8]}"
    writer = AnomalyWriter(topics["anomalies"])
    with WebhookReceiver() as receiver:
        replicas = [Replica(n, trained_models, embedder_server.address, topics, book, tmp_path / n / "state",
                            receiver.url()) for n in ("a", "b")]
        try:
            wait_for(lambda: sum(r.owns() for r in replicas) == 1, 30, "one replica to own the book")
            owner, other = sorted(replicas, key=lambda r: not r.owns())
            first = [f"blk_{uuid.uuid4().int % 10**12}" for _ in range(3)]
            writer.write([line(f"{b}-1", block_id=b) for b in first])
            # the owner groups and notifies; the follower serves the same incidents from the topic
            wait_for(lambda: _sessions(other.incidents()) >= set(first), 30, "the follower to serve the incidents")
            wait_for(lambda: len(_notified(receiver)) == 3, 30, "three notifications")
            # each incident records the webhook that had it, and the follower serves that too
            wait_for(lambda: all(i.notified_targets for i in other.incidents()), 30, "the follower to see them notified")
            before = {i.incident_id: i for i in owner.incidents()}
            assert set(before) == {i.incident_id for i in other.incidents()} and len(before) == 3
            assert not other.owns()
            # labels: the owner numbers them, the follower refuses (retryable) and serves the owner's
            some = sorted(before)[0]
            with pytest.raises(grpc.RpcError) as refused:
                other.label(some)
            assert refused.value.code() == grpc.StatusCode.UNAVAILABLE and "owns" in refused.value.details()
            first_label = owner.label(some)
            wait_for(lambda: other.labels() == [first_label.feedback_id], 10, "the follower to serve the label")

            owner.process.send_signal(signal.SIGKILL)
            owner.process.wait(10)
            killed = time.monotonic()
            later = [f"blk_{uuid.uuid4().int % 10**12}" for _ in range(2)]
            writer.write([line(f"{b}-1", block_id=b) for b in later] + [line(f"{first[0]}-2", block_id=first[0])])
            wait_for(other.owns, LEASE_S * 6, "the follower to take the book over")
            took = time.monotonic() - killed
            wait_for(lambda: _sessions(other.incidents()) >= set(first + later) and len(_notified(receiver)) == 5,
                     30, "the new owner to group and notify the new alerts")
            time.sleep(2)  # room for a wrong second notification of the old incidents to arrive
            after = other.incidents()
            notified = _notified(receiver)
            assert all(n == 1 for n in notified.values()), f"notified twice: {notified}"
            assert set(notified) == {i.incident_id for i in after}
            numbers = sorted(int(i.incident_id.removeprefix("inc-")) for i in after)
            assert len(numbers) == len(set(numbers)) == 5
            fresh = [i for i in after if i.incident_id not in before]
            assert len(fresh) == 2 and min(int(i.incident_id[4:]) for i in fresh) > max(
                int(i[4:]) for i in before), "a new owner numbers after every id the topic holds"
            grown = [i for i in after if first[0] in i.session_keys]
            assert len(grown) == 1 and grown[0].incident_id in before and len(grown[0].anomaly_ids) == 2
            ids = [a for i in after for a in i.anomaly_ids]
            assert len(ids) == len(set(ids)) == 6, "every alert grouped once across the takeover"
            second_label = other.label(fresh[0].incident_id)
            assert int(second_label.feedback_id[3:]) > int(first_label.feedback_id[3:])
            assert other.labels() == sorted([first_label.feedback_id, second_label.feedback_id])
            print(f"takeover after SIGKILL: {took:.1f} s (lease timeout {LEASE_S:g} s)")
        finally:
            for r in replicas:
                r.stop()

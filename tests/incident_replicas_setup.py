"""Replicas of one incident book for the integration tests: real `logmesh serve scorer` processes on the real
broker sharing fresh anomalies, incidents and feedback topics and one `--incidents-book` (each its own state
dir), notifying one real HTTP receiver. tests/integration/test_incident_replicas.py and
test_incident_fencing.py build their scenes with `replica_scene`."""
from __future__ import annotations

import collections
import subprocess
import sys
import time
import uuid
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import httpx
from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, TopicPartition

from anomaly_topic import BOOTSTRAP, AnomalyWriter, fresh_topic
from llm_server import free_port
from logmesh.client import IncidentClient, ScorerClient
from logmesh.v1 import feedback_pb2 as fpb, feedback_service_pb2 as fspb, feedback_service_pb2_grpc as fsgrpc, score_pb2
from test_incidents import fresh_compacted
from waiting import stop_process
from webhook_receiver import WebhookReceiver

LOGMESH = str(Path(sys.executable).with_name("logmesh"))
LEASE_S = 6.0  # the broker's group.min.session.timeout.ms (6 s by default) is the least it takes


class Replica:
    def __init__(self, name: str, models: Path, embedder: str, topics: dict[str, str], book: str, state: Path,
                 hook: str, extra: tuple[str, ...] = ()) -> None:
        self.name, self.port, self.metrics = name, free_port(), free_port()
        state.mkdir(parents=True)
        self.log = state.parent / f"{name}.log"
        cmd = [LOGMESH, "serve", "scorer", "--port", str(self.port), "--metrics-port", str(self.metrics),
               "--model-dir", str(models), "--embedder", embedder, "--reload-interval", "3600",
               "--state-dir", str(state), "--anomalies-topic", topics["anomalies"],
               "--incidents-topic", topics["incidents"], "--feedback-topic", topics["feedback"],
               "--incidents-book", book, "--incident-lease-timeout", str(LEASE_S),
               "--notify-url", hook, "--notify-wait", "0", *extra]
        self.process = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=self.log.open("wb"))
        self.client = IncidentClient(f"127.0.0.1:{self.port}")
        self.feedback = fsgrpc.FeedbackServiceStub(self.client.channel)

    def wait_serving(self) -> "Replica":
        ScorerClient(f"127.0.0.1:{self.port}").wait_until_serving(60)
        return self

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
        stop_process(self.process, 20)


@dataclass
class ReplicaScene:
    """The shared topics, the book's name, a writer of the anomalies topic, the receiver and the replicas."""
    models: Path
    embedder: str
    state: Path
    topics: dict[str, str]
    book: str
    writer: AnomalyWriter
    receiver: WebhookReceiver
    replicas: list[Replica] = field(default_factory=list)
    extra: tuple[str, ...] = ()  # more `logmesh serve scorer` options, for every replica

    def start(self, name: str, wait: bool = True) -> Replica:
        """One more replica of the book (`name` names its state dir under the scene's), serving unless `wait` is
        False (then the caller waits: Replica.wait_serving)."""
        replica = Replica(name, self.models, self.embedder, self.topics, self.book, self.state / name / "state",
                          self.receiver.url(), self.extra)
        self.replicas.append(replica)
        return replica.wait_serving() if wait else replica

    def notified(self) -> collections.Counter:
        """incident id -> how many notifications the receiver accepted for it."""
        with self.receiver.lock:
            return collections.Counter(body["groupLabels"]["incident_id"] for _, body in self.receiver.posts)


@contextmanager
def replica_scene(admin, models: Path, embedder: str, state: Path, prefix: str, partitions: int = 1,
                  names: tuple[str, ...] = ("a", "b"), extra: tuple[str, ...] = ()
                  ) -> Iterator[ReplicaScene]:  # type: ignore[no-untyped-def]
    """Fresh topics (the anomalies one with `partitions`), a fresh book and the replicas `names`, started with
    the options `extra`, started together (each loads its model at once) and serving; every replica is stopped
    on leaving."""
    topics = {"anomalies": fresh_topic(admin, prefix, partitions=partitions), "incidents": fresh_compacted(admin),
              "feedback": fresh_compacted(admin)}
    with WebhookReceiver() as receiver:
        scene = ReplicaScene(models, embedder, state, topics, f"t-book-{uuid.uuid4().hex[:8]}",
                             AnomalyWriter(topics["anomalies"]), receiver, extra=extra)
        try:
            for replica in [scene.start(name, wait=False) for name in names]:
                replica.wait_serving()
            yield scene
        finally:
            for r in scene.replicas:
                r.stop()


def written_sources(topic: str, partitions: int, count: int, timeout: float = 30) -> dict[str, str]:
    """record id -> "topic/partition/offset" of each line in the anomalies topic (read back from the broker,
    committed messages only: transaction markers take offsets too), once `count` lines are read."""
    consumer = Consumer({"bootstrap.servers": BOOTSTRAP, "group.id": f"t-{uuid.uuid4().hex}",
                         "enable.auto.commit": False, "isolation.level": "read_committed"})
    consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in range(partitions)])
    found: dict[str, str] = {}
    try:
        deadline = time.monotonic() + timeout
        while len(found) < count and time.monotonic() < deadline:
            msg = consumer.poll(0.5)
            if msg is None or msg.error():
                continue
            entry = score_pb2.Anomaly.FromString(msg.value())
            found[entry.line.record_id] = f"{msg.topic()}/{msg.partition()}/{msg.offset()}"
    finally:
        consumer.close()
    return found


def stored_incidents(topic: str, book: str, timeout: float = 30) -> list:
    """Every committed record of `book` in the incidents topic, in topic order (each an Incident as written)."""
    from logmesh.scorer.analyst.incident_store import OWNER_HEADER
    from logmesh.v1 import incident_pb2
    consumer = Consumer({"bootstrap.servers": BOOTSTRAP, "group.id": f"t-{uuid.uuid4().hex}",
                         "enable.auto.commit": False, "isolation.level": "read_committed",
                         "enable.partition.eof": True})
    found: list = []
    try:
        if consumer.get_watermark_offsets(TopicPartition(topic, 0), timeout=10)[1] == 0:
            return found  # nothing written: no end of partition to wait for
        consumer.assign([TopicPartition(topic, 0, OFFSET_BEGINNING)])
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            msg = consumer.poll(0.5)
            if msg is None:
                continue
            if msg.error():
                if msg.error().code() == KafkaError._PARTITION_EOF:
                    return found
                continue
            if dict(msg.headers() or ()).get(OWNER_HEADER) == book.encode() and msg.value() is not None:
                found.append(incident_pb2.Incident.FromString(msg.value()))
    finally:
        consumer.close()
    raise AssertionError(f"{topic} not read to its end within {timeout} s")

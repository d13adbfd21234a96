"""Kafka helpers the integration and end-to-end tests share: fresh topics for a job, reading a topic back
read_committed, counting committed messages as they arrive, a free local port."""
from __future__ import annotations

import socket
import time
import uuid

from confluent_kafka import Consumer, KafkaError, TopicPartition
from confluent_kafka.admin import NewTopic

from logmesh.streaming.job import StreamConfig

BOOTSTRAP = "127.0.0.1:9092"


def _topics(admin, prefix: str, logs_partitions: int = 4, scores_partitions: int = 4) -> StreamConfig:
    """Fresh topics named after `prefix` and a --once job config reading them."""
    names = {k: f"{prefix}.{k}" for k in ("logs", "scores", "anomalies", "dlq")}
    partitions = {"logs": logs_partitions, "scores": scores_partitions}
    futures = admin.create_topics([NewTopic(n, num_partitions=partitions.get(k, 1), replication_factor=1)
                                   for k, n in names.items()])
    for f in futures.values():
        f.result(30)
    return StreamConfig(bootstrap=BOOTSTRAP, topic=names["logs"], scores_topic=names["scores"],
                        anomalies_topic=names["anomalies"], dlq_topic=names["dlq"], once=True,
                        master="local[2]", max_offsets_per_trigger=1000)


def _consume_all(topic: str, bootstrap: str = BOOTSTRAP, timeout: float = 60.0,
                 isolation: str = "read_committed") -> list:
    """Every committed message of `topic` (isolation.level=read_committed: aborted transactions never show).
    The end of each partition is librdkafka's partition EOF, not `offset + 1 == high watermark`:
    transaction markers take offsets, so the last message's offset + 1 is below the watermark."""
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"t-{uuid.uuid4()}",
                         "auto.offset.reset": "earliest", "enable.auto.commit": False,
                         "isolation.level": isolation, "enable.partition.eof": True})
    metadata = consumer.list_topics(topic, timeout=10).topics[topic]
    partitions = list(metadata.partitions)
    consumer.assign([TopicPartition(topic, p, 0) for p in partitions])
    out, done = [], set()
    deadline = time.monotonic() + timeout
    while len(done) < len(partitions):
        assert time.monotonic() < deadline, f"timed out reading {topic}"
        msg = consumer.poll(1)
        if msg is None:
            continue
        if msg.error():
            if msg.error().code() == KafkaError._PARTITION_EOF:
                done.add(msg.partition())
            continue
        out.append(msg)
    consumer.close()
    return out


class CommittedCount:
    """Counts the committed messages of a topic as they arrive (a consumer kept open, read_committed):
    watermarks over-count once transaction markers take offsets."""

    def __init__(self, topic: str, bootstrap: str = BOOTSTRAP) -> None:
        self.consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"c-{uuid.uuid4()}",
                                  "enable.auto.commit": False, "isolation.level": "read_committed"})
        partitions = self.consumer.list_topics(topic, timeout=10).topics[topic].partitions
        self.consumer.assign([TopicPartition(topic, p, 0) for p in partitions])
        self.count = 0

    def __call__(self) -> int:
        while batch := self.consumer.consume(10_000, timeout=0.5):
            self.count += sum(1 for m in batch if not m.error())
        return self.count

    def close(self) -> None:
        self.consumer.close()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]

"""The job's Kafka outputs: per-line results, anomalies, and the dead-letter topic."""
from __future__ import annotations

import logging

from confluent_kafka import KafkaException, Producer

from logmesh.streaming.decode import Rejected
from logmesh.v1 import score_pb2

log = logging.getLogger("logmesh.stream.outputs")


class ResultProducer:
    def __init__(self, bootstrap: str, scores_topic: str = "logmesh.scores",
                 anomalies_topic: str = "logmesh.anomalies", dlq_topic: str = "logmesh.dlq",
                 extra: dict[str, str] | None = None) -> None:
        self.topics = (scores_topic, anomalies_topic, dlq_topic)
        self._errors: list[str] = []
        self._producer = Producer({
            "bootstrap.servers": bootstrap, "enable.idempotence": True, "acks": "all",
            "linger.ms": 5, "compression.type": "lz4", "message.timeout.ms": 120_000, **(extra or {})})

    def _delivered(self, err, msg) -> None:  # type: ignore[no-untyped-def]
        if err is not None:
            self._errors.append(f"{msg.topic()}: {err}")

    def _produce(self, topic: str, key: bytes | None, value: bytes, headers: list | None = None) -> None:
        while True:
            try:
                self._producer.produce(topic, value=value, key=key, headers=headers, on_delivery=self._delivered)
                return
            except BufferError:  # local queue full: let deliveries drain, then retry
                self._producer.poll(0.1)

    def scores(self, results: list[score_pb2.ScoreResult]) -> None:
        for r in results:
            self._produce(self.topics[0], r.record_id.encode(), r.SerializeToString())
        self._producer.poll(0)

    def anomalies(self, anomalies: list[score_pb2.Anomaly], key_of) -> None:  # type: ignore[no-untyped-def]
        for a in anomalies:
            self._produce(self.topics[1], key_of(a).encode(), a.SerializeToString())

    def dead_letters(self, rejected: list[Rejected]) -> None:
        """Original bytes and key intact; where they came from and why in the headers."""
        for r in rejected:
            self._produce(self.topics[2], r.row.key, r.row.value or b"", headers=[
                ("source.topic", r.row.topic.encode()), ("source.partition", str(r.row.partition).encode()),
                ("source.offset", str(r.row.offset).encode()), ("error", r.reason.encode())])

    def flush(self, timeout: float = 60.0) -> None:
        """Waits until every message is acknowledged; raises if any was not, so the batch is retried."""
        left = self._producer.flush(timeout)
        errors, self._errors = self._errors, []
        if left or errors:
            raise KafkaException(f"{left} result messages undelivered, {len(errors)} failed: {errors[:3]}")

"""Is a broker there, and does it have the topic: ingest's checks before it produces; and how far a topic's
partitions reach (watermarks), which every reader of a topic to its end asks first."""
from __future__ import annotations

import logging
from typing import Any, Iterable

from confluent_kafka import Consumer, KafkaError, KafkaException, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from logmesh.ingest.kafka_options import rdkafka_log

log = logging.getLogger("logmesh.ingest")


class BrokerUnavailable(RuntimeError):
    """No Kafka broker answered at the bootstrap address within the timeout."""


def broker_hint(bootstrap: str) -> str:
    return (f"no Kafka broker at {bootstrap}: start one with `deploy/kafka/kafka.sh start` "
            "(or make kafka-up)")


def check_broker(bootstrap: str, timeout: float = 10.0, extra: dict[str, Any] | None = None) -> AdminClient:
    """Returns an AdminClient once a broker answers; raises BrokerUnavailable with the start hint."""
    errors: list[str] = []
    conf: dict[str, Any] = {"bootstrap.servers": bootstrap, "logger": rdkafka_log,
                            "error_cb": lambda e: errors.append(str(e)), **(extra or {})}
    admin = AdminClient(conf)
    try:
        admin.list_topics(timeout=timeout)
    except KafkaException as exc:
        detail = errors[-1] if errors else str(exc)
        raise BrokerUnavailable(f"{broker_hint(bootstrap)} ({detail})") from None
    return admin


def ensure_topic(admin: AdminClient, topic: str, partitions: int = 4, timeout: float = 10.0) -> bool:
    """Creates `topic` if the broker lacks it (one replica: a single-node broker). Returns True if created."""
    if topic in admin.list_topics(timeout=timeout).topics:
        return False
    futures = admin.create_topics([NewTopic(topic, num_partitions=partitions, replication_factor=1)],
                                  operation_timeout=timeout, request_timeout=timeout)
    try:
        futures[topic].result(timeout)
    except KafkaException as exc:
        if exc.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:  # someone else made it meanwhile
            raise
        return False
    log.info("created topic %s with %d partitions", topic, partitions)
    return True


def watermarks(consumer: Consumer, topic: str, partitions: Iterable[int], timeout: float,
               cached: bool = False) -> dict[int, tuple[int, int]]:
    """partition -> (low, high): the first offset the broker still holds and the next offset to be written
    (asked of the broker, or of the consumer's last fetch when `cached`). Raises KafkaException for the first
    partition the broker does not answer for."""
    return {p: consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=timeout, cached=cached)
            for p in partitions}

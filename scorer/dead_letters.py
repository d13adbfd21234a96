"""How many messages the streaming job's dead-letter topic holds, for GetStats.dead_letters.

The count is cached: GetStats returns the last count at once and, when it is older than `ttl_s`, a
background refresh brings it up to date. A refresh asks for the topic's watermarks first (one cheap
request) and reads only partitions whose high watermark moved past what was already counted, with
isolation.level=read_committed: the job writes the DLQ in Kafka transactions, and there each committed
transaction also takes an offset (its commit marker) and an aborted one leaves records no reader sees,
so `high - low` would overcount. Counted: the committed messages retained when the scorer first read
the topic, plus every one committed since. A broker that is down leaves the last known count in place
(absent if there never was one) and is logged once per outage.
"""
from __future__ import annotations

import logging
import threading
import time
import uuid
from typing import Mapping

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, KafkaException, TopicPartition

from logmesh.ingest.broker import watermarks

log = logging.getLogger("logmesh.scorer.dead_letters")


class DeadLetterCount:
    """The committed message count of `topic` at `bootstrap`, refreshed in the background at most every `ttl_s`."""

    def __init__(self, bootstrap: str, topic: str, ttl_s: float = 2.0, timeout_s: float = 2.0,
                 kafka_options: Mapping[str, str] | None = None) -> None:
        self.bootstrap, self.topic = bootstrap, topic
        self.ttl_s, self.timeout_s = ttl_s, timeout_s
        self._count: int | None = None
        self._counted = 0  # committed messages read so far
        self._position: dict[int, int] = {}  # partition -> next offset to count (-1: not read yet)
        self._checked = float("-inf")  # monotonic time of the last refresh attempt
        self._failing = False
        self._lock = threading.Lock()
        self._refreshing = threading.Lock()  # held while a refresh runs: one at a time
        self._first = threading.Event()  # set after the first attempt, whatever its outcome
        self.conf = {
            "bootstrap.servers": bootstrap, "group.id": f"logmesh-scorer-dlq-count-{uuid.uuid4().hex[:8]}",
            "enable.auto.commit": False, "isolation.level": "read_committed", "enable.partition.eof": True,
            "fetch.max.bytes": 64 * 1024 * 1024, "receive.message.max.bytes": 100 * 1024 * 1024,
            "socket.timeout.ms": max(1000, int(timeout_s * 1000)),
            "reconnect.backoff.ms": 1000, "reconnect.backoff.max.ms": 10_000,
            "log_level": 0}  # librdkafka would log every failed reconnect; we log an outage once
        # the operator's client settings (--kafka-option / --kafka-config: TLS, SASL) as the history's consumer
        # gets them, so a secured broker's DLQ can be counted; the counting semantics stay ours
        self.conf.update({k: v for k, v in (kafka_options or {}).items()
                          if k not in ("group.id", "enable.auto.commit", "isolation.level", "enable.partition.eof")})
        self._consumer = Consumer(self.conf)
        self._start_refresh()

    def value(self) -> int | None:
        """The last known count (None until one was read); starts a refresh when it is older than ttl_s.
        Only the very first call waits (at most timeout_s) for the first read."""
        with self._lock:
            stale = time.monotonic() - self._checked >= self.ttl_s
        if stale:
            self._start_refresh()
        self._first.wait(self.timeout_s)
        with self._lock:
            return self._count

    def _start_refresh(self) -> None:
        if self._refreshing.acquire(blocking=False):
            with self._lock:
                self._checked = time.monotonic()
            threading.Thread(target=self._refresh, name="dlq-count", daemon=True).start()

    def _refresh(self) -> None:
        try:
            count = self._read()
        except Exception as exc:  # noqa: BLE001 - any Kafka trouble leaves the last known count
            with self._lock:
                first, self._failing = not self._failing, True
            if first:
                log.warning("cannot read the dead-letter count; keeping the last known one",
                            extra={"bootstrap": self.bootstrap, "topic": self.topic, "error": str(exc),
                                   "last_count": self._count})
        else:
            with self._lock:
                recovered, self._failing, self._count = self._failing, False, count
            if recovered:
                log.info("dead-letter count readable again", extra={"topic": self.topic, "count": count})
        finally:
            with self._lock:
                self._checked = time.monotonic()
            self._first.set()
            self._refreshing.release()

    def _read(self) -> int:
        metadata = self._consumer.list_topics(self.topic, timeout=self.timeout_s).topics.get(self.topic)
        if metadata is None or metadata.error is not None:
            raise KafkaException(metadata.error if metadata is not None else f"no topic {self.topic}")
        fresh = [p for p in metadata.partitions if p not in self._position]
        if fresh:  # first read, or the topic grew partitions: count those from their beginning
            self._consumer.incremental_assign([TopicPartition(self.topic, p, OFFSET_BEGINNING) for p in fresh])
            self._position.update({p: -1 for p in fresh})
        behind = set()
        for partition, (_, high) in watermarks(self._consumer, self.topic, metadata.partitions, self.timeout_s).items():
            if high > self._position[partition]:
                behind.add(partition)
        deadline = time.monotonic() + self.timeout_s
        while behind and time.monotonic() < deadline:  # an open transaction can hold a partition back: go on later
            msg = self._consumer.poll(min(0.2, max(0.0, deadline - time.monotonic())))
            if msg is None:
                continue
            if msg.error() is None:
                self._counted += 1
                self._position[msg.partition()] = msg.offset() + 1
            elif msg.error().code() == KafkaError._PARTITION_EOF:
                self._position[msg.partition()] = msg.offset()
                behind.discard(msg.partition())
            elif msg.error().fatal() or not msg.error().retriable():
                raise KafkaException(msg.error())
        return self._counted

    def close(self) -> None:
        with self._refreshing:  # waits for a refresh in flight
            self._consumer.close()

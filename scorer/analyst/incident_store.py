"""Where incidents live durably: the compacted topic logmesh.incidents (key = incident id, value = the Incident
as it stands), behind a small interface with an in-memory twin.

The book writes each round of changes as one Kafka transaction (`put`): a crash leaves either all of a round's
incidents in the topic or none, so the history ids the incidents hold say exactly which anomalies were grouped
(no anomaly grouped twice, none lost, after a restart). The transactional id is stable per state dir and
topic, so a restarted scorer's `init_transactions` aborts what a crashed one left open at once (instead of
read_committed readers waiting out the transaction timeout). `load` reads the topic from its beginning to its
end (read_committed) and keeps the latest value of each key: compaction keeps nothing else anyway.

Each record carries its book's id (header `logmesh.owner`): the --incidents-book name replicas share, else
an id kept in the state dir. A scorer of another book pointed at the same topic (a test, a fresh state dir)
reads back only its own book's incidents, and numbers its new ones after every id the topic holds. Replicas of
one book share its transactional id too: one of them owns the book at a time (incident_lease.py), and the
owner's `fence` (init_transactions) aborts whatever a former owner left open and fences its producer, so a
stalled former owner cannot commit over the new one. The followers `follow` the topic: the owner's committed
changes as they land.

The book's cursor in the anomalies topic (how far, per partition, the anomalies it grouped go) is committed in
the same transaction as the round's incidents, as the offsets of the consumer group `<transactional id>-cursor`
(send_offsets_to_transaction; no member ever joins that group). Each replica numbers its own anomaly history,
so with more than one anomalies partition the history ids differ between replicas; the offsets do not: a new
owner resumes each partition after the book's committed offset (`committed`).

Each cursor offset carries the id of the anomalies topic it counts in (Kafka's topic id, a UUID the broker gives
a topic when it is created; stored as the committed offset's metadata, `topic_id=<id>`): a topic deleted and
created again under its name gets another id, so a new owner can tell an old topic's cursor from the new one's
even where the old offset is not past the new topic's end (`cursor_topic_ids`, `anomaly_topic_ids`). Cursors
stored before this carry no id.
"""
from __future__ import annotations

import logging
import threading
import time
import uuid
from typing import Any, Iterable, Mapping, Protocol

from confluent_kafka import (OFFSET_BEGINNING, Consumer, ConsumerGroupTopicPartitions, KafkaError, KafkaException,
                             Producer, TopicCollection, TopicPartition)
from confluent_kafka.admin import AdminClient
from tenacity import RetryCallState, Retrying, retry_if_exception_type, stop_after_delay, wait_exponential, wait_fixed

from logmesh.ingest.broker import watermarks
from logmesh.v1 import incident_pb2

log = logging.getLogger("logmesh.scorer.incidents.store")
_rdkafka_log = logging.getLogger("logmesh.scorer.rdkafka")
DEFAULT_TOPIC = "logmesh.incidents"


class IncidentStore(Protocol):
    highest_number: int  # after load: the highest incident number stored, this book's or another's

    def load(self, stop: threading.Event) -> list[incident_pb2.Incident]:
        """Every stored incident of this book (the latest value of each), oldest change first; waits while the
        store cannot be read, until `stop` is set (then returns what it has, possibly nothing)."""
    def put(self, incidents: Iterable[incident_pb2.Incident], cursor: Mapping[str, int] | None = None,
            cursor_ids: Mapping[str, str] | None = None) -> None:
        """Stores these incidents atomically (all or none), with the book's cursor ("topic/partition" -> the next
        anomalies offset to group) and the topic id each cursor offset counts in ("topic/partition" -> id, where
        known) in the same transaction; raises when they could not be stored (WriteFenced when another
        producer of the book took its place: this replica no longer owns the book)."""
    def committed(self) -> dict[str, int]:
        """The cursor stored with the last stored round ({} when none was); raises when it cannot be read."""
    def cursor_topic_ids(self) -> dict[str, str]:
        """"topic/partition" -> the topic id stored with that cursor offset (none for a cursor stored without)."""
    def anomaly_ends(self, partitions: Iterable[str]) -> dict[str, int]:
        """"topic/partition" -> the partition's end offset, for those the broker answers."""
    def anomaly_topic_ids(self, topics: Iterable[str]) -> dict[str, str]:
        """topic -> its id now, for those the broker answers."""
    def close(self) -> None: ...


class MemoryIncidentStore:
    """Keeps incidents in this process only (a scorer without a state dir: its history is not durable either)."""

    def __init__(self) -> None:
        self._held: dict[str, bytes] = {}
        self._cursor: dict[str, int] = {}
        self._cursor_ids: dict[str, str] = {}
        self.highest_number = 0

    def load(self, stop: threading.Event) -> list[incident_pb2.Incident]:
        found = [incident_pb2.Incident.FromString(v) for v in self._held.values()]
        return sorted(found, key=lambda i: i.update_id)

    def put(self, incidents: Iterable[incident_pb2.Incident], cursor: Mapping[str, int] | None = None,
            cursor_ids: Mapping[str, str] | None = None) -> None:
        for i in incidents:
            self._held[i.incident_id] = i.SerializeToString()
        for where, offset in (cursor or {}).items():  # as a commit does: each offset with its id, or none
            self._cursor[where] = offset
            self._cursor_ids.pop(where, None)
            if (cursor_ids or {}).get(where):
                self._cursor_ids[where] = cursor_ids[where]  # type: ignore[index]

    def committed(self) -> dict[str, int]:
        return dict(self._cursor)

    def cursor_topic_ids(self) -> dict[str, str]:
        return dict(self._cursor_ids)

    def anomaly_ends(self, partitions: Iterable[str]) -> dict[str, int]:
        return {}  # no broker to ask: a takeover compares nothing (a lone in-memory book never takes over)

    def anomaly_topic_ids(self, topics: Iterable[str]) -> dict[str, str]:
        return {}

    def close(self) -> None:
        pass


OWNER_HEADER = "logmesh.owner"
TOPIC_ID_METADATA = "topic_id="  # a cursor offset's metadata: the topic id it counts in


def _number(incident_id: str) -> int:
    digits = incident_id.removeprefix("inc-")
    return int(digits) if digits.isdigit() else 0


def _error(exc: KafkaException) -> KafkaError | None:
    return exc.args[0] if exc.args and isinstance(exc.args[0], KafkaError) else None


# a producer of the book's transactional id that another one's init_transactions replaced (librdkafka says
# _FENCED; the broker's codes, should one reach us as they are: PRODUCER_FENCED, INVALID_PRODUCER_EPOCH)
_FENCED_CODES = frozenset({KafkaError._FENCED, KafkaError.PRODUCER_FENCED, KafkaError.INVALID_PRODUCER_EPOCH})


class WriteFenced(KafkaException):
    """A round's write refused because another producer of the book's transactional id fenced this one: another
    replica took the book over (or the coordinator ended the transaction). Nothing of the round is stored."""


class TopicIncidentStore:
    """Incidents in a compacted Kafka topic (one partition, as deploy/kafka/kafka.sh creates logmesh.incidents)."""

    def __init__(self, bootstrap: str, topic: str = DEFAULT_TOPIC, transactional_id: str | None = None,
                 kafka_options: Mapping[str, str] | None = None, timeout_s: float = 10.0, owner: str = "") -> None:
        self.bootstrap, self.topic, self.timeout_s = bootstrap, topic, timeout_s
        self.owner = owner or uuid.uuid4().hex
        self.highest_number = 0
        self.problem = ""  # why the topic could not be read back yet ("" once it was)
        self.transactional_id = transactional_id or f"logmesh-incidents-{uuid.uuid4().hex[:12]}"
        self.kafka_options = dict(kafka_options or {})
        self._producer: Producer | None = None
        self._failed: list[str] = []
        self._read_to: dict[int, int] = {}  # partition -> the offset load() read to (follow() goes on from there)
        self._follower: Consumer | None = None
        self.cursor_group = f"{self.transactional_id}-cursor"
        self._group_metadata: Any = None

    def _common(self) -> dict[str, Any]:
        conf: dict[str, Any] = {"bootstrap.servers": self.bootstrap, "logger": _rdkafka_log, "log_level": 0,
                                "socket.timeout.ms": max(1000, int(self.timeout_s * 1000))}
        conf.update(self.kafka_options)
        return conf

    # -- reading --------------------------------------------------------------------------------
    def load(self, stop: threading.Event) -> list[incident_pb2.Incident]:
        # while the topic cannot be read: again after waits doubling from 0.5 s to 10 s, until stopped
        retrying = Retrying(retry=retry_if_exception_type(KafkaException), sleep=stop.wait,
                            wait=wait_exponential(multiplier=0.5, max=10.0), stop=lambda _: stop.is_set(),
                            before_sleep=self._unreadable, retry_error_callback=lambda _: [])
        found = retrying(self._read_all)
        if not stop.is_set():
            self.problem = ""
        return found

    def _unreadable(self, state: RetryCallState) -> None:
        error = str(state.outcome.exception()) if state.outcome is not None else "?"
        if not self.problem:
            log.warning("incidents topic unreadable; retrying (new alerts wait in the anomaly history)",
                        extra={"topic": self.topic, "error": error})
        self.problem = error

    def _read_all(self) -> list[incident_pb2.Incident]:
        consumer = Consumer({**self._common(), "group.id": f"logmesh-incidents-{uuid.uuid4().hex[:8]}",
                             "enable.auto.commit": False, "isolation.level": "read_committed",
                             "enable.partition.eof": True, "fetch.max.bytes": 64 * 1024 * 1024,
                             "receive.message.max.bytes": 100 * 1024 * 1024})
        try:
            metadata = consumer.list_topics(self.topic, timeout=self.timeout_s).topics.get(self.topic)
            if metadata is None or metadata.error is not None:
                error = metadata.error if metadata is not None else None
                if error is not None and error.code() == KafkaError.UNKNOWN_TOPIC_OR_PART:
                    raise KafkaException(f"no topic {self.topic} (`make kafka-up` creates it, compacted)")
                raise KafkaException(error or f"no metadata for {self.topic}")
            partitions = sorted(metadata.partitions)
            ends = {p: high for p, (_, high) in watermarks(consumer, self.topic, partitions, self.timeout_s).items()}
            todo = {p for p, high in ends.items() if high > 0}
            self._read_to = dict(ends)
            consumer.assign([TopicPartition(self.topic, p, OFFSET_BEGINNING) for p in todo])
            latest: dict[str, bytes | None] = {}
            foreign: set[str] = set()
            bad = 0
            deadline = time.monotonic() + max(60.0, 6 * self.timeout_s)
            while todo:
                if time.monotonic() > deadline:
                    raise KafkaException(f"reading {self.topic} to its end took too long")
                # short batches: consume(n) waits its whole timeout unless n records come, so the batch holding the
                # last records and the end-of-partition events would wait it out on every load (17f15db's fix)
                for msg in consumer.consume(500, timeout=0.2):
                    error = msg.error()
                    if error is not None:
                        if error.code() == KafkaError._PARTITION_EOF:
                            todo.discard(msg.partition())
                        elif error.fatal() or not error.retriable():
                            raise KafkaException(error)
                        continue
                    key = (msg.key() or b"").decode("utf-8", "replace")
                    self.highest_number = max(self.highest_number, _number(key))
                    latest.pop(key, None)  # re-insert: the dict's order is the order of last changes
                    if dict(msg.headers() or ()).get(OWNER_HEADER) == self.owner.encode():
                        latest[key] = msg.value()
                        foreign.discard(key)
                    else:
                        foreign.add(key)
                    if msg.offset() + 1 >= ends[msg.partition()]:
                        todo.discard(msg.partition())
        finally:
            consumer.close()
        out = []
        for key, value in latest.items():
            if value is None:  # a tombstone: deleted
                continue
            try:
                incident = incident_pb2.Incident.FromString(value)
            except Exception:  # noqa: BLE001 - one damaged record loses one incident, not the book
                bad += 1
                continue
            if incident.incident_id != key:
                bad += 1
                continue
            out.append(incident)
        if foreign:
            log.info("the incidents topic holds incidents of other scorers' state dirs; left alone",
                     extra={"topic": self.topic, "incidents": len(foreign)})
        if bad:
            log.warning("skipped incidents-topic records that are no logmesh.v1.Incident under their id",
                        extra={"topic": self.topic, "skipped": bad})
        return sorted(out, key=lambda i: i.update_id)

    def follow(self, timeout: float) -> list[incident_pb2.Incident]:
        """This book's incidents committed since the last load() or follow(), in topic order (waits up to
        `timeout` s for the first); what a follower replica applies. Raises KafkaException when unreadable."""
        if self._follower is None:
            consumer = Consumer({**self._common(), "group.id": f"logmesh-incidents-{uuid.uuid4().hex[:8]}",
                                 "enable.auto.commit": False, "isolation.level": "read_committed",
                                 "fetch.max.bytes": 64 * 1024 * 1024, "receive.message.max.bytes": 100 * 1024 * 1024})
            consumer.assign([TopicPartition(self.topic, p, self._read_to.get(p, OFFSET_BEGINNING))
                             for p in (self._read_to or {0: 0})])
            self._follower = consumer
        out: list[incident_pb2.Incident] = []
        wait = timeout
        while True:
            messages = self._follower.consume(500, timeout=wait)
            for msg in messages:
                error = msg.error()
                if error is not None:
                    if error.fatal():
                        raise KafkaException(error)
                    continue
                key = (msg.key() or b"").decode("utf-8", "replace")
                self.highest_number = max(self.highest_number, _number(key))
                if dict(msg.headers() or ()).get(OWNER_HEADER) != self.owner.encode() or msg.value() is None:
                    continue
                try:
                    incident = incident_pb2.Incident.FromString(msg.value())
                except Exception:  # noqa: BLE001 - one damaged record loses one incident, not the book
                    continue
                if incident.incident_id == key:
                    out.append(incident)
            if len(messages) < 500:
                return out
            wait = 0

    def stop_following(self) -> None:
        if self._follower is not None:
            self._follower.close()
            self._follower = None

    def committed(self) -> dict[str, int]:
        """The book's cursor as the last committed round left it: "topic/partition" -> the next offset of the
        anomalies topic to group ({} when no round stored one: a new book, or one older than the cursor).
        Stable offsets only: a transaction still open is waited out (require_stable)."""
        return {f"{tp.topic}/{tp.partition}": tp.offset for tp in self._committed()}

    def cursor_topic_ids(self) -> dict[str, str]:
        """"topic/partition" -> the anomalies topic id the committed cursor offset there counts in (absent where
        the offset was stored without one: a book older than the ids, or an id the broker did not give)."""
        out = {}
        for tp in self._committed():
            metadata = tp.metadata or ""
            if metadata.startswith(TOPIC_ID_METADATA) and len(metadata) > len(TOPIC_ID_METADATA):
                out[f"{tp.topic}/{tp.partition}"] = metadata[len(TOPIC_ID_METADATA):]
        return out

    def anomaly_topic_ids(self, topics: Iterable[str]) -> dict[str, str]:
        """topic -> its topic id now, for those the broker describes (a recreated topic has another id)."""
        wanted = sorted(set(topics))
        if not wanted:
            return {}
        admin = AdminClient({k: v for k, v in self._common().items() if k != "logger"})
        out = {}
        try:
            futures = admin.describe_topics(TopicCollection(wanted), request_timeout=self.timeout_s)
        except KafkaException as exc:
            log.warning("no topic ids for the anomalies topics", extra={"topics": wanted, "error": str(exc)})
            return {}
        for topic, future in futures.items():
            try:
                out[topic] = str(future.result(self.timeout_s * 3).topic_id)
            except KafkaException as exc:
                log.warning("no topic id for an anomalies topic", extra={"topic": topic, "error": str(exc)})
        return out

    def _committed(self) -> list[TopicPartition]:
        """The cursor group's committed offsets, with their metadata ([] when the group has none)."""
        admin = AdminClient({k: v for k, v in self._common().items() if k != "logger"})
        request = [ConsumerGroupTopicPartitions(self.cursor_group)]
        try:
            future = admin.list_consumer_group_offsets(request, require_stable=True,
                                                       request_timeout=self.timeout_s)[self.cursor_group]
            result = future.result(self.timeout_s * 3)
        except KafkaException as exc:
            err = _error(exc)
            if err is not None and err.code() == KafkaError.GROUP_ID_NOT_FOUND:
                return []
            raise
        return [tp for tp in result.topic_partitions or () if tp.error is None and tp.offset >= 0]

    def anomaly_ends(self, partitions: Iterable[str]) -> dict[str, int]:
        """"topic/partition" -> the partition's end offset (high watermark) in the anomalies topic, for those the
        broker answers (a takeover compares the book's cursor with it: a cursor beyond the end means the topic
        was recreated)."""
        consumer = Consumer({**self._common(), "group.id": f"logmesh-ends-{uuid.uuid4().hex[:8]}",
                             "enable.auto.commit": False})
        ends: dict[str, int] = {}
        try:
            for where in partitions:
                topic, _, partition = where.rpartition("/")
                try:
                    _, high = watermarks(consumer, topic, [int(partition)], self.timeout_s)[int(partition)]
                except KafkaException as exc:
                    log.warning("no end offset for an anomalies partition", extra={"partition": where, "error": str(exc)})
                    continue
                ends[where] = high
        finally:
            consumer.close()
        return ends

    # -- writing --------------------------------------------------------------------------------
    def fence(self) -> None:
        """Takes the book's transactional id (a new owner, before it reads the topic to its end): aborts what
        a former owner left open and fences its producer. Raises KafkaException when the broker cannot."""
        self._drop_producer(abort=False)
        self._producer = self._new_producer()

    def _new_producer(self) -> Producer:
        conf = {**self._common(), "transactional.id": self.transactional_id, "enable.idempotence": True,
                "acks": "all", "linger.ms": 5, "compression.type": "lz4", "message.max.bytes": 16 * 1024 * 1024,
                "transaction.timeout.ms": 60_000}
        producer = Producer(conf)
        producer.init_transactions(max(self.timeout_s, 30.0))
        return producer

    def _delivered(self, err, msg) -> None:  # type: ignore[no-untyped-def]
        if err is not None:
            self._failed.append(str(err))

    def _metadata(self) -> Any:
        """The cursor group's metadata for send_offsets_to_transaction (a consumer that never joins the group:
        its commits are a simple consumer's, which the broker takes for a group with no members)."""
        if self._group_metadata is None:
            holder = Consumer({**self._common(), "group.id": self.cursor_group, "enable.auto.commit": False})
            try:
                self._group_metadata = holder.consumer_group_metadata()
            finally:
                holder.close()
        return self._group_metadata

    def put(self, incidents: Iterable[incident_pb2.Incident], cursor: Mapping[str, int] | None = None,
            cursor_ids: Mapping[str, str] | None = None) -> None:
        batch = [(i.incident_id.encode(), i.SerializeToString()) for i in incidents]
        if not batch:
            return
        try:
            if self._producer is None:
                self._producer = self._new_producer()
            producer = self._producer
            producer.begin_transaction()
            # a full local queue: serve deliveries (poll) and produce again, for up to the store's timeout
            produce = Retrying(retry=retry_if_exception_type(BufferError), sleep=producer.poll,
                               wait=wait_fixed(0.1), stop=stop_after_delay(self.timeout_s), reraise=True)
            for key, value in batch:
                produce(producer.produce, self.topic, key=key, value=value, on_delivery=self._delivered,
                        headers=[(OWNER_HEADER, self.owner.encode())])
            ids = cursor_ids or {}
            offsets = [TopicPartition(where.rpartition("/")[0], int(where.rpartition("/")[2]), offset,
                                      f"{TOPIC_ID_METADATA}{ids[where]}" if ids.get(where) else "")
                       for where, offset in sorted((cursor or {}).items())]
            if offsets:
                producer.send_offsets_to_transaction(offsets, self._metadata(), max(self.timeout_s, 30.0))
            producer.commit_transaction(max(self.timeout_s, 30.0))
            self._failed = []
        except BufferError:
            self._drop_producer(abort=True)
            raise KafkaException(f"incidents not stored in {self.topic}: the producer's queue stayed full for "
                                 f"{self.timeout_s:g} s (is the broker reachable?)") from None
        except KafkaException as exc:
            err = _error(exc)
            self._drop_producer(abort=err is not None and err.txn_requires_abort())
            refused = WriteFenced if err is not None and err.code() in _FENCED_CODES else KafkaException
            raise refused(f"incidents not stored in {self.topic}: {err.str() if err else exc}") from None

    def drop_producer(self) -> None:
        """This replica stopped owning the book: its producer goes (the new owner has fenced it, or will)."""
        self._drop_producer(abort=False)

    def _drop_producer(self, abort: bool) -> None:
        """After a failed round: abort what is open, and start the next round with a fresh producer (same
        transactional id: it fences this one and aborts whatever it left)."""
        producer, self._producer, self._failed = self._producer, None, []
        if producer is None:
            return
        if abort:
            try:
                producer.abort_transaction(self.timeout_s)
            except KafkaException:
                pass  # the next producer's init_transactions aborts it
        try:
            producer.flush(0)
        except KafkaException:
            pass  # a fenced producer: nothing of it is kept

    def close(self) -> None:
        self.stop_following()
        if self._producer is not None:
            self._producer.flush(self.timeout_s)
            self._producer = None

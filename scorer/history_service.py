"""The history's reader: the streaming job's anomalies topic into the anomaly history (scorer/history.py).

The job writes each micro-batch's alerts and anomalous lines (binary logmesh.v1.Anomaly) in one Kafka
transaction; this reads them with isolation.level=read_committed, so an aborted batch (a crashed attempt the
job redid) never shows, and the redone one shows once. The topic is the source of truth: the reader starts
where the history's state says it stopped (scorer/state.py: each entry's coordinates and positions.json), or
at the topic's beginning when there is no state, and commits nothing to Kafka (no consumer group to share or
lose). One thread; a broker that is down is retried (librdkafka reconnects; the reader starts again after
tenacity's doubling waits) while the scorer goes on scoring, and `status` says where the history stands
for GetStats.
"""
from __future__ import annotations

import logging
import threading
import time
import uuid
from typing import Any, Mapping

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, KafkaException, TopicPartition
from tenacity import Retrying, retry_if_result, wait_exponential

from logmesh.ingest.broker import watermarks
from logmesh.scorer.history import AnomalyHistory, source
from logmesh.scorer.similar import SimilarCases
from logmesh.v1 import score_pb2

log = logging.getLogger("logmesh.scorer.history_service")
_rdkafka_log = logging.getLogger("logmesh.scorer.rdkafka")
DEFAULT_TOPIC = "logmesh.anomalies"
BATCH = 500  # messages read at once; a batch's entries are entered (and stored) together


class AnomalyFeed:
    """Reads `topic` at `bootstrap` into `history` on a thread of its own (`start`, `stop`)."""

    def __init__(self, history: AnomalyHistory, bootstrap: str, topic: str = DEFAULT_TOPIC,
                 kafka_options: Mapping[str, str] | None = None, similar: SimilarCases | None = None,
                 metadata_every_s: float = 30.0, timeout_s: float = 5.0) -> None:
        self.history, self.bootstrap, self.topic, self.similar = history, bootstrap, topic, similar
        self.metadata_every_s, self.timeout_s = metadata_every_s, timeout_s
        self.kafka_options = dict(kafka_options or {})
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._problem = "connecting"  # why the topic cannot be read now ("" when it can)
        self._at_end: dict[int, bool] = {}  # partition -> read to its end since its last message
        self._behind = 0
        self._unreadable = 0
        self.read = 0  # entries entered since start

    # -- status ---------------------------------------------------------------------------------
    @property
    def status(self) -> str:
        """"live", "catching up (about N behind)", "connecting" or "disconnected: <why>; retrying"
        (GetStats.history_status)."""
        with self._lock:
            if self._problem == "connecting":
                return "connecting"
            if self._problem:
                return f"disconnected: {self._problem}; retrying"
            if self._at_end and all(self._at_end.values()):
                return "live"
            return f"catching up (about {self._behind} messages behind)" if self._behind else "catching up"

    def _set_problem(self, problem: str) -> None:
        with self._lock:
            before, self._problem = self._problem, problem
        if problem and not before:
            log.warning("anomaly history cannot read its topic; retrying (scoring goes on)",
                        extra={"bootstrap": self.bootstrap, "topic": self.topic, "error": problem})
        elif before and not problem and before != "connecting":
            log.info("anomaly history reading its topic again", extra={"topic": self.topic})

    # -- lifecycle ------------------------------------------------------------------------------
    def start(self) -> "AnomalyFeed":
        self._thread = threading.Thread(target=self._run, name="anomaly-history", daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def _consumer(self) -> Consumer:
        conf: dict[str, Any] = {
            "bootstrap.servers": self.bootstrap,
            "group.id": f"logmesh-history-{uuid.uuid4().hex[:8]}",  # assigned, never subscribed: nothing commits
            "enable.auto.commit": False, "enable.auto.offset.store": False,
            "isolation.level": "read_committed", "enable.partition.eof": True,
            "auto.offset.reset": "earliest",  # a position that expired (retention): from what is left
            "fetch.max.bytes": 64 * 1024 * 1024, "receive.message.max.bytes": 100 * 1024 * 1024,
            "socket.timeout.ms": max(1000, int(self.timeout_s * 1000)),
            "reconnect.backoff.ms": 1000, "reconnect.backoff.max.ms": 10_000,
            "logger": _rdkafka_log, "log_level": 0,  # librdkafka would log every failed reconnect; we log an outage once
            "error_cb": self._on_error}
        conf.update(self.kafka_options)
        return Consumer(conf)

    def _on_error(self, error: KafkaError) -> None:
        if error.code() in (KafkaError._ALL_BROKERS_DOWN, KafkaError._TRANSPORT, KafkaError._RESOLVE) or error.fatal():
            self._set_problem(error.str())

    def _run(self) -> None:
        # while the topic cannot be read: again after waits doubling from 0.5 s to 10 s, until stopped
        until_stopped = Retrying(retry=retry_if_result(lambda done: not done), sleep=self._stop.wait,
                                 wait=wait_exponential(multiplier=0.5, max=10.0),
                                 stop=lambda _: self._stop.is_set(), retry_error_callback=lambda _: True)
        until_stopped(self._read_once)

    def _read_once(self) -> bool:
        """One consumer's life: True when it is over for good (stopped, or a configuration nothing fixes by
        waiting), False when the topic could not be read (retried)."""
        try:
            consumer = self._consumer()
        except KafkaException as exc:  # a bad --kafka-option: nothing to retry
            self._set_problem(f"bad Kafka configuration ({exc}); fix --kafka-config / --kafka-option")
            return True
        try:
            self._follow(consumer)
            return True
        except KafkaException as exc:
            self._set_problem(str(exc.args[0].str() if exc.args and isinstance(exc.args[0], KafkaError) else exc))
        except Exception as exc:  # noqa: BLE001 - the history must not die on one surprise; say it and retry
            log.exception("anomaly history reader failed; restarting it")
            self._set_problem(f"reader failed: {exc}")
        finally:
            consumer.close()
        return False

    # -- reading --------------------------------------------------------------------------------
    def _partitions(self, consumer: Consumer) -> list[int]:
        """The topic's partitions; raises KafkaException while the broker or the topic is not there."""
        metadata = consumer.list_topics(self.topic, timeout=self.timeout_s).topics.get(self.topic)
        if metadata is None or metadata.error is not None:
            error = metadata.error if metadata is not None else None
            if error is not None and error.code() == KafkaError.UNKNOWN_TOPIC_OR_PART:
                raise KafkaException(f"no topic {self.topic} yet (the streaming job creates it)")
            raise KafkaException(error or f"no metadata for {self.topic}")
        return sorted(metadata.partitions)

    def _assign(self, consumer: Consumer, partitions: list[int]) -> None:
        positions = self.history.positions()
        assign = []
        for p, (low, high) in watermarks(consumer, self.topic, partitions, self.timeout_s).items():
            where = f"{self.topic}/{p}"
            offset = positions.get(where)
            if offset is not None and offset > high:
                log.warning("the anomalies topic holds fewer messages than the history read (recreated?); "
                            "reading it from its beginning", extra={"partition": where, "position": offset, "end": high})
                self.history.rewind(where, low)
                offset = low
            elif offset is not None and offset < low:
                log.warning("anomalies expired before the history read them (topic retention)",
                            extra={"partition": where, "position": offset, "first_held": low, "lost": low - offset})
            assign.append(TopicPartition(self.topic, p, offset if offset is not None else OFFSET_BEGINNING))
            with self._lock:
                self._at_end[p] = False
                self._behind += max(0, high - (offset if offset is not None else low))
        consumer.assign(assign)
        log.info("anomaly history reading", extra={"topic": self.topic, "partitions": partitions,
                                                   "from": {a.partition: a.offset for a in assign}})

    def _follow(self, consumer: Consumer) -> None:
        with self._lock:
            self._at_end, self._behind = {}, 0
        self._assign(consumer, self._partitions(consumer))
        self._set_problem("")
        checked = time.monotonic()
        while not self._stop.is_set():
            messages = consumer.consume(BATCH, timeout=0.5)
            with self._lock:
                every = 5.0 if self._problem else self.metadata_every_s  # soon back, after an outage
            if time.monotonic() - checked > every:  # partitions added, and a broker still there
                checked = time.monotonic()
                grown = [p for p in self._partitions(consumer) if p not in self._at_end]
                if grown:
                    self._assign(consumer, sorted([*self._at_end, *grown]))
                self._set_problem("")
            if messages:
                self._enter(messages)

    def _enter(self, messages: list) -> None:
        entries: list[score_pb2.Anomaly] = []
        read_to: dict[str, int] = {}
        positions = self.history.positions()
        for msg in messages:
            error = msg.error()
            if error is not None:
                if error.code() == KafkaError._PARTITION_EOF:
                    with self._lock:
                        self._at_end[msg.partition()] = True
                        self._behind = 0 if all(self._at_end.values()) else self._behind
                    read_to[f"{self.topic}/{msg.partition()}"] = msg.offset()  # past commit markers too
                elif error.fatal() or not error.retriable():
                    raise KafkaException(error)
                continue
            self._set_problem("")
            partition = f"{self.topic}/{msg.partition()}"
            expected = read_to.get(partition, positions.get(partition))
            if expected is not None and msg.offset() < expected:
                # librdkafka found our offset out of range and went back to the earliest (auto.offset.reset): the
                # topic was deleted and created again while this consumer read it. What came before goes in first.
                self._add(entries, read_to)
                entries, read_to = [], {}
                log.warning("the anomalies topic went back to an offset the history read before (recreated?); "
                            "reading it from there", extra={"partition": partition, "position": expected,
                                                            "offset": msg.offset()})
                self.history.rewind(partition, msg.offset())
                positions = self.history.positions()
            where = source(self.topic, msg.partition(), msg.offset())
            read_to[where.rsplit("/", 1)[0]] = msg.offset() + 1
            with self._lock:
                self._at_end[msg.partition()] = False
                self._behind = max(0, self._behind - 1)
            entry = _decode(msg.value())
            if entry is None:
                self._unreadable += 1
                log.warning("skipped a message that is no logmesh.v1.Anomaly with a line or a block; it stays in "
                            "the topic", extra={"source": where, "bytes": len(msg.value() or b""),
                                                "skipped_so_far": self._unreadable})
                continue
            entry.id = 0  # the history numbers its entries
            entry.source = where
            entries.append(entry)
        self._add(entries, read_to)

    def _add(self, entries: list[score_pb2.Anomaly], read_to: dict[str, int]) -> None:
        if entries and self.similar is not None:
            self.similar.fill(entries)
        if entries or read_to:
            self.read += len(self.history.add(entries, read_to))


def _decode(data: bytes | None) -> score_pb2.Anomaly | None:
    try:
        entry = score_pb2.Anomaly.FromString(data or b"")
    except Exception:  # noqa: BLE001 - protobuf's DecodeError and friends: not an Anomaly
        return None
    return entry if entry.WhichOneof("subject") else None

"""The feedback topic (logmesh.feedback, compacted, one partition): one message per stored label, key = the
feedback id (UTF-8, e.g. b"fb-000007"), value = the binary logmesh.v1.Feedback as stored (scope_value, author,
created_time filled). A label is written once and never changed, so compaction keeps every one.

`append` returns once the broker has the message (acks=all, idempotent producer): a label SubmitFeedback
answered is durable. Replicas of one incident book write through one transactional id (`transactional_id`),
one label per transaction: a new owner's `fence` (init_transactions) aborts what a stalled former owner left
open and makes its later writes fail, so once the new owner has fenced and read the topic to its end, no
former owner can store a label under an id it has not seen (scorer/analyst/feedback.py numbers after that read). `read_all` reads the topic from its beginning to its end (read_committed), what a
starting scorer holds again. Any reader, e.g. `logmesh train --feedback`, can read it the same way.
"""
from __future__ import annotations

import logging
import threading
import time
import uuid
from typing import Any, Mapping

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, KafkaException, Producer, TopicPartition

from logmesh.ingest.broker import watermarks
from logmesh.v1 import feedback_pb2 as fpb

log = logging.getLogger("logmesh.scorer.analyst.feedback")
_rdkafka_log = logging.getLogger("logmesh.scorer.rdkafka")
DEFAULT_TOPIC = "logmesh.feedback"


class FeedbackStoreError(RuntimeError):
    """The topic could not take or give the labels (broker down, topic missing): nothing was stored."""


class FeedbackWriteFenced(FeedbackStoreError):
    """A label's write refused because another producer of the writer's transactional id fenced this one: another
    replica took the book over. Nothing was stored."""


# librdkafka's code for a producer another one's init_transactions replaced, and the broker's, should one reach
# us as they are (the incident store tells the same refusal by the same codes)
_FENCED_CODES = frozenset({KafkaError._FENCED, KafkaError.PRODUCER_FENCED, KafkaError.INVALID_PRODUCER_EPOCH})


class FeedbackTopic:
    def __init__(self, bootstrap: str, topic: str = DEFAULT_TOPIC, kafka_options: Mapping[str, str] | None = None,
                 timeout_s: float = 10.0, transactional_id: str | None = None) -> None:
        self.bootstrap, self.topic, self.timeout_s = bootstrap, topic, timeout_s
        self.transactional_id = transactional_id  # None: a lone writer, an idempotent producer without fencing
        self.kafka_options = dict(kafka_options or {})
        self._producer: Producer | None = None
        self._lock = threading.Lock()
        self._read_to: dict[int, int] = {}  # partition -> the offset read_all read to (follow goes on from there)
        self._follower: Consumer | None = None

    def _conf(self, **extra: Any) -> dict[str, Any]:
        conf: dict[str, Any] = {"bootstrap.servers": self.bootstrap, "logger": _rdkafka_log, "log_level": 0,
                                "socket.timeout.ms": max(1000, int(self.timeout_s * 1000)), **extra}
        conf.update(self.kafka_options)
        return conf

    def read_all(self) -> list[fpb.Feedback]:
        """Every label in the topic, in topic order; raises FeedbackStoreError when it cannot be read."""
        consumer = Consumer(self._conf(**{"group.id": f"logmesh-feedback-{uuid.uuid4().hex[:8]}",
                                          "enable.auto.commit": False, "isolation.level": "read_committed",
                                          "enable.partition.eof": True, "auto.offset.reset": "earliest"}))
        try:
            metadata = consumer.list_topics(self.topic, timeout=self.timeout_s).topics.get(self.topic)
            if metadata is None or metadata.error is not None:
                raise FeedbackStoreError(f"no feedback topic {self.topic} at {self.bootstrap} "
                                         f"({metadata.error if metadata is not None else 'no metadata'}); create it "
                                         "(`make kafka-up` does: compacted, one partition)")
            partitions = sorted(metadata.partitions)
            ends = {}
            for p, (low, high) in watermarks(consumer, self.topic, partitions, self.timeout_s).items():
                self._read_to[p] = high
                if high > low:
                    ends[p] = high
            if not ends:
                return []
            consumer.assign([TopicPartition(self.topic, p, OFFSET_BEGINNING) for p in ends])
            out: list[fpb.Feedback] = []
            pending = set(ends)
            stalled = time.monotonic() + self.timeout_s  # no message for timeout_s: the read stalled
            while pending:
                # short batches: consume(n) waits its whole timeout unless n messages come, and a topic of fewer
                # than 500 labels (every topic, nearly) made each read wait timeout_s after its last label
                messages = consumer.consume(500, timeout=min(0.2, self.timeout_s))
                if not messages:
                    if time.monotonic() > stalled:
                        raise FeedbackStoreError(f"reading {self.topic} stalled before its end; retrying")
                    continue
                stalled = time.monotonic() + self.timeout_s
                for msg in messages:
                    error = msg.error()
                    if error is not None:
                        if error.code() == KafkaError._PARTITION_EOF:
                            pending.discard(msg.partition())
                            continue
                        raise FeedbackStoreError(f"reading {self.topic}: {error.str()}")
                    try:
                        fb = fpb.Feedback.FromString(msg.value() or b"")
                    except Exception:  # noqa: BLE001 - a damaged message loses one label, not the rest
                        fb = None
                    if fb is None or not fb.feedback_id:
                        log.warning("skipped a message of the feedback topic that is no stored logmesh.v1.Feedback",
                                    extra={"topic": self.topic, "partition": msg.partition(), "offset": msg.offset()})
                    else:
                        out.append(fb)
                    if msg.offset() + 1 >= ends[msg.partition()]:
                        pending.discard(msg.partition())
            return out
        except KafkaException as exc:
            raise FeedbackStoreError(f"cannot read {self.topic} at {self.bootstrap}: {exc}") from None
        finally:
            consumer.close()

    def follow(self, timeout: float) -> list[fpb.Feedback]:
        """The labels written since read_all (or the last follow), in topic order; waits up to `timeout` s for
        the first. What a replica that does not own the book applies: the owner's labels as they land."""
        if self._follower is None:
            consumer = Consumer(self._conf(**{"group.id": f"logmesh-feedback-{uuid.uuid4().hex[:8]}",
                                              "enable.auto.commit": False, "isolation.level": "read_committed"}))
            consumer.assign([TopicPartition(self.topic, p, offset) for p, offset in (self._read_to or {0: 0}).items()])
            self._follower = consumer
        out: list[fpb.Feedback] = []
        try:
            for msg in self._follower.consume(500, timeout=timeout):
                if msg.error() is not None or not msg.value():
                    continue
                try:
                    fb = fpb.Feedback.FromString(msg.value())
                except Exception:  # noqa: BLE001 - a damaged message loses one label (read_all says so)
                    continue
                if fb.feedback_id:
                    out.append(fb)
        except KafkaException as exc:
            raise FeedbackStoreError(f"cannot follow {self.topic}: {exc}") from None
        return out

    def fence(self) -> None:
        """Takes the shared transactional id (a new owner, before it reads the topic to its end): aborts what a
        former owner left open and fences its producer. Raises FeedbackStoreError when the broker cannot."""
        assert self.transactional_id, "fencing needs a transactional id"
        with self._lock:
            self._drop_producer()
            producer = Producer(self._conf(**{"acks": "all", "enable.idempotence": True,
                                              "transactional.id": self.transactional_id,
                                              "transaction.timeout.ms": max(10_000, int(self.timeout_s * 3000))}))
            try:
                producer.init_transactions(max(self.timeout_s, 30.0))
            except KafkaException as exc:
                raise FeedbackStoreError(f"cannot take the feedback writer's transactional id: {exc}") from None
            self._producer = producer

    def drop_producer(self) -> None:
        """This replica stopped owning the book (or its producer was fenced): the next write fences again."""
        with self._lock:
            self._drop_producer()

    def _drop_producer(self) -> None:
        producer, self._producer = self._producer, None
        if producer is not None:
            try:
                producer.flush(0)
            except KafkaException:
                pass  # a fenced producer: nothing of it is kept

    def append(self, fb: fpb.Feedback) -> None:
        """Writes `fb` and waits for the broker's acknowledgement (with a transactional id: commits it in a
        transaction of its own); raises FeedbackStoreError when it did not come, then nothing was stored."""
        if self.transactional_id:
            self._append_in_transaction(fb)
            return
        with self._lock:
            if self._producer is None:
                self._producer = Producer(self._conf(**{"acks": "all", "enable.idempotence": True,
                                                        "message.timeout.ms": int(self.timeout_s * 1000)}))
            producer = self._producer
        outcome: list[Any] = []
        try:
            producer.produce(self.topic, key=fb.feedback_id.encode(), value=fb.SerializeToString(),
                             on_delivery=lambda err, _msg: outcome.append(err))
        except (KafkaException, BufferError) as exc:
            raise FeedbackStoreError(f"cannot write to {self.topic}: {exc}") from None
        producer.flush(self.timeout_s + 1)
        if not outcome:
            raise FeedbackStoreError(f"the broker at {self.bootstrap} did not acknowledge the label within "
                                     f"{self.timeout_s:.0f}s")
        if outcome[0] is not None:
            raise FeedbackStoreError(f"cannot write to {self.topic}: {outcome[0].str()}")

    def _append_in_transaction(self, fb: fpb.Feedback) -> None:
        """One label, one transaction, by the producer `fence` made (none: this writer must fence and read
        again first, FeedbackBook does). Any failure drops the producer: a fenced one is dead for good, and a
        fresh one must not be made here without the read that follows a fence."""
        with self._lock:
            producer = self._producer
            if producer is None:
                raise FeedbackStoreError(f"the writer of {self.topic} must take its transactional id again")
            try:
                producer.begin_transaction()
                producer.produce(self.topic, key=fb.feedback_id.encode(), value=fb.SerializeToString())
                producer.commit_transaction(max(self.timeout_s, 30.0))
            except (KafkaException, BufferError) as exc:
                error = exc.args[0] if exc.args and isinstance(exc.args[0], KafkaError) else None
                if error is not None and error.txn_requires_abort():
                    try:
                        producer.abort_transaction(self.timeout_s)
                    except KafkaException:
                        pass  # the next fence aborts it
                self._drop_producer()
                if error is not None and error.code() in _FENCED_CODES:
                    raise FeedbackWriteFenced(f"cannot write to {self.topic}: {error.str()} (fenced: another "
                                              "replica took the book over)") from None
                fatal = error is not None and error.fatal()
                raise FeedbackStoreError(f"cannot write to {self.topic}: {error.str() if error else exc}"
                                         + (" (fatal for this producer)" if fatal else "")) from None

    def close(self) -> None:
        if self._follower is not None:
            self._follower.close()
            self._follower = None
        with self._lock:
            if self._producer is not None:
                self._producer.flush(self.timeout_s)
                self._producer = None

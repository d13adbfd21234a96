"""The job's Kafka outputs: per-line results, anomalies, the dead-letter topic, and the sink's ledger.

With a `transactional_id` (what the job's tasks use: one per Spark partition and writer slot, task_transactional_id)
the messages a task writes for its partition of a micro-batch, its ledger record included, are one
Kafka transaction: consumers reading with isolation.level=read_committed (librdkafka's default) see all
of it or none of it. `init_transactions` fences an earlier producer with the same id (an earlier attempt
of the task, a zombie, a crashed job) and aborts its open transaction, so a replayed partition never
shows twice. The protocol itself is in sink.py.
"""
from __future__ import annotations

import logging
import time
import uuid
from pathlib import Path

from confluent_kafka import Consumer, KafkaError, KafkaException, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic
from tenacity import RetryCallState, Retrying, retry_if_exception, stop_before_delay, wait_exponential

from logmesh.ingest.broker import watermarks
from logmesh.streaming.decode import Rejected
from logmesh.streaming.options import LEDGER_TOPIC
from logmesh.v1 import score_pb2

log = logging.getLogger("logmesh.stream.outputs")
_rdkafka_log = logging.getLogger("logmesh.stream.rdkafka")  # librdkafka's own lines, through logging


class _FencedIsExpected(logging.Filter):
    """librdkafka logs a producer fenced by a newer one of its transactional id at ERROR/CRITICAL. Here that is
    the protocol working (a retry fencing the attempt it replaces, a write task's reused producer replaced,
    sink.py): debug. What follows it (the write redone, or the task failing) is logged by the caller."""

    MARKS = ("fenced by a newer instance", "old epoch", "_FENCED", "PRODUCER_FENCED", "INVALID_PRODUCER_EPOCH")

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno > logging.DEBUG and any(m in record.getMessage() for m in self.MARKS):
            record.levelno, record.levelname = logging.DEBUG, "DEBUG"
        return True


_rdkafka_log.addFilter(_FencedIsExpected())
JOB_ID_FILE = "job-id"


class TransactionAborted(KafkaException):
    """The batch's transaction was aborted (e.g. a message could not be delivered); its writes can be redone."""


def _kafka_error(exc: KafkaException) -> KafkaError | None:
    return exc.args[0] if exc.args and isinstance(exc.args[0], KafkaError) else None


class ResultProducer:
    def __init__(self, bootstrap: str, scores_topic: str = "logmesh.scores",
                 anomalies_topic: str = "logmesh.anomalies", dlq_topic: str = "logmesh.dlq",
                 extra: dict[str, str] | None = None, transactional_id: str | None = None,
                 transaction_timeout_s: float = 300.0, init_budget_s: float = 300.0) -> None:
        self.bootstrap = bootstrap
        self.topics = (scores_topic, anomalies_topic, dlq_topic)
        self.transactional_id = transactional_id
        self.transaction_timeout_s = transaction_timeout_s
        self.init_budget_s = init_budget_s
        self.extra = dict(extra or {})
        self._errors: list[str] = []
        self._in_transaction = False
        self._producer = self._new_producer()

    @property
    def transactional(self) -> bool:
        return self.transactional_id is not None

    def _new_producer(self) -> Producer:
        conf = {"bootstrap.servers": self.bootstrap, "enable.idempotence": True, "acks": "all",
                "linger.ms": 5, "compression.type": "lz4", "message.timeout.ms": 120_000, "logger": _rdkafka_log,
                # a dead letter is as big as the message the broker took on the input topic: let the broker's
                # limit (message.max.bytes, 10 MiB in deploy/kafka) decide, not librdkafka's 1 MB default
                "message.max.bytes": 64 * 1024 * 1024}
        if self.transactional:
            conf.update({"transactional.id": self.transactional_id,
                         "transaction.timeout.ms": int(self.transaction_timeout_s * 1000)})
        conf.update(self.extra)
        try:
            producer = Producer(conf)
        except KafkaException as exc:  # e.g. an unknown or invalid --kafka-option
            raise ValueError(f"bad Kafka producer configuration: {exc.args[0].str() if _kafka_error(exc) else exc}") from None
        if self.transactional:
            self._init_transactions(producer)
        return producer

    def _init_transactions(self, producer: Producer) -> None:
        """Fences any earlier producer with this transactional id and aborts its open transaction.
        Retried while the broker is unreachable (a retriable error; tenacity: waits doubling from 0.5 s to
        10 s, none that would end past init_budget_s; then the error is raised)."""
        started = time.monotonic()

        def retriable(exc: BaseException) -> bool:
            err = _kafka_error(exc) if isinstance(exc, KafkaException) else None
            return err is not None and err.retriable()

        def log_retry(state: RetryCallState) -> None:
            err = _kafka_error(state.outcome.exception())  # type: ignore[union-attr, arg-type]
            log.warning("retrying init_transactions", extra={"attempt": state.attempt_number,
                                                             "error": err.str() if err else "",
                                                             "sleep_s": state.upcoming_sleep})

        Retrying(retry=retry_if_exception(retriable), wait=wait_exponential(multiplier=0.5, max=10.0),
                 stop=stop_before_delay(self.init_budget_s), before_sleep=log_retry, reraise=True)(
            lambda: producer.init_transactions(min(60.0, max(1.0, started + self.init_budget_s - time.monotonic()))))

    @property
    def in_transaction(self) -> bool:
        return self._in_transaction

    def recover(self, quiet: bool = False) -> None:
        """A fresh producer with the same transactional id: it fences this one and aborts whatever it left open.
        `quiet`: an expected replacement (a cached producer found fenced), logged at debug."""
        log.log(logging.DEBUG if quiet else logging.WARNING, "recreating the transactional producer",
                extra={"transactional_id": self.transactional_id})
        self._in_transaction = False
        self._errors = []
        self._producer = self._new_producer()

    # -- transaction boundaries -------------------------------------------------------------------
    def begin(self) -> None:
        if self.transactional and not self._in_transaction:
            self._producer.begin_transaction()
            self._in_transaction = True

    def commit(self, timeout: float = 120.0) -> None:
        """Makes the batch's messages visible atomically (non-transactional: waits for delivery).
        Raises TransactionAborted when the transaction had to be aborted; the caller redoes the batch."""
        if not self.transactional:
            self.flush(timeout)
            return
        deadline = time.monotonic() + timeout
        while True:
            try:
                self._producer.commit_transaction(max(1.0, deadline - time.monotonic()))
                self._in_transaction = False
                self._errors = []
                return
            except KafkaException as exc:
                err = _kafka_error(exc)
                if err is not None and err.txn_requires_abort():
                    self.abort()
                    raise TransactionAborted(err) from None
                if err is not None and err.retriable() and time.monotonic() < deadline:
                    log.warning("retrying commit_transaction", extra={"error": err.str()})
                    continue
                raise

    def abort(self, timeout: float = 60.0) -> None:
        """Aborts the open transaction (its messages are purged and never read by read_committed consumers)."""
        if not self.transactional or not self._in_transaction:
            return
        deadline = time.monotonic() + timeout
        while True:
            try:
                self._producer.abort_transaction(max(1.0, deadline - time.monotonic()))
                break
            except KafkaException as exc:
                err = _kafka_error(exc)
                if err is not None and err.retriable() and time.monotonic() < deadline:
                    continue
                raise
        self._in_transaction = False
        self._errors = []

    # -- messages ---------------------------------------------------------------------------------
    def _delivered(self, err, msg) -> None:  # type: ignore[no-untyped-def]
        if err is not None:
            self._errors.append(f"{msg.topic()}: {err}")

    def _produce(self, topic: str, key: bytes | None, value: bytes | None, headers: list | None = None) -> None:
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

    def score_bytes(self, results: list[tuple[bytes, bytes]]) -> None:
        """ScoreResults already serialized (by the executor that scored them), keyed by record id."""
        for key, value in results:
            self._produce(self.topics[0], key, value)
        self._producer.poll(0)

    def anomalies(self, anomalies: list[score_pb2.Anomaly], key_of) -> None:  # type: ignore[no-untyped-def]
        for a in anomalies:
            self._produce(self.topics[1], key_of(a).encode(), a.SerializeToString())

    def dead_letters(self, rejected: list[Rejected]) -> None:
        """Original bytes and key intact; where they came from and why in the headers."""
        for r in rejected:
            self._produce(self.topics[2], r.row.key, r.row.value, headers=[
                ("source.topic", r.row.topic.encode()), ("source.partition", str(r.row.partition).encode()),
                ("source.offset", str(r.row.offset).encode()), ("error", r.reason.encode())])

    def ledger_record(self, topic: str, key: str, batch_id: int) -> None:
        self._produce(topic, key.encode(), str(batch_id).encode())

    def close(self, timeout: float = 30.0) -> None:
        """Delivers what is queued and lets the producer go (a transaction left open is the next one's to abort)."""
        self._producer.flush(timeout)
        self._producer = None  # type: ignore[assignment]

    def flush(self, timeout: float = 120.0) -> None:
        """Waits until every message is acknowledged; raises if any was not, so the batch is redone."""
        left = self._producer.flush(timeout)
        errors, self._errors = self._errors, []
        if left or errors:
            raise KafkaException(f"{left} result messages undelivered, {len(errors)} failed: {errors[:3]}")


def job_id(checkpoint: str | Path) -> str:
    """This job's stable id, kept in its checkpoint folder: the key of its ledger record and the root
    of its transactional id, so a restart from the same checkpoint fences the attempt it replaces."""
    path = Path(checkpoint) / JOB_ID_FILE
    if path.exists():
        return path.read_text().strip()
    path.parent.mkdir(parents=True, exist_ok=True)
    value = uuid.uuid4().hex
    tmp = path.with_suffix(".tmp")
    tmp.write_text(value + "\n")
    tmp.replace(path)
    return value


def ensure_ledger_topic(bootstrap: str, topic: str = LEDGER_TOPIC, extra: dict[str, str] | None = None,
                        timeout: float = 30.0) -> bool:
    """Creates the compacted one-partition ledger topic if the broker lacks it. True if created."""
    admin = AdminClient({"bootstrap.servers": bootstrap, **(extra or {})})
    if topic in admin.list_topics(timeout=timeout).topics:
        return False
    futures = admin.create_topics([NewTopic(topic, num_partitions=1, replication_factor=1,
                                            config={"cleanup.policy": "compact"})],
                                  operation_timeout=timeout, request_timeout=timeout)
    try:
        futures[topic].result(timeout)
    except KafkaException as exc:
        if _kafka_error(exc) is None or exc.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:
            raise
        return False
    log.info("created ledger topic", extra={"topic": topic})
    return True


# Write slots per partition (local mode, sink.py): each Python worker that writes takes one (sink._writer_slot)
# and writes partition p with the id of (p, its slot), so two workers that take turns at p's write task do not
# fence each other's cached producer every batch. Local mode runs 4 workers (2 per task); a slot two workers
# share (more workers than slots) only costs a fresh producer now and then.
WRITER_SLOTS = 4


def task_transactional_id(job: str, partition: int, slot: int | None = None) -> str:
    """The transactional id a write task of Spark partition `partition` of `job`'s micro-batches uses: the
    one of its worker's write slot (sink.py), or without `slot` the partition's own id, which tasks used
    before slots (still fenced: a checkpoint started then may have left a transaction open)."""
    base = f"logmesh-stream-{job}-p{partition}"
    return base if slot is None else f"{base}-w{slot}"


def partition_transactional_ids(job: str, partition: int) -> list[str]:
    """Every id a writer of `partition` may have used: what a retry of its task, or the driver before a
    (re)start, fences so that no earlier attempt can still commit."""
    return [task_transactional_id(job, partition), *(task_transactional_id(job, partition, s)
                                                     for s in range(WRITER_SLOTS))]


def legacy_transactional_id(job: str) -> str:
    """The one transactional id of the driver-side sink before tasks wrote (its open transaction is fenced too)."""
    return f"logmesh-stream-{job}"


def fence(bootstrap: str, ids: list[str], extra: dict[str, str] | None = None, budget_s: float = 300.0) -> None:
    """init_transactions on each id: a crashed attempt's open transactions are aborted and its producers
    fenced, so the ledger's read_committed end is the true end. In parallel (each init is a few broker
    round trips, ~65 ms here, and a job fences partitions x (1 + WRITER_SLOTS) ids); the first failure is
    raised once all are done."""
    from concurrent.futures import ThreadPoolExecutor

    def one(transactional_id: str) -> None:
        ResultProducer(bootstrap, extra=extra, transactional_id=transactional_id, init_budget_s=budget_s).close()

    with ThreadPoolExecutor(max_workers=min(8, max(1, len(ids)))) as pool:
        for future in [pool.submit(one, i) for i in ids]:
            future.result()


class Ledger:
    """Which (batch, partition) writes committed, kept in Kafka (a compacted topic) and written inside the
    task's own transaction, so "results visible" and "partition done" are one fact.

    The record's key is `job/partition`, its value the batch id: Spark replays only the batch after its
    last committed one, with the same partitions, so partition p of batch n is done when the last batch id
    recorded for p is at least n. A record keyed by the bare job id (the driver-side sink before) covers
    every partition of the batches up to it."""

    def __init__(self, bootstrap: str, job: str, topic: str = LEDGER_TOPIC, extra: dict[str, str] | None = None,
                 timeout: float = 60.0) -> None:
        self.bootstrap, self.job, self.topic, self.extra, self.timeout = bootstrap, job, topic, dict(extra or {}), timeout
        self.last: dict[int, int] = {}
        self.reload()

    def reload(self) -> None:
        """Reads the ledger again (after `fence`: a dead attempt's open transactions are aborted by then)."""
        self.last = read_ledger(self.bootstrap, self.topic, self.job, self.extra, self.timeout)
        log.info("ledger read", extra={"topic": self.topic, "job_id": self.job,
                                       "last_committed": {str(k): v for k, v in sorted(self.last.items())}})

    def done(self, batch_id: int, partition: int) -> bool:
        return max(self.last.get(partition, -1), self.last.get(LEGACY, -1)) >= batch_id

    def done_partitions(self, batch_id: int) -> set[int]:
        if self.last.get(LEGACY, -1) >= batch_id:
            return ALL
        return {p for p, last in self.last.items() if p != LEGACY and last >= batch_id}

    def committed(self, batch_id: int, partition: int) -> None:
        self.last[partition] = max(self.last.get(partition, -1), batch_id)


LEGACY = -1  # read_ledger's key for the record keyed by the bare job id


class _All(frozenset):
    def __contains__(self, item: object) -> bool:
        return True


ALL: set[int] = _All()  # type: ignore[assignment]


def ledger_key(job: str, partition: int) -> str:
    return f"{job}/{partition}"


def read_ledger(bootstrap: str, topic: str, job: str, extra: dict[str, str] | None = None,
                timeout: float = 60.0, partition: int | None = None) -> dict[int, int]:
    """partition -> the last committed batch id recorded for `job` (read_committed; LEGACY for a record
    keyed by the bare job id). Reads until its position reaches the high watermark it saw first, so a
    record committed behind another task's open transaction is waited for, not missed (librdkafka's
    partition EOF comes at the last stable offset). `partition`: only that partition's key."""
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"logmesh-ledger-{uuid.uuid4().hex}",
                         "enable.auto.commit": False, "enable.partition.eof": True,
                         "isolation.level": "read_committed", "logger": _rdkafka_log, **(extra or {})})
    try:
        metadata = consumer.list_topics(topic, timeout=timeout).topics.get(topic)
        if metadata is None or metadata.error is not None:
            raise KafkaException(f"ledger topic {topic} unreadable: {metadata.error if metadata else 'missing'}")
        ends = {p: _high_watermark(bootstrap, topic, p, extra, timeout) for p in metadata.partitions}
        pending = {p for p, end in ends.items() if end > 0}
        consumer.assign([TopicPartition(topic, p, 0) for p in pending])
        last: dict[int, int] = {}
        deadline = time.monotonic() + timeout
        legacy = job.encode()
        prefix = f"{job}/".encode()
        wanted = None if partition is None else ledger_key(job, partition).encode()
        while pending:
            if time.monotonic() > deadline:
                raise TimeoutError(f"reading the ledger topic {topic} took over {timeout:.0f}s")
            msg = consumer.poll(0.5)
            if msg is None:
                continue
            if msg.error() is None:
                key = msg.key() or b""
                if key == legacy:
                    last[LEGACY] = int(msg.value())
                elif key.startswith(prefix) and (wanted is None or key == wanted):
                    last[int(key[len(prefix):])] = int(msg.value())
            elif msg.error().code() != KafkaError._PARTITION_EOF:
                raise KafkaException(msg.error())
            elif msg.offset() >= ends[msg.partition()]:  # an EOF short of it is the last stable offset
                pending.discard(msg.partition())
        return last
    finally:
        consumer.close()


def _high_watermark(bootstrap: str, topic: str, partition: int, extra: dict[str, str] | None, timeout: float) -> int:
    """The partition's high watermark (read_uncommitted: the end, open transactions included)."""
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"logmesh-ledger-{uuid.uuid4().hex}",
                         "isolation.level": "read_uncommitted", "logger": _rdkafka_log, **(extra or {})})
    try:
        return watermarks(consumer, topic, [partition], timeout)[partition][1]
    finally:
        consumer.close()

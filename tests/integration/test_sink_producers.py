"""The write tasks' cached transactional producers (streaming/sink.py) on the real broker, without Spark: a
Python worker reuses its producer of a partition's transactional id, and fencing stays sound. A producer
found fenced (another worker, the driver or a retry initialised the id since) commits nothing, and a fresh
one redoes the write; a retry never reuses one; a task that failed leaves none behind."""
from __future__ import annotations

import uuid

import pytest
from confluent_kafka.admin import NewTopic

from logmesh.streaming import sink
from logmesh.streaming.outputs import ResultProducer, ensure_ledger_topic, read_ledger, task_transactional_id
from logmesh.streaming.sink import WriterSettings, _Outputs, _release_producer, _task_producer, _write

from kafka_helpers import BOOTSTRAP, _consume_all

pytestmark = [pytest.mark.kafka]


@pytest.fixture
def settings(admin):
    prefix = f"sp{uuid.uuid4().hex[:8]}"
    names = {k: f"{prefix}.{k}" for k in ("scores", "anomalies", "dlq", "ledger")}
    for f in admin.create_topics([NewTopic(n, num_partitions=1, replication_factor=1) for k, n in names.items()
                                  if k != "ledger"]).values():
        f.result(30)
    ensure_ledger_topic(BOOTSTRAP, names["ledger"])
    yield WriterSettings(BOOTSTRAP, names["scores"], names["anomalies"], names["dlq"], names["ledger"],
                         job=prefix, kafka_options={}, retry_budget_s=30.0)
    for producer in sink._producers.values():
        producer.close()
    sink._producers.clear()
    admin.delete_topics(list(names.values()))


def _outputs(batch: int, n: int = 5) -> _Outputs:
    return _Outputs([], [(f"b{batch}-r{i}".encode(), f"value {batch}/{i}".encode()) for i in range(n)], [], [], [],
                    set())


def _task(settings: WriterSettings, batch: int, attempt: int = 0) -> tuple[str, int, bool]:
    """One write task of partition 0, as write_partition runs it: (producer kind, attempts, replaced)."""
    producer, kind = _task_producer(settings, 0, attempt)
    clean = False
    try:
        attempts, replaced = _write(producer, _outputs(batch), settings, batch, 0, attempt, cached=kind == "cached")
        clean = True
    finally:
        _release_producer(settings, 0, producer, clean)
    return kind, attempts, replaced


def _committed_keys(settings: WriterSettings) -> list[bytes]:
    return sorted(m.key() for m in _consume_all(settings.scores_topic))


def test_a_worker_reuses_its_producer_and_one_fenced_since_commits_nothing(settings):
    assert _task(settings, 1) == ("new", 1, False)
    assert _task(settings, 2) == ("cached", 1, False)  # no init_transactions: the same producer, next transaction
    # another worker (or the driver at a restart) initialises the id: this worker's producer is fenced
    other = ResultProducer(BOOTSTRAP, settings.scores_topic, settings.anomalies_topic, settings.dlq_topic,
                           transactional_id=task_transactional_id(settings.job, 0))
    other.close()
    kind, attempts, replaced = _task(settings, 3)
    assert (kind, attempts, replaced) == ("cached", 1, True)  # found fenced, replaced at once, written once
    assert _task(settings, 4) == ("cached", 1, False)  # the replacement is cached in turn
    expected = sorted(f"b{b}-r{i}".encode() for b in (1, 2, 3, 4) for i in range(5))
    assert _committed_keys(settings) == expected  # every batch exactly once; the fenced attempt committed nothing
    assert read_ledger(BOOTSTRAP, settings.ledger_topic, settings.job, partition=0) == {0: 4}


def test_a_retry_fences_with_a_fresh_producer_and_the_cached_one_is_dropped(settings):
    assert _task(settings, 1)[0] == "new"
    cached = sink._producers[task_transactional_id(settings.job, 0)]
    assert _task(settings, 2, attempt=1)[0] == "new"  # a retry: init_transactions fences every earlier attempt
    assert sink._producers[task_transactional_id(settings.job, 0)] is not cached
    assert _committed_keys(settings) == sorted(f"b{b}-r{i}".encode() for b in (1, 2) for i in range(5))


def test_a_task_that_failed_mid_transaction_leaves_no_producer_to_reuse(settings):
    """A producer whose transaction is still open (the task raised before its commit) must never serve the next
    task: its messages would commit with the next batch's."""
    producer, kind = _task_producer(settings, 0, 0)
    producer.begin()
    producer.score_bytes([(b"orphan", b"from a task that failed")])
    producer.flush()
    _release_producer(settings, 0, producer, clean=False)  # what write_partition's finally does after a raise
    assert task_transactional_id(settings.job, 0) not in sink._producers
    assert _task(settings, 1)[0] == "new"  # its init_transactions aborts the orphan's transaction
    assert _committed_keys(settings) == sorted(f"b1-r{i}".encode() for i in range(5))

"""The write tasks' cached transactional producers (streaming/sink.py) on the real broker, without Spark: a
Python worker reuses its producer of a partition's transactional id (per write slot), and fencing stays
sound. A producer found fenced (the driver or a retry initialised the id since) commits nothing, and a fresh
one redoes the write; a retry never reuses one and fences every slot's id of the partition; two workers
taking turns at a partition keep their producers; a task that failed leaves none behind; the producers a
worker's warm-up makes (after the driver's fence) serve its first writes, and one fenced since writes nothing."""
from __future__ import annotations

import contextlib
import uuid

import pytest
from confluent_kafka import KafkaException
from confluent_kafka.admin import NewTopic

from logmesh.streaming import sink
from logmesh.streaming.outputs import (WRITER_SLOTS, ResultProducer, ensure_ledger_topic, fence,
                                       partition_transactional_ids, read_ledger, task_transactional_id)
from logmesh.streaming.sink import WriterSettings, _Outputs, _release_producer, _task_producer, _write, warm_producers

from kafka_helpers import BOOTSTRAP, _consume_all

pytestmark = [pytest.mark.kafka]


@pytest.fixture
def settings(admin):
    prefix = f"sp{uuid.uuid4().hex[:8]}"
    names = {k: f"{prefix}.{k}" for k in ("scores", "anomalies", "dlq", "ledger")}
    partitions = {"scores": 2}  # two write tasks' partitions (the warm-up tests)
    for f in admin.create_topics([NewTopic(n, num_partitions=partitions.get(k, 1), replication_factor=1)
                                  for k, n in names.items() if k != "ledger"]).values():
        f.result(30)
    ensure_ledger_topic(BOOTSTRAP, names["ledger"])
    yield WriterSettings(BOOTSTRAP, names["scores"], names["anomalies"], names["dlq"], names["ledger"],
                         job=prefix, kafka_options={}, retry_budget_s=30.0, writer_slots=WRITER_SLOTS)
    for producer in sink._producers.values():
        producer.close()
    sink._producers.clear()
    sink._warm.clear()
    sink._slot.clear()
    admin.delete_topics(list(names.values()))


def _outputs(batch: int, n: int = 5) -> _Outputs:
    return _Outputs([], [(f"b{batch}-r{i}".encode(), f"value {batch}/{i}".encode()) for i in range(n)], [], [], [],
                    set())


@pytest.fixture(autouse=True)
def one_slot(monkeypatch):
    """Slot 0 for this process unless a test says otherwise (the lock files of the temp folder are per job)."""
    monkeypatch.setattr(sink, "_slot", [0, None])


def _tid(settings: WriterSettings, slot: int = 0) -> str:
    return task_transactional_id(settings.job, 0, slot)


def _task(settings: WriterSettings, batch: int, attempt: int = 0, partition: int = 0) -> tuple[str, int, bool]:
    """One write task of `partition`, as write_partition runs it: (producer kind, attempts, replaced)."""
    producer, kind = _task_producer(settings, partition, attempt)
    clean = False
    try:
        attempts, replaced = _write(producer, _outputs(batch if partition == 0 else 100 * partition + batch),
                                    settings, batch, partition, attempt, cached=kind in ("cached", "warm"))
        clean = True
    finally:
        _release_producer(settings, partition, producer, clean)
    return kind, attempts, replaced


def _committed_keys(settings: WriterSettings) -> list[bytes]:
    return sorted(m.key() for m in _consume_all(settings.scores_topic))


def test_a_worker_reuses_its_producer_and_one_fenced_since_commits_nothing(settings):
    assert _task(settings, 1) == ("new", 1, False)
    assert _task(settings, 2) == ("cached", 1, False)  # no init_transactions: the same producer, next transaction
    # another worker (or the driver at a restart) initialises the id: this worker's producer is fenced
    other = ResultProducer(BOOTSTRAP, settings.scores_topic, settings.anomalies_topic, settings.dlq_topic,
                           transactional_id=_tid(settings))
    other.close()
    kind, attempts, replaced = _task(settings, 3)
    assert (kind, attempts, replaced) == ("cached", 1, True)  # found fenced, replaced at once, written once
    assert _task(settings, 4) == ("cached", 1, False)  # the replacement is cached in turn
    expected = sorted(f"b{b}-r{i}".encode() for b in (1, 2, 3, 4) for i in range(5))
    assert _committed_keys(settings) == expected  # every batch exactly once; the fenced attempt committed nothing
    assert read_ledger(BOOTSTRAP, settings.ledger_topic, settings.job, partition=0) == {0: 4}


def test_a_retry_fences_with_a_fresh_producer_and_the_cached_one_is_dropped(settings):
    assert _task(settings, 1)[0] == "new"
    cached = sink._producers[_tid(settings)]
    assert _task(settings, 2, attempt=1)[0] == "new"  # a retry: init_transactions fences every earlier attempt
    assert sink._producers[_tid(settings)] is not cached
    assert _committed_keys(settings) == sorted(f"b{b}-r{i}".encode() for b in (1, 2) for i in range(5))


def test_a_task_that_failed_mid_transaction_leaves_no_producer_to_reuse(settings):
    """A producer whose transaction is still open (the task raised before its commit) must never serve the next
    task: its messages would commit with the next batch's."""
    producer, kind = _task_producer(settings, 0, 0)
    producer.begin()
    producer.score_bytes([(b"orphan", b"from a task that failed")])
    producer.flush()
    _release_producer(settings, 0, producer, clean=False)  # what write_partition's finally does after a raise
    assert _tid(settings) not in sink._producers
    assert _task(settings, 1)[0] == "new"  # its init_transactions aborts the orphan's transaction
    assert _committed_keys(settings) == sorted(f"b1-r{i}".encode() for i in range(5))


def _as_worker(slot: int) -> None:
    """This process plays the worker holding write slot `slot` (its producers stay in sink._producers by id)."""
    sink._slot[:] = [slot, None]


def test_two_workers_taking_turns_at_a_partition_keep_their_producers(settings):
    """Two Python workers that alternate at partition 0's write task: with one id per partition each one's
    init_transactions fenced the other's cached producer (replaced every batch); with a slot each they reuse."""
    kinds = []
    for batch in range(1, 7):
        _as_worker(batch % 2)
        kinds.append(_task(settings, batch))
    assert kinds == [("new", 1, False)] * 2 + [("cached", 1, False)] * 4
    assert _committed_keys(settings) == sorted(f"b{b}-r{i}".encode() for b in range(1, 7) for i in range(5))


def test_a_retry_in_one_slot_fences_an_earlier_attempt_in_another(settings):
    """The zombie case: attempt 0 of batch 2 ran in the worker of slot 1 and produced, but its task was given up;
    the retry runs in slot 0. It must fence slot 1's producer (its transaction aborted, its commit refused), or
    both attempts' messages would commit."""
    _as_worker(1)
    assert _task(settings, 1) == ("new", 1, False)
    zombie, _ = _task_producer(settings, 0, 0)  # slot 1's cached producer, mid-write of batch 2
    zombie.begin()
    zombie.score_bytes([(b"zombie", b"attempt 0 of batch 2")])
    zombie.flush()
    _as_worker(0)
    assert _task(settings, 2, attempt=1)[0] == "new"  # the retry fences every slot's id of partition 0
    with pytest.raises(KafkaException, match="fenced"):  # its transaction cannot commit
        zombie.commit()
    with contextlib.suppress(KafkaException):  # a fenced producer's flush raises the same
        zombie.close()
    assert _committed_keys(settings) == sorted(f"b{b}-r{i}".encode() for b in (1, 2) for i in range(5))
    assert read_ledger(BOOTSTRAP, settings.ledger_topic, settings.job, partition=0) == {0: 2}


def test_a_worker_takes_a_free_slot_and_holds_it(settings, tmp_path, monkeypatch):
    """Slots come from lock files of the host's temp folder: a second live process gets another one."""
    import subprocess
    import sys
    import tempfile
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    sink._slot.clear()
    assert sink._writer_slot(settings) == 0
    code = ("import sys, tempfile; tempfile.tempdir = sys.argv[1]\n"
            "from logmesh.streaming import sink\n"
            "print(sink._writer_slot(sink.WriterSettings('', '', '', '', '', job=sys.argv[2], kafka_options={},\n"
            "                                            writer_slots=4)))")
    other = subprocess.run([sys.executable, "-c", code, str(tmp_path), settings.job], capture_output=True, text=True,
                           check=True)
    assert other.stdout.strip() == "1"
    assert sink._writer_slot(settings) == 0  # held for the process's life


def test_without_slots_a_partition_has_one_id(settings):
    """On a cluster (writer_slots 0) every worker writes partition 0 with its one id, as before the slots."""
    import dataclasses
    one = dataclasses.replace(settings, writer_slots=0)
    producer, kind = _task_producer(one, 0, 0)
    assert kind == "new" and producer.transactional_id == task_transactional_id(settings.job, 0)
    producer.close()


def test_the_warm_up_makes_each_partitions_producer_and_the_first_writes_reuse_them(settings):
    """The driver fenced every id (job.build_sink); then a worker's warm-up makes its slot's producer of each
    write partition, initialised, no transaction begun. The worker's first write of each partition reuses it
    (kind "warm": no init_transactions in the batch), later ones as any kept producer, and every batch
    commits once."""
    fence(BOOTSTRAP, [i for p in (0, 1) for i in partition_transactional_ids(settings.job, p)])
    made, seconds, error = warm_producers(settings, 2)
    assert (made, error) == (2, "") and seconds > 0
    assert sorted(sink._producers) == sorted(task_transactional_id(settings.job, p, 0) for p in (0, 1))
    assert warm_producers(settings, 2)[:1] == (0,)  # made once per worker
    assert [_task(settings, 1, partition=p) for p in (0, 1)] == [("warm", 1, False)] * 2
    assert [_task(settings, 2, partition=p) for p in (0, 1)] == [("cached", 1, False)] * 2
    expected = sorted(f"b{b}-r{i}".encode() for b in (1, 2, 101, 102) for i in range(5))
    assert _committed_keys(settings) == expected
    assert read_ledger(BOOTSTRAP, settings.ledger_topic, settings.job) == {0: 2, 1: 2}


def test_a_warm_producer_fenced_since_writes_nothing_and_is_replaced(settings):
    """A warm-up producer initialised before a fence (the driver's before a query restart, or a retry's) is
    no longer the newest holder of its id: its write is refused with nothing committed, and a fresh producer
    redoes it, once. The same holds for a warm-up that ran before the driver's fence at job start."""
    assert warm_producers(settings, 1)[0] == 1
    stale = sink._producers[_tid(settings)]
    fence(BOOTSTRAP, partition_transactional_ids(settings.job, 0))
    assert _task(settings, 1) == ("warm", 1, True)  # found fenced, replaced at once, written once
    assert sink._producers[_tid(settings)] is stale  # the same ResultProducer, its librdkafka producer new
    assert _task(settings, 2) == ("cached", 1, False)
    assert _committed_keys(settings) == sorted(f"b{b}-r{i}".encode() for b in (1, 2) for i in range(5))
    assert read_ledger(BOOTSTRAP, settings.ledger_topic, settings.job, partition=0) == {0: 2}


def test_a_retry_never_uses_a_warm_producer(settings):
    """A retry fences every id of the partition and writes with a fresh producer, warm one or not."""
    warm_producers(settings, 1)
    warm = sink._producers[_tid(settings)]
    assert _task(settings, 1, attempt=1) == ("new", 1, False)
    assert sink._producers[_tid(settings)] is not warm and _tid(settings) not in sink._warm
    assert _committed_keys(settings) == sorted(f"b1-r{i}".encode() for i in range(5))


def test_no_warm_producers_in_a_shared_slot_or_without_slots(settings):
    """A worker that shares its slot (every slot taken) would fence the other worker's producers: it makes
    none; on a cluster (no slots) a partition's one id is every worker's: none either."""
    import dataclasses
    sink._slot[:] = [0, sink._SHARED]
    assert warm_producers(settings, 2) == (0, 0.0, "") and not sink._producers
    sink._slot[:] = [0, None]
    assert warm_producers(dataclasses.replace(settings, writer_slots=0), 2) == (0, 0.0, "") and not sink._producers

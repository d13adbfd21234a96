"""The job's writes: each micro-batch's rows are written by Spark tasks, one per partition; the driver plans,
stores the embedded vector store's points and commits.

The rows come from the executors (block_sessions.py with work.py: decoded, embedded and scored there, blocks
judged against the state Spark keeps); `BatchSink` is the foreachBatch function, and `write_partition` the
task that writes one partition of a batch.

Exactly once, per (job, micro-batch n, Spark partition p):

    driver: the ledger says which partitions of n committed already (read at start, after fencing)
    task p, attempt a:
        skip if the driver knows (n, p) committed
        producer with transactional.id "logmesh-stream-{job}-p{p}" (on a cluster), or in local mode
          "logmesh-stream-{job}-p{p}-w{s}", s this Python worker's write slot (_writer_slot: one of
          WRITER_SLOTS, held by one live worker of the host): the two workers that take turns at p's write
          task then keep a producer each instead of fencing each other's every batch. A first attempt
          (a = 0) may reuse this worker's producer of its id, kept only after a commit, or made by the
          worker's warm-up after the driver's fence (warm_producers): every earlier attempt is finished
          or fenced by then; if another producer of the id was initialised since (a
          retry, the driver, another worker of one id), this one is fenced, commits nothing, and a fresh
          one redoes the write (_task_producer)
        a > 0 (a retry): init_transactions on every id of p (the slotless one and each slot's) fences every
          earlier attempt, whichever worker ran it, and aborts its open transaction; then a fresh producer;
          then read the ledger record (job/p); if it says n, the earlier attempt committed: skip
        begin; dead letters, scores, line anomalies, block ALERT/FINAL; flush           -> after-produce
        with --qdrant-url: upsert the partition's points                               -> after-store
        the ledger record (key job/p, value n) in the same transaction; commit          -> after-commit
        return a report and (embedded store) the points
    driver: the points for the embedded store (one process may open it) written to a spool file in the
        checkpoint (vector_store_spool.py)                                               -> after-store
        then Spark commits batch n (offsets and the block state of n), while a background thread
        upserts the spool into the store, in batch order, behind batch n+1's tasks

Why slots only in local mode: a stage resubmitted after a shuffle fetch failure (a lost executor's map
output, on a cluster) starts its tasks again at attempt 0 while a task of the earlier stage attempt may still
be running, and pyspark's TaskContext does not say which stage attempt a task belongs to. With one id per
partition the two attempts share the id, so at most one of them is live at a time; with an id per worker
they would not fence each other. Local mode has one executor and no remote shuffle reads.

A crash before a task's commit leaves an open transaction that the next attempt, or the restarted job
(which fences every id of every partition before it reads the ledger), aborts: read_committed consumers never see it,
and the partition is written again. A crash after the commit but before Spark committed the batch makes
Spark replay n from the state of n-1: the executors recompute the same rows (same input, same state, the
batch's own timestamp and watermark), the ledger skips the Kafka writes of every partition that
committed, and the points are written again (vector-store writes are keyed by data: topic/partition/offset
for lines, the block id for blocks, so a rewrite overwrites). A spool whose upsert the crash cut off is
upserted when the job starts again, before its first batch, oldest first (so no older write of a key lands
after a newer one); the store drains the queue when the job closes it. The block's alert status lives in the
state of the batch that alerted, so a replay alerts again only when the alert's transaction did not commit.

Fault injection for the crash tests (tests/e2e/test_faults.py): LOGMESH_SINK_CRASH_AT="POINT:BATCH[,...]".
after-produce and after-commit fire in the task (after-store too with --qdrant-url) and SIGKILL the whole
job (the driver's process group, when it leads one, and pyspark's daemon group); after-store without --qdrant-url fires in the driver.
"task-after-produce:BATCH" and "task-after-commit:BATCH" kill only the task's Python worker, in its first
attempt: Spark retries the task (with task retries enabled, e.g. master local[2,2]). Never set in production.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import os
import signal
import sys
import time
from pathlib import Path
from typing import Iterator

import pandas as pd
from confluent_kafka import KafkaException
from tenacity import RetryCallState, Retrying, retry_if_exception_type, stop_before_delay, wait_exponential

from logmesh.streaming import work
from logmesh.streaming.decode import KafkaRow, Rejected
from logmesh.streaming.outputs import (ALL, WRITER_SLOTS, Ledger, ResultProducer, TransactionAborted, fence, ledger_key,
                                       partition_transactional_ids, read_ledger, task_transactional_id)
from logmesh.streaming.retry import GaveUp
from logmesh.streaming.vector_store_spool import PointRow, PointSpool, points_of
from logmesh.v1 import score_pb2

__all__ = ["BatchReport", "BatchSink", "WriterSettings", "warm_producers", "write_partition"]
log = logging.getLogger("logmesh.stream.sink")
CRASH_ENV = "LOGMESH_SINK_CRASH_AT"
REPORT_SCHEMA = ("kind string, partition int, attempt int, pid int, work_pids string, rows long, scored long, "
                 "dead long, line_anomalies long, blocks long, alerts long, closed long, cut long, skipped boolean, "
                 "write_attempts int, producer string, producer_s double, write_s double, seconds double, point_id string, "
                 "vector binary, payload string")
REPORT_COLUMNS = [column.split()[0] for column in REPORT_SCHEMA.split(", ")]
TASK_PARTITIONS_FILE = "task-partitions"
STORE_SPOOL = "store-spool"  # in the checkpoint: the embedded store's points not yet upserted


def _wanted(point: str, batch_id: int, spec: str | None) -> bool:
    return bool(spec) and f"{point}:{batch_id}" in {w.strip() for w in spec.split(",")}  # type: ignore[union-attr]


def _crash_point(point: str, batch_id: int) -> None:
    """In the driver: SIGKILL the process (its group when it leads one, so Spark's JVM goes too)."""
    if not _wanted(point, batch_id, os.environ.get(CRASH_ENV)):
        return
    log.error("fault injection: SIGKILL", extra={"point": point, "batch_id": batch_id})
    for handler in logging.getLogger().handlers:
        handler.flush()
    if os.getpgid(0) == os.getpid():
        os.killpg(os.getpid(), signal.SIGKILL)
    os.kill(os.getpid(), signal.SIGKILL)


def _task_crash_point(point: str, batch_id: int, partition: int, attempt: int, settings: "WriterSettings") -> None:
    """In a task: "POINT" kills the job (the driver's process group, when it leads one; else this worker),
    "task-POINT" this worker only, and only in the task's first attempt."""
    whole = _wanted(point, batch_id, settings.crash)
    task = attempt == 0 and _wanted(f"task-{point}", batch_id, settings.crash)
    if not (whole or task):
        return
    line = json.dumps({"level": "error", "logger": log.name, "msg": "fault injection: SIGKILL",
                       "point": point if whole else f"task-{point}", "batch_id": batch_id, "partition": partition,
                       "attempt": attempt, "pid": os.getpid()}) + "\n"
    try:  # the driver's own stderr (local mode): the worker's goes through the JVM, which dies with the job
        with open(f"/proc/{settings.driver_pid}/fd/2", "a") as err:
            err.write(line)
    except OSError:
        sys.stderr.write(line)
        sys.stderr.flush()
    if whole and _leads_group(settings.driver_pid):
        os.killpg(settings.driver_pid, signal.SIGKILL)  # the driver and Spark's JVM
        os.killpg(0, signal.SIGKILL)  # pyspark's daemon and its workers (the daemon has a group of its own)
    os.kill(os.getpid(), signal.SIGKILL)


def _leads_group(pid: int) -> bool:
    try:
        return os.getpgid(pid) == pid
    except OSError:
        return False


@dataclasses.dataclass(frozen=True)
class WriterSettings:
    """What a writing task needs (pickled to the executors)."""

    bootstrap: str
    scores_topic: str
    anomalies_topic: str
    dlq_topic: str
    ledger_topic: str
    job: str
    kafka_options: dict[str, str]
    retry_budget_s: float = 300.0
    qdrant_url: str | None = None  # tasks upsert their points themselves; else the driver does
    qdrant_api_key: str | None = None
    crash: str | None = None
    driver_pid: int = 0
    # ids per write slot (outputs.WRITER_SLOTS) or, 0, one per partition: local mode only (job.build_sink), see
    # the module's protocol on a resubmitted stage
    writer_slots: int = 0


@dataclasses.dataclass
class BatchReport:
    batch_id: int
    rows: int = 0
    scored: int = 0
    dead_letters: int = 0
    line_anomalies: int = 0
    blocks: int = 0
    block_alerts: int = 0
    blocks_closed: int = 0  # closed as complete: the stream went on without them (rule "quiet")
    blocks_cut: int = 0  # finalized as cut prefixes: the stream stopped (rule "stream-stopped")
    seconds: float = 0.0
    skipped: bool = False  # every partition that had rows was committed before (a replay): nothing written
    write_attempts: int = 0
    # write tasks' producers: fresh ones (init_transactions), reused ones, reused ones found fenced (replaced)
    producers: dict[str, int] = dataclasses.field(default_factory=dict)
    # the slowest write task's time to have its producer (a new one's init_transactions), and its whole write
    # (producer, a retry's ledger read, the transaction up to its commit)
    producer_s: float = 0.0
    write_s: float = 0.0
    partitions: int = 0  # tasks that had rows
    skipped_partitions: list[int] = dataclasses.field(default_factory=list)
    task_pids: list[int] = dataclasses.field(default_factory=list)  # the Python workers that wrote
    points: int = 0  # vector-store points the tasks handed the driver (embedded store)
    work_pids: list[int] = dataclasses.field(default_factory=list)  # the Python workers that made the RPCs


_stores: dict[str, object] = {}


def _task_store(settings: WriterSettings):  # type: ignore[no-untyped-def]
    from logmesh.streaming.vector_store import open_store
    if settings.qdrant_url not in _stores:
        _stores[settings.qdrant_url] = open_store(url=settings.qdrant_url, api_key=settings.qdrant_api_key)  # type: ignore[index]
    return _stores[settings.qdrant_url]  # type: ignore[index]


# This Python worker's transactional producers, by transactional id, each left by a write that committed.
# A fresh producer's init_transactions (and its connections) cost ~65 ms against ~30 ms for a whole
# transaction on a warm one (local broker, this box), per task and micro-batch.
_producers: dict[str, ResultProducer] = {}
# The ids of those this worker's warm-up made (warm_producers) that no task has used yet.
_warm: set[str] = set()


_slot: list = []  # this worker's write slot, and the open file whose lock holds it (or _SHARED)
_SHARED = "shared"  # every slot was taken: this worker shares the pid's slot with another


def _writer_slot(settings: WriterSettings) -> int:
    """This Python worker's write slot (outputs.WRITER_SLOTS), taken once and held for its life: the first
    slot whose lock file (per job, in the temp folder of this host) no other live worker holds; the lock
    goes with the process. With every slot taken, one by the pid (shared: fencing between the two, as
    with one id per partition)."""
    if not _slot:
        import fcntl
        import tempfile
        folder = Path(tempfile.gettempdir()) / "logmesh-stream-writers"
        folder.mkdir(exist_ok=True)
        for slot in range(settings.writer_slots or WRITER_SLOTS):
            handle = open(folder / f"{settings.job}-w{slot}.lock", "a")
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                handle.close()
                continue
            _slot.extend((slot, handle))
            break
        else:
            _slot.extend((os.getpid() % (settings.writer_slots or WRITER_SLOTS), _SHARED))
    return _slot[0]


def _task_producer(settings: WriterSettings, partition: int, attempt: int, retry: bool | None = None
                   ) -> tuple[ResultProducer, str]:
    """The producer for the task's transactional id (its partition and this worker's write slot), and
    whether it is "cached", "warm" (cached, made by this worker's warm-up: warm_producers) or "new".

    A first attempt may reuse this worker's producer of that id: it ended its last transaction with a
    commit, and every earlier attempt of this partition's tasks is finished or already fenced (a batch
    starts after the previous one's tasks all succeeded, a retry fences every id of the partition, and the
    driver fences every id before a query restarts). If another worker (or the driver) has since
    initialised the id, this producer is fenced: its writes fail with nothing committed, and _write
    replaces it by a fresh one. A retry (`retry`; by default attempt > 0) fences every id a writer of the
    partition may have used (outputs.partition_transactional_ids: the other slots' too, which a first
    attempt in another worker used) and starts a fresh producer, whose init_transactions fences the
    attempts before it in this slot and aborts what they left open."""
    retry = attempt > 0 if retry is None else retry
    tid = task_transactional_id(settings.job, partition, _writer_slot(settings) if settings.writer_slots else None)
    cached = _producers.pop(tid, None)
    warm = tid in _warm
    _warm.discard(tid)
    if cached is not None and not retry:
        return cached, "warm" if warm else "cached"
    if cached is not None:
        cached.close()
    if retry:
        fence(settings.bootstrap, [i for i in partition_transactional_ids(settings.job, partition) if i != tid],
              settings.kafka_options, settings.retry_budget_s)
    return ResultProducer(settings.bootstrap, settings.scores_topic, settings.anomalies_topic, settings.dlq_topic,
                          extra=settings.kafka_options, transactional_id=tid,
                          init_budget_s=settings.retry_budget_s), "new"


def warm_producers(settings: WriterSettings, partitions: int) -> tuple[int, float, str]:
    """In the Python worker's warm-up (work.warm_up_task), before the query's first batch: this worker's
    producer of each write task's id in its slot (partitions 0 .. partitions-1), initialised and kept as a
    producer is after a commit, so that the worker's first write of a partition reuses it instead of paying
    for a new one's init_transactions and connections (57-525 ms against the dev broker, in the first
    batch's write tasks: docs/benchmarks.md).

    Sound because the driver has fenced every id of the job before (job.build_sink runs before the
    warm-up): a producer made here is then the newest holder of its id, with no transaction begun, the
    state _task_producer's argument needs of a reused producer. Anything that initialises the id later (a
    retry's fence, the driver's before a restart) fences it: its first write fails with nothing committed
    and a fresh producer redoes it (_write), as for any reused producer. Made only where the write tasks
    use slots (local mode) and the slot is this worker's own: two workers sharing one (more workers than
    slots) would fence each other's. Returns (producers made, seconds, why it failed or "")."""
    started = time.perf_counter()
    if not settings.writer_slots:
        return 0, 0.0, ""
    slot = _writer_slot(settings)
    if _slot[1] == _SHARED:
        return 0, 0.0, ""
    made = 0
    try:
        for partition in range(partitions):
            tid = task_transactional_id(settings.job, partition, slot)
            if tid in _producers:
                continue
            _producers[tid] = ResultProducer(settings.bootstrap, settings.scores_topic, settings.anomalies_topic,
                                             settings.dlq_topic, extra=settings.kafka_options, transactional_id=tid,
                                             init_budget_s=min(settings.retry_budget_s, 10.0))
            _warm.add(tid)
            made += 1
    except Exception as exc:  # noqa: BLE001 - a warm-up only: a task makes its producer when there is none
        return made, time.perf_counter() - started, str(exc)[:200]
    return made, time.perf_counter() - started, ""


def _release_producer(settings: WriterSettings, partition: int, producer: ResultProducer, clean: bool) -> None:
    """Keeps a producer whose task ended cleanly (no transaction open) for this worker's next task of the
    partition; closes any other (a transaction it left open is the next producer's to abort)."""
    if clean and not producer.in_transaction:
        _producers[producer.transactional_id] = producer
    else:
        producer.close()


def write_partition(settings: WriterSettings, batch_id: int, done: set[int]):  # type: ignore[no-untyped-def]
    """The mapInPandas function that writes one partition of batch `batch_id` (see the module's protocol);
    `done`: the partitions the driver knows committed. Yields one report row, then the points the driver
    stores (embedded store)."""
    def run(frames: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        from pyspark import TaskContext
        started = time.perf_counter()
        parts = [f for f in frames if len(f)]
        if not parts:
            return
        frame = pd.concat(parts, ignore_index=True)
        context = TaskContext.get()
        partition, attempt = context.partitionId(), context.attemptNumber()
        retry = attempt > 0
        out = _Outputs.of(frame)
        committed = partition in done
        write_attempts, producer_kind, producer_s, write_s = 0, "", 0.0, 0.0
        if not committed and out.has_messages():
            writing = time.perf_counter()
            producer, producer_kind = _task_producer(settings, partition, attempt, retry)
            producer_s = time.perf_counter() - writing
            clean = False
            try:
                if retry:  # an earlier attempt may have committed before it died
                    last = read_ledger(settings.bootstrap, settings.ledger_topic, settings.job,
                                       settings.kafka_options, partition=partition).get(partition, -1)
                    committed = last >= batch_id
                if not committed:
                    write_attempts, fenced = _write(producer, out, settings, batch_id, partition, attempt,
                                                    cached=producer_kind in ("cached", "warm"))
                    producer_kind = "fenced" if fenced else producer_kind
                clean = True
            finally:
                _release_producer(settings, partition, producer, clean)
                write_s = time.perf_counter() - writing
        elif not committed and out.points and settings.qdrant_url:
            _task_store(settings).upsert(points_of(out.points))
        report = (("report", partition, attempt, os.getpid(), ",".join(map(str, sorted(out.work_pids))), len(frame),
                   len(out.scores), len(out.rejected), len(out.line_alerts), out.blocks, out.alerts, out.closed,
                   out.cut, committed, write_attempts, producer_kind, producer_s, write_s,
                   time.perf_counter() - started, None, None, out.logs),)
        points = () if settings.qdrant_url else tuple(
            ("point", partition, attempt, None, None, None, None, None, None, None, None, None, None, None, None,
             None, None, None, None, key, vector, payload) for key, vector, payload in out.points)
        yield pd.DataFrame([*report, *points], columns=REPORT_COLUMNS, dtype=object)
    return run


@dataclasses.dataclass
class _Outputs:
    """One partition's rows, sorted into what goes where."""

    rejected: list[Rejected]
    scores: list[tuple[bytes, bytes]]  # (record id, ScoreResult bytes)
    line_alerts: list[score_pb2.Anomaly]
    block_alerts: list[score_pb2.Anomaly]
    points: list[PointRow]  # (key, vector bytes, payload JSON): vector_store.Point only where stored here
    work_pids: set[int]
    blocks: int = 0
    alerts: int = 0
    closed: int = 0
    cut: int = 0
    logs: str | None = None

    def has_messages(self) -> bool:
        return bool(self.rejected or self.scores or self.line_alerts or self.block_alerts)

    @classmethod
    def of(cls, frame: pd.DataFrame) -> "_Outputs":
        from logmesh.streaming.block_sessions import QUIET, STREAM_STOPPED
        out = cls([], [], [], [], [], set())
        recorded = work.now_ts()
        logs: list = []
        for row in frame.itertuples(index=False):
            if row.pid is not None and row.kind != work.LOG:
                out.work_pids.add(int(row.pid))
            if row.kind == work.DEAD:
                out.rejected.append(Rejected(KafkaRow(row.topic, int(row.partition), int(row.offset),
                                                      None if row.key is None else bytes(row.key),
                                                      None if row.value is None else bytes(row.value)), row.reason))
            elif row.kind == work.LINE:
                value = bytes(row.value)
                out.scores.append((row.record_id.encode(), value))
                if row.anomalous:
                    out.line_alerts.append(score_pb2.Anomaly(line=score_pb2.ScoreResult.FromString(value),
                                                             recorded_time=recorded))
            elif row.kind == work.BLOCK:
                out.blocks += 1
                out.closed += row.ended == QUIET
                out.cut += row.ended == STREAM_STOPPED
                verdict = score_pb2.BlockVerdict.FromString(bytes(row.value))
                for wanted, kind in ((row.alert, score_pb2.BLOCK_VERDICT_KIND_ALERT),
                                     (row.final, score_pb2.BLOCK_VERDICT_KIND_FINAL)):
                    if wanted:
                        alert = score_pb2.BlockVerdict()
                        alert.CopyFrom(verdict)
                        alert.kind = kind
                        out.block_alerts.append(score_pb2.Anomaly(block=alert, recorded_time=recorded))
                        out.alerts += kind == score_pb2.BLOCK_VERDICT_KIND_ALERT
            elif row.kind == work.LOG:
                logs.extend(json.loads(row.payload))
                continue
            if row.point_id is not None and row.vector is not None:  # passed on as they are (PointRow)
                out.points.append((row.point_id, bytes(row.vector), row.payload))
        out.logs = json.dumps(logs) if logs else None
        return out


def _write(producer: ResultProducer, out: _Outputs, settings: WriterSettings, batch_id: int, partition: int,
           attempt: int, cached: bool = False) -> tuple[int, bool]:
    """One transaction: outputs, (--qdrant-url) store, ledger record, commit. A Kafka failure aborts it and
    the whole write is redone (tenacity: waits doubling from 0.5 s to 15 s within --retry-budget-s, then
    GaveUp); returns the number of attempts, and whether a `cached` producer had to be replaced first (it
    was fenced: another producer of its id was initialised since), which is redone at once, uncounted."""
    state = {"tries": 0, "replaced": False, "fatal": False}

    def once() -> None:
        if state["fatal"]:  # the last attempt's producer could not abort: a fresh one fences it
            producer.recover()
            state["fatal"] = False
        state["tries"] += 1
        while True:
            try:
                _transaction(producer, out, settings, batch_id, partition, attempt)
                return
            except SystemError as exc:
                # confluent-kafka raises SystemError ("exception <class 'str'> is not a BaseException subclass")
                # from flush() once the producer is fenced; only a reused producer is expected to be
                if not cached or state["replaced"]:
                    raise
                failure: BaseException = exc
            except KafkaException as exc:
                fatal = _abort_failed(producer, exc)
                if not cached or state["replaced"]:
                    state["fatal"] = fatal
                    raise
                failure = exc
            _replace_fenced(producer, batch_id, partition, failure)
            state["replaced"] = True

    def log_retry(retry_state: RetryCallState) -> None:
        exc = retry_state.outcome.exception() if retry_state.outcome else None
        log.warning("partition transaction failed; redoing its writes",
                    extra={"batch_id": batch_id, "partition": partition, "attempt": retry_state.attempt_number,
                           "error": str(exc), "fatal": state["fatal"], "sleep_s": retry_state.upcoming_sleep})

    def give_up(retry_state: RetryCallState) -> None:
        exc = retry_state.outcome.exception() if retry_state.outcome else None
        raise GaveUp(f"writing partition {partition} of batch {batch_id}: {exc} after "
                     f"{retry_state.attempt_number} attempts") from exc

    Retrying(retry=retry_if_exception_type(KafkaException), wait=wait_exponential(multiplier=0.5, max=15.0),
             stop=stop_before_delay(settings.retry_budget_s), before_sleep=log_retry,
             retry_error_callback=give_up)(once)
    return state["tries"], state["replaced"]


def _transaction(producer: ResultProducer, out: _Outputs, settings: WriterSettings, batch_id: int, partition: int,
                 attempt: int) -> None:
    producer.begin()
    producer.dead_letters(out.rejected)
    producer.score_bytes(out.scores)
    producer.anomalies(out.line_alerts, key_of=lambda a: a.line.record_id)
    producer.anomalies(out.block_alerts, key_of=lambda a: a.block.block_id)
    producer.flush()
    _task_crash_point("after-produce", batch_id, partition, attempt, settings)
    if settings.qdrant_url:
        _task_store(settings).upsert(points_of(out.points))
        _task_crash_point("after-store", batch_id, partition, attempt, settings)
    producer.ledger_record(settings.ledger_topic, ledger_key(settings.job, partition), batch_id)
    producer.commit()
    _task_crash_point("after-commit", batch_id, partition, attempt, settings)


def _abort_failed(producer: ResultProducer, exc: KafkaException) -> bool:
    """Aborts the failed transaction (unless it was aborted already); True when the producer is left in a
    fatal state (the error says so, or it cannot abort) and must be replaced before the next attempt."""
    err = exc.args[0] if exc.args and hasattr(exc.args[0], "fatal") else None
    fatal = bool(err is not None and err.fatal())
    if not isinstance(exc, TransactionAborted):
        try:
            producer.abort()
        except KafkaException:
            fatal = True  # cannot abort: a fresh producer fences this one and aborts for it
    return fatal


def _replace_fenced(producer: ResultProducer, batch_id: int, partition: int, exc: BaseException) -> None:
    """A reused producer failed, most likely fenced by a newer producer of its id (see _task_producer):
    nothing of its transaction commits; a fresh producer fences in turn, and the caller redoes the write."""
    log.debug("cached producer failed (fenced); a fresh one redoes the write",
              extra={"batch_id": batch_id, "partition": partition, "error": str(exc)[:300]})
    producer.recover(quiet=True)


class BatchSink:
    """The foreachBatch function (driver): runs the batch's write tasks, spools the points they return for
    the embedded vector store (upserted behind the next batch: vector_store_spool.py), and keeps the
    ledger's view of what committed."""

    def __init__(self, settings: WriterSettings, ledger: Ledger, store, checkpoint: str | Path,  # type: ignore[no-untyped-def]
                 on_report=None) -> None:
        self.settings, self.ledger, self.store = settings, ledger, store
        self.partitions_file = Path(checkpoint) / TASK_PARTITIONS_FILE
        self.on_report = on_report or (lambda report: None)
        # the embedded store's points: spooled, then upserted behind the next batch (vector_store_spool.py),
        # the spools a killed run left written first; the store drains the queue when it closes
        self.spool: PointSpool | None = None
        if not settings.qdrant_url and hasattr(store, "on_close"):
            self.spool = PointSpool(store, Path(checkpoint) / STORE_SPOOL)
            store.on_close(self.spool.close)

    def task_partitions(self) -> int:
        """The most partitions a batch of this checkpoint has had (their transactional ids to fence)."""
        try:
            return int(self.partitions_file.read_text().strip())
        except (OSError, ValueError):
            return 0

    def __call__(self, df, batch_id: int) -> None:  # type: ignore[no-untyped-def]
        started = time.perf_counter()
        done = self.ledger.done_partitions(batch_id)
        rows = df.mapInPandas(write_partition(self.settings, batch_id, done if done is ALL else set(done)),
                              REPORT_SCHEMA).collect()
        reports = [r for r in rows if r.kind == "report"]
        points = [(r.point_id, r.vector, r.payload) for r in rows if r.kind == "point"]
        for r in reports:
            if r.payload:
                work.relog(r.payload)
        if points and self.spool is not None:
            self.spool.add(batch_id, points)  # durable when it returns; in the store behind the next batch
        elif points:
            self.store.upsert(points_of(points))
        _crash_point("after-store", batch_id)
        report = self._report(batch_id, reports, started)
        report.points = len(points)
        self.on_report(report)

    def _report(self, batch_id: int, reports: list, started: float) -> BatchReport:
        report = BatchReport(batch_id)
        for r in reports:
            report.rows += r.rows
            report.scored += r.scored
            report.dead_letters += r.dead
            report.line_anomalies += r.line_anomalies
            report.blocks += r.blocks
            report.block_alerts += r.alerts
            report.blocks_closed += r.closed
            report.blocks_cut += r.cut
            report.write_attempts = max(report.write_attempts, r.write_attempts)
            if r.producer:
                report.producers[r.producer] = report.producers.get(r.producer, 0) + 1
                report.producer_s = max(report.producer_s, r.producer_s or 0.0)
                report.write_s = max(report.write_s, r.write_s or 0.0)
            report.task_pids.append(r.pid)
            report.work_pids.extend(int(p) for p in (r.work_pids or "").split(",") if p)
            if r.skipped:
                report.skipped_partitions.append(r.partition)
                log.info("partition already committed (ledger); its writes are skipped",
                         extra={"batch_id": batch_id, "partition": r.partition, "attempt": r.attempt})
            else:
                self.ledger.committed(batch_id, r.partition)
        report.partitions = len(reports)
        report.skipped = bool(reports) and len(report.skipped_partitions) == len(reports)
        report.task_pids, report.work_pids = sorted(set(report.task_pids)), sorted(set(report.work_pids))
        if reports and max(r.partition for r in reports) + 1 > self.task_partitions():
            self.partitions_file.write_text(f"{max(r.partition for r in reports) + 1}\n")
        report.seconds = time.perf_counter() - started
        # an idle job runs an empty micro-batch every trigger: those stay below info
        log.log(logging.INFO if report.rows else logging.DEBUG, "batch written", extra=dataclasses.asdict(report))
        if report.blocks_cut:
            log.info("no new line for --block-stall-ms: the blocks still open are judged as cut prefixes "
                     "(no missing-step evidence) and stay open in case the stream comes back",
                     extra={"batch_id": batch_id, "blocks_cut": report.blocks_cut})
        return report

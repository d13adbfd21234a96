"""`logmesh stream`: the Structured Streaming job from `logmesh.logs` to the scorer, Kafka and Qdrant."""
from __future__ import annotations

import dataclasses
import logging
import time
from pathlib import Path

from tenacity import RetryCallState, Retrying, retry_if_exception, stop_after_attempt, wait_exponential

from logmesh.client import EmbedderClient, ScorerClient
from logmesh.ingest.kafka_options import check_kafka_options
from logmesh.streaming.options import (BLOCK_CLOCK_FILE, SHUFFLE_PARTITIONS, StreamConfig, add_args,  # noqa: F401
                                       check_block_clock, check_block_timing, config_from_args, shuffle_partitions)
from logmesh.streaming.outputs import WRITER_SLOTS, Ledger, ensure_ledger_topic, job_id
from logmesh.streaming.sink import CRASH_ENV, BatchSink, WriterSettings
from logmesh.streaming.stopping import BatchGate, StopRequest, stop_between_batches
from logmesh.streaming.vector_store import open_store
from logmesh.streaming.work import WorkSettings

log = logging.getLogger("logmesh.stream")
FETCH_MAX_WAIT_MS = "10"  # Spark's Kafka consumers; --spark-kafka-option fetch.max.wait.ms=... overrides it


def build_sink(config: StreamConfig, on_report=None) -> tuple[BatchSink, object]:  # type: ignore[no-untyped-def]
    """The driver's part: waits for the services, fences every task's transactional id of this job (see
    sink.py), reads the ledger and opens the vector store. The executors open their own channels."""
    import os
    check_kafka_options(config.kafka_options)  # a bad option fails now, with librdkafka's reason
    for client in (EmbedderClient(config.embedder), ScorerClient(config.scorer)):
        # wait instead of failing when a service is still starting or down
        with client:
            log.info("waiting for service", extra={"service": client.service, "address": client.address})
            client.wait_until_serving(config.wait_for_services_s)
            log.info("service serving", extra={"service": client.service, "address": client.address})
    ensure_ledger_topic(config.bootstrap, config.ledger_topic, config.kafka_options)
    job = job_id(config.checkpoint)
    settings = WriterSettings(config.bootstrap, config.scores_topic, config.anomalies_topic, config.dlq_topic,
                              config.ledger_topic, job, dict(config.kafka_options), config.retry_budget_s,
                              config.qdrant_url, config.qdrant_api_key, os.environ.get(CRASH_ENV), os.getpid(),
                              WRITER_SLOTS if config.master.startswith("local") else 0)
    store = open_store(url=config.qdrant_url, path=config.qdrant_path, api_key=config.qdrant_api_key)
    store.ensure_collection()
    sink = BatchSink(settings, None, store, config.checkpoint, on_report)  # type: ignore[arg-type]
    try:
        sink.ledger = _fence_and_read_ledger(config, sink, job)
    except BaseException:
        store.close()
        raise
    return sink, store


def _fence_and_read_ledger(config: StreamConfig, sink: BatchSink, job: str) -> Ledger:
    """init_transactions on every transactional id this job's tasks may have used (their count: the input
    topic's partitions plus the shuffle partitions, or more if a batch had more), which aborts what a
    crashed attempt left open; then the ledger (read_committed) holds exactly what committed."""
    from confluent_kafka.admin import AdminClient

    from logmesh.streaming.outputs import fence, legacy_transactional_id, partition_transactional_ids
    admin = AdminClient({"bootstrap.servers": config.bootstrap, **config.kafka_options})
    topic = admin.list_topics(config.topic, timeout=30).topics.get(config.topic)
    inputs = len(topic.partitions) if topic is not None and topic.error is None else 0
    count = max(sink.task_partitions(), inputs + (config.shuffle_partitions or SHUFFLE_PARTITIONS))
    fence(config.bootstrap, [legacy_transactional_id(job), *(i for p in range(count) for i in partition_transactional_ids(job, p))],
          config.kafka_options, config.retry_budget_s)
    return Ledger(config.bootstrap, job, config.ledger_topic, config.kafka_options)


def _warm_python_workers(spark, config: StreamConfig, sink: BatchSink | None = None) -> None:  # type: ignore[no-untyped-def]
    """Forks and readies the Python workers a micro-batch uses (work.warm_up_task): one per shuffle partition
    for the state function and one for its write task, as a batch runs them, each running one throwaway line
    through the task's path (work.warm_work_path); the log says how long that took per worker. With the
    `sink` (whose build_sink fenced every id of the job: this must come after it), each worker also makes its
    write slot's transactional producers of the write tasks' partitions (sink.warm_producers: as many as
    this checkpoint's batches have had, the shuffle partitions for a new one), so that the first batch's
    write tasks reuse ready producers. Off on a cluster, whose executors start on their own schedule."""
    if not config.master.startswith("local"):
        return
    from logmesh.streaming.work import WARM_UP_SCHEMA, warm_up_task
    started = time.perf_counter()
    partitions = config.shuffle_partitions or SHUFFLE_PARTITIONS
    writer_partitions = (sink.task_partitions() or partitions) if sink is not None else 0
    warm = warm_up_task(work_settings(config), sink.settings if sink is not None else None, writer_partitions)
    rows = (spark.range(0, partitions, 1, partitions).mapInPandas(warm, WARM_UP_SCHEMA)
            .mapInPandas(warm, WARM_UP_SCHEMA).collect())
    errors = sorted({r.error for r in rows if r.error})
    # work_s: each worker's throwaway line through the task's own path (work.warm_work_path); producers:
    # the write tasks' transactional producers the workers made, and the slowest worker's time for them
    log.info("python workers ready", extra={"workers": len({r.pid for r in rows}),
                                            "seconds": round(time.perf_counter() - started, 2),
                                            "work_path_s": sorted(round(r.work_s, 2) for r in rows),
                                            "producers": sum(r.producers for r in rows),
                                            "producers_s": round(max(r.producers_s for r in rows), 2),
                                            **({"work_path_errors": errors} if errors else {})})


def work_settings(config: StreamConfig) -> WorkSettings:
    from logmesh.runtime import tracing
    return WorkSettings(config.embedder, config.scorer, config.store_lines, retry_budget_s=config.retry_budget_s,
                        trace=tracing.wanted(config.trace), trace_endpoint=config.trace_endpoint)


BLOCK_PLAN_FILE = "block-plan"


def block_plan(checkpoint: str | Path, clock: str, record: bool = True) -> str:
    """The block-state plan (block_sessions.PLANS) this checkpoint runs: the one it recorded at its first
    start (`record`); two-branch for one started before plans were recorded (its offset log holds two
    sources) or for the event clock; else the single pass."""
    path = Path(checkpoint) / BLOCK_PLAN_FILE
    if path.exists():
        return path.read_text().strip()
    plan = "two-branch" if clock == "event" or (Path(checkpoint) / "spark").exists() else "single-pass"
    if record:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(plan + "\n")
    return plan


BUCKET_KEYS_FILE = "block-bucket-keys"


def bucket_keys(checkpoint: str | Path, plan: str, record: bool = True,
                partitions: int = SHUFFLE_PARTITIONS) -> list[int] | None:
    """The single pass's state keys, fixed per checkpoint like the plan: one per shuffle partition (at least
    SINGLE_PASS_BUCKETS), spread over them (block_sessions.spread_bucket_keys) for a checkpoint started with
    this file; None (keys 0, 1: both in one shuffle partition) for a single-pass checkpoint started before
    it, whose state is keyed so."""
    path = Path(checkpoint) / BUCKET_KEYS_FILE
    if path.exists():
        return [int(k) for k in path.read_text().split(",")]
    if plan != "single-pass" or (Path(checkpoint) / "spark").exists():
        return None
    from logmesh.streaming.block_sessions import SINGLE_PASS_BUCKETS, spread_bucket_keys
    keys = spread_bucket_keys(max(SINGLE_PASS_BUCKETS, partitions), partitions)
    if record:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(",".join(map(str, keys)) + "\n")
    return keys


def kafka_source_options(config: StreamConfig) -> dict[str, str]:
    """Options of Spark's Kafka source: ours, then the user's Kafka settings as kafka.KEY (they win)."""
    options = {"kafka.bootstrap.servers": config.bootstrap, "subscribe": config.topic,
               "startingOffsets": config.starting_offsets,
               "maxOffsetsPerTrigger": str(config.max_offsets_per_trigger),
               # A cached Kafka consumer keeps a fetch in flight past the last offset it read, and the broker
               # holds such a fetch for fetch.max.wait.ms (500 ms by default) when the partition has nothing
               # newer; the next micro-batch's read of that partition waits for it. With 8 partition reads per
               # batch (two branches, 4 partitions) the batch after a lull, or the last of a replay, took
               # 1.2-1.8 s instead of ~0.5 s (docs/benchmarks.md, "The Kafka fetch wait").
               "kafka.fetch.max.wait.ms": FETCH_MAX_WAIT_MS}
    from logmesh.runtime import tracing
    if tracing.wanted(config.trace):  # the records' traceparent headers (runtime/tracing.py); else not read
        options["includeHeaders"] = "true"
    options.update({f"kafka.{k}": v for k, v in {**config.kafka_options, **config.spark_kafka_options}.items()})
    return options


def _start_query(spark, config: StreamConfig, sink: BatchGate, plan: str,  # type: ignore[no-untyped-def]
                 keys: list[int] | None = None):
    reader = spark.readStream.format("kafka").options(**kafka_source_options(config))
    from logmesh.runtime import tracing
    from logmesh.streaming.block_sessions import with_block_sessions
    source = tracing.header_column(reader.load()) if tracing.wanted(config.trace) else reader.load()
    stream = with_block_sessions(source, config.block_quiet_ms, config.block_clock, config.event_lateness_ms,
                                 plan, config.block_stall_ms or None, work_settings(config), keys)
    writer = (stream.writeStream.foreachBatch(sink).outputMode("update")
              .option("checkpointLocation", str(Path(config.checkpoint) / "spark"))
              .queryName("logmesh-stream"))
    writer = writer.trigger(availableNow=True) if config.once else writer.trigger(
        processingTime=f"{config.trigger_ms} milliseconds")
    return writer.start()


def _cause(text: str) -> str:
    """The root of a query failure in one line: for an error raised in the Python sink, the last
    `package.Error: message` line of the traceback Spark wraps it in; else the start of the message."""
    import re
    found = re.findall(r"^([A-Za-z_][\w.]*(?:Error|Exception|GaveUp|Aborted)\b:.*)$", text, re.M)
    return (found[-1] if found else text)[:500]


def run(config: StreamConfig, on_report=None) -> None:  # type: ignore[no-untyped-def]
    """Runs the query until it stops (--once: the topic is drained) or Ctrl-C. A query that fails (e.g.
    the broker went away) is restarted from its checkpoint with backoff, up to max_query_restarts times
    in a row without a batch done in between; then the failure is raised."""
    from logmesh.runtime import tracing
    from logmesh.streaming.spark import session
    if tracing.wanted(config.trace):  # the executors' tasks trace (work.score_messages); a bad setting fails now
        tracing.check()
    check_block_clock(config.checkpoint, config.block_clock)
    plan = block_plan(config.checkpoint, config.block_clock)
    config = dataclasses.replace(config, shuffle_partitions=shuffle_partitions(config.checkpoint,
                                                                                config.shuffle_partitions))
    keys = bucket_keys(config.checkpoint, plan, partitions=config.shuffle_partitions)
    progress = {"batches": 0}
    if config.metrics_port is not None:  # first: a taken port fails before Spark starts
        from logmesh.runtime.metrics import serve_metrics
        serve_metrics(config.metrics_port, config.metrics_host, component="stream")
    from logmesh.streaming import metrics

    def report(r) -> None:  # type: ignore[no-untyped-def]
        progress["batches"] += 1
        metrics.record_report(r)
        if on_report is not None:
            on_report(r)

    # py4j logs each call from the JVM into Python (every micro-batch's foreachBatch, 4 a second on an idle
    # job) at info: protocol chatter, kept for --log-level debug
    if logging.getLogger().getEffectiveLevel() > logging.DEBUG:
        logging.getLogger("py4j").setLevel(logging.WARNING)
    # Spark first: launching its JVM forks this process, which must not happen while gRPC channels have
    # threads running (seen once: the forked child died before exec, "Java gateway process exited").
    spark = session(master=config.master, shuffle_partitions=config.shuffle_partitions)
    try:
        if config.metrics_port is not None:
            metrics.listen(spark)
        sink, store = build_sink(config, report)
    except BaseException:
        spark.stop()
        raise
    try:
        _warm_python_workers(spark, config, sink)  # after build_sink's fence (see sink.warm_producers)
    except Exception as exc:  # noqa: BLE001 - only the first batch's speed depends on it
        log.warning("could not ready the Python workers before the first batch", extra={"error": str(exc)[:300]})
    # Block timeouts fire in micro-batches without new data; a run that drains the topic and stops
    # (--once, availableNow) must not keep running such batches forever.
    spark.conf.set("spark.sql.streaming.noDataMicroBatches.enabled", str(not config.once).lower())
    stop = StopRequest()
    try:
        stop.__enter__()
        error = _run_query(spark, config, sink, plan, keys, stop, restarts=0)
        while error is not None:  # one episode: failures in a row, no batch done in between
            error = _restart_episode(spark, config, sink, plan, keys, stop, progress, error)
    except _Stopped:
        return
    finally:
        stop.__exit__()
        store.close()
        spark.stop()


class _Stopped(Exception):
    """A signal came while the job waited to restart its query."""


class _QueryFailed(Exception):
    def __init__(self, error: object) -> None:
        super().__init__(str(error))
        self.error = error


def _run_query(spark, config: StreamConfig, sink: BatchSink, plan: str, keys,  # type: ignore[no-untyped-def]
               stop: StopRequest, restarts: int):
    """Runs the query until it ends: None when it finished or was stopped (a signal), else its failure."""
    gate = BatchGate(sink)
    query = _start_query(spark, config, gate, plan, keys)
    log.info("stream started", extra={"topic": config.topic, "checkpoint": config.checkpoint,
                                      "block_plan": plan, "once": config.once, "restarts": restarts})
    try:
        while not stop.requested.is_set() and not query.awaitTermination(1):
            pass
        if stop.requested.is_set():
            log.info("stopping stream (signal): after the running micro-batch")
            stop_between_batches(query, gate)
            raise _Stopped
    except KeyboardInterrupt:
        log.info("stopping stream (second signal): now")
        query.stop()
        raise _Stopped from None
    except _Stopped:
        raise
    except Exception:  # noqa: BLE001 - StreamingQueryException: read it from the query below
        pass
    return query.exception()


def _restart_episode(spark, config: StreamConfig, sink: BatchSink, plan: str, keys,  # type: ignore[no-untyped-def]
                     stop: StopRequest, progress: dict, failed: object):
    """Restarts the query that failed (`failed`) from its checkpoint, with backoff (tenacity: waits doubling
    from 2 s to 60 s, logged), up to max_query_restarts times in a row without a batch done in between; then
    a RuntimeError. Before each restart the tasks' ids are fenced and the ledger read again: a batch cut
    short by the failure may have left open transactions and committed partitions the driver never heard
    of. Returns None when the query finished or a failure after new batches (a new episode)."""
    seen = progress["batches"]

    def attempt_once(state: dict) -> object:
        state["n"] += 1
        if state["n"] == 1:  # the failure that opened the episode: wait before the first restart
            raise _QueryFailed(failed)
        sink.ledger = _fence_and_read_ledger(config, sink, sink.settings.job)
        error = _run_query(spark, config, sink, plan, keys, stop, restarts=state["n"] - 1)
        if error is None or progress["batches"] > seen:
            return error
        raise _QueryFailed(error)

    def log_retry(retry_state: RetryCallState) -> None:
        exc = retry_state.outcome.exception() if retry_state.outcome else None
        if isinstance(exc, _QueryFailed):
            log.warning("stream query failed; restarting it from its checkpoint",
                        extra={"restart": retry_state.attempt_number, "of": config.max_query_restarts,
                               "sleep_s": retry_state.upcoming_sleep, "error": _cause(str(exc.error))})
        else:  # e.g. the broker still down: wait, as for the query
            log.warning("cannot fence the tasks' transactions and read the ledger yet; retrying",
                        extra={"attempt": retry_state.attempt_number, "sleep_s": retry_state.upcoming_sleep,
                               "error": str(exc)[:300]})

    def give_up(retry_state: RetryCallState) -> None:
        exc = retry_state.outcome.exception() if retry_state.outcome else None
        last = exc.error if isinstance(exc, _QueryFailed) else exc
        raise RuntimeError(f"stream failed {retry_state.attempt_number} times in a row; last: {last}") from exc

    def sleep(seconds: float) -> None:
        if stop.requested.wait(seconds):
            raise _Stopped

    state = {"n": 0}
    return Retrying(retry=retry_if_exception(lambda exc: not isinstance(exc, _Stopped)),
                    wait=wait_exponential(multiplier=2.0, max=60.0),
                    stop=stop_after_attempt(config.max_query_restarts + 1), sleep=sleep, before_sleep=log_retry,
                    retry_error_callback=give_up)(attempt_once, state)

"""The streaming job's Prometheus metrics, served from the driver on `logmesh stream --metrics-port`, on the
process registry (runtime/metrics.py):

    logmesh_stream_micro_batches_total{kind}                 kind: data | empty (no new input rows)
    logmesh_stream_micro_batch_duration_seconds              Spark's triggerExecution, a histogram
    logmesh_stream_micro_batch_part_seconds{part}            its parts (Spark's durationMs keys, below)
    logmesh_stream_input_rows_total                          Kafka messages read
    logmesh_stream_lines_scored_total, logmesh_stream_line_anomalies_total, logmesh_stream_blocks_scored_total
    logmesh_stream_block_alerts_total                        ALERTs written (a block's first anomalous verdict)
    logmesh_stream_blocks_ended_total{rule}                  rule: quiet | stream-stopped
    logmesh_stream_dead_letters_total
    logmesh_stream_write_tasks_total{producer}               producer: new | cached | warm | fenced | none (skipped)
    logmesh_stream_kafka_consumer_lag{topic, partition}      messages behind the newest, after the last batch
    logmesh_stream_state_rows, logmesh_stream_state_memory_bytes   the block operator's state store
    logmesh_stream_last_progress_timestamp_seconds           when the last micro-batch ended

Batches, durations, input rows, lag and state come from Spark's own progress (a StreamingQueryListener in
the driver); lines, blocks, alerts and dead letters from the write tasks' reports (sink.BatchReport), so
they count what was committed, a replayed batch's skipped partitions not again. Label sets are bounded:
the parts, the rules, the producer kinds and the input topic's partitions.
"""
from __future__ import annotations

import json
import logging
import time

from prometheus_client import Counter, Gauge, Histogram

from logmesh.runtime.metrics import REGISTRY

log = logging.getLogger("logmesh.stream.metrics")
# Spark's micro-batch durations (StreamingQueryProgress.durationMs) that are parts of triggerExecution
PARTS = ("latestOffset", "getBatch", "queryPlanning", "addBatch", "walCommit", "commitOffsets")
# an empty micro-batch takes ~0.2 s here, a full one (40,000 messages) several seconds
BATCH_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)

BATCHES = Counter("logmesh_stream_micro_batches", "Micro-batches run, with new input rows (data) or without "
                  "(empty: block timers only).", ("kind",), registry=REGISTRY)
DURATION = Histogram("logmesh_stream_micro_batch_duration_seconds", "Spark's time for a micro-batch "
                     "(triggerExecution).", buckets=BATCH_BUCKETS, registry=REGISTRY)
PART = Histogram("logmesh_stream_micro_batch_part_seconds", "Parts of a micro-batch, by Spark's name "
                 "(addBatch: the batch's tasks and the driver's commit).", ("part",), buckets=BATCH_BUCKETS,
                 registry=REGISTRY)
INPUT_ROWS = Counter("logmesh_stream_input_rows", "Kafka messages the job read.", registry=REGISTRY)
LINES = Counter("logmesh_stream_lines_scored", "Lines scored and written to the scores topic.", registry=REGISTRY)
LINE_ANOMALIES = Counter("logmesh_stream_line_anomalies", "Lines scored ANOMALY (written to the anomalies topic).",
                         registry=REGISTRY)
BLOCKS = Counter("logmesh_stream_blocks_scored", "Block verdicts made (blocks that changed or ended).",
                 registry=REGISTRY)
ALERTS = Counter("logmesh_stream_block_alerts", "Block ALERTs written (a block's first anomalous verdict).",
                 registry=REGISTRY)
ENDED = Counter("logmesh_stream_blocks_ended", "Blocks ended, by rule: quiet (closed as complete) or "
                "stream-stopped (judged as a cut prefix).", ("rule",), registry=REGISTRY)
DEAD = Counter("logmesh_stream_dead_letters", "Messages written to the dead-letter topic.", registry=REGISTRY)
TASKS = Counter("logmesh_stream_write_tasks", "Write tasks with rows, by their transactional producer: new "
                "(init_transactions), cached (reused), warm (reused, made by the worker's warm-up), fenced (reused, "
                "replaced), none (partition committed before: skipped).", ("producer",), registry=REGISTRY)
LAG = Gauge("logmesh_stream_kafka_consumer_lag", "Messages in an input partition past what the job has read, "
            "as of its last micro-batch.", ("topic", "partition"), registry=REGISTRY)
STATE_ROWS = Gauge("logmesh_stream_state_rows", "Keys in the block operator's state store.", registry=REGISTRY)
STATE_BYTES = Gauge("logmesh_stream_state_memory_bytes", "Memory the block operator's state store uses.",
                    registry=REGISTRY)
LAST = Gauge("logmesh_stream_last_progress_timestamp_seconds", "When the job's last micro-batch ended (Unix time).",
             registry=REGISTRY)


def record_report(report) -> None:  # type: ignore[no-untyped-def]
    """Counts what one micro-batch's write tasks committed (sink.BatchReport)."""
    LINES.inc(report.scored)
    LINE_ANOMALIES.inc(report.line_anomalies)
    BLOCKS.inc(report.blocks)
    ALERTS.inc(report.block_alerts)
    DEAD.inc(report.dead_letters)
    if report.blocks_closed:
        ENDED.labels("quiet").inc(report.blocks_closed)
    if report.blocks_cut:
        ENDED.labels("stream-stopped").inc(report.blocks_cut)
    for kind, n in report.producers.items():
        TASKS.labels(kind).inc(n)
    if report.skipped_partitions:
        TASKS.labels("none").inc(len(report.skipped_partitions))


def lag(source) -> dict[tuple[str, str], int]:  # type: ignore[no-untyped-def]
    """(topic, partition) -> messages behind, from a Kafka source's progress: its latestOffset (the newest
    offsets when the batch was planned) less its endOffset (where the batch read to)."""
    try:
        end, latest = json.loads(source.endOffset or "null"), json.loads(source.latestOffset or "null")
    except (TypeError, ValueError):
        return {}
    if not isinstance(end, dict) or not isinstance(latest, dict):
        return {}
    out = {}
    for topic, partitions in latest.items():
        for partition, newest in partitions.items():
            read = end.get(topic, {}).get(partition)
            if read is not None:
                out[(topic, str(partition))] = max(0, int(newest) - int(read))
    return out


def record_progress(progress) -> None:  # type: ignore[no-untyped-def]
    """Counts one micro-batch from Spark's StreamingQueryProgress."""
    durations = dict(progress.durationMs or {})
    BATCHES.labels("data" if progress.numInputRows else "empty").inc()
    INPUT_ROWS.inc(progress.numInputRows or 0)
    if "triggerExecution" in durations:
        DURATION.observe(durations["triggerExecution"] / 1000)
    for part in PARTS:
        if part in durations:
            PART.labels(part).observe(durations[part] / 1000)
    for source in progress.sources or []:
        for (topic, partition), behind in lag(source).items():
            LAG.labels(topic, partition).set(behind)
    operators = list(progress.stateOperators or [])
    if operators:
        STATE_ROWS.set(sum(o.numRowsTotal for o in operators))
        STATE_BYTES.set(sum(o.memoryUsedBytes for o in operators))
    LAST.set(time.time())


def listen(spark) -> None:  # type: ignore[no-untyped-def]
    """Adds a listener that records every micro-batch's progress (runs in the driver)."""
    from pyspark.sql.streaming import StreamingQueryListener

    class _Progress(StreamingQueryListener):
        def onQueryStarted(self, event) -> None:  # type: ignore[no-untyped-def]
            pass

        def onQueryProgress(self, event) -> None:  # type: ignore[no-untyped-def]
            try:
                record_progress(event.progress)
            except Exception:  # noqa: BLE001 - metrics must never stop the job
                log.warning("could not record a micro-batch's progress", exc_info=True)

        def onQueryIdle(self, event) -> None:  # type: ignore[no-untyped-def]
            pass

        def onQueryTerminated(self, event) -> None:  # type: ignore[no-untyped-def]
            pass

    spark.streams.addListener(_Progress())

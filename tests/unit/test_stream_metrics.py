"""The job's metrics (streaming/metrics.py) from Spark's own progress objects and the write tasks' reports, read
back through prometheus_client's exposition and parser. The real job serving them over HTTP is in
tests/integration/test_streaming.py (test_the_driver_serves_the_jobs_metrics)."""
from __future__ import annotations

import uuid

from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families
from pyspark.sql.streaming.listener import StreamingQueryProgress

from logmesh.runtime.metrics import REGISTRY
from logmesh.streaming import metrics
from logmesh.streaming.sink import BatchReport


def _samples() -> dict[tuple[str, tuple], float]:
    out = {}
    for family in text_string_to_metric_families(generate_latest(REGISTRY).decode()):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def _progress(batch: int, rows: int, end: dict, latest: dict) -> StreamingQueryProgress:
    """A progress as Spark reports it (the JSON of StreamingQueryProgress, a Kafka source, one state operator)."""
    return StreamingQueryProgress.fromJson({
        "id": str(uuid.uuid4()), "runId": str(uuid.uuid4()), "name": "logmesh-stream",
        "timestamp": "2026-12-01T14:00:00.000Z", "batchId": batch, "batchDuration": 420, "numInputRows": rows,
        "inputRowsPerSecond": 100.0, "processedRowsPerSecond": 200.0,
        "durationMs": {"addBatch": 300, "commitOffsets": 20, "getBatch": 0, "latestOffset": 10, "queryPlanning": 40,
                       "triggerExecution": 420, "walCommit": 30},
        "stateOperators": [{"operatorName": "applyInPandasWithState", "numRowsTotal": 2, "numRowsUpdated": 2,
                            "numRowsRemoved": 0, "allUpdatesTimeMs": 90, "allRemovalsTimeMs": 0, "commitTimeMs": 15,
                            "memoryUsedBytes": 123456, "numRowsDroppedByWatermark": 0, "numShufflePartitions": 2,
                            "numStateStoreInstances": 2, "customMetrics": {}}],
        "sources": [{"description": "KafkaV2[Subscribe[logmesh.logs]]",
                     "startOffset": {"logmesh.logs": {"0": 0, "1": 0}}, "endOffset": end, "latestOffset": latest,
                     "numInputRows": rows, "inputRowsPerSecond": 100.0, "processedRowsPerSecond": 200.0,
                     "metrics": {"maxOffsetsBehindLatest": "5"}}],
        "sink": {"description": "ForeachBatchSink", "numOutputRows": -1},
    })


def test_progress_counts_batches_durations_rows_state_and_lag_per_partition():
    before = _samples()
    metrics.record_progress(_progress(7, 250, end={"logmesh.logs": {"0": 100, "1": 150}},
                                      latest={"logmesh.logs": {"0": 105, "1": 150}}))
    metrics.record_progress(_progress(8, 0, end={"logmesh.logs": {"0": 105, "1": 150}},
                                      latest={"logmesh.logs": {"0": 105, "1": 150}}))
    after = _samples()

    def delta(name: str, **labels: str) -> float:
        key = (name, tuple(sorted(labels.items())))
        return after.get(key, 0.0) - before.get(key, 0.0)

    assert delta("logmesh_stream_micro_batches_total", kind="data") == 1
    assert delta("logmesh_stream_micro_batches_total", kind="empty") == 1
    assert delta("logmesh_stream_input_rows_total") == 250
    assert delta("logmesh_stream_micro_batch_duration_seconds_count") == 2
    assert abs(delta("logmesh_stream_micro_batch_duration_seconds_sum") - 0.84) < 1e-9
    assert abs(delta("logmesh_stream_micro_batch_part_seconds_sum", part="addBatch") - 0.6) < 1e-9
    # the lag is the last batch's: partition 0 caught up in batch 8
    assert after[("logmesh_stream_kafka_consumer_lag", (("partition", "0"), ("topic", "logmesh.logs")))] == 0
    assert after[("logmesh_stream_kafka_consumer_lag", (("partition", "1"), ("topic", "logmesh.logs")))] == 0
    assert after[("logmesh_stream_state_memory_bytes", ())] == 123456
    assert after[("logmesh_stream_last_progress_timestamp_seconds", ())] > 0


def test_lag_is_newest_less_read_per_partition_and_tolerates_missing_offsets():
    p = _progress(3, 10, end={"t": {"0": 10, "1": 7}}, latest={"t": {"0": 25, "1": 7, "2": 4}})
    assert metrics.lag(p.sources[0]) == {("t", "0"): 15, ("t", "1"): 0}  # partition 2 not read yet: unknown
    # a source that has read nothing yet reports null offsets
    first = _progress(0, 0, end=None, latest=None)  # type: ignore[arg-type]
    assert metrics.lag(first.sources[0]) == {}


def test_reports_count_what_the_write_tasks_committed():
    before = _samples()
    report = BatchReport(5, rows=30, scored=28, dead_letters=2, line_anomalies=3, blocks=6, block_alerts=1,
                         blocks_closed=2, blocks_cut=1, producers={"cached": 1, "fenced": 1},
                         skipped_partitions=[1])
    metrics.record_report(report)
    after = _samples()

    def delta(name: str, **labels: str) -> float:
        key = (name, tuple(sorted(labels.items())))
        return after.get(key, 0.0) - before.get(key, 0.0)

    assert (delta("logmesh_stream_lines_scored_total"), delta("logmesh_stream_dead_letters_total"),
            delta("logmesh_stream_line_anomalies_total"), delta("logmesh_stream_blocks_scored_total"),
            delta("logmesh_stream_block_alerts_total")) == (28, 2, 3, 6, 1)
    assert delta("logmesh_stream_blocks_ended_total", rule="quiet") == 2
    assert delta("logmesh_stream_blocks_ended_total", rule="stream-stopped") == 1
    assert delta("logmesh_stream_write_tasks_total", producer="cached") == 1
    assert delta("logmesh_stream_write_tasks_total", producer="fenced") == 1
    assert delta("logmesh_stream_write_tasks_total", producer="none") == 1

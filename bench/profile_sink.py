"""The Spark job (`logmesh stream`) with Spark's own figures per micro-batch, for benchmarks.

    .venv/bin/python bench/profile_sink.py --out var/bench/profile/batches.jsonl <logmesh stream args...>

Runs logmesh.streaming.job.run unchanged, after wrapping (in this process only, nothing is edited):
- BatchSink.__call__ -> "call": the whole foreachBatch body in the driver (the batch's write tasks, which
  run the plan: Kafka read, the block operator's state function with its decode/embed/score calls, and the
  transactional writes; then the embedded store's upsert)
- the embedded store's upsert -> "store_upsert" (seconds) and "store_points" (points written)
- the write tasks' producers, by kind (sink.BatchReport.producers) -> "producers_new", "_cached", "_warm", "_fenced";
  the slowest write task's time to have its producer and its whole write -> "producer_s", "write_s"
and a StreamingQueryListener records Spark's own durationMs per micro-batch (triggerExecution,
addBatch, latestOffset, queryPlanning, walCommit, commitOffsets) and the state operator's metrics.
With --spark-stages (which turns the driver's Spark UI on: a little more work for the driver) it also
records each batch's Spark jobs and their stages from the UI's REST API: when each was submitted and
completed, its tasks' run, CPU and deserialize times, shuffle bytes (where a cycle's fixed cost goes).
One JSON line per batch, kinds {"kind": "sink", ...}, {"kind": "spark", ...} and {"kind": "stages", ...}.
The work inside the executors' tasks is not timed here: profile it with py-spy (bench/e2e_ab.py --pyspy).

A benchmark of an older tree (bench/e2e_ab.py --prepare) runs that tree's own copy of this file.
"""
from __future__ import annotations

import argparse
import functools
import json
import logging
import sys
import threading
import time
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", required=True)
    parser.add_argument("--spark-stages", action="store_true")
    known, rest = parser.parse_known_args()
    out = open(Path(known.out), "a", buffering=1)
    lock = threading.Lock()

    def emit(record: dict) -> None:
        with lock:
            out.write(json.dumps(record) + "\n")

    from logmesh.streaming import job, sink as sink_mod, spark as spark_mod
    acc: dict[str, float] = {}

    def timer(name: str, fn):  # type: ignore[no-untyped-def]
        @functools.wraps(fn)
        def wrapped(*a, **k):  # type: ignore[no-untyped-def]
            t = time.perf_counter()
            try:
                return fn(*a, **k)
            finally:
                acc[name] = acc.get(name, 0.0) + time.perf_counter() - t
        return wrapped

    original_open = job.open_store

    def patched_open_store(*a, **k):  # type: ignore[no-untyped-def]
        store = original_open(*a, **k)
        cls = type(store)
        if not getattr(cls, "_bench_wrapped", False):
            timed = timer("store_upsert", cls.upsert)

            def upsert(self, points, *a, **k):  # type: ignore[no-untyped-def]
                points = list(points)
                acc["store_points"] = acc.get("store_points", 0) + len(points)
                return timed(self, points, *a, **k)
            cls.upsert = upsert
            cls._bench_wrapped = True
        return store
    job.open_store = patched_open_store

    original_report = sink_mod.BatchSink._report

    def report(self, *a, **k):  # type: ignore[no-untyped-def]
        out = original_report(self, *a, **k)
        acc.update({f"producers_{kind}": n for kind, n in getattr(out, "producers", {}).items()})
        acc.update({k: getattr(out, k) for k in ("producer_s", "write_s") if hasattr(out, k)})
        return out
    sink_mod.BatchSink._report = report

    original_call = sink_mod.BatchSink.__call__

    def call(self, df, batch_id):  # type: ignore[no-untyped-def]
        acc.clear()
        started, wall = time.perf_counter(), time.time()
        try:
            return original_call(self, df, batch_id)
        finally:
            emit({"kind": "sink", "batch_id": batch_id, "start": wall, "call": time.perf_counter() - started, **acc})
    sink_mod.BatchSink.__call__ = call

    original_session = spark_mod.session
    if known.spark_stages:  # the UI's REST API serves the jobs' and stages' timings (local mode turns it off)
        from pyspark.sql import SparkSession
        original_config = SparkSession.Builder.config

        def config(self, key=None, value=None, *a, **k):  # type: ignore[no-untyped-def]
            if key == "spark.ui.enabled":
                value = "true"
            return original_config(self, key, value, *a, **k)
        SparkSession.Builder.config = config

    def session(*a, **k):  # type: ignore[no-untyped-def]
        spark = original_session(*a, **k)
        ui = spark.sparkContext.uiWebUrl if known.spark_stages else None
        app = spark.sparkContext.applicationId
        from pyspark.sql.streaming import StreamingQueryListener

        class Listener(StreamingQueryListener):
            def onQueryStarted(self, event):  # type: ignore[no-untyped-def]
                pass

            def onQueryProgress(self, event):  # type: ignore[no-untyped-def]
                p = event.progress
                state = [{k: getattr(o, k) for k in ("numRowsTotal", "numRowsUpdated", "numRowsRemoved",
                                                     "allUpdatesTimeMs", "allRemovalsTimeMs", "commitTimeMs",
                                                     "memoryUsedBytes", "customMetrics")}
                         for o in p.stateOperators]
                emit({"kind": "spark", "batch_id": p.batchId, "rows": p.numInputRows,
                      "timestamp": p.timestamp, "duration_ms": dict(p.durationMs), "state": state})
                if ui and p.numInputRows:
                    try:
                        emit({"kind": "stages", "batch_id": p.batchId, "jobs": _batch_jobs(ui, app, p.batchId)})
                    except Exception as exc:  # noqa: BLE001 - a benchmark's extra figures, never the job's failure
                        emit({"kind": "stages", "batch_id": p.batchId, "error": str(exc)[:300]})

            def onQueryIdle(self, event):  # type: ignore[no-untyped-def]
                pass

            def onQueryTerminated(self, event):  # type: ignore[no-untyped-def]
                pass

        spark.streams.addListener(Listener())
        return spark
    spark_mod.session = session

    p = argparse.ArgumentParser()
    job.add_args(p)
    p.add_argument("--log-level", default="info")
    args = p.parse_args(rest)
    logging.basicConfig(level=getattr(logging, args.log_level.upper(), logging.INFO), stream=sys.stderr)
    job.run(job.config_from_args(args))


def _batch_jobs(ui: str, app: str, batch_id: int) -> list[dict]:
    """The Spark jobs of micro-batch `batch_id` (their description ends with "batch = N") and their stages."""
    import urllib.request

    def get(path: str):  # type: ignore[no-untyped-def]
        with urllib.request.urlopen(f"{ui}/api/v1/applications/{app}/{path}", timeout=10) as reply:
            return json.loads(reply.read())
    jobs = []
    for j in get("jobs"):
        if not (j.get("description") or "").rstrip().endswith(f"batch = {batch_id}"):
            continue
        stages = []
        for sid in j.get("stageIds", []):
            for st in get(f"stages/{sid}"):
                if st.get("status") == "SKIPPED":
                    continue
                stages.append({k: st.get(k) for k in (
                    "stageId", "attemptId", "name", "numTasks", "submissionTime", "firstTaskLaunchedTime",
                    "completionTime", "executorRunTime", "executorCpuTime", "executorDeserializeTime",
                    "resultSerializationTime", "jvmGcTime", "inputRecords", "shuffleReadBytes", "shuffleWriteBytes",
                    "shuffleWriteTime", "shuffleFetchWaitTime")})
        jobs.append({"jobId": j["jobId"], "name": j.get("name"), "submissionTime": j.get("submissionTime"),
                     "completionTime": j.get("completionTime"), "stages": stages})
    return jobs


if __name__ == "__main__":
    main()

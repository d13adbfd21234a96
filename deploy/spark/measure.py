"""What the local standalone cluster carries, for docs/scaling.md: replays N real HDFS lines through the job
on a running cluster (deploy/spark/cluster.sh start) and reads Spark's own metrics while it runs.

    .venv/bin/python deploy/spark/measure.py --master spark://127.0.0.1:7177 --embedder 127.0.0.1:50051 \
        --scorer 127.0.0.1:50052,127.0.0.1:50062 --lines 20000

Prints one JSON object: wall time and lines/s of the replay, the driver's time per micro-batch (the sink),
per executor the tasks and task seconds (REST /api/v1/applications/<id>/allexecutors), per stage the input
records and executor run time (/stages), and each scorer replica's lines_scored (GetStats). Uses a fresh
topic set and checkpoint (deleted after). Run it under `flock /tmp/logmesh-heavy.lock` on a shared box.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
import urllib.request
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
DATA = REPO.parent / "shared/data/hdfs/HDFS_20000.log"


def _get(sc, path: str):  # type: ignore[no-untyped-def]
    url = f"{sc.uiWebUrl}/api/v1/applications/{sc.applicationId}/{path}"
    return json.load(urllib.request.urlopen(url, timeout=10))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--master", required=True)
    p.add_argument("--embedder", required=True)
    p.add_argument("--scorer", required=True, help="one address or a pool (IP:PORT,IP:PORT)")
    p.add_argument("--bootstrap", default="127.0.0.1:9092")
    p.add_argument("--lines", type=int, default=20_000)
    p.add_argument("--data", default=str(DATA))
    p.add_argument("--max-offsets-per-trigger", type=int, default=5_000)
    p.add_argument("--partitions", type=int, default=4)
    args = p.parse_args()

    from confluent_kafka.admin import AdminClient, NewTopic
    from pyspark import SparkContext

    from logmesh.client import ScorerClient
    from logmesh.ingest.producer import run_ingest
    from logmesh.streaming.job import StreamConfig, run

    prefix = f"measure-{uuid.uuid4().hex[:8]}"
    names = {k: f"{prefix}.{k}" for k in ("logs", "scores", "anomalies", "dlq")}
    admin = AdminClient({"bootstrap.servers": args.bootstrap})
    for f in admin.create_topics([NewTopic(n, num_partitions=args.partitions if k in ("logs", "scores") else 1,
                                           replication_factor=1) for k, n in names.items()]).values():
        f.result(30)
    work = Path(tempfile.mkdtemp(prefix="logmesh-measure-"))
    replicas = [a.strip() for a in args.scorer.removeprefix("ipv4:").split(",")]
    before = {}
    for r in replicas:
        with ScorerClient(r) as one:
            before[r] = one.stats().lines_scored
    try:
        t0 = time.monotonic()
        produced = run_ingest(args.data, args.bootstrap, names["logs"], limit=args.lines, progress=False,
                              partitions=args.partitions).produced
        ingest_s = time.monotonic() - t0
        config = StreamConfig(bootstrap=args.bootstrap, topic=names["logs"], scores_topic=names["scores"],
                              anomalies_topic=names["anomalies"], dlq_topic=names["dlq"], once=True,
                              master=args.master, max_offsets_per_trigger=args.max_offsets_per_trigger,
                              embedder=args.embedder, scorer=args.scorer, qdrant_path=str(work / "qdrant"),
                              checkpoint=str(work / "checkpoint"))
        seen: dict = {"batches": [], "first": None}

        def on_report(report) -> None:  # type: ignore[no-untyped-def]
            sc = SparkContext._active_spark_context
            if not report.skipped and report.rows:
                if seen["first"] is None:  # the rate is taken from the end of the first batch on
                    seen["first"], seen["first_rows"] = time.monotonic(), report.rows
                seen["last"] = time.monotonic()
                seen["batches"].append({"rows": report.rows, "sink_s": round(report.seconds, 3)})
            seen["executors"] = _get(sc, "allexecutors")
            seen["stages"] = _get(sc, "stages?status=complete")

        t1 = time.monotonic()
        run(config, on_report=on_report)
        wall = time.monotonic() - t1
    finally:
        admin.delete_topics(list(names.values()), operation_timeout=30)
    after = {}
    for r in replicas:
        with ScorerClient(r) as one:
            after[r] = one.stats().lines_scored - before[r]
    rows = sum(b["rows"] for b in seen["batches"])
    executors = {e["id"]: {"tasks": e["totalTasks"], "task_s": round(e["totalDuration"] / 1000, 1),
                           "active": e["isActive"]} for e in seen.get("executors", [])}
    stages = [{"name": s["name"][:60], "tasks": s["numTasks"], "input_records": s["inputRecords"],
               "run_s": round(s["executorRunTime"] / 1000, 2)} for s in seen.get("stages", [])]
    kafka_stages = [s for s in stages if s["input_records"]]
    records = sum(s["input_records"] for s in kafka_stages)
    run_s = sum(s["run_s"] for s in kafka_stages)
    out = {"lines": produced, "ingest_s": round(ingest_s, 1), "job_wall_s": round(wall, 1),
           "first_batch_after_s": round(seen["first"] - t1, 1) if seen["first"] else None,
           "lines_per_s_after_first_batch": round((rows - seen["first_rows"]) / (seen["last"] - seen["first"]))
           if seen["first"] and seen["last"] > seen["first"] else None,
           "batches": len(seen["batches"]), "rows": rows,
           "sink_s_mean": round(sum(b["sink_s"] for b in seen["batches"]) / max(1, len(seen["batches"])), 3),
           "sink_lines_per_s": round(rows / max(1e-9, sum(b["sink_s"] for b in seen["batches"])), 0),
           "executors": executors, "kafka_stage_records": records, "kafka_stage_executor_s": round(run_s, 2),
           "kafka_stage_lines_per_executor_s": round(records / run_s, 0) if run_s else None,
           # every stage's task time (Kafka read, block state with decode/embed/score, writes) per line
           "all_stages_executor_s": round(sum(s["run_s"] for s in stages), 2),
           "lines_per_executor_s": round(rows / sum(s["run_s"] for s in stages)) if stages else None,
           "stages": stages,
           "lines_scored_per_replica": after}
    print(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())

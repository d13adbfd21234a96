"""Spark's part of a micro-batch alone, per block-state plan: no sink, no services, one Spark session.

    .venv/bin/python bench/bench_block_plan.py --variant two-branch --variant single-pass --rounds 2

For each run: a fresh topic (4 partitions) gets 2,000 warm-up lines, the query (the job's Kafka source
and `with_block_sessions`, a foreachBatch that only runs `toPandas`) scores them, then --lines generated
lines are produced at --rate. Per run: micro-batches with data, their median trigger and `addBatch`
times (Spark's `durationMs`), the median empty micro-batch, and the latency of each line from its Kafka
CreateTime to the end of the `toPandas` that delivered it (p50/p99): the job's latency less the sink.
Variants run interleaved (A, B, A, B ...) in one session, so the JVM and the Python workers are equally
warm. A variant is a plan (block_sessions.PLANS), `single-pass:N` for the single pass with N buckets, or
`lines` (no block state: the floor of a Kafka read and `toPandas`). Needs the broker (`make kafka-up`).
Stopping each run's query interrupts the micro-batch in flight: Spark logs that (cancelled tasks, an
interrupted task listener) on stderr; it does not touch the figures.
Figures: docs/benchmarks.md, "One pass over Kafka".
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
import uuid
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
QUIET_MS = 5000


def plan_stream(source, variant: str):  # type: ignore[no-untyped-def]
    from pyspark.sql import functions as F

    from logmesh.streaming import block_sessions
    if variant == "lines":
        return source.select(F.lit("line").alias("kind"), "topic", "partition", "offset", "key", "value")
    plan, _, buckets = variant.partition(":")
    kept = block_sessions.SINGLE_PASS_BUCKETS
    if buckets:  # only the driver builds the bucket expression: setting it here is enough
        block_sessions.SINGLE_PASS_BUCKETS = int(buckets)
    try:
        return block_sessions.with_block_sessions(source, QUIET_MS, "processing", plan=plan)
    finally:
        block_sessions.SINGLE_PASS_BUCKETS = kept


def one_run(spark, variant: str, log: Path, args, work: Path) -> dict:  # type: ignore[no-untyped-def]
    from logmesh.ingest.producer import run_ingest
    from logmesh.streaming.job import StreamConfig, kafka_source_options
    topic = f"bench.plan.{uuid.uuid4().hex[:8]}"
    run_ingest(str(log), topic=topic, limit=2000, progress=False, partitions=args.partitions)
    options = kafka_source_options(StreamConfig(bootstrap=args.bootstrap, topic=topic))
    stream = plan_stream(spark.readStream.format("kafka").options(**options).load(), variant)
    batches = []

    def sink(df, batch_id: int) -> None:  # type: ignore[no-untyped-def]
        frame = df.toPandas()
        done = time.time()
        lines = frame[frame["kind"] == "line"]
        batches.append({"end": done, "rows": len(lines), "keys": list(zip(lines["partition"], lines["offset"]))})

    query = (stream.writeStream.foreachBatch(sink).outputMode("update")
             .option("checkpointLocation", str(work / topic)).trigger(processingTime="500 milliseconds").start())
    time.sleep(12)  # the warm-up lines scored, the plan's first batches behind
    started = time.time()
    run_ingest(str(log), topic=topic, rate=args.rate, limit=args.lines, progress=False, partitions=args.partitions)
    time.sleep(4)
    progress = list(query.recentProgress)
    query.stop()
    timestamps = _create_times(args.bootstrap, topic)  # (partition, offset) -> Kafka CreateTime (s)
    from confluent_kafka.admin import AdminClient
    AdminClient({"bootstrap.servers": args.bootstrap}).delete_topics([topic])
    timed = [b for b in batches if b["end"] >= started + 2 and b["rows"]]
    latency = np.array([b["end"] - timestamps[k] for b in timed for k in b["keys"] if k in timestamps])
    data = [p for p in progress if p.get("numInputRows", 0) > 0]
    empty = [p for p in progress if p.get("numInputRows", 0) == 0]

    def median(rows, key):  # type: ignore[no-untyped-def]
        values = [p["durationMs"].get(key, 0) for p in rows]
        return float(np.median(values)) if values else None
    return {"variant": variant, "batches": len(timed), "lines_per_batch": round(float(np.mean([b["rows"] for b in timed])), 1),
            "trigger_ms": median(data, "triggerExecution"), "add_batch_ms": median(data, "addBatch"),
            "empty_trigger_ms": median(empty, "triggerExecution"),
            "p50_s": round(float(np.percentile(latency, 50)), 3), "p99_s": round(float(np.percentile(latency, 99)), 3)}


def _create_times(bootstrap: str, topic: str) -> dict[tuple[int, int], float]:
    from confluent_kafka import Consumer, TopicPartition
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"bench-{uuid.uuid4()}",
                         "enable.auto.commit": False})
    partitions = consumer.list_topics(topic, timeout=10).topics[topic].partitions
    consumer.assign([TopicPartition(topic, p, 0) for p in partitions])
    out = {}
    while batch := consumer.consume(10_000, timeout=2.0):
        for m in batch:
            if not m.error():
                out[(m.partition(), m.offset())] = m.timestamp()[1] / 1000.0
    consumer.close()
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--variant", action="append", required=True, help="a plan, single-pass:N, or lines (repeatable)")
    p.add_argument("--rounds", type=int, default=2, help="runs per variant, interleaved (default %(default)s)")
    p.add_argument("--rate", type=float, default=2000, help="lines/s produced (default %(default)s)")
    p.add_argument("--lines", type=int, default=30_000, help="timed lines per run (default %(default)s)")
    p.add_argument("--partitions", type=int, default=4, help="input topic partitions (default %(default)s)")
    p.add_argument("--bootstrap", default="127.0.0.1:9092")
    p.add_argument("--out", default=None, help="also append each run's JSON line here")
    args = p.parse_args()
    sys.path.insert(0, str(REPO))
    from logmesh.ingest.generator import GeneratorConfig, write_generated
    from logmesh.streaming.spark import session
    work = Path(tempfile.mkdtemp(prefix="bench-plan-"))
    log = work / "generated.log"
    write_generated(GeneratorConfig(lines=args.lines + 2000, seed=7), log, work / "labels.csv")
    spark = session(master="local[2]")
    spark.conf.set("spark.sql.streaming.noDataMicroBatches.enabled", "true")
    out = open(args.out, "a") if args.out else None
    try:
        for _ in range(args.rounds):
            for variant in args.variant:
                result = one_run(spark, variant, log, args, work)
                print(json.dumps(result), flush=True)
                if out:
                    out.write(json.dumps(result) + "\n")
    finally:
        spark.stop()
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

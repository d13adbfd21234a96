"""`logmesh stream`: the Structured Streaming job from `logmesh.logs` to the scorer, Kafka and Qdrant."""
from __future__ import annotations

import argparse
import dataclasses
import logging
from pathlib import Path

from logmesh.client import DEFAULT_EMBEDDER, DEFAULT_SCORER, EmbedderClient, ScorerClient
from logmesh.streaming.outputs import ResultProducer
from logmesh.streaming.sink import BatchSink, Ledger
from logmesh.streaming.vector_store import open_store

log = logging.getLogger("logmesh.stream")


@dataclasses.dataclass
class StreamConfig:
    bootstrap: str = "127.0.0.1:9092"
    topic: str = "logmesh.logs"
    scores_topic: str = "logmesh.scores"
    anomalies_topic: str = "logmesh.anomalies"
    dlq_topic: str = "logmesh.dlq"
    embedder: str = DEFAULT_EMBEDDER
    scorer: str = DEFAULT_SCORER
    qdrant_url: str | None = None
    qdrant_api_key: str | None = None
    qdrant_path: str = "var/qdrant"
    store_lines: str = "anomalous"
    checkpoint: str = "var/checkpoint"
    max_offsets_per_trigger: int = 20_000
    trigger_ms: int = 500
    once: bool = False  # process what is there now, then stop (availableNow)
    block_quiet_ms: int = 30_000  # a block with no new line for this long is closed and judged final
    starting_offsets: str = "earliest"
    wait_for_services_s: float = 300.0
    master: str = "local[2]"


def add_args(p: argparse.ArgumentParser) -> None:
    d = StreamConfig()
    p.add_argument("--bootstrap", default=d.bootstrap, help="Kafka bootstrap servers (default %(default)s)")
    p.add_argument("--topic", default=d.topic, help="input topic of LogRecords (default %(default)s)")
    p.add_argument("--scores-topic", default=d.scores_topic, help="per-line ScoreResults (default %(default)s)")
    p.add_argument("--anomalies-topic", default=d.anomalies_topic, help="anomalous lines and block alerts (default %(default)s)")
    p.add_argument("--dlq-topic", default=d.dlq_topic, help="messages that are not LogRecords (default %(default)s)")
    p.add_argument("--embedder", default=d.embedder, help="embedder address (default %(default)s)")
    p.add_argument("--scorer", default=d.scorer, help="scorer address (default %(default)s)")
    p.add_argument("--qdrant-url", default=None, help="Qdrant server URL; default: the embedded store at --qdrant-path")
    p.add_argument("--qdrant-api-key", default=None, help="API key for --qdrant-url")
    p.add_argument("--qdrant-path", default=d.qdrant_path, help="embedded store folder (default %(default)s)")
    p.add_argument("--store-lines", choices=["anomalous", "all"], default=d.store_lines,
                   help="which lines get a vector point besides every block (default %(default)s)")
    p.add_argument("--checkpoint", default=d.checkpoint, help="Spark checkpoint folder: progress lives here")
    p.add_argument("--max-offsets-per-trigger", type=int, default=d.max_offsets_per_trigger,
                   help="most Kafka messages per micro-batch (caps driver memory)")
    p.add_argument("--trigger-ms", type=int, default=d.trigger_ms, help="micro-batch interval (default %(default)s)")
    p.add_argument("--block-quiet-ms", type=int, default=d.block_quiet_ms,
                   help="close a block after this long without a new line (default %(default)s)")
    p.add_argument("--once", action="store_true", help="process everything in the topic now, then stop")
    p.add_argument("--master", default=d.master, help="Spark master (default %(default)s)")


def config_from_args(args: argparse.Namespace) -> StreamConfig:
    fields = {f.name for f in dataclasses.fields(StreamConfig)}
    return StreamConfig(**{k: v for k, v in vars(args).items() if k in fields})


def build_sink(config: StreamConfig, on_report=None) -> tuple[BatchSink, object]:  # type: ignore[no-untyped-def]
    embedder, scorer = EmbedderClient(config.embedder), ScorerClient(config.scorer)
    for client in (embedder, scorer):  # wait instead of failing when a service is still starting or down
        log.info("waiting for service", extra={"service": client.service, "address": client.address})
        client.wait_until_serving(config.wait_for_services_s)
    store = open_store(url=config.qdrant_url, path=config.qdrant_path, api_key=config.qdrant_api_key)
    store.ensure_collection()
    outputs = ResultProducer(config.bootstrap, config.scores_topic, config.anomalies_topic, config.dlq_topic)
    ledger = Ledger(Path(config.checkpoint) / "sink-ledger")
    return BatchSink(embedder, scorer, outputs, store, ledger, config.store_lines, on_report=on_report), store


def run(config: StreamConfig, on_report=None) -> None:  # type: ignore[no-untyped-def]
    from logmesh.streaming.spark import session
    sink, store = build_sink(config, on_report)
    spark = session(master=config.master)
    # Block timeouts fire in micro-batches without new data; a run that drains the topic and stops
    # (--once, availableNow) must not keep running such batches forever.
    spark.conf.set("spark.sql.streaming.noDataMicroBatches.enabled", str(not config.once).lower())
    source = (spark.readStream.format("kafka")
              .option("kafka.bootstrap.servers", config.bootstrap)
              .option("subscribe", config.topic)
              .option("startingOffsets", config.starting_offsets)
              .option("maxOffsetsPerTrigger", config.max_offsets_per_trigger)
              .load())
    from logmesh.streaming.block_sessions import with_block_sessions
    stream = with_block_sessions(source, config.block_quiet_ms)
    writer = (stream.writeStream.foreachBatch(sink).outputMode("update")
              .option("checkpointLocation", str(Path(config.checkpoint) / "spark"))
              .queryName("logmesh-stream"))
    writer = writer.trigger(availableNow=True) if config.once else writer.trigger(
        processingTime=f"{config.trigger_ms} milliseconds")
    query = writer.start()
    log.info("stream started", extra={"topic": config.topic, "checkpoint": config.checkpoint, "once": config.once})
    try:
        query.awaitTermination()
    except KeyboardInterrupt:
        log.info("stopping stream (Ctrl-C)")
        query.stop()
    finally:
        store.close()
        spark.stop()
    if query.exception() is not None:
        raise RuntimeError(f"stream failed: {query.exception()}")

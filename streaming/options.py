"""`logmesh stream`'s options and their checks: light (no Spark, pandas or Kafka client), so the CLI's
parser and `logmesh stream --help` load none of them; streaming/job.py runs the job they describe."""
from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

from logmesh.client import DEFAULT_EMBEDDER, DEFAULT_SCORER
from logmesh.ingest.kafka_options import KafkaOptionAction, add_kafka_option_arg, check_kafka_options

LEDGER_TOPIC = "logmesh.sink-ledger"  # compacted: each write task's last committed batch (outputs.Ledger)


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
    # Larger micro-batches spread each batch's fixed cost and write a block's point once for more of its
    # lines: full speed 8.9-9.5k lines/s at 20,000, 11.0-11.2k at 40,000 (interleaved, docs/benchmarks.md).
    # A lower rate never fills a batch; it only bounds the batches that catch up on a backlog.
    max_offsets_per_trigger: int = 40_000
    # A micro-batch starts this long after the previous one started, or when it ends if it took longer.
    # At 2,000 lines/s a batch takes ~0.3 s: 250 ms keeps them back to back (p50 0.62-0.66 s against
    # 0.75-0.94 s with 500 ms, interleaved); an idle job pays for it, each empty batch runs the block
    # timers: ~0.37 of a core against ~0.2 (docs/benchmarks.md, "One pass over Kafka").
    trigger_ms: int = 250
    once: bool = False  # process what is there now, then stop (availableNow)
    # A block closes as complete once the stream went on this long without it. HDFS writes a block for
    # minutes (HDFS_20000.log: 40 s median from the first receive to the last "Received", 129 s at most;
    # the longest pause normal blocks make between two lines of a write, times two, is 190 s in the model's
    # learnt stall times), so anything shorter closes writes still in flight, which the session model
    # then reads as missing steps: false alerts at a live feed's pace. Evidence still alerts at once.
    block_quiet_ms: int = 300_000
    # processing clock: blocks still open when the stream's clock has stood still this long (a replay ended,
    # ingest is down) get a final verdict as cut prefixes; 0: never
    block_stall_ms: int = 900_000
    block_clock: str = "processing"  # the clock block_quiet_ms runs on: processing (arrival) or event (log time)
    event_lateness_ms: int = 10_000  # event clock: how far behind the newest line's time the watermark trails
    starting_offsets: str = "earliest"
    wait_for_services_s: float = 300.0
    master: str = "local[2]"
    ledger_topic: str = LEDGER_TOPIC
    kafka_options: dict[str, str] = dataclasses.field(default_factory=dict)  # librdkafka / kafka.* (SASL, SSL)
    spark_kafka_options: dict[str, str] = dataclasses.field(default_factory=dict)  # Java client only (kafka.*)
    retry_budget_s: float = 300.0  # a service down longer than this fails the batch (and the query: restarted)
    max_query_restarts: int = 10  # consecutive restarts of a failed query without a batch done in between
    metrics_port: int | None = None  # the driver serves Prometheus metrics here (streaming/metrics.py); 0: any free; None: off
    # spark.sql.shuffle.partitions, and as many state buckets: how many tasks do the per-line work. Spark freezes
    # it into a checkpoint at its first start; None: the checkpoint's, or 2 (job.SHUFFLE_PARTITIONS) for a new one
    shuffle_partitions: int | None = None
    metrics_host: str = "127.0.0.1"
    trace: bool = False  # OpenTelemetry traces of the driver and the executors' tasks (runtime/tracing.py); off
    trace_endpoint: str | None = None  # their OTLP/gRPC collector; None: the standard OTEL_* environment


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
    p.add_argument("--checkpoint", default=d.checkpoint,
                   help="Spark checkpoint folder: progress and the block state live here, and a restart resumes "
                        "from it (default %(default)s)")
    p.add_argument("--max-offsets-per-trigger", type=int, default=d.max_offsets_per_trigger,
                   help="most Kafka messages per micro-batch: caps a batch's size, and with it its memory and how "
                        "long a backlog's batch takes (default %(default)s)")
    p.add_argument("--trigger-ms", type=int, default=d.trigger_ms,
                   help="micro-batch interval (default %(default)s): shorter answers sooner; an idle job runs an "
                        "empty micro-batch this often (block timers), ~0.37 of a core here at 250 ms, ~0.2 at 500")
    p.add_argument("--block-quiet-ms", type=int, default=d.block_quiet_ms,
                   help="close a block as complete once the stream went on this long without a line of it: on "
                        "the processing clock, once lines produced this long after its last line were read; a "
                        "stream that stops (a replay ended, ingest down) closes nothing. Shorter than an HDFS "
                        "write (minutes) closes writes in flight, which read as missing steps; an alert on "
                        "evidence (an exception, a new template) does not wait for it (default %(default)s)")
    p.add_argument("--block-stall-ms", type=int, default=d.block_stall_ms,
                   help="processing clock: when no new line has come for this long (wall time), give the blocks "
                        "still open a final verdict as cut prefixes, without missing-step evidence; they stay "
                        "open in case the stream comes back. 0: never (default %(default)s)")
    p.add_argument("--block-clock", choices=["processing", "event"], default=d.block_clock,
                   help="the clock --block-quiet-ms runs on. processing (default): the Kafka record time (when "
                        "ingest produced the line) of the newest line read, against the block's last line's. "
                        "event: log time since its last line's timestamp, once the watermark (the newest line's "
                        "time less --event-lateness-ms) passes it; verdicts then do not depend on replay speed. "
                        "On either clock, blocks still active when a replay ends stay open instead of being "
                        "judged cut off. Fixed per checkpoint")
    p.add_argument("--event-lateness-ms", type=int, default=d.event_lateness_ms,
                   help="with --block-clock event: how late (in log time) a line may arrive and still join "
                        "its block's story; later lines are scored but left out of it (default %(default)s)")
    p.add_argument("--once", action="store_true", help="process everything in the topic now, then stop")
    p.add_argument("--master", default=d.master, help="Spark master (default %(default)s)")
    p.add_argument("--ledger-topic", default=d.ledger_topic,
                   help="compacted topic holding each job's last committed batch (default %(default)s)")
    p.add_argument("--retry-budget-s", type=float, default=d.retry_budget_s,
                   help="retry a down service this long per batch before failing it (default %(default)s)")
    p.add_argument("--max-query-restarts", type=int, default=d.max_query_restarts,
                   help="restart a failed query from its checkpoint up to this many times in a row (default %(default)s)")
    p.add_argument("--shuffle-partitions", type=int, default=None, metavar="N",
                   help="state partitions of a NEW checkpoint: the block state is split into N buckets, one task "
                        "each, so at most N executor cores do the per-line work (decode, embed and score calls, "
                        "writes). Fixed at the checkpoint's first start (Spark keeps it in its offset log); an "
                        "existing checkpoint keeps its own. Default: 2, or the checkpoint's")
    p.add_argument("--metrics-port", type=int, default=None, metavar="PORT",
                   help="serve Prometheus metrics from the driver at http://--metrics-host:PORT/metrics "
                        "(micro-batches and their parts, lines, blocks, alerts, dead letters, Kafka lag per "
                        "partition; deploy/prometheus); 0: any free port, named in the job's 'metrics serving' "
                        "log line; default: off")
    p.add_argument("--metrics-host", default=d.metrics_host,
                   help="address --metrics-port binds (default %(default)s; 0.0.0.0 for a scraper elsewhere)")
    from logmesh.runtime.tracing_args import add_trace_args
    add_trace_args(p)
    add_kafka_option_arg(p)  # --kafka-option KEY=VALUE: confluent-kafka clients, and Spark's source as kafka.KEY
    p.add_argument("--spark-kafka-option", dest="spark_kafka_options", metavar="KEY=VALUE", action=KafkaOptionAction,
                   default={}, help="a Java Kafka client property for Spark's source only, as kafka.KEY (repeatable): "
                                    "settings librdkafka names differently, e.g. sasl.jaas.config, "
                                    "ssl.truststore.location")


def config_from_args(args: argparse.Namespace) -> StreamConfig:
    fields = {f.name for f in dataclasses.fields(StreamConfig)}
    values = {k: v for k, v in vars(args).items() if k in fields}
    values["kafka_options"] = dict(values.get("kafka_options") or {})
    values["spark_kafka_options"] = dict(values.get("spark_kafka_options") or {})
    try:
        check_kafka_options(values["kafka_options"])
        check_block_clock(values["checkpoint"], values["block_clock"], record=False)
        shuffle_partitions(values["checkpoint"], values.get("shuffle_partitions"), record=False)
        check_block_timing(values["block_quiet_ms"], values["block_stall_ms"], values["block_clock"])
        partitions = values.get("shuffle_partitions")
        if partitions is not None and partitions < 1:
            raise ValueError(f"--shuffle-partitions must be at least 1, not {partitions}")
        port = values.get("metrics_port")
        if port is not None and not 0 <= port < 65536:
            raise ValueError(f"--metrics-port must be a TCP port, 0..65535 (0: any free port), not {port}")
    except ValueError as exc:  # before Spark or any connection: the reason, and argparse's exit code
        print(f"logmesh stream: error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    return StreamConfig(**values)


def check_block_timing(quiet_ms: int, stall_ms: int, clock: str = "processing") -> None:
    """--block-stall-ms (processing clock only) finalizes blocks the quiet rule could not close: it must be longer."""
    if quiet_ms <= 0:
        raise ValueError(f"--block-quiet-ms must be positive, not {quiet_ms}")
    if stall_ms < 0:
        raise ValueError(f"--block-stall-ms must be 0 (never) or positive, not {stall_ms}")
    if clock == "processing" and stall_ms and stall_ms <= quiet_ms:
        raise ValueError(f"--block-stall-ms ({stall_ms}) must be longer than --block-quiet-ms ({quiet_ms}), "
                         "or 0 to never finalize the blocks of a stopped stream")


BLOCK_CLOCK_FILE = "block-clock"


def check_block_clock(checkpoint: str | Path, clock: str, record: bool = True) -> None:
    """The block clock is part of the checkpointed plan (a watermark and the state's timeout kind): a
    checkpoint keeps the one it started with. Recorded at the first start (`record`); another one is
    refused with ValueError."""
    path = Path(checkpoint) / BLOCK_CLOCK_FILE
    if path.exists():
        kept = path.read_text().strip()
        if kept != clock:
            raise ValueError(f"checkpoint {checkpoint} closes blocks on the {kept} clock; it cannot switch to "
                             f"--block-clock {clock}. Start it with --block-clock {kept}, or use a new --checkpoint "
                             "(its offsets and block state start over)")
        return
    if (Path(checkpoint) / "spark").exists() and clock != "processing":
        raise ValueError(f"checkpoint {checkpoint} was started before the block clock was recorded, on the "
                         f"processing clock; use a new --checkpoint for --block-clock {clock}")
    if record:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(clock + "\n")


SHUFFLE_PARTITIONS = 2  # spark.sql.shuffle.partitions of a new checkpoint (--shuffle-partitions): the block operator's
SHUFFLE_PARTITIONS_FILE = "shuffle-partitions"


def shuffle_partitions(checkpoint: str | Path, wanted: int | None = None, record: bool = True) -> int:
    """The checkpoint's spark.sql.shuffle.partitions: what it recorded at its first start (2 for one started
    before this was recorded: Spark froze the session's 2 into its offset log), else `wanted` or
    SHUFFLE_PARTITIONS, recorded (`record`). Another `wanted` for an existing checkpoint is refused
    with ValueError: Spark would keep the frozen value anyway, and the state is keyed by it."""
    path = Path(checkpoint) / SHUFFLE_PARTITIONS_FILE
    kept = int(path.read_text().strip()) if path.exists() else (
        SHUFFLE_PARTITIONS if (Path(checkpoint) / "spark").exists() else None)
    if kept is not None and wanted is not None and wanted != kept:
        raise ValueError(f"checkpoint {checkpoint} keeps its state in {kept} shuffle partitions, fixed at its first "
                         f"start; it cannot switch to --shuffle-partitions {wanted}. Start it without the option, or "
                         "use a new --checkpoint (its offsets and block state start over)")
    value = kept if kept is not None else (wanted or SHUFFLE_PARTITIONS)
    if record and not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(f"{value}\n")
    return value

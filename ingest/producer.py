"""Producing HDFS log lines to Kafka as binary protobuf LogRecords (`logmesh ingest`).

Value = LogRecord.SerializeToString(); key = the record's first block id (so one block's lines stay
in one partition, in order, for the streaming job's block state), else the record id. Batching and
compression are left to librdkafka (linger.ms, compression.type); idempotence with acks=all keeps
retries from duplicating lines. The Kafka timestamp is the produce time, not the 2008 event time:
time-based retention would otherwise delete a replay as soon as it lands.
"""
from __future__ import annotations

import time
from collections.abc import Iterable
from typing import Any

from confluent_kafka import KafkaError, KafkaException, Message, Producer
from tenacity import Retrying, retry_if_exception_type, wait_fixed

from logmesh.ingest.broker import BrokerUnavailable, check_broker, ensure_topic
from logmesh.ingest.hdfs import UNKNOWN_TEMPLATE
from logmesh.ingest.ingest_args import add_ingest_args, run_ingest_cli
from logmesh.ingest.kafka_options import (COMPRESSIONS, DEFAULT_BOOTSTRAP, DEFAULT_TOPIC, KafkaOptionAction,
                                          add_kafka_option_arg, check_kafka_options, producer_config)
from logmesh.ingest.pacing import TokenBucket
from logmesh.ingest.progress import Progress
from logmesh.ingest.reader import PathLike, ReadStats, expand_paths, iter_records, load_block_labels
from logmesh.ingest.summary import IngestSummary

# What callers outside ingest/ import from here (the job, the benchmarks, other tests): each lives in the module
# named above (`logmesh ingest`'s options in ingest_args); run_ingest is this module's own.
__all__ = ["BrokerUnavailable", "IngestSummary", "KafkaOptionAction", "TokenBucket", "add_ingest_args",
           "add_kafka_option_arg", "check_broker", "check_kafka_options", "ensure_topic", "run_ingest",
           "run_ingest_cli"]


class _Failures:
    """Counts failed deliveries. Only failures are reported (delivery.report.only.error): a Python
    callback per successful line costs ~10% of throughput, and success = sent - failed - unflushed."""

    def __init__(self) -> None:
        self.count = 0
        self.first_error = ""

    def on_delivery(self, err: KafkaError | None, msg: Message) -> None:
        if err is not None:
            self.count += 1
            if not self.first_error:
                self.first_error = str(err)


def run_ingest(paths: PathLike | Iterable[PathLike] = "-", bootstrap: str = DEFAULT_BOOTSTRAP,
               topic: str = DEFAULT_TOPIC, rate: float | None = None, labels_csv: PathLike | None = None,
               limit: int | None = None, progress: bool | None = None, *, connect_timeout: float = 10.0,
               compression: str = "lz4", partitions: int = 4, flush_timeout: float = 120.0,
               extra_config: dict[str, Any] | None = None, family: str = "hdfs",
               line_labels: bool = False) -> IngestSummary:
    """Reads `paths` (files, folders, *.gz, "-" for stdin), parses each line and produces it to
    `topic`. `rate` paces lines/s (None: as fast as possible); `limit` stops after that many lines;
    `labels_csv` (loghub anomaly_label.csv) fills LogRecord.label; `progress` None = a live display
    when stderr is a terminal, periodic log lines otherwise; False = quiet. Lines that do not parse
    are still produced (template "unknown") and counted. Raises BrokerUnavailable when no broker
    answers within `connect_timeout` seconds. `family` ("hdfs", "bgl", "auto": from the first file) picks the
    parser; BGL records are keyed by node id, and `line_labels` keeps BGL's label column (replay only)."""
    if compression not in COMPRESSIONS:
        raise ValueError(f"compression must be one of {', '.join(COMPRESSIONS)}")
    files = expand_paths(paths)  # a missing file fails now, not after connecting
    from logmesh.ingest.families import iter_bgl_records, resolve
    family = resolve(family, files)
    if family == "bgl" and labels_csv:
        raise ValueError("--labels is a block-label CSV for HDFS; BGL lines carry their label in the first "
                         "column: pass --line-labels to keep it for replay")
    labels = load_block_labels(labels_csv) if labels_csv else None
    admin = check_broker(bootstrap, connect_timeout,  # security settings (SASL/SSL) apply to the admin client too
                         {k: v for k, v in (extra_config or {}).items() if not callable(v)})
    ensure_topic(admin, topic, partitions, connect_timeout)
    failures = _Failures()
    producer = Producer(producer_config(bootstrap, compression,
                                        {"on_delivery": failures.on_delivery, **(extra_config or {})}))
    summary = IngestSummary(topic=topic, bootstrap=bootstrap)
    stats = ReadStats()

    def poll_sleep(seconds: float) -> None:  # serve delivery reports while pacing
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            producer.poll(left)

    bucket = TokenBucket(rate, sleep=poll_sleep) if rate else None
    display = Progress(progress, summary)
    produce, poll = producer.produce, producer.poll
    from logmesh.runtime import tracing
    spans = tracing.ProducerSpans(topic) if tracing.ON else None
    if spans is not None:  # each record carries its producer span's traceparent (runtime/tracing.py)
        def produce(topic: str, value: bytes, key: bytes) -> None:  # type: ignore[misc]
            producer.produce(topic, value, key, headers=spans.headers())
    # waits by polling, which serves delivery reports and frees the queue; no limit: undeliverable lines fail
    # after message.timeout.ms and leave the queue too
    queue_full = Retrying(retry=retry_if_exception_type(BufferError), wait=wait_fixed(0.05), sleep=poll,
                          reraise=True)
    sent = nbytes = unparsed = rejected = 0
    tick = 1 if bucket is not None else 256  # paced runs are slow enough to poll every line
    started = next_update = time.monotonic()
    try:
        records = iter_bgl_records(files, line_labels, stats) if family == "bgl" else iter_records(files, labels, stats)
        for record in records if limit is None or limit > 0 else ():
            if bucket is not None:
                bucket.take()
            value = record.SerializeToString()
            key = (record.block_ids[0] if record.block_ids else record.id).encode()
            if record.template_id == UNKNOWN_TEMPLATE if family == "hdfs" else not record.component:
                unparsed += 1  # BGL: a line not in BGL's format (its template may be named by the scorer)
            try:
                try:
                    produce(topic, value, key)
                except BufferError:  # local queue full: produce again once librdkafka drained some of it
                    queue_full(produce, topic, value, key)
                nbytes += len(value) + len(key)
            except KafkaException as exc:  # e.g. a line over message.max.bytes: count it, go on
                rejected += 1
                failures.first_error = failures.first_error or f"{record.id}: {exc.args[0].str()}"
            sent += 1
            if sent % tick == 0:
                poll(0)
                if (now := time.monotonic()) >= next_update:
                    next_update = now + 0.25
                    summary.unparsed = unparsed
                    failed = failures.count + rejected
                    display.update(sent, sent - len(producer) - failed, failed)
            if sent == limit:
                break
    except KeyboardInterrupt:
        summary.interrupted = True
    finally:
        # Deliver what is queued even after Ctrl-C, but do not hang on a dead broker forever.
        remaining = producer.flush(5.0 if summary.interrupted else flush_timeout)
        if spans is not None:
            spans.close()
        summary.seconds = time.monotonic() - started
        summary.lines_read, summary.blank, summary.bad_bytes = stats.lines, stats.blank_lines, stats.bad_bytes
        summary.unparsed, summary.bytes = unparsed, nbytes
        summary.failed = failures.count + rejected + remaining
        summary.produced = sent - summary.failed
        summary.first_error = failures.first_error or (f"{remaining} lines undelivered at exit" if remaining else "")
        display.update(sent, summary.produced, summary.failed)
        display.close()
    return summary


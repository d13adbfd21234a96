"""Producing HDFS log lines to Kafka as binary protobuf LogRecords (`logmesh ingest`).

Value = LogRecord.SerializeToString(); key = the record's first block id (so one block's lines stay
in one partition, in order, for the streaming job's block state), else the record id. Batching and
compression are left to librdkafka (linger.ms, compression.type); idempotence with acks=all keeps
retries from duplicating lines. The Kafka timestamp is the produce time, not the 2008 event time:
time-based retention would otherwise delete a replay as soon as it lands.
"""
from __future__ import annotations

import argparse
import logging
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from typing import Any

from confluent_kafka import KafkaError, KafkaException, Message, Producer
from confluent_kafka.admin import AdminClient, NewTopic

from logmesh.ingest.hdfs import UNKNOWN_TEMPLATE
from logmesh.ingest.reader import PathLike, ReadStats, expand_paths, iter_records, load_block_labels

DEFAULT_BOOTSTRAP = "127.0.0.1:9092"
DEFAULT_TOPIC = "logmesh.logs"
COMPRESSIONS = ("lz4", "zstd", "snappy", "gzip", "none")
log = logging.getLogger("logmesh.ingest")
_rdkafka_log = logging.getLogger("logmesh.ingest.rdkafka")


class BrokerUnavailable(RuntimeError):
    """No Kafka broker answered at the bootstrap address within the timeout."""


def broker_hint(bootstrap: str) -> str:
    return (f"no Kafka broker at {bootstrap}: start one with `deploy/kafka/kafka.sh start` "
            "(or make kafka-up)")


@dataclass
class IngestSummary:
    """What one ingest run did. `produced` counts lines the broker acknowledged."""

    topic: str
    bootstrap: str
    lines_read: int = 0
    produced: int = 0
    failed: int = 0
    unparsed: int = 0
    blank: int = 0
    bad_bytes: int = 0
    bytes: int = 0
    seconds: float = 0.0
    interrupted: bool = False
    first_error: str = ""

    @property
    def lines_per_s(self) -> float:
        return self.produced / self.seconds if self.seconds > 0 else 0.0

    @property
    def mb_per_s(self) -> float:
        return self.bytes / 1e6 / self.seconds if self.seconds > 0 else 0.0

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "lines_per_s": round(self.lines_per_s, 1), "mb_per_s": round(self.mb_per_s, 3)}

    def __str__(self) -> str:
        s = (f"read {self.lines_read:,} lines, produced {self.produced:,} to {self.topic} "
             f"({self.failed:,} failed, {self.unparsed:,} unparsed) in {self.seconds:.1f} s: "
             f"{self.lines_per_s:,.0f} lines/s, {self.mb_per_s:.1f} MB/s")
        if self.bad_bytes:
            s += f"; {self.bad_bytes:,} bad bytes replaced"
        if self.first_error:
            s += f"; first error: {self.first_error}"
        return s + (" (interrupted)" if self.interrupted else "")


class TokenBucket:
    """Paces calls to `rate` per second with bursts of up to `burst` (default a tenth of a second's
    worth). Debt is kept, so the long-run rate is exact even when `sleep` wakes early."""

    def __init__(self, rate: float, burst: float | None = None,
                 clock: Callable[[], float] = time.monotonic, sleep: Callable[[float], None] = time.sleep) -> None:
        if rate <= 0:
            raise ValueError(f"rate must be positive, got {rate}")
        self.rate = rate
        self.capacity = burst if burst is not None else max(1.0, rate / 10)
        self.tokens = self.capacity
        self._clock, self._sleep = clock, sleep
        self._last = clock()

    def take(self, n: float = 1.0) -> float:
        """Takes `n` tokens, sleeping while in debt; returns the seconds it asked to sleep."""
        now = self._clock()
        self.tokens = min(self.capacity, self.tokens + (now - self._last) * self.rate) - n
        self._last = now
        if self.tokens >= 0:
            return 0.0
        wait = -self.tokens / self.rate
        self._sleep(wait)
        return wait


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


def producer_config(bootstrap: str, compression: str = "lz4", extra: dict[str, Any] | None = None
                    ) -> dict[str, Any]:
    """The librdkafka settings ingest uses; `extra` overrides any of them."""
    conf: dict[str, Any] = {
        "bootstrap.servers": bootstrap,
        "client.id": "logmesh-ingest",
        "enable.idempotence": True,  # retries never duplicate or reorder a line
        "acks": "all",
        "linger.ms": 5,  # a few ms of batching: large batches at full speed, little delay when paced
        "compression.type": compression,  # lz4: cheapest CPU per MB on a 2-core box; zstd packs tighter
        "batch.size": 1_000_000,
        "queue.buffering.max.messages": 500_000,
        "message.timeout.ms": 60_000,  # a broker that dies mid-run fails lines within a minute
        "delivery.report.only.error": True,
        "logger": _rdkafka_log,  # librdkafka's own log lines go through logging, not raw stderr
    }
    conf.update(extra or {})
    return conf


def parse_kafka_option(text: str) -> tuple[str, str]:
    """"KEY=VALUE" -> (KEY, VALUE): a librdkafka property (e.g. security.protocol=SASL_SSL)."""
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise ValueError(f"expected KEY=VALUE (a librdkafka property), got {text!r}")
    return key.strip(), value


def check_kafka_options(options: dict[str, str]) -> None:
    """Raises ValueError with librdkafka's own words if the options are not a valid client configuration
    (unknown property, bad value, unreadable certificate). Builds a client without brokers: no network."""
    try:
        Producer({**options, "logger": _rdkafka_log})
    except KafkaException as exc:
        raise ValueError(f"bad --kafka-option: {exc.args[0].str()}") from None


class KafkaOptionAction(argparse.Action):
    """`--kafka-option KEY=VALUE`, repeatable, collected into a dict. The whole set is checked against
    librdkafka after parsing (check_kafka_options): options only make sense together (SASL_SSL + mechanism)."""

    def __call__(self, parser, namespace, values, option_string=None):  # type: ignore[no-untyped-def]
        options = dict(getattr(namespace, self.dest, None) or {})
        try:
            key, value = parse_kafka_option(values)
            options[key] = value
        except ValueError as exc:
            raise argparse.ArgumentError(self, str(exc)) from None
        setattr(namespace, self.dest, options)


def add_kafka_option_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--kafka-option", dest="kafka_options", metavar="KEY=VALUE", action=KafkaOptionAction,
                   default={}, help="a librdkafka property for every Kafka client (repeatable), e.g. "
                                    "security.protocol=SASL_SSL, sasl.mechanism=PLAIN, ssl.ca.location=ca.pem")


def check_broker(bootstrap: str, timeout: float = 10.0, extra: dict[str, Any] | None = None) -> AdminClient:
    """Returns an AdminClient once a broker answers; raises BrokerUnavailable with the start hint."""
    errors: list[str] = []
    conf: dict[str, Any] = {"bootstrap.servers": bootstrap, "logger": _rdkafka_log,
                            "error_cb": lambda e: errors.append(str(e)), **(extra or {})}
    admin = AdminClient(conf)
    try:
        admin.list_topics(timeout=timeout)
    except KafkaException as exc:
        detail = errors[-1] if errors else str(exc)
        raise BrokerUnavailable(f"{broker_hint(bootstrap)} ({detail})") from None
    return admin


def ensure_topic(admin: AdminClient, topic: str, partitions: int = 4, timeout: float = 10.0) -> bool:
    """Creates `topic` if the broker lacks it (one replica: a single-node broker). Returns True if created."""
    if topic in admin.list_topics(timeout=timeout).topics:
        return False
    futures = admin.create_topics([NewTopic(topic, num_partitions=partitions, replication_factor=1)],
                                  operation_timeout=timeout, request_timeout=timeout)
    try:
        futures[topic].result(timeout)
    except KafkaException as exc:
        if exc.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:  # someone else made it meanwhile
            raise
        return False
    log.info("created topic %s with %d partitions", topic, partitions)
    return True


class _Progress:
    """A rich live line on a terminal, a plain log line every few seconds otherwise."""

    def __init__(self, enabled: bool | None, summary: IngestSummary, every_s: float = 5.0) -> None:
        self.summary = summary
        self.tty = sys.stderr.isatty() if enabled is None else enabled and sys.stderr.isatty()
        self.plain = enabled is not False and not self.tty
        self.every_s = every_s
        self._start = self._last = time.monotonic()
        self._rich: Any = None
        if self.tty:
            from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
            self._rich = Progress(SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn(),
                                  transient=False, refresh_per_second=4)
            self._task = self._rich.add_task("")
            self._rich.start()

    def _line(self, records: int, delivered: int, failed: int) -> str:
        elapsed = max(time.monotonic() - self._start, 1e-9)
        return (f"{records:,} lines  {records / elapsed:,.0f} lines/s  delivered {delivered:,}  "
                f"failed {failed:,}  unparsed {self.summary.unparsed:,}")

    def update(self, records: int, delivered: int, failed: int) -> None:
        now = time.monotonic()
        if self._rich is not None:
            self._rich.update(self._task, description=self._line(records, delivered, failed))
        elif self.plain and now - self._last >= self.every_s:
            self._last = now
            print(f"ingest: {self._line(records, delivered, failed)}", file=sys.stderr, flush=True)

    def close(self) -> None:
        if self._rich is not None:
            self._rich.stop()


def run_ingest(paths: PathLike | Iterable[PathLike] = "-", bootstrap: str = DEFAULT_BOOTSTRAP,
               topic: str = DEFAULT_TOPIC, rate: float | None = None, labels_csv: PathLike | None = None,
               limit: int | None = None, progress: bool | None = None, *, connect_timeout: float = 10.0,
               compression: str = "lz4", partitions: int = 4, flush_timeout: float = 120.0,
               extra_config: dict[str, Any] | None = None) -> IngestSummary:
    """Reads `paths` (files, folders, *.gz, "-" for stdin), parses each line and produces it to
    `topic`. `rate` paces lines/s (None: as fast as possible); `limit` stops after that many lines;
    `labels_csv` (loghub anomaly_label.csv) fills LogRecord.label; `progress` None = a live display
    when stderr is a terminal, periodic log lines otherwise; False = quiet. Lines that do not parse
    are still produced (template "unknown") and counted. Raises BrokerUnavailable when no broker
    answers within `connect_timeout` seconds."""
    if compression not in COMPRESSIONS:
        raise ValueError(f"compression must be one of {', '.join(COMPRESSIONS)}")
    files = expand_paths(paths)  # a missing file fails now, not after connecting
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
    display = _Progress(progress, summary)
    produce, poll = producer.produce, producer.poll
    sent = nbytes = unparsed = rejected = 0
    tick = 1 if bucket is not None else 256  # paced runs are slow enough to poll every line
    started = next_update = time.monotonic()
    try:
        for record in iter_records(files, labels, stats) if limit is None or limit > 0 else ():
            if bucket is not None:
                bucket.take()
            value = record.SerializeToString()
            key = (record.block_ids[0] if record.block_ids else record.id).encode()
            if record.template_id == UNKNOWN_TEMPLATE:
                unparsed += 1
            while True:
                try:
                    produce(topic, value, key)
                    nbytes += len(value) + len(key)
                    break
                except BufferError:  # local queue full: let librdkafka drain it
                    poll(0.05)
                except KafkaException as exc:  # e.g. a line over message.max.bytes: count it, go on
                    rejected += 1
                    failures.first_error = failures.first_error or f"{record.id}: {exc.args[0].str()}"
                    break
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
        summary.seconds = time.monotonic() - started
        summary.lines_read, summary.blank, summary.bad_bytes = stats.lines, stats.blank_lines, stats.bad_bytes
        summary.unparsed, summary.bytes = unparsed, nbytes
        summary.failed = failures.count + rejected + remaining
        summary.produced = sent - summary.failed
        summary.first_error = failures.first_error or (f"{remaining} lines undelivered at exit" if remaining else "")
        display.update(sent, summary.produced, summary.failed)
        display.close()
    return summary


# ---- CLI glue (wired by clients/python/logmesh/cli.py) ------------------------------------------
def add_ingest_args(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Adds `logmesh ingest` options to `p` and sets func=run_ingest_cli."""
    p.description = p.description or ("Read HDFS logs (files, folders of *.log/*.gz, or stdin), parse each line "
                                      "into a LogRecord and produce it to Kafka as binary protobuf, keyed by block id.")
    p.add_argument("paths", nargs="*", default=["-"],
                   help="log files, folders (*.log, *.gz in name order) or '-' for stdin (default: stdin)")
    p.add_argument("--bootstrap", default=DEFAULT_BOOTSTRAP, help="Kafka bootstrap servers (default %(default)s)")
    p.add_argument("--topic", default=DEFAULT_TOPIC, help="topic to produce to (default %(default)s)")
    p.add_argument("--rate", type=float, default=None, help="lines per second (default: as fast as possible)")
    p.add_argument("--labels", default=None, help="loghub anomaly_label.csv: sets each record's ground-truth label")
    p.add_argument("--limit", type=int, default=None, help="stop after this many lines")
    p.add_argument("--compression", choices=COMPRESSIONS, default="lz4", help="Kafka compression (default %(default)s)")
    p.add_argument("--partitions", type=int, default=4, help="partitions if the topic must be created (default %(default)s)")
    p.add_argument("--connect-timeout", type=float, default=10.0,
                   help="seconds to wait for the broker before giving up (default %(default)s)")
    p.add_argument("--no-progress", dest="progress", action="store_false", default=None,
                   help="no live progress display or periodic progress lines")
    p.add_argument("--json", action="store_true", help="print the summary as JSON on stdout")
    add_kafka_option_arg(p)
    p.set_defaults(func=run_ingest_cli)
    return p


def run_ingest_cli(args: argparse.Namespace) -> int:
    """`logmesh ingest`: 0 when every line was delivered, 1 on delivery failures or no broker, 2 on bad input."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        check_kafka_options(getattr(args, "kafka_options", None) or {})
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    try:
        summary = run_ingest(args.paths, args.bootstrap, args.topic, args.rate, args.labels, args.limit,
                             args.progress, connect_timeout=args.connect_timeout,
                             compression=args.compression, partitions=args.partitions,
                             extra_config=getattr(args, "kafka_options", None) or None)
    except BrokerUnavailable as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except (FileNotFoundError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.json:
        import json
        print(json.dumps(summary.as_dict()))
    print(summary, file=sys.stderr)
    return 0 if summary.failed == 0 and not summary.interrupted else 1


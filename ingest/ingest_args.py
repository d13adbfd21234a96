"""`logmesh ingest`: its options, and the run that turns the summary into an exit code. The producer (and
with it the Kafka client) is imported only when the command runs, so `logmesh ingest --help` stays light."""
from __future__ import annotations

import argparse
import logging
import sys

from logmesh.ingest.kafka_options import (COMPRESSIONS, DEFAULT_BOOTSTRAP, DEFAULT_TOPIC, add_kafka_option_arg,
                                          check_kafka_options)


def add_ingest_args(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Adds `logmesh ingest` options to `p` and sets func=run_ingest_cli."""
    p.description = p.description or ("Read HDFS or BGL logs (files, folders of *.log/*.gz, or stdin), parse each "
                                      "line into a LogRecord and produce it to Kafka as binary protobuf, keyed by its "
                                      "session key (HDFS: block id; BGL: node id).")
    p.add_argument("paths", nargs="*", default=["-"],
                   help="log files, folders (*.log, *.gz in name order) or '-' for stdin (default: stdin)")
    p.add_argument("--bootstrap", default=DEFAULT_BOOTSTRAP, help="Kafka bootstrap servers (default %(default)s)")
    p.add_argument("--topic", default=DEFAULT_TOPIC, help="topic to produce to (default %(default)s)")
    p.add_argument("--rate", type=float, default=None, help="lines per second (default: as fast as possible)")
    p.add_argument("--labels", default=None, help="loghub anomaly_label.csv: sets each record's ground-truth label")
    p.add_argument("--format", choices=("auto", "hdfs", "bgl"), default="auto",
                   help="log family: hdfs (keyed by block id) or bgl (keyed by node id); default: detected from "
                        "the first file's lines (stdin: hdfs)")
    p.add_argument("--line-labels", action="store_true",
                   help="BGL: keep each line's label column in LogRecord.label / alert_category, for replay and "
                        "evaluation (no detector reads it); default: dropped")
    p.add_argument("--limit", type=int, default=None, help="stop after this many lines")
    p.add_argument("--compression", choices=COMPRESSIONS, default="lz4", help="Kafka compression (default %(default)s)")
    p.add_argument("--partitions", type=int, default=4, help="partitions if the topic must be created (default %(default)s)")
    p.add_argument("--connect-timeout", type=float, default=10.0,
                   help="seconds to wait for the broker before giving up (default %(default)s)")
    p.add_argument("--no-progress", dest="progress", action="store_false", default=None,
                   help="no live progress display or periodic progress lines")
    p.add_argument("--json", action="store_true", help="print the summary as JSON on stdout")
    from logmesh.runtime.tracing_args import add_trace_args
    add_trace_args(p)
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
    from logmesh.ingest.broker import BrokerUnavailable
    from logmesh.ingest.producer import run_ingest
    from logmesh.runtime import tracing
    try:
        tracing.setup("ingest", getattr(args, "trace", False), getattr(args, "trace_endpoint", None))
    except tracing.TracingError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    try:
        summary = run_ingest(args.paths, args.bootstrap, args.topic, args.rate, args.labels, args.limit,
                             args.progress, connect_timeout=args.connect_timeout,
                             compression=args.compression, partitions=args.partitions,
                             extra_config=getattr(args, "kafka_options", None) or None,
                             family=getattr(args, "format", "hdfs"), line_labels=getattr(args, "line_labels", False))
    except BrokerUnavailable as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except (FileNotFoundError, ValueError) as exc:  # UnknownFormat too
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.json:
        import json
        print(json.dumps(summary.as_dict()))
    print(summary, file=sys.stderr)
    return 0 if summary.failed == 0 and not summary.interrupted else 1

"""`logmesh ingest` (HDFS logs to Kafka) and `logmesh generate` (realistic labelled HDFS logs)."""
from __future__ import annotations

import argparse

from logmesh.cli.common import (POSITIVE, POSITIVE_FLOAT, POSITIVE_SECONDS, SECONDS, SHARE, number, retype)
from logmesh.cli.kafka_config import kafka_config_arg, read_kafka_config

# without --rate ingest goes as fast as it can; a rate of 0 or less would mean nothing
RATE = number(float, 1e-9, what="give lines per second above 0 (leave --rate out for full speed)")


def start_time(text: str) -> str:
    """--start as the generator reads it (datetime.fromisoformat), checked here so a bad one names its option;
    the text itself is kept: the generator parses it."""
    import datetime as dt
    try:
        dt.datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a time: give YYYY-MM-DD HH:MM:SS (UTC)") from None
    return text


def setup_ingest(p: argparse.ArgumentParser) -> None:
    from logmesh.ingest.ingest_args import add_ingest_args
    add_ingest_args(p)
    retype(p, {"--rate": RATE, "--limit": POSITIVE, "--partitions": POSITIVE, "--connect-timeout": POSITIVE_SECONDS})
    kafka_config_arg(p)
    run = p.get_default("func")

    def cmd_ingest(args: argparse.Namespace) -> int:
        read_kafka_config(args)
        return run(args)
    p.set_defaults(func=cmd_ingest)


def setup_generate(p: argparse.ArgumentParser) -> None:
    from logmesh.ingest.generator import add_generate_args
    add_generate_args(p)
    # 0 lines or blocks would write empty files and say nothing was wrong
    retype(p, {"--lines": POSITIVE, "--blocks": POSITIVE, "--anomaly-rate": SHARE,
               "--blocks-per-second": POSITIVE_FLOAT, "--delete-after": SECONDS, "--start": start_time})

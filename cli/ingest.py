"""`logmesh ingest` (HDFS logs to Kafka) and `logmesh generate` (realistic labelled HDFS logs)."""
from __future__ import annotations

import argparse

from logmesh.cli.kafka_config import kafka_config_arg, read_kafka_config


def setup_ingest(p: argparse.ArgumentParser) -> None:
    from logmesh.ingest.ingest_args import add_ingest_args
    add_ingest_args(p)
    kafka_config_arg(p)
    run = p.get_default("func")

    def cmd_ingest(args: argparse.Namespace) -> int:
        read_kafka_config(args)
        return run(args)
    p.set_defaults(func=cmd_ingest)


def setup_generate(p: argparse.ArgumentParser) -> None:
    from logmesh.ingest.generator import add_generate_args
    add_generate_args(p)

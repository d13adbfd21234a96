"""--kafka-config FILE (librdkafka properties, kcat -F's format), shared by `logmesh ingest` and `stream`:
credentials stay off the command line; the job also gets Spark's Java `sasl.jaas.config` derived from them."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from logmesh.cli.common import UserError


def kafka_config_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--kafka-config", metavar="FILE", default=None,
                   help="librdkafka properties, one KEY=VALUE per line (kcat -F's format, e.g. "
                        "deploy/k8s/kafka/make-secrets.sh's <principal>.properties): credentials stay off the "
                        "command line; --kafka-option wins over it. Keep it owner-only (chmod 600)")


SPARK_JAAS = {"SCRAM-SHA-256": "org.apache.kafka.common.security.scram.ScramLoginModule",
              "SCRAM-SHA-512": "org.apache.kafka.common.security.scram.ScramLoginModule",
              "PLAIN": "org.apache.kafka.common.security.plain.PlainLoginModule"}


def read_kafka_config(args: argparse.Namespace, spark: bool = False) -> None:
    """Merges --kafka-config into args.kafka_options (explicit --kafka-option wins); for the job, also Spark's
    Java `sasl.jaas.config` from sasl.username/password, unless --spark-kafka-option gives one."""
    if args.kafka_config:
        from logmesh.ingest.kafka_options import parse_kafka_option
        path = Path(args.kafka_config)
        try:
            lines = path.read_text().splitlines()
        except OSError as exc:
            raise UserError(f"cannot read --kafka-config {path}: {exc.strerror}; give a librdkafka properties "
                            "file (deploy/k8s/kafka/make-secrets.sh writes one per principal)") from None
        if path.stat().st_mode & 0o066:  # it holds a password
            print(f"warning: --kafka-config {path} can be read or changed by other users: chmod 600 {path}",
                  file=sys.stderr)
        options = {}
        for n, line in enumerate(lines, 1):
            if line.strip() and not line.lstrip().startswith("#"):
                try:
                    key, value = parse_kafka_option(line.strip())
                except ValueError as exc:
                    raise UserError(f"--kafka-config {path}, line {n}: {exc}") from None
                options[key] = value
        args.kafka_options = {**options, **(args.kafka_options or {})}
    o = args.kafka_options or {}
    if spark and "sasl.jaas.config" not in (args.spark_kafka_options or {}) and o.get("sasl.username") \
            and o.get("sasl.mechanism", "").upper() in SPARK_JAAS:
        args.spark_kafka_options = {**(args.spark_kafka_options or {}), "sasl.jaas.config": (
            f'{SPARK_JAAS[o["sasl.mechanism"].upper()]} required username="{o["sasl.username"]}" '
            f'password="{o.get("sasl.password", "")}";')}

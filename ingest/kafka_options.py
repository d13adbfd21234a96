"""The Kafka settings ingest and the job share: default broker and topic, the librdkafka producer settings,
and `--kafka-option KEY=VALUE` (parsed, collected, checked against librdkafka). Importing it loads no Kafka
client: only check_kafka_options does, when it runs."""
from __future__ import annotations

import argparse
import logging
from typing import Any

DEFAULT_BOOTSTRAP = "127.0.0.1:9092"
DEFAULT_TOPIC = "logmesh.logs"
COMPRESSIONS = ("lz4", "zstd", "snappy", "gzip", "none")
rdkafka_log = logging.getLogger("logmesh.ingest.rdkafka")  # librdkafka's own log lines, through logging


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
        "logger": rdkafka_log,  # librdkafka's own log lines go through logging, not raw stderr
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
    from confluent_kafka import KafkaException, Producer
    try:
        Producer({**options, "logger": rdkafka_log})
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

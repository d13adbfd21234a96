"""`logmesh stream`: the Spark Structured Streaming job. Spark is started only when the command runs."""
from __future__ import annotations

import argparse

from logmesh.cli.common import EMBEDDER_ADDRESS, PORT, SCORER_ADDRESS, Unreachable, UserError, retype
from logmesh.cli.kafka_config import kafka_config_arg, read_kafka_config


def cmd_stream(args: argparse.Namespace) -> int:
    from logmesh.runtime import logs
    from logmesh.streaming.job import run
    from logmesh.streaming.options import config_from_args
    logs.setup(args.log_level)
    read_kafka_config(args, spark=True)
    config = config_from_args(args)
    from logmesh.runtime.tracing import TracingError
    try:
        run(config)
    except TracingError as exc:
        raise UserError(str(exc)) from None
    except TimeoutError as exc:  # a service never became SERVING within the wait
        raise Unreachable(f"{exc}; start it, or point --embedder/--scorer at the running one") from None
    except OSError as exc:  # after TimeoutError, one of its subclasses
        if "--metrics-port" in str(exc):  # runtime.metrics.serve_metrics: the port is taken
            raise UserError(str(exc)) from None
        raise
    except RuntimeError as exc:
        if "already open" in str(exc):
            raise UserError(f"{exc}; the embedded vector store opens in one process at a time: stop the other "
                            "job or `logmesh similar`, or use a Qdrant server (--qdrant-url)") from None
        raise
    return 0


def setup(p: argparse.ArgumentParser) -> None:
    from logmesh.streaming.options import add_args  # light: no Spark, pandas or Kafka client
    add_args(p)
    # a URL or no port, a port out of range: one parser error, as `serve` gives
    retype(p, {"--embedder": EMBEDDER_ADDRESS, "--scorer": SCORER_ADDRESS, "--metrics-port": PORT})
    kafka_config_arg(p)
    p.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"],
                   help="least severe log lines written to stderr (default %(default)s)")
    p.set_defaults(func=cmd_stream)

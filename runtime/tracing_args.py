"""The tracing flags of `logmesh serve embedder|scorer`, `logmesh stream` and `logmesh ingest` (runtime/tracing.py
does the tracing): stdlib only, so a command's --help loads neither gRPC nor OpenTelemetry."""
from __future__ import annotations

import argparse


def add_trace_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--trace", action="store_true", default=False,
                   help="export OpenTelemetry traces of this process's part of each record's path (off by default; "
                        "also on when OTEL_TRACES_EXPORTER=otlp or console); needs the tracing extra")
    p.add_argument("--trace-endpoint", default=None, metavar="URL",
                   help="OTLP/gRPC collector for the traces, e.g. http://127.0.0.1:4317 (default: "
                        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT / OTEL_EXPORTER_OTLP_ENDPOINT, else localhost:4317)")

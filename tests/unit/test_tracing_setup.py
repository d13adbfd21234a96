"""Tracing's switch (runtime/tracing.py): off by default, and then OpenTelemetry is not even imported; on with
--trace or the standard OTEL_TRACES_EXPORTER; settings logmesh cannot serve are a clear error, not a
traceback. (The spans themselves: tests/integration/test_tracing.py.)"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from logmesh.runtime import tracing

LOGMESH = str(Path(sys.executable).with_name("logmesh"))
CLEAN = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}

OFF_PROBE = """
import sys
from logmesh.runtime import tracing
from logmesh.runtime.grpc_server import Server
from logmesh.ingest import producer
from logmesh.streaming import job, work
from logmesh.streaming.options import StreamConfig
import logmesh.cli
assert tracing.setup("probe") is False and not tracing.ON
server = Server([], 0)  # a server built with tracing off: no tracing interceptor
assert not job.work_settings(StreamConfig()).trace and "includeHeaders" not in job.kafka_source_options(StreamConfig())
server.stop(0)
loaded = sorted(m for m in sys.modules if m.startswith("opentelemetry"))
print(loaded)
assert not loaded, loaded
"""


def test_off_by_default_nothing_of_opentelemetry_is_imported() -> None:
    done = subprocess.run([sys.executable, "-c", OFF_PROBE], env={**CLEAN, "OTEL_EXPORTER_OTLP_ENDPOINT": "http://x:4317"},
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]


@pytest.mark.parametrize("env, flag, on", [
    ({}, False, False),
    ({}, True, True),
    ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4317"}, False, False),  # where to, not whether
    ({"OTEL_TRACES_EXPORTER": "none"}, False, False),
    ({"OTEL_TRACES_EXPORTER": "otlp"}, False, True),
    ({"OTEL_TRACES_EXPORTER": "console"}, False, True),
    ({"OTEL_TRACES_EXPORTER": "otlp", "OTEL_SDK_DISABLED": "true"}, False, False),
    ({"OTEL_SDK_DISABLED": "true"}, True, False),
])
def test_wanted(monkeypatch, env, flag, on) -> None:
    for k in [k for k in os.environ if k.startswith("OTEL_")]:
        monkeypatch.delenv(k)
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    assert tracing.wanted(flag) is on


@pytest.mark.parametrize("env, problem", [
    ({"OTEL_TRACES_EXPORTER": "zipkin"}, "OTEL_TRACES_EXPORTER='zipkin'"),
    ({"OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf"}, "OTLP/gRPC only"),
])
def test_settings_logmesh_cannot_serve_are_one_clear_error(env, problem, tmp_path) -> None:
    log = tmp_path / "x.log"
    log.write_text("081109 203518 143 INFO dfs.DataNode$DataXceiver: Receiving block blk_1 src: /1.2.3.4:5 dest: /1.2.3.4:6\n")
    for cmd in ([LOGMESH, "ingest", str(log), "--trace", "--no-progress", "--connect-timeout", "1"],
                [LOGMESH, "serve", "embedder", "--trace", "--port", str(_free_port())]):
        done = subprocess.run(cmd, env={**CLEAN, **env}, capture_output=True, text=True, timeout=60)
        assert done.returncode == 2 and problem in done.stderr and "Traceback" not in done.stderr, (cmd, done.stderr[-1500:])


def _free_port() -> int:
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_the_flags_are_on_each_traced_command() -> None:
    for cmd in (["serve", "embedder"], ["serve", "scorer"], ["stream"], ["ingest"]):
        done = subprocess.run([LOGMESH, *cmd, "--help"], env=CLEAN, capture_output=True, text=True, timeout=60)
        assert done.returncode == 0 and "--trace" in done.stdout and "--trace-endpoint" in done.stdout, cmd

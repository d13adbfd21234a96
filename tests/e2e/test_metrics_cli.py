"""`logmesh serve embedder --metrics-port`: a user's server exposes /metrics, Prometheus' text format, with
the calls it served; a taken metrics port is a one-line error, not a traceback. `logmesh stream --metrics-port`:
0 is any free port, named in the job's log, as for `serve`; a taken one is the same one-line error."""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from kafka_helpers import _free_port
from logmesh.client import EmbedderClient
from waiting import wait_for

LOGMESH = str(Path(sys.executable).with_name("logmesh"))


def _samples(url: str) -> dict[tuple[str, tuple], float]:
    with urllib.request.urlopen(url, timeout=10) as reply:
        text = reply.read().decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def test_a_served_embedder_exposes_its_calls_on_the_metrics_port(tmp_path):
    port, metrics = _free_port(), _free_port()
    proc = subprocess.Popen([LOGMESH, "serve", "embedder", "--port", str(port), "--metrics-port", str(metrics)],
                            stderr=open(tmp_path / "embedder.log", "w"))
    try:
        with EmbedderClient(f"127.0.0.1:{port}") as client:
            client.wait_until_serving(120)
            for _ in range(2):
                client.embed("Receiving block blk_1 src: /10.0.0.1:5000 dest: /10.0.0.2:50010")
        url = f"http://127.0.0.1:{metrics}/metrics"
        embed = (("grpc_code", "OK"), ("grpc_method", "Embed"), ("grpc_service", "logmesh.v1.EmbedderService"),
                 ("grpc_type", "unary"))
        samples = wait_for(lambda: (s := _samples(url)).get(("grpc_server_handled_total", embed)) == 2 and s,
                           30, "two Embed calls counted")
        assert samples[("logmesh_build_info", (("component", "embedder"),))] == 1
        assert samples[("logmesh_embedder_cache_lookups_total", (("result", "hit"),))] >= 1
    finally:
        proc.terminate()
        proc.wait(30)


def test_a_taken_metrics_port_is_a_one_line_error():
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        taken = holder.getsockname()[1]
        done = subprocess.run([LOGMESH, "serve", "embedder", "--port", str(_free_port()), "--metrics-port", str(taken)],
                              capture_output=True, text=True, timeout=60)
    assert done.returncode != 0 and "Traceback" not in done.stderr
    assert f"127.0.0.1:{taken}" in done.stderr and "--metrics-port" in done.stderr, done.stderr


def _stream(tmp_path: Path, metrics_port: int) -> list[str]:
    """The job's command line against services that are not there: it serves metrics before it starts Spark
    and waits for them, so nothing past the metrics server is reached before the test stops it."""
    return [LOGMESH, "stream", "--metrics-port", str(metrics_port), "--checkpoint", str(tmp_path / "checkpoint"),
            "--qdrant-path", str(tmp_path / "qdrant"), "--embedder", f"127.0.0.1:{_free_port()}",
            "--scorer", f"127.0.0.1:{_free_port()}", "--topic", "logmesh.test-stream-metrics-port"]


def _metrics_url(log: Path, proc: subprocess.Popen) -> str | None:
    for line in log.read_text().splitlines():
        if line.startswith("{") and (record := json.loads(line)).get("msg") == "metrics serving":
            return record["url"]
    assert proc.poll() is None, f"the job exited {proc.returncode}: {log.read_text()[-2000:]}"
    return None


def test_stream_on_metrics_port_0_serves_on_a_free_port_it_names(tmp_path):
    """It was refused ("1-65535") while `serve --metrics-port 0` meant any free port."""
    log = tmp_path / "stream.log"
    proc = subprocess.Popen(_stream(tmp_path, 0), stderr=open(log, "w"), stdout=subprocess.DEVNULL,
                            start_new_session=True)  # its own group: Spark's JVM, if it got that far, goes with it
    try:
        url = wait_for(lambda: _metrics_url(log, proc), 120, "the job's 'metrics serving' log line")
        port = int(url.rsplit(":", 1)[1].split("/")[0])
        assert url == f"http://127.0.0.1:{port}/metrics" and port != 0, url
        assert _samples(url)[("logmesh_build_info", (("component", "stream"),))] == 1
    finally:
        _stop_group(proc)


def _stop_group(proc: subprocess.Popen) -> None:
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:  # the job, and all it started, has exited
            break
        try:
            proc.wait(30)
            break
        except subprocess.TimeoutExpired:
            continue


def test_stream_on_a_taken_metrics_port_is_a_one_line_error(tmp_path):
    """Before Spark starts; the error said "--metrics-port (0: off)", and 0 is any free port."""
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        taken = holder.getsockname()[1]
        started = time.monotonic()
        done = subprocess.run(_stream(tmp_path, taken), capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr
    (line,) = [x for x in done.stderr.splitlines() if not x.startswith("{")]
    assert f"cannot serve metrics on 127.0.0.1:{taken}" in line and "--metrics-port (0: any free port)" in line, line
    assert time.monotonic() - started < 60  # no Spark start, no wait for the services

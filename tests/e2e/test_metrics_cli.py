"""`logmesh serve embedder --metrics-port`: a user's server exposes /metrics, Prometheus' text format, with
the calls it served; a taken metrics port is a one-line error, not a traceback."""
from __future__ import annotations

import socket
import subprocess
import sys
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

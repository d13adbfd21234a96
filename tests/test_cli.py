"""The `logmesh` console script and grpcurl against real server processes."""
from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from logmesh.client import EmbedderClient, ScorerClient

LOGMESH = str(Path(sys.executable).with_name("logmesh"))
LINE = ("081109 204655 556 INFO dfs.DataNode$PacketResponder: Received block blk_3587508140051953248 "
        "of size 67108864 from /10.251.42.84")
EXCEPTION_LINE = ("081109 214043 2561 INFO dfs.DataNode$DataXceiver: writeBlock blk_-3102267849859399193 "
                  "received exception java.io.IOException: Could not read from stream")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run(*args: str, stdin: str | None = None, check: bool = True) -> subprocess.CompletedProcess:
    done = subprocess.run([LOGMESH, *args], input=stdin, capture_output=True, text=True, timeout=120)
    if check and done.returncode != 0:
        raise AssertionError(f"logmesh {' '.join(args)} exited {done.returncode}: {done.stderr[-2000:]}")
    return done


@pytest.fixture(scope="module")
def services(trained_models, tmp_path_factory):
    """`logmesh serve embedder` and `logmesh serve scorer` as real processes."""
    logs = tmp_path_factory.mktemp("logs")
    ports = {"embedder": _free_port(), "scorer": _free_port()}
    embedder_address = f"127.0.0.1:{ports['embedder']}"
    procs = {
        "embedder": subprocess.Popen([LOGMESH, "serve", "embedder", "--port", str(ports["embedder"])],
                                     stderr=open(logs / "embedder.log", "w")),
        "scorer": subprocess.Popen([LOGMESH, "serve", "scorer", "--port", str(ports["scorer"]), "--model-dir",
                                    str(trained_models), "--embedder", embedder_address],
                                   stderr=open(logs / "scorer.log", "w")),
    }
    try:
        EmbedderClient(embedder_address).wait_until_serving(90)
        ScorerClient(f"127.0.0.1:{ports['scorer']}").wait_until_serving(30)
    except TimeoutError:
        for p in procs.values():
            p.kill()
        raise AssertionError("servers did not start: " + (logs / "embedder.log").read_text()[-2000:]
                             + (logs / "scorer.log").read_text()[-2000:])
    yield {"scorer": f"127.0.0.1:{ports['scorer']}", "embedder": embedder_address, "procs": procs, "logs": logs}
    for p in procs.values():
        if p.poll() is None:
            p.terminate()
            p.wait(30)


@pytest.mark.parametrize("command", [[], ["serve"], ["train"], ["score"], ["anomalies"], ["stats"], ["health"]])
def test_every_subcommand_explains_itself(command):
    out = run(*command, "--help").stdout
    assert out.startswith("usage: logmesh") and len(out.splitlines()) > 3


def test_score_prints_verdict_score_and_votes(services):
    out = run("score", "--scorer", services["scorer"], LINE).stdout
    assert out.startswith("NORMAL  score=") and "votes=0/5 anomaly" in out and "template=E9" in out
    assert "tfidf_sgd=" in out and "embedding_sgd=" in out


def test_score_reads_stdin_and_prints_json(services, data_dir):
    lines = (data_dir / "HDFS_2k.log").read_text(errors="replace").splitlines()[:50]
    out = run("score", "--json", "--scorer", services["scorer"], stdin="\n".join(lines)).stdout.splitlines()
    assert len(out) == 50
    assert all(json.loads(o)["verdict"] in ("VERDICT_NORMAL", "VERDICT_ANOMALY") for o in out)


def test_anomalies_stats_and_health(services):
    run("score", "--scorer", services["scorer"], EXCEPTION_LINE)
    listed = run("anomalies", "--scorer", services["scorer"]).stdout
    assert "blk_-3102267849859399193" in listed and "writeBlock" in listed
    stats = json.loads(run("stats", "--scorer", services["scorer"]).stdout)
    assert int(stats["linesScored"]) >= 1 and int(stats["lineAnomalies"]) >= 1 and stats["modelVersion"]
    health = run("health", "--scorer", services["scorer"], "--embedder", services["embedder"]).stdout
    assert health.count("SERVING") == 2


def test_a_client_error_says_what_to_do():
    done = run("score", "--scorer", f"127.0.0.1:{_free_port()}", LINE, check=False)
    assert done.returncode == 1 and "UNAVAILABLE" in done.stderr and "logmesh serve scorer" in done.stderr


def test_grpcurl_gets_invalid_argument_for_an_empty_line(services, grpcurl):
    """README's grpcurl commands themselves run in tests/test_readme.py; this is the error path they do not show."""
    bad = subprocess.run([grpcurl, "-plaintext", "-d", '{"item": {"raw_line": ""}}', services["scorer"],
                          "logmesh.v1.ScorerService/Score"], capture_output=True, text=True, timeout=30)
    assert bad.returncode != 0 and "InvalidArgument" in bad.stderr and "empty" in bad.stderr


def test_sigterm_stops_gracefully_with_a_log_line(services):
    """Runs last in this module: it stops the scorer process."""
    proc = services["procs"]["scorer"]
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(30) == 0
    log = [json.loads(l) for l in (services["logs"] / "scorer.log").read_text().splitlines() if l.startswith("{")]
    messages = [entry["msg"] for entry in log]
    assert "model loaded" in messages and "stopping" in messages and messages[-1] == "stopped"


def test_in_flight_calls_finish_during_a_graceful_stop(trained_models, stalling_embedder):
    """stop(grace) lets a slow in-flight call complete (the embedder behind it stalls 1 s per encode)."""
    import threading
    from logmesh.scorer.service import serve

    embedder = stalling_embedder(1.0)
    server = serve(0, trained_models, embedder.address, reload_interval=60)
    outcome: dict[str, object] = {}

    def call() -> None:
        with ScorerClient(server.address) as client:
            outcome["result"] = client.score_line(LINE)

    caller = threading.Thread(target=call)
    caller.start()
    time.sleep(0.3)  # the call is now waiting on the slow embedder
    server.stop(grace=5)
    caller.join(10)
    assert outcome["result"].model_version

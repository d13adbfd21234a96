"""The `logmesh` console script and grpcurl against real server processes."""
from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from logmesh.client import EmbedderClient, ScorerClient

LOGMESH = str(Path(sys.executable).with_name("logmesh"))
LINE = ("081109 204655 556 INFO dfs.DataNode$PacketResponder: Received block blk_3587508140051953248 "
        "of size 67108864 from /10.251.42.84")
EXCEPTION_LINE = ("081109 214043 2561 INFO dfs.DataNode$DataXceiver: writeBlock blk_-3102267849859399193 "
                  "received exception java.io.IOException: Could not read from stream")


from kafka_helpers import _free_port  # noqa: E402  (tests/ is on the path)
from waiting import wait_for  # noqa: E402


def run(*args: str, stdin: str | None = None, check: bool = True) -> subprocess.CompletedProcess:
    done = subprocess.run([LOGMESH, *args], input=stdin, capture_output=True, text=True, timeout=120)
    if check and done.returncode != 0:
        raise AssertionError(f"logmesh {' '.join(args)} exited {done.returncode}: {done.stderr[-2000:]}")
    return done


@pytest.fixture(scope="module")
def services(trained_models, tmp_path_factory, admin):
    """`logmesh serve embedder` and `logmesh serve scorer` as real processes; the scorer's history reads a fresh
    anomalies topic (what the streaming job writes)."""
    from anomaly_topic import fresh_topic
    topic = fresh_topic(admin, "t-cli")
    logs = tmp_path_factory.mktemp("logs")
    ports = {"embedder": _free_port(), "scorer": _free_port()}
    embedder_address = f"127.0.0.1:{ports['embedder']}"
    procs = {
        "embedder": subprocess.Popen([LOGMESH, "serve", "embedder", "--port", str(ports["embedder"])],
                                     stderr=open(logs / "embedder.log", "w")),
        "scorer": subprocess.Popen([LOGMESH, "serve", "scorer", "--port", str(ports["scorer"]), "--model-dir",
                                    str(trained_models), "--embedder", embedder_address, "--anomalies-topic", topic,
                                    "--state-dir", str(logs / "state")], stderr=open(logs / "scorer.log", "w")),
    }
    try:
        EmbedderClient(embedder_address).wait_until_serving(90)
        ScorerClient(f"127.0.0.1:{ports['scorer']}").wait_until_serving(30)
    except TimeoutError:
        for p in procs.values():
            p.kill()
        raise AssertionError("servers did not start: " + (logs / "embedder.log").read_text()[-2000:]
                             + (logs / "scorer.log").read_text()[-2000:])
    yield {"scorer": f"127.0.0.1:{ports['scorer']}", "embedder": embedder_address, "procs": procs, "logs": logs,
           "topic": topic}
    for p in procs.values():
        if p.poll() is None:
            p.terminate()
            p.wait(30)


@pytest.mark.parametrize("command", [[], ["serve"], ["serve", "embedder"], ["serve", "scorer"], ["train"], ["score"],
                                     ["evaluate"], ["anomalies"], ["tail"], ["stats"], ["health"], ["similar"],
                                     ["ingest"], ["generate"], ["stream"]])
def test_every_subcommand_explains_itself(command):
    out = run(*command, "--help").stdout
    assert out.startswith("usage: logmesh") and len(out.splitlines()) > 3


def _parsers(parser, path=("logmesh",)):
    """Every (sub)parser of the CLI with its command path."""
    import argparse
    yield path, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _parsers(sub, (*path, name))


def test_every_command_and_option_has_help_text():
    import argparse
    from logmesh.cli import build_parser
    missing = []
    for path, parser in _parsers(build_parser()):
        if len(path) > 1 and not parser.description:
            missing.append(" ".join(path))
        missing += [f"{' '.join(path)} {a.option_strings or a.dest}" for a in parser._actions
                    if not isinstance(a, argparse._HelpAction) and (not a.help or a.help == argparse.SUPPRESS)]
    assert not missing, missing


def test_every_option_with_a_default_shows_it_in_its_help():
    """A value the user did not give is stated in --help: "(default X)", "default: ..." or argparse's %(default)s."""
    import argparse
    from logmesh.cli import build_parser
    silent = []
    for path, parser in _parsers(build_parser()):
        for a in parser._actions:
            if isinstance(a, (argparse._HelpAction, argparse._SubParsersAction)) or not a.option_strings:
                continue
            if a.default in (None, False, "", [], {}) or a.const is False:  # nothing given means off or unset
                continue
            if "default" not in (a.help or "").lower():
                silent.append(f"{' '.join(path)} {'/'.join(a.option_strings)} (default {a.default!r})")
    assert not silent, silent


def test_serve_embedder_help_lists_only_embedder_options():
    embedder, scorer = run("serve", "embedder", "--help").stdout, run("serve", "scorer", "--help").stdout
    for option in ("--model-dir", "--embedder", "--reload-interval", "--kafka-bootstrap", "--dlq-topic"):
        assert option not in embedder and option in scorer, option
    for option in ("--threads",):
        assert option in embedder and option not in scorer, option
    for both in ("--port", "--host", "--max-batch", "--token-file", "--grace"):
        assert both in embedder and both in scorer, both


def test_port_0_means_any_free_port_in_every_server_help():
    for service, default in (("embedder", 50051), ("scorer", 50052), ("console", 8080)):
        out = " ".join(run("serve", service, "--help").stdout.split())
        assert "0: any free port, named in the" in out and f"(default {default})" in out, (service, out)


@pytest.mark.parametrize("service", ["embedder", "scorer"])
def test_serve_on_port_0_listens_on_a_free_port_and_names_it(service, tmp_path):
    """`--port 0` is any free port the OS picks, as for `serve console`, named in the 'listening' log line; it
    used to mean the service's default port. Without --port the default stays."""
    from grpc_health.v1 import health_pb2, health_pb2_grpc
    from logmesh.cli import build_parser
    default = {"embedder": 50051, "scorer": 50052}[service]
    extra = [] if service == "embedder" else ["--model-dir", str(tmp_path / "models"), "--anomalies-topic", "",
                                              "--feedback-topic", "", "--incidents-topic", "", "--state-dir", ""]
    log = tmp_path / "server.log"
    with open(log, "w") as stderr:
        proc = subprocess.Popen([LOGMESH, "serve", service, "--port", "0", *extra], stderr=stderr)
    try:
        def listening():  # type: ignore[no-untyped-def]
            assert proc.poll() is None, log.read_text()[-2000:]
            lines = [json.loads(x) for x in log.read_text().splitlines() if x.startswith("{") and x.endswith("}")]
            return next((x for x in lines if x["msg"] == f"{service} listening"), None)
        address = wait_for(listening, 60, f"the {service}'s 'listening' log line")["address"]
        host, port = address.rsplit(":", 1)
        assert host == "127.0.0.1" and int(port) not in (0, default), address
        import grpc
        with grpc.insecure_channel(address) as channel:  # a gRPC server answers there, serving or not yet
            reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=10)
        assert reply.status in (health_pb2.HealthCheckResponse.SERVING, health_pb2.HealthCheckResponse.NOT_SERVING)
    finally:
        proc.terminate()
        proc.wait(30)
    assert build_parser("serve").parse_args(["serve", service]).port == default


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
    from anomaly_topic import AnomalyWriter
    from logmesh.v1 import score_pb2
    from waiting import wait_for
    run("score", "--scorer", services["scorer"], EXCEPTION_LINE)
    with ScorerClient(services["scorer"]) as scorer:  # the job writes the failing line's verdict to the topic
        AnomalyWriter(services["topic"]).write([score_pb2.Anomaly(line=scorer.score_line(EXCEPTION_LINE))])
    listed = wait_for(lambda: (out := run("anomalies", "--scorer", services["scorer"]).stdout) and "writeBlock" in out
                      and out, what="logmesh anomalies to show what the job wrote")
    assert "blk_-3102267849859399193" in listed and "writeBlock" in listed
    stats = json.loads(run("stats", "--scorer", services["scorer"]).stdout)
    # the proto's own field names, as grpcurl prints them
    assert int(stats["lines_scored"]) >= 1 and int(stats["line_anomalies"]) >= 1 and stats["model_version"]
    assert "latency_p99_ms" in stats and "linesScored" not in stats
    health = run("health", "--scorer", services["scorer"], "--embedder", services["embedder"]).stdout
    assert health.count(" SERVING") == 2


def test_health_checks_the_embedder_the_scorer_uses(services):
    """The services' embedder is not on the default port: without --embedder, health asks the scorer."""
    assert services["embedder"] != "127.0.0.1:50051"
    health = run("health", "--scorer", services["scorer"]).stdout.splitlines()
    (line,) = [x for x in health if x.startswith("embedder")]
    assert services["embedder"] in line and " SERVING" in line and "the scorer's embedder" in line, health


def test_score_warns_about_a_line_that_is_not_hdfs(services):
    syslog = "Dec  1 08:00:00 myhost sshd[123]: Accepted publickey for root from 10.0.0.1 port 22 ssh2"
    done = run("score", "--scorer", services["scorer"], syslog)
    assert "template=unknown" in done.stdout
    assert "did not parse as an HDFS log line (template unknown)" in done.stderr, done.stderr
    assert "warning" not in run("score", "--scorer", services["scorer"], LINE).stderr


def test_a_client_error_says_what_to_do():
    done = run("score", "--scorer", f"127.0.0.1:{_free_port()}", LINE, check=False)
    assert done.returncode == 1 and "UNAVAILABLE" in done.stderr and "logmesh serve scorer" in done.stderr


def test_grpcurl_gets_invalid_argument_for_an_empty_line(services, grpcurl):
    """README's grpcurl commands themselves run in tests/e2e/test_readme.py; this is the error path they do not show."""
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
    # the call is in the server (waiting on the slow embedder) before the stop begins
    wait_for(lambda: server.admission.unary_calls_in_server() >= 1 or None, 30, "the call to reach the scorer",
             every=0.01)
    server.stop(grace=5)
    caller.join(10)
    assert outcome["result"].model_version

"""README.md's grpcurl commands, run exactly as written (bash, grpcurl on PATH) against `logmesh serve embedder` and
`logmesh serve scorer` started on their documented default ports, 50051 and 50052."""
from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from logmesh.client import EmbedderClient, ScorerClient

REPO = Path(__file__).resolve().parents[2]
LOGMESH = str(Path(sys.executable).with_name("logmesh"))
PORTS = {"embedder": 50051, "scorer": 50052}
EXCEPTION_LINE = ("081109 214043 2561 INFO dfs.DataNode$DataXceiver: writeBlock blk_-3102267849859399193 received "
                  "exception java.io.IOException: Could not read from stream")
BEGIN, END = "<!-- grpcurl-commands", "<!-- /grpcurl-commands -->"


def readme_commands() -> list[str]:
    """The command lines of README.md's marked grpcurl block, backslash continuations joined, comments dropped."""
    text = (REPO / "README.md").read_text()
    assert text.count(BEGIN) == 1 and text.count(END) == 1, f"README.md needs one {BEGIN} ... {END} block"
    block = text[text.index(BEGIN):text.index(END)]
    fenced = re.search(r"```bash\n(.*?)```", block, re.S)
    assert fenced, "the marked block holds no ```bash fence"
    commands, current = [], ""
    for line in fenced.group(1).splitlines():
        if not current and (not line.strip() or line.lstrip().startswith("#")):
            continue
        current += line[:-1] if line.endswith("\\") else line
        if not line.endswith("\\"):
            commands.append(current)
            current = ""
    assert not current, "the block ends inside a continued line"
    return commands


def _port_is_free(port: int) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


@pytest.fixture(scope="module")
def default_servers(trained_models, tmp_path_factory, admin):
    """The two servers on the ports the README's commands use (no --port: the defaults are what is documented).
    The scorer's history reads a fresh anomalies topic, where the failing line's verdict is written as the
    streaming job writes it (scoring records nothing), so ListAnomalies has it to show."""
    from anomaly_topic import AnomalyWriter, fresh_topic
    from logmesh.v1 import score_pb2
    topic = fresh_topic(admin, "t-readme")
    taken = [f"{name} port {port}" for name, port in PORTS.items() if not _port_is_free(port)]
    if taken:
        pytest.fail(f"{' and '.join(taken)} already in use on 127.0.0.1 (another `logmesh serve`, or a demo: "
                    "`make down`); the README's grpcurl commands name the default ports, so this test needs them free")
    logs = tmp_path_factory.mktemp("readme-logs")
    procs = [subprocess.Popen([LOGMESH, "serve", "embedder"], stderr=open(logs / "embedder.log", "w")),
             subprocess.Popen([LOGMESH, "serve", "scorer", "--model-dir", str(trained_models), "--anomalies-topic",
                               topic, "--state-dir", str(logs / "state")], stderr=open(logs / "scorer.log", "w"))]
    try:
        EmbedderClient(f"127.0.0.1:{PORTS['embedder']}").wait_until_serving(120)
        ScorerClient(f"127.0.0.1:{PORTS['scorer']}").wait_until_serving(60)
    except TimeoutError:
        for p in procs:
            p.kill()
        raise AssertionError("servers did not start: " + (logs / "embedder.log").read_text()[-2000:]
                             + (logs / "scorer.log").read_text()[-2000:])
    with ScorerClient(f"127.0.0.1:{PORTS['scorer']}") as scorer:
        failing = scorer.score_line(EXCEPTION_LINE)
        AnomalyWriter(topic).write([score_pb2.Anomaly(line=failing)])
        deadline = time.monotonic() + 60
        while not scorer.anomalies(page_size=1).anomalies:
            assert time.monotonic() < deadline, "the scorer's history did not read the anomalies topic"
            time.sleep(0.5)
    yield
    for p in procs:
        p.terminate()
    for p in procs:
        p.wait(30)


def _scored(out: dict, verdict: str) -> None:
    result = out["result"]
    assert result["verdict"] == verdict and len(result["votes"]) == 5 and result["model_version"]


def _listed(out: dict) -> None:
    anomalies = out["anomalies"]
    assert 1 <= len(anomalies) <= 5
    newest = anomalies[0]
    assert int(newest["id"]) >= 1 and newest["recorded_time"]
    line = newest["line"]
    assert line["verdict"] == "VERDICT_ANOMALY" and "writeBlock" in line["message"]
    assert line["anomaly_votes"] >= 3 and len(line["votes"]) == 5 and line["block_ids"] == ["blk_-3102267849859399193"]


def _services(*names: str):
    return lambda out: set(names) <= set(out.split())


#: What each README command must print, by a pattern on the command itself. Every command is checked.
EXPECT = [
    (r"localhost:50052 list$", "text", _services("logmesh.v1.ScorerService", "grpc.health.v1.Health")),
    (r"localhost:50051 list$", "text", _services("logmesh.v1.EmbedderService", "grpc.health.v1.Health")),
    (r"PacketResponder: Received block .*ScorerService/Score$", "json", lambda out: _scored(out, "VERDICT_NORMAL")),
    (r"writeBlock .* received exception .*ScorerService/Score$", "json", lambda out: _scored(out, "VERDICT_ANOMALY")),
    (r"ScorerService/ListAnomalies$", "json", _listed),
    (r"logmesh.v1.ScorerService\"}' localhost:50052 grpc.health.v1.Health/Check$", "json",
     lambda out: out == {"status": "SERVING"}),
    (r"logmesh.v1.EmbedderService\"}' localhost:50051 grpc.health.v1.Health/Check$", "json",
     lambda out: out == {"status": "SERVING"}),
]


def test_the_readme_block_is_what_this_test_checks():
    commands = readme_commands()
    assert len(commands) == len(EXPECT)
    for command in commands:
        assert command.startswith("grpcurl -plaintext "), command
        assert sum(bool(re.search(p, command)) for p, _, _ in EXPECT) == 1, \
            f"no single expectation in {__file__} matches README command: {command}"


def test_every_readme_grpcurl_command_runs_as_written(default_servers, grpcurl):
    env = {**os.environ, "PATH": f"{Path(grpcurl).parent}{os.pathsep}{os.environ['PATH']}"}
    for command in readme_commands():
        done = subprocess.run(["bash", "-c", command], capture_output=True, text=True, timeout=60, env=env)
        assert done.returncode == 0, f"README command failed ({done.returncode}): {command}\n{done.stderr}"
        [(_, kind, check)] = [e for e in EXPECT if re.search(e[0], command)]
        out = json.loads(done.stdout) if kind == "json" else done.stdout
        assert check(out) is not False, f"unexpected output of README command {command}:\n{done.stdout}"

"""The CLI imports only what the command that runs needs: `logmesh score LINE` and every command's --help load
neither Spark, pandas, Kafka's client, torch, scikit-learn nor ONNX Runtime (issue 18, item 4). Each case is a
fresh interpreter, so one command's imports cannot hide another's."""
from __future__ import annotations

import json
import socket
import subprocess
import sys

import pytest

HEAVY = ("pyspark", "pandas", "confluent_kafka", "torch", "sklearn", "onnxruntime")
LINE = ("081109 204655 556 INFO dfs.DataNode$PacketResponder: Received block blk_3587508140051953248 "
        "of size 67108864 from /10.251.42.84")
HELP = [["--help"], ["serve", "--help"], ["serve", "embedder", "--help"], ["serve", "scorer", "--help"],
        ["train", "--help"], ["evaluate", "--help"], ["score", "--help"], ["anomalies", "--help"],
        ["tail", "--help"], ["stats", "--help"], ["ingest", "--help"], ["generate", "--help"],
        ["similar", "--help"], ["health", "--help"]]

# Runs logmesh.cli.main as the console script does, then prints which heavy modules it loaded and its exit code.
PROBE = """
import json, sys
from logmesh.cli import main
try:
    code = main(sys.argv[1:])
except SystemExit as exc:
    code = exc.code
print(json.dumps({"code": code, "loaded": sorted(m for m in %r if m in sys.modules)}), file=sys.__stderr__)
""" % (HEAVY,)


def _loaded(argv: list[str]) -> tuple[int, list[str], str]:
    done = subprocess.run([sys.executable, "-c", PROBE, *argv], capture_output=True, text=True, timeout=60)
    report = json.loads(done.stderr.strip().splitlines()[-1])
    return report["code"], report["loaded"], done.stdout + done.stderr


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # nothing listens there once the socket closes


@pytest.mark.parametrize("argv", HELP, ids=" ".join)
def test_help_loads_nothing_heavy(argv):
    code, loaded, output = _loaded(argv)
    assert code == 0 and "usage: logmesh" in output, output
    assert loaded == [], f"`logmesh {' '.join(argv)}` imported {loaded}"


def test_stream_help_loads_nothing_heavy():
    code, loaded, output = _loaded(["stream", "--help"])
    assert code == 0 and loaded == [], loaded


def test_score_a_line_loads_nothing_heavy():
    """The whole `logmesh score LINE` path up to the call: parser, security, client, the RPC (no scorer listens,
    so it ends UNAVAILABLE, exit 1, with the hint)."""
    code, loaded, output = _loaded(["score", LINE, "--scorer", f"127.0.0.1:{_closed_port()}", "--timeout", "5"])
    assert code == 1 and "UNAVAILABLE" in output and "Traceback" not in output, output
    assert loaded == [], loaded

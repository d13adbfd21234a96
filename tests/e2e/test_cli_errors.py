"""User mistakes at the `logmesh` command line: each one ends with one `error:` line that says what is wrong
and what to do, exit code 2, and no traceback. Every case runs the real console script in a subprocess; none
needs a server (the mistakes are found before any call), so the table runs in seconds."""
from __future__ import annotations

import contextlib
import logging
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

LOGMESH = str(Path(sys.executable).with_name("logmesh"))
LINE = ("081109 204655 556 INFO dfs.DataNode$PacketResponder: Received block blk_3587508140051953248 "
        "of size 67108864 from /10.251.42.84")


def _run(args: list[str], stdin: str = "", env: dict | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, **(env or {})}
    env.pop("LOGMESH_DEBUG", None)
    return subprocess.run([LOGMESH, *args], input=stdin, capture_output=True, text=True, timeout=120, env=env)


def _labels_only(tmp: Path) -> list[str]:
    (tmp / "data").mkdir()
    (tmp / "data/anomaly_label.csv").write_text("BlockId,Label\nblk_1,Normal\n")
    return ["train", "--data", str(tmp / "data"), "--out", str(tmp / "models")]


def _out_is_a_file(tmp: Path) -> list[str]:
    (tmp / "data").mkdir()
    (tmp / "data/anomaly_label.csv").write_text("BlockId,Label\nblk_1,Normal\n")
    (tmp / "data/HDFS.log").write_text(LINE.replace("blk_3587508140051953248", "blk_1") + "\n")
    (tmp / "models").write_text("not a folder")
    return ["train", "--data", str(tmp / "data"), "--out", str(tmp / "models")]


def _log(tmp: Path) -> str:
    (tmp / "HDFS.log").write_text(LINE + "\n")
    return str(tmp / "HDFS.log")


def _not_labels(tmp: Path) -> list[str]:
    return ["evaluate", "--model-dir", str(tmp), "--logs", _log(tmp), "--labels", _log(tmp)]


def _bad_label_row(tmp: Path) -> list[str]:
    (tmp / "anomaly_label.csv").write_text("\ufeffBlockId,Label\r\nblk_1,Normal\r\nblk_2,Maybe\r\n")  # BOM, CRLF: fine
    return ["evaluate", "--model-dir", str(tmp), "--logs", _log(tmp), "--labels", str(tmp / "anomaly_label.csv")]


def _empty_token_file(tmp: Path) -> list[str]:
    (tmp / "tokens").write_text("# no tokens here\n")
    return ["serve", "embedder", "--port", "0", "--token-file", str(tmp / "tokens")]


def _bad_kafka_config(tmp: Path) -> list[str]:
    (tmp / "ingest.properties").write_text("security.protocol=SASL_PLAINTEXT\nsasl.username ingest\n")
    (tmp / "ingest.properties").chmod(0o600)
    return ["ingest", "--kafka-config", str(tmp / "ingest.properties"), _log(tmp)]


# id: (argv builder, stdin, what the one error line must say: the problem and the way out)
CASES = {
    "train: labels but no logs": (_labels_only, "", ["no raw *.log file", "put the HDFS logs"]),
    "train: no such folder": (lambda t: ["train", "--data", str(t / "nowhere")], "",
                              ["--data", "no such folder", "give a folder of labelled logs"]),
    "train: --data is a file": (lambda t: ["train", "--data", _log(t)], "",
                                ["is a file, not a folder", "give a folder of labelled logs"]),
    "train: a folder without labels": (lambda t: ["train", "--data", str(t)], "",
                                       ["has no anomaly_label.csv", "point --data at"]),
    "feedback list: a submit option": (lambda t: ["feedback", "list", "--label", "normal"], "",
                                       ["--label belongs to submitting a label", "`logmesh feedback list` takes"]),
    "train: --out is a file": (_out_is_a_file, "", ["--out", "give a folder you can write to"]),
    "similar: no store yet (line)": (lambda t: ["similar", "--qdrant-path", str(t / "q"), LINE], "",
                                     ["no vector store at", "run the job first"]),
    "similar: no store yet (block)": (lambda t: ["similar", "--qdrant-path", str(t / "q"), "--block", "blk_1"], "",
                                      ["no vector store at", "run the job first"]),
    "similar: neither line nor block": (lambda t: ["similar", "--qdrant-path", str(t)], "",
                                        ["give a log line or --block"]),
    "evaluate: missing labels file": (lambda t: ["evaluate", "--model-dir", str(t), "--logs", _log(t),
                                                 "--labels", str(t / "anomaly_label.csv")], "",
                                      ["--labels", "no such file", "give the anomaly_label.csv"]),
    "evaluate: labels file is not BlockId,Label": (_not_labels, "", ["is not a labels file", "'BlockId,Label'"]),
    "evaluate: a bad row in the labels file": (_bad_label_row, "", ["--labels", "anomaly_label.csv, line 3",
                                                                   "expected '<block id>,Normal' or '<block id>,Anomaly'",
                                                                   "'blk_2,Maybe'"]),
    "evaluate: missing log": (lambda t: ["evaluate", "--logs", str(t / "HDFS.log"), "--labels", str(t)], "",
                              ["--logs", "no such file or folder", "give a raw HDFS log"]),
    "score: nothing on stdin": (lambda t: ["score"], "", ["no log lines to score", "give them as arguments"]),
    "score: an empty line argument": (lambda t: ["score", ""], "", ["is empty", "give raw HDFS log lines"]),
    "score: unreadable --tls-ca": (lambda t: ["score", "--tls-ca", str(t / "ca.pem"), LINE], "",
                                   ["cannot read", "ca.pem", "give a readable PEM file"]),
    "serve: plaintext on a public address": (lambda t: ["serve", "scorer", "--host", "0.0.0.0"], "",
                                             ["refusing to serve plaintext", "--tls-cert"]),
    "serve: missing token file": (lambda t: ["serve", "scorer", "--token-file", str(t / "tokens")], "",
                                  ["cannot read token file", "tokens"]),
    "serve: token file without tokens": (_empty_token_file, "", ["holds no token", "one token per line"]),
    "ingest: unreadable --kafka-config": (lambda t: ["ingest", "--kafka-config", str(t / "ingest.properties"),
                                                     _log(t)], "", ["cannot read --kafka-config", "make-secrets.sh"]),
    "ingest: a --kafka-config line without =": (_bad_kafka_config, "", ["line 2", "expected KEY=VALUE"]),
    "serve: --model-dir is a file": (lambda t: ["serve", "scorer", "--port", "0", "--model-dir", _log(t)], "",
                                     ["--model-dir", "is a file, not a folder", "logmesh train --out"]),
}


@pytest.mark.parametrize("case", list(CASES))
def test_a_user_mistake_gets_one_line_and_exit_2(case, tmp_path):
    build, stdin, wanted = CASES[case]
    done = _run(build(tmp_path), stdin)
    lines = [line for line in done.stderr.splitlines() if not line.startswith("{")]  # server log lines are JSON
    assert "Traceback" not in done.stderr, done.stderr
    assert done.returncode == 2, (done.returncode, done.stderr)
    assert len(lines) == 1 and lines[0].startswith("error: "), done.stderr
    for text in wanted:
        assert text in lines[0], (text, lines[0])


def test_similar_while_the_job_holds_the_store(tmp_path):
    """The embedded store is locked by the process that has it open (here this test, as the job would)."""
    from logmesh.streaming.vector_store import open_store
    store = open_store(path=str(tmp_path / "q"), ensure=True)
    try:
        for args in (["--block", "blk_1"], [LINE]):
            done = _run(["similar", "--qdrant-path", str(tmp_path / "q"), *args])
            assert "Traceback" not in done.stderr and "WouldBlock" not in done.stderr, done.stderr
            assert done.returncode == 2 and done.stderr.count("\n") == 1, done.stderr
            assert "in use by another process" in done.stderr and "stop the job" in done.stderr
    finally:
        store.close()
    done = _run(["similar", "--qdrant-path", str(tmp_path / "q"), "--block", "blk_1"])  # free again: it opens
    assert done.returncode == 1 and "not in the store" in done.stderr, done.stderr


def test_serve_on_a_taken_port(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = str(taken.getsockname()[1])
        for args in (["embedder"], ["scorer", "--model-dir", str(tmp_path)]):
            done = _run(["serve", *args, "--port", port])
            assert "Traceback" not in done.stderr and done.returncode == 2, done.stderr
            (line,) = [x for x in done.stderr.splitlines() if not x.startswith("{")]
            assert line.startswith(f"error: cannot listen on 127.0.0.1:{port}") and "pick another --port" in line


@pytest.mark.parametrize("args, wanted", [
    (["anomalies", "--limit", "-1"], "argument --limit: -1 is out of range"),
    (["anomalies", "--min-score", "2"], "argument --min-score: 2 is out of range: scores lie in [0, 1]"),
    (["similar", "--limit", "0", LINE], "argument --limit: 0 is out of range"),
    (["serve", "scorer", "--port", "70000"], "argument --port: 70000 is out of range"),
    (["score", "--timeout", "soon", LINE], "argument --timeout: 'soon' is not a number"),
    (["serve"], "the following arguments are required: SERVICE"),
    (["serve", "embedder", "--port", "-1"], "argument --port: -1 is out of range: a TCP port is 0..65535 (0: any free port)"),
    (["generate", "--lines", "0"], "argument --lines: 0 is out of range: give a whole number of at least 1"),
    (["generate", "--lines", "-3"], "argument --lines: -3 is out of range: give a whole number of at least 1"),
    (["generate", "--blocks", "0"], "argument --blocks: 0 is out of range: give a whole number of at least 1"),
    (["generate", "--anomaly-rate", "2"], "argument --anomaly-rate: 2 is out of range: a share lies in [0, 1]"),
    (["generate", "--blocks-per-second", "0"], "argument --blocks-per-second: 0 is out of range: give a number above 0"),
    (["ingest", "--rate", "-5"], "argument --rate: -5 is out of range: give lines per second above 0 (leave --rate "
                                 "out for full speed)"),
    (["ingest", "--rate", "0"], "argument --rate: 0 is out of range: give lines per second above 0"),
    (["ingest", "--rate", "fast"], "argument --rate: 'fast' is not a number"),
    (["ingest", "--limit", "0"], "argument --limit: 0 is out of range: give a whole number of at least 1"),
    (["ingest", "--partitions", "0"], "argument --partitions: 0 is out of range: give a whole number of at least 1"),
    (["generate", "--start", "yesterday"], "argument --start: 'yesterday' is not a time: give YYYY-MM-DD HH:MM:SS (UTC)"),
    (["score", "--scorer", "http://127.0.0.1:50052", LINE],
     "argument --scorer: 'http://127.0.0.1:50052' is a URL: give the server's HOST:PORT, e.g. 127.0.0.1:50052"),
    (["stats", "--scorer", "localhost"], "argument --scorer: 'localhost' has no port: give HOST:PORT, e.g. localhost:50052"),
    (["health", "--embedder", "https://10.0.0.5:50051"], "argument --embedder: 'https://10.0.0.5:50051' is a URL"),
    (["stream", "--scorer", "https://scorer:50052"], "argument --scorer: 'https://scorer:50052' is a URL"),
    (["stream", "--metrics-port", "-1"], "argument --metrics-port: -1 is out of range: a TCP port is 0..65535 "
                                         "(0: any free port)"),
    (["health", "--timeout", "0"], "argument --timeout: 0 is out of range: give seconds as a number above 0"),
    (["serve", "scorer", "--embedder", "embedder"], "argument --embedder: 'embedder' has no port: give HOST:PORT, "
                                                    "e.g. embedder:50051"),
])
def test_a_bad_option_value_is_refused_by_the_parser(args, wanted):
    """argparse's own form: the usage, then one `logmesh CMD: error:` line; exit 2."""
    done = _run(args)
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("logmesh ") and wanted in last, last


def test_generate_with_no_lines_writes_nothing(tmp_path):
    """`--lines 0` used to write an empty log and an empty labels file and exit 0."""
    done = _run(["generate", "--lines", "0", "-o", str(tmp_path / "HDFS.log")])
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr
    assert not list(tmp_path.iterdir()), list(tmp_path.iterdir())


def test_an_unreachable_scorer_names_itself_and_exits_1():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: nothing listens there
    done = _run(["stats", "--scorer", f"127.0.0.1:{port}", "--timeout", "3"])
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert "UNAVAILABLE" in done.stderr and f"is the scorer running at 127.0.0.1:{port}" in done.stderr


def test_a_scorer_address_that_does_not_resolve_is_not_called_up():
    """A host name that resolves to nothing: the CLI says so; it used to say the scorer was up but not serving."""
    done = _run(["stats", "--scorer", "nowhere.invalid:50052", "--timeout", "10"])
    assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr
    assert "is up but" not in done.stderr, done.stderr
    assert "nowhere.invalid:50052 does not resolve: check the host name" in done.stderr, done.stderr


def test_a_token_file_others_can_read_is_warned_about(tmp_path, caplog):
    from logmesh.runtime.security import load_tokens
    path = tmp_path / "tokens"
    path.write_text("secret-token\n")
    path.chmod(0o600)
    with caplog.at_level(logging.WARNING, logger="logmesh.security"):
        assert load_tokens(str(path), env="") == {"secret-token"}
    assert not caplog.records
    path.chmod(0o640)
    with caplog.at_level(logging.WARNING, logger="logmesh.security"):
        assert load_tokens(str(path), env="") == {"secret-token"}
    (record,) = caplog.records
    assert "other users" in record.getMessage() and record.mode == "0o640" and "chmod 600" in record.fix


def test_score_loads_no_spark_pandas_kafka_or_torch():
    """Building the parser for `score` (what `logmesh score` does before it calls) imports none of them."""
    code = ("import sys; from logmesh.cli import build_parser; build_parser('score').parse_args(['score', 'x']); "
            "print(sorted(m for m in ('pyspark', 'pandas', 'confluent_kafka', 'torch', 'sentence_transformers', "
            "'qdrant_edge') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and out.stdout.strip() == "[]", out.stdout + out.stderr


def test_an_unreachable_qdrant_server_is_one_line_and_exit_1():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: nothing listens there
    done = _run(["similar", "--qdrant-url", f"http://127.0.0.1:{port}", "--block", "blk_1"])
    assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr
    (line,) = done.stderr.splitlines()
    assert line.startswith("error: ") and "unreachable" in line and "is it running" in line


@contextlib.contextmanager
def _scorer_without_model(tmp: Path, *extra: str):
    """A real `logmesh serve scorer` with no artifact (NOT_SERVING, answers UNAVAILABLE 'no model is serving') and
    no Kafka topics, on a free port; yields its address."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    scorer = subprocess.Popen([LOGMESH, "serve", "scorer", "--port", str(port), "--model-dir", str(tmp / "models"),
                               "--anomalies-topic", "", "--feedback-topic", "", "--incidents-topic", "",
                               "--state-dir", "", *extra], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(300):  # the port answers once the server is up
            with socket.socket() as probe:
                if probe.connect_ex(("127.0.0.1", port)) == 0:
                    break
            assert scorer.poll() is None, "the scorer exited"
            time.sleep(0.1)
        yield f"127.0.0.1:{port}"
    finally:
        scorer.terminate()
        scorer.wait(timeout=30)


def test_health_against_a_scorer_that_wants_a_token(tmp_path):
    """Health is open to probes, GetStats is not: without a token `logmesh health` still reports both servers
    (the embedder at the default address, saying why) instead of a NameError traceback (before the fix)."""
    (tmp_path / "tokens").write_text("h3-test-token\n")
    (tmp_path / "tokens").chmod(0o600)
    with _scorer_without_model(tmp_path, "--token-file", str(tmp_path / "tokens")) as scorer:
        done = _run(["health", "--scorer", scorer], env={"LOGMESH_TOKEN": ""})
    assert "Traceback" not in done.stderr, done.stderr
    assert done.returncode == 1, (done.returncode, done.stdout, done.stderr)  # NOT_SERVING: no model
    scorer_line, embedder_line = done.stdout.splitlines()
    assert scorer_line.split()[:3] == ["scorer", scorer, "NOT_SERVING"], done.stdout
    assert "refused GetStats" in embedder_line and "give --token" in embedder_line, done.stdout


def test_health_gives_up_on_a_server_that_never_answers_after_its_timeout():
    """A port that accepts connections and says nothing (a hung server, something that is not gRPC): both checks
    are DOWN (DEADLINE_EXCEEDED) after --timeout each; it was a fixed 5 s, and --timeout was not an option."""
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen()  # the kernel completes the handshake; nothing ever reads or answers
        address = f"127.0.0.1:{silent.getsockname()[1]}"
        started = time.monotonic()
        done = _run(["health", "--scorer", address, "--embedder", address, "--timeout", "0.5"])
        took = time.monotonic() - started
    assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr
    scorer_line, embedder_line = done.stdout.splitlines()
    assert scorer_line.split()[1:] == [address, "DOWN", "(DEADLINE_EXCEEDED)"], done.stdout
    assert embedder_line.split()[1:4] == [address, "DOWN", "(DEADLINE_EXCEEDED)"], done.stdout
    assert took < 8, took  # two 0.5 s checks and the CLI's start, against 10 s at the old fixed timeout


def test_a_scorer_that_answers_unavailable_is_not_called_unreachable(tmp_path):
    """A scorer that is up without a model answers UNAVAILABLE with its reason: the CLI shows the reason and does not
    ask whether the scorer is running (it said so before the fix); a closed port still gets that question."""
    with _scorer_without_model(tmp_path) as scorer:
        done = _run(["score", "--scorer", scorer, LINE])
    assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr
    assert "no model is serving" in done.stderr and "logmesh train" in done.stderr, done.stderr
    assert "is the scorer running" not in done.stderr and f"the scorer at {scorer} is up" in done.stderr, done.stderr

"""The anomaly history is what the streaming job committed to its anomalies topic on the real broker, read
read_committed, each entry once; it survives restarts of a real `logmesh serve scorer` process with a
--state-dir (SIGTERM and SIGKILL): the same entries byte for byte under the same ids, a watcher resuming with
after_id gets exactly what it missed; a broker the scorer cannot reach at start is retried while it scores,
and the history catches up once it can."""
from __future__ import annotations

import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import grpc
import pytest

from logmesh.client import ScorerClient
from logmesh.v1 import score_pb2
from waiting import wait_for

from anomaly_topic import ALERT, BOOTSTRAP, FINAL, AnomalyWriter, block, fed_scorer, fresh_topic, line
from kafka_helpers import _free_port

LOGMESH = str(Path(sys.executable).with_name("logmesh"))
ANOMALY = score_pb2.VERDICT_ANOMALY
EXCEPTION_LINE = ("081109 214043 2561 INFO dfs.DataNode$DataXceiver: writeBlock blk_-3102267849859399193 "
                  "received exception java.io.IOException: Could not read from stream")
NORMAL_LINE = ("081109 204655 556 INFO dfs.DataNode$PacketResponder: Received block "
               "blk_3587508140051953248 of size 67108864 from /10.251.42.84")
COUNTERS = ("lines_scored", "line_anomalies", "items_rejected", "blocks_scored", "block_anomalies")
WRITE = ["E5", "E5", "E5", "E22", "E7"]


class ScorerProcess:
    """`logmesh serve scorer` on a fixed port and state dir whose history reads `topic`, restartable."""

    def __init__(self, models: Path, embedder: str, state: Path, log: Path, topic: str = "",
                 bootstrap: str = BOOTSTRAP) -> None:
        self.port = _free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.args = [LOGMESH, "serve", "scorer", "--port", str(self.port), "--model-dir", str(models),
                     "--embedder", embedder, "--state-dir", str(state), "--grace", "2",
                     "--bootstrap", bootstrap, "--anomalies-topic", topic]
        self.log = log
        self.proc: subprocess.Popen | None = None

    def start(self) -> "ScorerProcess":
        self.proc = subprocess.Popen(self.args, stderr=open(self.log, "a"))
        with ScorerClient(self.address) as client:
            client.wait_until_serving(60)
        return self

    def stop(self, sig: int = signal.SIGTERM) -> int:
        assert self.proc is not None
        self.proc.send_signal(sig)
        return self.proc.wait(30)


def _all(client: ScorerClient) -> list[score_pb2.Anomaly]:
    entries, token = client.list_anomalies(100_000)
    assert not token
    return entries


def _held(client: ScorerClient, n: int, timeout: float = 30.0) -> list[score_pb2.Anomaly]:
    """The history's entries once it holds `n` and has read its topic to the end, newest first."""
    wait_for(lambda: len(_all(client)) >= n and client.stats().history_status == "live", timeout,
             f"the history to hold {n} entries")
    return _all(client)


def _tag(entry: score_pb2.Anomaly) -> str:
    if entry.HasField("line"):
        return entry.line.record_id
    return f"{entry.block.block_id}:{score_pb2.BlockVerdictKind.Name(entry.block.kind)}"


def _counters(client: ScorerClient) -> dict[str, int]:
    stats = client.stats()
    return {name: getattr(stats, name) for name in COUNTERS}


class Watcher:
    """WatchAnomalies in a thread, collecting what it is sent."""

    def __init__(self, address: str, after_id: int = 0, seconds: float = 60.0) -> None:
        self.seen: list[score_pb2.Anomaly] = []
        self.client = ScorerClient(address)
        self.stream = self.client.watch(after_id=after_id, timeout=seconds)
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            for entry in self.stream:
                self.seen.append(entry)
        except grpc.RpcError:
            pass  # the deadline, or close() below

    def close(self) -> None:
        self.client.close()  # cancels the call
        self.thread.join(10)


@pytest.fixture(scope="module")
def topic(admin):
    return fresh_topic(admin)


def test_only_committed_anomalies_show_and_each_once(admin, trained_models, embedder_server, tmp_path):
    topic = fresh_topic(admin)
    server = fed_scorer(trained_models, embedder_server.address, topic, tmp_path / "state")
    writer = AnomalyWriter(topic)
    try:
        with ScorerClient(server.address) as client:
            watcher = Watcher(server.address)
            servicer = server.servicers["ScorerService"]
            wait_for(lambda: servicer._watchers == 1, what="the watcher to subscribe")
            writer.write([line("a"), line("b")])
            writer.write([line("x"), line("y")], commit=False)  # an aborted batch: never shown
            blk = f"blk_history_{uuid.uuid4().hex[:8]}"
            writer.write([block(blk, ALERT, WRITE), block(blk, FINAL, WRITE + ["E5"])])
            writer.write([block(blk, FINAL, WRITE + ["E5"])])  # the same final story again: entered once
            writer.write([line("c")])
            entries = _held(client, 5)
            want = ["rec-a", "rec-b", f"{blk}:BLOCK_VERDICT_KIND_ALERT", f"{blk}:BLOCK_VERDICT_KIND_FINAL", "rec-c"]
            assert [_tag(e) for e in reversed(entries)] == want
            assert [e.id for e in reversed(entries)] == [1, 2, 3, 4, 5]
            offsets = [int(e.source.rsplit("/", 1)[1]) for e in reversed(entries)]
            assert all(e.source.startswith(f"{topic}/0/") for e in entries) and offsets == sorted(offsets)
            assert all(e.HasField("recorded_time") for e in entries)
            wait_for(lambda: len(watcher.seen) >= 5, what="the watcher to see five entries")
            time.sleep(1.0)  # a repeat would arrive meanwhile
            assert [e.SerializeToString() for e in watcher.seen] == [e.SerializeToString() for e in reversed(entries)]
            stats = client.stats()
            assert stats.history_status == "live" and stats.history_entries == 5
            # the scorer scoring adds nothing to the history: the job writes it
            client.score_line(EXCEPTION_LINE)
            assert len(_all(client)) == 5
            # pages: newest first, cut by page_size, continued by the token
            first = client.anomalies(page_size=2)
            assert [e.id for e in first.anomalies] == [5, 4] and first.next_page_token
            second = client.anomalies(page_size=2, page_token=first.next_page_token)
            assert [e.id for e in second.anomalies] == [3, 2]
            assert {_tag(e) for e in client.anomalies(block_id=blk).anomalies} == set(want[2:4])
            with pytest.raises(grpc.RpcError) as info:
                client.anomalies(page_token="not-a-token")
            assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            watcher.close()
    finally:
        server.stop(1)


def test_a_message_that_is_no_anomaly_is_skipped_and_the_rest_read(admin, trained_models, embedder_server):
    topic = fresh_topic(admin)
    server = fed_scorer(trained_models, embedder_server.address, topic)
    writer = AnomalyWriter(topic)
    try:
        writer.producer.begin_transaction()
        writer.producer.produce(topic, value=b"\xff\xfenot a protobuf")
        writer.producer.produce(topic, value=b"")  # decodes, but neither a line nor a block
        writer.producer.commit_transaction(30)
        writer.write([line("after")])
        with ScorerClient(server.address) as client:
            assert [_tag(e) for e in _held(client, 1)] == ["rec-after"]
    finally:
        server.stop(1)


@pytest.fixture()
def scorer_process(trained_models, embedder_server, tmp_path, topic):
    process = ScorerProcess(trained_models, embedder_server.address, tmp_path / "state", tmp_path / "scorer.log",
                            topic)
    yield process.start()
    if process.proc and process.proc.poll() is None:
        process.proc.kill()
        process.proc.wait(30)


def test_history_and_counters_survive_restarts_and_a_watcher_resumes(scorer_process, topic):
    writer = AnomalyWriter(topic)
    writer.write([line("a"), line("b"), line("c")])
    with ScorerClient(scorer_process.address) as client:
        for tag in "ab":
            assert client.score_line(EXCEPTION_LINE + f" attempt {tag}").verdict == ANOMALY
        client.score_line(NORMAL_LINE)
        before = _held(client, 3)
        time.sleep(1.5)  # the counters are saved within a second
        counted = _counters(client)
    assert [e.id for e in before] == [3, 2, 1] and counted["lines_scored"] == 3

    assert scorer_process.stop(signal.SIGTERM) == 0
    writer.write([line("d"), line("e")])  # committed while the scorer is down
    scorer_process.start()
    with ScorerClient(scorer_process.address) as client:
        after = _held(client, 5)
        assert [e.SerializeToString() for e in after[2:]] == [e.SerializeToString() for e in before]
        assert [(e.id, _tag(e)) for e in after[:2]] == [(5, "rec-e"), (4, "rec-d")]  # ids go on, none reused
        assert _counters(client) == counted
    # a watcher that last saw id 3 gets exactly what it missed, then what comes next
    watcher = Watcher(scorer_process.address, after_id=3)
    wait_for(lambda: len(watcher.seen) >= 2, what="the resumed watcher to catch up")
    writer.write([line("f")])
    wait_for(lambda: len(watcher.seen) >= 3, what="the resumed watcher to see the new entry")
    time.sleep(1.0)
    assert [(e.id, _tag(e)) for e in watcher.seen] == [(4, "rec-d"), (5, "rec-e"), (6, "rec-f")]
    watcher.close()

    # a crash (SIGKILL) loses no entry and repeats none: each is appended as it is read, with its position
    with ScorerClient(scorer_process.address) as client:
        newest = _held(client, 6)
    assert scorer_process.stop(signal.SIGKILL) == -signal.SIGKILL
    writer.write([line("g")])
    scorer_process.start()
    with ScorerClient(scorer_process.address) as client:
        again = _held(client, 7)
        assert [e.SerializeToString() for e in again[1:]] == [e.SerializeToString() for e in newest]
        assert (again[0].id, _tag(again[0])) == (7, "rec-g")


def test_a_second_scorer_on_one_state_dir_is_refused_with_a_reason(scorer_process, trained_models, tmp_path):
    done = subprocess.run([LOGMESH, "serve", "scorer", "--port", str(_free_port()), "--model-dir", str(trained_models),
                           "--state-dir", str(tmp_path / "state")], capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "in use by another scorer" in done.stderr and "Traceback" not in done.stderr


class Gate:
    """A TCP forwarder in front of the real broker, closed until opened: a broker the scorer cannot reach
    (a stand-in for a broker that is down: the shared broker itself is never stopped). Only the bootstrap
    goes through it; once it answers, the client talks to the broker's advertised address."""

    def __init__(self) -> None:
        self.port = _free_port()
        self._server: socket.socket | None = None

    def open(self) -> None:
        self._server = socket.create_server(("127.0.0.1", self.port))
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._server.accept()  # type: ignore[union-attr]
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", 9092))
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=_pipe, args=(a, b), daemon=True).start()

    def close(self) -> None:
        if self._server is not None:
            self._server.close()


def _pipe(a: socket.socket, b: socket.socket) -> None:
    try:
        while data := a.recv(65536):
            b.sendall(data)
    except OSError:
        pass
    finally:
        for s in (a, b):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


def test_a_broker_down_at_start_is_retried_and_the_history_catches_up(admin, trained_models, embedder_server):
    topic = fresh_topic(admin)
    AnomalyWriter(topic).write([line("early"), line("later")])
    gate = Gate()
    from logmesh.client import ScorerClient as Client
    from logmesh.scorer.service import serve
    server = serve(0, trained_models, embedder_server.address, reload_interval=60,
                   kafka_bootstrap=f"127.0.0.1:{gate.port}", anomalies_topic=topic)
    try:
        with Client(server.address) as client:
            client.wait_until_serving(30)  # scoring does not wait for the broker
            assert client.score_line(EXCEPTION_LINE).verdict == ANOMALY
            wait_for(lambda: client.stats().history_status.startswith("disconnected"), 30,
                     "GetStats to say the history is disconnected")
            assert client.health() == "SERVING" and _all(client) == []
            gate.open()
            entries = _held(client, 2, timeout=60)
            assert [_tag(e) for e in reversed(entries)] == ["rec-early", "rec-later"]
    finally:
        server.stop(1)
        gate.close()

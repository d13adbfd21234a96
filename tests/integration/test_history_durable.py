"""The anomaly history and the counters survive a restart of a real `logmesh serve scorer` process with a
--state-dir: after SIGTERM and after SIGKILL, the same entries (byte for byte), the same ids going on, the
same counters, and a block alerted before the restart is not alerted again."""
from __future__ import annotations

import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from logmesh.client import ScorerClient
from logmesh.v1 import score_pb2, scorer_service_pb2 as spb

from kafka_helpers import _free_port

LOGMESH = str(Path(sys.executable).with_name("logmesh"))
ANOMALY = score_pb2.VERDICT_ANOMALY
EXCEPTION_LINE = ("081109 214043 2561 INFO dfs.DataNode$DataXceiver: writeBlock blk_-3102267849859399193 "
                  "received exception java.io.IOException: Could not read from stream")
NORMAL_LINE = ("081109 204655 556 INFO dfs.DataNode$PacketResponder: Received block "
               "blk_3587508140051953248 of size 67108864 from /10.251.42.84")
COUNTERS = ("lines_scored", "line_anomalies", "items_rejected", "blocks_scored", "block_anomalies")


class ScorerProcess:
    """`logmesh serve scorer` on a fixed port and state dir, restartable."""

    def __init__(self, models: Path, embedder: str, state: Path, log: Path) -> None:
        self.port = _free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.args = [LOGMESH, "serve", "scorer", "--port", str(self.port), "--model-dir", str(models),
                     "--embedder", embedder, "--state-dir", str(state), "--grace", "2"]
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


@pytest.fixture()
def scorer_process(trained_models, embedder_server, tmp_path):
    process = ScorerProcess(trained_models, embedder_server.address, tmp_path / "state", tmp_path / "scorer.log")
    yield process.start()
    if process.proc and process.proc.poll() is None:
        process.proc.kill()
        process.proc.wait(30)


def _all(client: ScorerClient) -> list[score_pb2.Anomaly]:
    entries, token = client.list_anomalies(100_000)
    assert not token
    return entries


def _counters(client: ScorerClient) -> dict[str, int]:
    stats = client.stats()
    return {name: getattr(stats, name) for name in COUNTERS}


def test_history_and_counters_survive_a_restart(scorer_process):
    block_id = f"blk_durable_{uuid.uuid4().hex[:8]}"
    with ScorerClient(scorer_process.address) as client:
        for n in range(3):
            assert client.score_line(EXCEPTION_LINE + f" attempt {'abc'[n]}").verdict == ANOMALY
        client.score_line(NORMAL_LINE)
        alert = client.stub.ScoreBlock(spb.ScoreBlockRequest(block=spb.BlockSession(
            block_id=block_id, events=["E5", "E5", "E22", "E7"])), timeout=30).verdict
        assert alert.kind == score_pb2.BLOCK_VERDICT_KIND_ALERT
        before, counted = _all(client), _counters(client)
    assert len(before) == 4 and counted["lines_scored"] == 4 and counted["blocks_scored"] == 1

    assert scorer_process.stop(signal.SIGTERM) == 0
    scorer_process.start()
    with ScorerClient(scorer_process.address) as client:
        after = _all(client)
        assert [e.SerializeToString() for e in after] == [e.SerializeToString() for e in before]
        assert _counters(client) == counted
        # the block's alert was raised before the restart: judged again, it is not a new alert
        again = client.stub.ScoreBlock(spb.ScoreBlockRequest(block=spb.BlockSession(
            block_id=block_id, events=["E5", "E5", "E22", "E7", "E5"])), timeout=30).verdict
        assert again.verdict == ANOMALY and again.kind == score_pb2.BLOCK_VERDICT_KIND_INTERIM
        assert client.score_line(EXCEPTION_LINE + " attempt d").verdict == ANOMALY
        newest = _all(client)
        assert len(newest) == 5 and newest[0].id == before[0].id + 1  # ids go on, none reused
        time.sleep(1.5)  # the counters are saved within a second
        counted = _counters(client)

    # a crash (SIGKILL) loses no entry: each is appended as it is recorded
    assert scorer_process.stop(signal.SIGKILL) == -signal.SIGKILL
    scorer_process.start()
    with ScorerClient(scorer_process.address) as client:
        assert [e.SerializeToString() for e in _all(client)] == [e.SerializeToString() for e in newest]
        assert _counters(client) == counted


def test_a_second_scorer_on_one_state_dir_is_refused_with_a_reason(scorer_process, trained_models, tmp_path):
    done = subprocess.run([LOGMESH, "serve", "scorer", "--port", str(_free_port()), "--model-dir", str(trained_models),
                           "--state-dir", str(tmp_path / "state")], capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "in use by another scorer" in done.stderr and "Traceback" not in done.stderr

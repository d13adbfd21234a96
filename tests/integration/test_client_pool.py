"""One client address, several replicas: the Python client balances calls over a pool of real scorer
processes (round_robin over `127.0.0.1:P1,127.0.0.1:P2`), each replica's GetStats shows its share, and a
replica SIGKILLed mid-run loses no call: unary calls are retried by gRPC's retry policy on the survivor,
streams cut by the kill are redone by the job's retry (streaming/retry.py), as the sink does."""
from __future__ import annotations

import signal
import subprocess
import sys
import threading
from pathlib import Path

import grpc
import pytest

from logmesh.client import ScorerClient, channel_target
from logmesh.streaming.retry import with_retry
from logmesh.v1 import scorer_service_pb2 as spb

from kafka_helpers import _free_port

LINE = "081109 204655 556 INFO dfs.DataNode$PacketResponder: Received block blk_{n} of size 67108864 from /10.251.42.{m}"


@pytest.mark.parametrize("address, target", [
    ("127.0.0.1:50052", "127.0.0.1:50052"),
    ("127.0.0.1:50052,127.0.0.1:50062", "ipv4:127.0.0.1:50052,127.0.0.1:50062"),
    (" 10.0.0.1:1, 10.0.0.2:1 ", "ipv4:10.0.0.1:1,10.0.0.2:1"),
    ("[::1]:50052,[::1]:50062", "ipv6:[::1]:50052,[::1]:50062"),
    ("dns:///scorer.logmesh.svc.cluster.local:50052", "dns:///scorer.logmesh.svc.cluster.local:50052"),
    ("ipv4:127.0.0.1:1,127.0.0.1:2", "ipv4:127.0.0.1:1,127.0.0.1:2"),
])
def test_addresses_map_to_grpc_targets(address, target):
    assert channel_target(address) == target


@pytest.mark.parametrize("address, reason", [
    ("scorer-a:50052,scorer-b:50052", "dns:///NAME:PORT"),
    ("127.0.0.1:50052,[::1]:50062", "mixes IPv4 and IPv6"),
    ("127.0.0.1,127.0.0.2:1", "needs IP:PORT"),
    ("::1:5,::1:6", "brackets"),
    ("", "empty server address"),
])
def test_a_bad_server_list_is_refused_with_what_to_write(address, reason):
    with pytest.raises(ValueError, match=reason.replace("(", r"\(")):
        ScorerClient(address)


# A real scorer server in a process of its own (so it can be SIGKILLed), started through its Python API rather
# than `logmesh serve scorer` so this test does not follow the CLI's changes; no state dir: counters in memory,
# each replica's GetStats counts this test's calls only.
SERVE = ("import sys; from pathlib import Path; from logmesh.scorer.service import serve; "
         "serve(int(sys.argv[1]), Path(sys.argv[2]), sys.argv[3], reload_interval=60).serve_until_signal(1)")


def _start_scorer(port: int, models: Path, embedder: str, log: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", SERVE, str(port), str(models), embedder],
                            stdout=subprocess.DEVNULL, stderr=open(log, "a"))


@pytest.fixture()
def replicas(embedder_server, trained_models, tmp_path):
    """Two `logmesh serve scorer` processes; yields [(port, process), ...]."""
    started = []
    try:
        for i in range(2):
            port = _free_port()
            started.append((port, _start_scorer(port, trained_models, embedder_server.address,
                                                tmp_path / f"scorer-{i}.log")))
        for port, _ in started:
            with ScorerClient(f"127.0.0.1:{port}") as one:
                one.wait_until_serving(120)
        yield started
    finally:
        for _, proc in started:
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(30)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(10)


def _scored(port: int) -> int:
    with ScorerClient(f"127.0.0.1:{port}") as one:
        return one.stats().lines_scored


def test_calls_and_streams_are_spread_over_both_replicas(replicas):
    pool = ",".join(f"127.0.0.1:{port}" for port, _ in replicas)
    with ScorerClient(pool) as client:
        client.wait_until_serving(30)
        for n in range(40):
            assert client.score_line(LINE.format(n=n, m=n % 200)).model_version
        unary = [_scored(port) for port, _ in replicas]
        assert sum(unary) == 40 and min(unary) > 0, f"unary calls per replica: {unary}"
        for s in range(10):  # ten ScoreStreams of 50 lines: each stream is one pick
            results = list(client.score_lines(LINE.format(n=s * 50 + i, m=i) for i in range(50)))
            assert len(results) == 50 and not any(r.HasField("error") for r in results)
    per_replica = [_scored(port) - before for (port, _), before in zip(replicas, unary)]
    assert sum(per_replica) == 500 and min(per_replica) > 0, f"stream lines per replica: {per_replica}"


def test_fresh_clients_each_making_one_call_are_spread_too(replicas):
    """The job's Python workers each open their own channel and may make few calls on it: the first call of a
    fresh channel goes to whichever replica connected first, so that must not always be the same one."""
    pool = ",".join(f"127.0.0.1:{port}" for port, _ in replicas)
    before = [_scored(port) for port, _ in replicas]
    for n in range(24):
        with ScorerClient(pool) as client:
            client.score_line(LINE.format(n=n, m=n))
    per_replica = [_scored(port) - b for (port, _), b in zip(replicas, before)]
    assert sum(per_replica) == 24 and min(per_replica) > 0, f"first calls per replica: {per_replica}"


def test_a_replica_killed_mid_run_loses_no_call(replicas):
    pool = ",".join(f"127.0.0.1:{port}" for port, _ in replicas)
    (victim_port, victim), (survivor_port, _) = replicas
    done: list[int] = []
    errors: list[BaseException] = []
    kill_at, calls_per_thread, threads_n = 150, 150, 4
    killed = threading.Event()
    lock = threading.Lock()

    def caller(t: int, client: ScorerClient) -> None:
        try:
            for n in range(calls_per_thread):
                # unary: no retry of ours; a call the kill cut off is retried by gRPC (UNAVAILABLE, not committed)
                client.score_line(LINE.format(n=t * 10_000 + n, m=n % 200))
                if n % 10 == 0:  # and streams, retried whole by the job's retry when the kill cuts them
                    lines = [LINE.format(n=t * 10_000 + n * 100 + i, m=i) for i in range(100)]
                    out = with_retry(lambda: list(client.score_lines(lines, batch_size=10)), "stream", 60, 0.1, 1)
                    assert len(out) == 100 and not any(r.HasField("error") for r in out)
                with lock:
                    done.append(n)
                    if len(done) == kill_at and not killed.is_set():
                        victim.send_signal(signal.SIGKILL)
                        killed.set()
        except BaseException as exc:  # noqa: BLE001 - the assertion below reports it
            errors.append(exc)

    with ScorerClient(pool) as client:
        client.wait_until_serving(30)
        threads = [threading.Thread(target=caller, args=(t, client)) for t in range(threads_n)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(300)
    assert killed.is_set() and victim.wait(10) == -signal.SIGKILL
    assert not errors, f"{len(errors)} callers failed, first: {errors[0]!r}"
    assert len(done) == threads_n * calls_per_thread
    # the survivor served the rest: at least every call after the kill (and its share before)
    assert _scored(survivor_port) >= (threads_n * calls_per_thread - kill_at)
    with pytest.raises(grpc.RpcError):  # the victim really is gone
        with ScorerClient(f"127.0.0.1:{victim_port}", timeout=2) as gone:
            gone.stats()

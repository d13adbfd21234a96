"""Load an ordinary client puts on a server: many calls in flight on one connection are queued in the server
(never refused), served in fair turns per connection, and health and short calls are answered while long
streams are open. Real servers and model; clients: grpc-go (clients/go/cmd/logmesh-load) and grpcio."""
from __future__ import annotations

import json
import subprocess
import threading
import time

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from go_tools import load_client
from waiting import wait_for
from logmesh.client import EmbedderClient, ScorerClient
from logmesh.runtime.grpc_server import Limits
from logmesh.v1 import embedder_service_pb2 as epb, embedder_service_pb2_grpc as egrpc
from logmesh.v1 import scorer_service_pb2 as spb, scorer_service_pb2_grpc as sgrpc

CALLS, IN_FLIGHT = 20_000, 64
# grpcio shares one connection between channels to the same address; a client of its own gets its own
OWN_CONNECTION = [("grpc.use_local_subchannel_pool", 1)]
LINE = ("081109 204655 556 INFO dfs.DataNode$PacketResponder: Received block blk_3587508140051953248 "
        "of size 67108864 from /10.251.42.84")


class Prompt:
    """A second client calling every 50 ms while the load runs; each call must be answered within its deadline."""

    def __init__(self, call, deadline: float = 2.0) -> None:  # type: ignore[no-untyped-def]
        self.call, self.deadline = call, deadline
        self.latencies: list[float] = []
        self.errors: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.05):
            started = time.perf_counter()
            try:
                self.call(self.deadline)
                self.latencies.append(time.perf_counter() - started)
            except grpc.RpcError as exc:
                self.errors.append(f"{exc.code().name}: {exc.details()}")

    def __enter__(self) -> "Prompt":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def summary(self) -> str:
        ordered = sorted(self.latencies)
        return (f"{len(ordered)} calls, p50 {1000 * ordered[len(ordered) // 2]:.0f} ms, "
                f"max {1000 * ordered[-1]:.0f} ms") if ordered else "no calls"


def _python_load(channel: grpc.Channel, call_one, calls: int, in_flight: int) -> dict[str, int]:  # type: ignore[no-untyped-def]
    """`calls` unary calls, `in_flight` at a time, on one grpcio channel; returns {error: count}."""
    slots = threading.Semaphore(in_flight)
    errors: dict[str, int] = {}
    lock = threading.Lock()
    finished = threading.Semaphore(0)

    def done(future: grpc.Future) -> None:
        if future.exception() is not None:
            with lock:
                key = f"{future.code().name}: {future.details()}"
                errors[key] = errors.get(key, 0) + 1
        slots.release()
        finished.release()

    for _ in range(calls):
        slots.acquire()
        call_one().add_done_callback(done)
    for _ in range(calls):
        finished.acquire()
    return errors


def test_grpc_go_client_with_64_calls_in_flight_on_one_connection(scorer_server, reliability):
    with grpc.insecure_channel(scorer_server.address, options=OWN_CONNECTION) as channel:
        other = sgrpc.ScorerServiceStub(channel)
        request = spb.ScoreRequest(item=spb.ScoreItem(raw_line=LINE))
        other.Score(request, timeout=30)  # the shape is memoised: the load measures the server, not the embedder
        started = time.monotonic()
        with Prompt(lambda deadline: other.Score(request, timeout=deadline)) as prompt:
            done = subprocess.run([str(load_client()), "-addr", scorer_server.address, "-rpc", "score",
                                   "-calls", str(CALLS), "-inflight", str(IN_FLIGHT), "-line", LINE],
                                  capture_output=True, text=True, timeout=300)
        seconds = time.monotonic() - started
    result = json.loads(done.stdout)
    assert result["errors"] == {} and result["ok"] == CALLS, done.stdout + done.stderr
    assert prompt.latencies and not prompt.errors, prompt.errors[:3]
    reliability("grpc", f"grpc-go client: {CALLS:,} Score calls, {IN_FLIGHT} in flight on one connection",
                f"all answered, none refused ({seconds:.0f} s); a second client's Score every 50 ms meanwhile: "
                f"{prompt.summary()}, no error")


def test_grpcio_client_with_64_calls_in_flight_on_one_channel(embedder_server, reliability):
    with grpc.insecure_channel(embedder_server.address, options=OWN_CONNECTION) as channel, \
            grpc.insecure_channel(embedder_server.address, options=OWN_CONNECTION) as other_channel:
        stub, other = egrpc.EmbedderServiceStub(channel), egrpc.EmbedderServiceStub(other_channel)
        request = epb.EmbedRequest(text=LINE)
        stub.Embed(request, timeout=30)  # cached: the load measures the server, not the model
        started = time.monotonic()
        with Prompt(lambda deadline: other.Embed(epb.EmbedRequest(text="another client's line"),
                                                 timeout=deadline)) as prompt:
            errors = _python_load(channel, lambda: stub.Embed.future(request, timeout=60), CALLS, IN_FLIGHT)
        seconds = time.monotonic() - started
    assert errors == {}
    assert prompt.latencies and not prompt.errors, prompt.errors[:3]
    reliability("grpc", f"grpcio client: {CALLS:,} Embed calls, {IN_FLIGHT} in flight on one channel",
                f"all answered, none refused ({seconds:.0f} s); a second client's Embed every 50 ms meanwhile: "
                f"{prompt.summary()}, no error")


def test_health_and_short_calls_answer_while_64_idle_streams_and_8_watchers_are_open(scorer_server, reliability):
    release = threading.Event()

    def silent():  # a request stream that sends nothing until released
        release.wait(60)
        return
        yield

    streams_channel, watch_channel = grpc.insecure_channel(scorer_server.address), grpc.insecure_channel(
        scorer_server.address)
    idle = [sgrpc.ScorerServiceStub(streams_channel).ScoreStream(silent(), timeout=60) for _ in range(64)]
    watchers = [sgrpc.ScorerServiceStub(watch_channel).WatchAnomalies(spb.WatchAnomaliesRequest(min_score=2.0),
                                                                      timeout=60) for _ in range(8)]
    try:
        with grpc.insecure_channel(scorer_server.address) as channel, ScorerClient(scorer_server.address) as client:
            health = health_pb2_grpc.HealthStub(channel)
            time.sleep(1.0)  # every stream is open on the server by now
            latencies = []
            for _ in range(20):
                started = time.perf_counter()
                reply = health.Check(health_pb2.HealthCheckRequest(service="logmesh.v1.ScorerService"), timeout=1.0)
                latencies.append(time.perf_counter() - started)
                assert reply.status == health_pb2.HealthCheckResponse.SERVING
            assert client.stub.Score(spb.ScoreRequest(item=spb.ScoreItem(raw_line=LINE)), timeout=1.0).result.verdict
            assert client.stub.GetStats(spb.GetStatsRequest(), timeout=1.0).lines_scored > 0
            for call in idle[:3] + watchers[:1]:
                assert call.running()  # the open streams are still being served, not refused
            before = client.stats().calls.cancelled
    finally:
        release.set()
        for call in idle + watchers:
            call.cancel()
        streams_channel.close()
        watch_channel.close()
    with ScorerClient(scorer_server.address) as client:
        # the watchers were cancelled while the server still served them: counted
        after = wait_for(lambda: (lambda c: c if c >= before + 8 else None)(
            client.stats().calls.cancelled), 10, "the cancelled watchers to be counted")
        assert after >= before + 8
    latencies.sort()
    reliability("grpc", "64 ScoreStreams that send nothing and 8 WatchAnomalies open on the scorer",
                f"20 health checks all SERVING (p50 {1000 * latencies[10]:.1f} ms, max {1000 * latencies[-1]:.1f} ms); "
                "Score and GetStats answered; the streams stayed open")


@pytest.fixture()
def own_embedder(encoder):
    from logmesh.embedder.service import serve
    servers = []

    def start(encoder_factory=lambda: encoder, **limits):  # type: ignore[no-untyped-def]
        server = serve(0, limits=Limits(**limits), encoder_factory=encoder_factory)
        EmbedderClient(server.address).wait_until_serving(30)
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop(0)


def test_a_stream_that_sends_nothing_is_ended_with_a_reason_and_counted(own_embedder, caplog, reliability):
    server = own_embedder(stream_idle_timeout=1.0)

    def one_batch_then_silence():
        yield epb.EmbedStreamRequest(batch_id=7, items=[epb.EmbedItem(record_id="a", text=LINE)])
        time.sleep(30)

    with EmbedderClient(server.address) as client:
        replies = []
        started = time.monotonic()
        with pytest.raises(grpc.RpcError) as caught:
            for reply in client.stub.EmbedStream(one_batch_then_silence(), timeout=30):
                replies.append(reply)
        ended_after = time.monotonic() - started
        assert [r.batch_id for r in replies] == [7]  # what it sent was answered
        assert caught.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        assert "--stream-idle-timeout" in caught.value.details() and "open a new stream" in caught.value.details()
        assert ended_after < 20
        assert client.embed_many(["a fresh stream is served"]).shape == (1, 384)
    assert server.events.counts()["idle_streams_ended"] == 1
    assert any(r.getMessage() == "idle stream ended" and r.method.endswith("/EmbedStream") for r in caplog.records)
    reliability("grpc", "a stream that sends one batch, then nothing (--stream-idle-timeout 1)",
                f"the batch answered, then DEADLINE_EXCEEDED after {ended_after:.1f} s: {caught.value.details()}; "
                "counted and logged")


def test_unary_calls_wait_their_turn_round_robin_per_connection_and_past_the_limit_are_refused(
        own_embedder, caplog, reliability):
    from conftest import SleepingEncoder
    server = own_embedder(encoder_factory=lambda: SleepingEncoder(1.0), workers=1, max_concurrent_rpcs=6)
    greedy_channel = grpc.insecure_channel(server.address, options=OWN_CONNECTION)
    other_channel = grpc.insecure_channel(server.address, options=OWN_CONNECTION)
    greedy, other = egrpc.EmbedderServiceStub(greedy_channel), egrpc.EmbedderServiceStub(other_channel)
    finished: list[str] = []
    lock = threading.Lock()

    def call(stub, name: str, text: str) -> grpc.Future:  # type: ignore[no-untyped-def]
        future = stub.Embed.future(epb.EmbedRequest(text=text), timeout=30)
        future.add_done_callback(lambda f: (lock.acquire(), finished.append(name), lock.release()))
        return future

    def in_server(count: int, what: str) -> None:
        wait_for(lambda: server.admission.unary_calls_in_server() == count or None, 10, what, every=0.01)

    try:
        # both connections up first: a connection opened late on a loaded box would miss the first free slot
        for channel in (greedy_channel, other_channel):
            grpc.channel_ready_future(channel).result(timeout=10)
        # texts of distinct shapes (masking maps digits to one shape): each call reaches the slow encoder
        words = ["alpha", "bravo", "charlie", "delta", "echo"]
        mine = [call(greedy, f"greedy{i}", f"greedy line {word}") for i, word in enumerate(words)]
        in_server(5, "the greedy connection's calls in the server: one working, four waiting")
        theirs = call(other, "other", "the other client's line")
        in_server(6, "the other client's call in the server, waiting its turn")
        with pytest.raises(grpc.RpcError) as caught:  # 6 calls in the server: the 7th is refused at once
            greedy.Embed(epb.EmbedRequest(text="one too many"), timeout=5)
        assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "--max-concurrent-rpcs" in caught.value.details()
        for future in [*mine, theirs]:
            assert future.result().embedding.dim == 384  # every queued call was served, none refused
    finally:
        greedy_channel.close()
        other_channel.close()
    # the other connection was served in the first round of turns (after the greedy call working when it came
    # and at most the greedy queue's head), not last: fair turns, not first come first served. The greedy
    # calls reach the server in any order, so positions count, not names.
    assert finished.index("other") <= 2, finished
    assert server.events.counts()["refused"] == 1
    assert any(r.getMessage() == "call refused" for r in caplog.records)
    reliability("grpc", "one connection with 5 slow calls queued, then another client's call (--workers 1, "
                "--max-concurrent-rpcs 6)",
                f"all 6 served, the other client's as number {finished.index('other') + 1} of 6; a 7th call: "
                f"RESOURCE_EXHAUSTED ({caught.value.details()}), counted and logged")


def test_calls_cancelled_or_past_their_deadline_are_counted(own_embedder):
    from conftest import SleepingEncoder
    server = own_embedder(encoder_factory=lambda: SleepingEncoder(1.0), workers=1)
    with grpc.insecure_channel(server.address) as channel:
        stub = egrpc.EmbedderServiceStub(channel)
        with pytest.raises(grpc.RpcError) as caught:
            stub.Embed(epb.EmbedRequest(text="a line the deadline cuts short"), timeout=0.3)
        assert caught.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        future = stub.Embed.future(epb.EmbedRequest(text="a line the caller gives up on"), timeout=30)
        time.sleep(0.2)
        future.cancel()
    counts = wait_for(
        lambda: (lambda c: c if c["deadline_exceeded"] and c["cancelled"] else None)(server.events.counts()), 10,
        "the deadline and the cancel to be counted")
    assert counts["deadline_exceeded"] == 1 and counts["cancelled"] == 1

"""Server limits against the real embedder: one client cannot hold a stream forever or take every slot."""
from __future__ import annotations

import threading

import grpc
import pytest

from logmesh.client import EmbedderClient
from logmesh.runtime.grpc_server import Limits
from logmesh.v1 import embedder_service_pb2 as epb, embedder_service_pb2_grpc as egrpc
from waiting import wait_for


@pytest.fixture()
def limited_embedder(encoder):
    from logmesh.embedder.service import serve
    servers = []

    def start(**limits: int):  # type: ignore[no-untyped-def]
        server = serve(0, limits=Limits(**limits), encoder_factory=lambda: encoder)
        EmbedderClient(server.address).wait_until_serving(60)
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop(0)


def _batch(batch_id: int, n: int) -> epb.EmbedStreamRequest:
    return epb.EmbedStreamRequest(batch_id=batch_id, items=[
        epb.EmbedItem(record_id=f"{batch_id}-{i}", text=f"Receiving block blk_{i} of size {batch_id}") for i in range(n)])


def test_a_stream_over_its_item_cap_ends_with_resource_exhausted(limited_embedder, reliability):
    server = limited_embedder(max_stream_items=10)
    with EmbedderClient(server.address) as client:
        replies = []
        with pytest.raises(grpc.RpcError) as caught:
            for reply in client.stub.EmbedStream(iter([_batch(0, 4), _batch(1, 4), _batch(2, 4)]), timeout=30):
                replies.append(reply)
        assert [r.batch_id for r in replies] == [0, 1]  # what came before the cap is answered
        assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "--max-stream-items" in caught.value.details()
        assert client.embed_many(["a fresh stream is served"]).shape == (1, 384)
        assert client.health() == "SERVING"
    reliability("grpc", "a stream past --max-stream-items (10)",
                f"first 2 batches answered, then RESOURCE_EXHAUSTED: {caught.value.details()}; a new stream is served")


def test_one_connection_cannot_take_every_slot(limited_embedder, reliability):
    """A greedy client holds its connection's streams open; another client is still served at once."""
    server = limited_embedder(max_streams_per_connection=2)
    release = threading.Event()

    def held_open():  # a request stream that sends one batch, then waits
        yield _batch(0, 1)
        release.wait(30)

    greedy = grpc.insecure_channel(server.address)
    stub = egrpc.EmbedderServiceStub(greedy)
    calls = [stub.EmbedStream(held_open(), timeout=30) for _ in range(2)]
    try:
        for call in calls:
            assert next(call).batch_id == 0  # both streams are open and answered
        waiting = stub.Embed.future(epb.EmbedRequest(text="a third call on the greedy connection"), timeout=2)
        with EmbedderClient(server.address) as other:
            assert other.embed("another client's line").shape == (384,)
        # the greedy connection's third call waited for a free stream instead of being served
        assert waiting.exception() is not None and waiting.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    finally:
        release.set()
        for call in calls:
            call.cancel()
        greedy.close()
    reliability("grpc", "one client holding all its connection's streams (--max-streams-per-connection 2)",
                "its third call waited (DEADLINE_EXCEEDED after 2 s); another client was served at once")


def test_streams_past_the_server_wide_limit_are_refused_not_queued(limited_embedder, reliability):
    """Open streams hold a thread each, so past --max-open-streams a new one is refused; short calls have
    capacity of their own and are still served."""
    server = limited_embedder(max_open_streams=2)
    release = threading.Event()

    def held_open():
        yield _batch(0, 1)
        release.wait(30)

    channels = [grpc.insecure_channel(server.address) for _ in range(2)]
    calls = [egrpc.EmbedderServiceStub(c).EmbedStream(held_open(), timeout=30) for c in channels]
    try:
        for call in calls:
            next(call)
        with EmbedderClient(server.address) as third:
            with pytest.raises(grpc.RpcError) as caught:
                third.embed_many(["a third stream, over the limit"])
            assert third.embed("a unary call is still served").shape == (384,)
        assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and "--max-open-streams" in caught.value.details()
    finally:
        release.set()
        for call in calls:
            call.cancel()
        for channel in channels:
            channel.close()
    # a cancelled stream leaves its slot when the server's handler returns, a moment after the client's cancel
    wait_for(lambda: server.admission.streams_in_server() == 0 or None, 30,
             "the server to release the cancelled streams' slots", every=0.01)
    with EmbedderClient(server.address) as client:
        assert client.embed_many(["served again once the streams end"]).shape == (1, 384)
    reliability("grpc", "more open streams than --max-open-streams (2)",
                f"the extra stream: RESOURCE_EXHAUSTED ({caught.value.details()}); a unary call was still served; "
                "streams served again once the others ended")

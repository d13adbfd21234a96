"""The embedder over real gRPC on loopback, with the real all-MiniLM-L6-v2."""
from __future__ import annotations

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from logmesh.client import ItemFailed
from logmesh.v1 import embedder_service_pb2 as pb, embedder_service_pb2_grpc as pbg

RECEIVING = "Receiving block blk_-1608999687919862906 src: /10.250.19.102:54106 dest: /10.250.19.102:50010"
RECEIVING_OTHER = "Receiving block blk_7503483334202473044 src: /10.251.71.16:51590 dest: /10.251.71.16:50010"
EXCEPTION = "writeBlock blk_-3102267849859399193 received exception java.io.IOException: Connection reset by peer"


def test_unary_embed_is_a_unit_vector_of_the_model(embedder, encoder):
    vec = embedder.embed(RECEIVING, record_id="r1")
    assert vec.shape == (384,) and vec.dtype == np.float32
    assert abs(float(np.linalg.norm(vec)) - 1.0) < 1e-4
    from logmesh.ingest.masking import mask
    assert np.allclose(vec, encoder.encode([mask(RECEIVING)])[0], atol=1e-5)


def test_masked_lines_share_a_vector_and_meaning_separates(embedder):
    a, b, c = embedder.embed_many([RECEIVING, RECEIVING_OTHER, EXCEPTION])
    assert np.array_equal(a, b)  # same shape after masking: one cache entry
    assert float(a @ c) < 0.9


def test_cache_sends_each_shape_to_the_model_once(embedder_server, embedder):
    servicer_engine = embedder_server.servicers["EmbedderService"].engine
    before = servicer_engine.encoded
    lines = [f"Deleting block blk_{i} file /mnt/hadoop/dfs/data/current/subdir{i}/blk_{i}" for i in range(300)]
    out = embedder.embed_many(lines, batch_size=64)
    assert out.shape == (300, 384)
    assert servicer_engine.encoded - before <= 1


def test_stream_answers_each_batch_with_per_item_errors(embedder_server):
    stub = pbg.EmbedderServiceStub(grpc.insecure_channel(embedder_server.address))
    requests = [
        pb.EmbedStreamRequest(batch_id=7, items=[pb.EmbedItem(record_id="a", text=RECEIVING),
                                                 pb.EmbedItem(record_id="b", text="   "),
                                                 pb.EmbedItem(record_id="c", text=EXCEPTION)]),
        pb.EmbedStreamRequest(batch_id=8, items=[pb.EmbedItem(record_id="d", text=RECEIVING)]),
    ]
    replies = list(stub.EmbedStream(iter(requests), timeout=30))
    assert [r.batch_id for r in replies] == [7, 8]
    first = replies[0].results
    assert [r.record_id for r in first] == ["a", "b", "c"]
    assert first[0].embedding.dim == 384 and first[2].embedding.dim == 384
    assert first[1].error.code == grpc.StatusCode.INVALID_ARGUMENT.value[0] and "empty" in first[1].error.message
    assert replies[1].results[0].embedding.vector == first[0].embedding.vector


def test_embed_many_raises_item_failed_with_the_reason(embedder):
    with pytest.raises(ItemFailed, match="empty"):
        embedder.embed_many([RECEIVING, ""])


def test_health_reports_serving_for_the_service_and_overall(embedder_server):
    stub = health_pb2_grpc.HealthStub(grpc.insecure_channel(embedder_server.address))
    for name in ("", "logmesh.v1.EmbedderService"):
        assert stub.Check(health_pb2.HealthCheckRequest(service=name), timeout=5).status == \
            health_pb2.HealthCheckResponse.SERVING
    with pytest.raises(grpc.RpcError) as info:
        stub.Check(health_pb2.HealthCheckRequest(service="no.such.Service"), timeout=5)
    assert info.value.code() == grpc.StatusCode.NOT_FOUND


def test_not_serving_until_the_model_loads():
    """A slow model load: health says NOT_SERVING and calls get UNAVAILABLE saying so."""
    import threading
    from logmesh.client import EmbedderClient
    from logmesh.embedder.service import serve
    gate = threading.Event()

    class SlowEncoder:
        dim = 384

        def __init__(self):
            gate.wait(10)

        def encode(self, texts):
            return np.ones((len(texts), 384), np.float32) / np.sqrt(384)

    server = serve(0, encoder_factory=SlowEncoder)  # a stand-in for the model, named as such: only load timing matters
    try:
        with EmbedderClient(server.address) as client:
            assert client.health() == "NOT_SERVING"
            with pytest.raises(grpc.RpcError) as info:
                client.embed(RECEIVING)
            assert info.value.code() == grpc.StatusCode.UNAVAILABLE and "loading" in info.value.details()
            gate.set()
            client.wait_until_serving(10)
            assert client.embed(RECEIVING).shape == (384,)
    finally:
        server.stop(0)

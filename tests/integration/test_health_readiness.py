"""The scorer's health reflects whether it can do its job: NOT_SERVING (and GetStats says why) while its
embedder is unreachable or not SERVING, SERVING once it is; a line it cannot score names the embedder's
address. Real scorer, real embedder (the session's model), real ports."""
from __future__ import annotations

import socket
import threading

import grpc

from logmesh.client import EmbedderClient, ScorerClient
from waiting import wait_for

NEW_SHAPE = "081109 203518 143 INFO dfs.DataNode$PacketResponder: readiness {} probe line never seen before"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _score(client: ScorerClient, text: str):  # type: ignore[no-untyped-def]
    [result] = list(client.score_lines([text]))
    return result


def test_not_serving_while_the_embedder_is_unreachable_serving_once_it_is_back(trained_models, encoder, reliability):
    from logmesh.embedder.service import serve as serve_embedder
    from logmesh.scorer.service import serve
    embedder_address = f"127.0.0.1:{_free_port()}"  # nothing listens there yet
    server = serve(0, trained_models, embedder_address, reload_interval=60)
    try:
        with ScorerClient(server.address) as client:
            stats = wait_for(lambda: (lambda s: s if "cannot reach" in s.embedder_status else None)(client.stats()),
                             10, "the probe to find the embedder unreachable")
            assert stats.model_version, "a model is loaded: the embedder alone is missing"
            assert client.health() == "NOT_SERVING"
            assert client.health(service="") == "SERVING"  # liveness: a restart would not bring the embedder
            assert stats.embedder_address == embedder_address and embedder_address in stats.embedder_status
            down = _score(client, NEW_SHAPE.format(1))
            assert down.error.code == grpc.StatusCode.UNAVAILABLE.value[0]
            assert embedder_address in down.error.message and "--embedder" in down.error.message

            embedder = serve_embedder(int(embedder_address.rsplit(":", 1)[1]), encoder_factory=lambda: encoder)
            try:
                client.wait_until_serving(30)
                assert client.stats().embedder_status == ""
                assert _score(client, NEW_SHAPE.format(2)).HasField("result")
            finally:
                embedder.stop(0)
            wait_for(lambda: client.health() == "NOT_SERVING", 15, "NOT_SERVING after the embedder stopped")
            assert "cannot reach" in client.stats().embedder_status
    finally:
        server.stop(0)
    reliability("fault", "scorer pointed at an embedder address where nothing listens",
                f"health NOT_SERVING; GetStats.embedder_status: \"{stats.embedder_status[:150]}\"; a new line: "
                f"UNAVAILABLE naming {embedder_address}; SERVING once an embedder started there, NOT_SERVING "
                "again when it stopped", lost="nothing (callers were told to retry)")


def test_not_serving_while_the_embedder_is_up_but_still_loading(trained_models, encoder):
    from logmesh.embedder.service import serve as serve_embedder
    from logmesh.scorer.service import serve
    loaded = threading.Event()

    def slow_model():  # the real model, handed over only when the test says so
        loaded.wait(30)
        return encoder

    embedder = serve_embedder(0, encoder_factory=slow_model)
    server = serve(0, trained_models, embedder.address, reload_interval=60)
    try:
        with ScorerClient(server.address) as client:
            status = wait_for(lambda: (lambda s: s if "answers NOT_SERVING" in s else None)(
                client.stats().embedder_status), 10, "the probe to find the embedder still loading")
            assert embedder.address in status and client.health() == "NOT_SERVING"
            loaded.set()
            EmbedderClient(embedder.address).wait_until_serving(30)
            client.wait_until_serving(15)
            assert client.stats().embedder_status == ""
    finally:
        loaded.set()
        server.stop(0)
        embedder.stop(0)

"""Bad input over gRPC, one table: each case sends one kind of bad request to a real server (the scorer with the
real model, the embedder with the real all-MiniLM-L6-v2), expects a status code and a message that says what is
wrong, then checks the server stayed healthy: health SERVING and a good request still answered."""
from __future__ import annotations

import dataclasses
from typing import Callable

import grpc
import numpy as np
import pytest

from logmesh import vectors
from logmesh.client import EmbedderClient, ItemFailed, ScorerClient
from logmesh.runtime.grpc_server import status_code
from logmesh.ingest.hdfs import parse_line
from logmesh.v1 import embedder_service_pb2 as epb, scorer_service_pb2 as spb

NORMAL_LINE = ("081109 204655 556 INFO dfs.DataNode$PacketResponder: Received block "
               "blk_3587508140051953248 of size 67108864 from /10.251.42.84")
RECEIVING = "Receiving block blk_-1608999687919862906 src: /10.250.19.102:54106 dest: /10.250.19.102:50010"
LONG = "x" * (64 * 1024 + 1)  # one byte over --max-line-bytes
HUGE = 10 * 1024 * 1024  # a 10 MiB line: over the line limit, under the message limit
INVALID = grpc.StatusCode.INVALID_ARGUMENT


class Targets:
    """The servers a case talks to: the session's real ones, and (made on first use) a scorer whose embedder
    stalls 1.5 s per call and such an embedder itself, for deadlines that expire."""

    def __init__(self, scorer_server, embedder_server, trained_models, stalling_embedder) -> None:  # type: ignore[no-untyped-def]
        self._servers = {"scorer": scorer_server, "embedder": embedder_server}
        self._trained_models, self._stalling = trained_models, stalling_embedder
        self._started: list = []

    def server(self, name: str):  # type: ignore[no-untyped-def]
        if name not in self._servers:
            from logmesh.scorer.service import serve
            slow = self._servers.setdefault("slow-embedder", self._stalling(1.5))
            if name == "slow-scorer":
                self._servers[name] = serve(0, self._trained_models, slow.address, reload_interval=60)
                self._started.append(self._servers[name])
                ScorerClient(self._servers[name].address).wait_until_serving(30)
        return self._servers[name]

    def address(self, name: str) -> str:
        return self.server(name).address

    def limits(self, name: str):  # type: ignore[no-untyped-def]
        return self.server(name).limits

    def scorer(self, name: str = "scorer") -> ScorerClient:
        return ScorerClient(self.address(name))

    def embedder(self, name: str = "embedder") -> EmbedderClient:
        return EmbedderClient(self.address(name))

    def raw(self, name: str, method: str) -> Callable[..., bytes]:
        """The method as bytes in, bytes out: requests no client library would build."""
        return grpc.insecure_channel(self.address(name)).unary_unary(method)

    def close(self) -> None:
        for server in self._started:
            server.stop(0)


def _rpc(call: Callable[[], object]) -> tuple[grpc.StatusCode, str]:
    try:
        call()
    except grpc.RpcError as exc:
        return exc.code(), exc.details() or ""
    return grpc.StatusCode.OK, ""


# --- the scorer ---

def _score(item: spb.ScoreItem) -> Callable[[Targets], tuple[grpc.StatusCode, str]]:
    """Unary Score of `item`, then the same item between two good ones in a ScoreStream: the bad one gets the
    same per-item error and the stream goes on."""
    def call(t: Targets) -> tuple[grpc.StatusCode, str]:
        with t.scorer() as scorer:
            code, details = _rpc(lambda: scorer.stub.Score(spb.ScoreRequest(item=item), timeout=30))
            good = spb.ScoreItem(raw_line=NORMAL_LINE)
            results = list(scorer.score_stream([good, item, good], timeout=30))
            assert [r.WhichOneof("outcome") for r in results] == ["result", "error", "result"]
            assert status_code(results[1].error.code) == code and results[1].error.message == details
        return code, details
    return call


def _embedding(vector: np.ndarray | bytes, dim: int | None = None) -> spb.ScoreItem:
    item = spb.ScoreItem(raw_line=NORMAL_LINE, embedding=vectors.to_message("r", "all-MiniLM-L6-v2", vector))
    if dim is not None:
        item.embedding.dim = dim
    return item


def _score_raw(data: bytes) -> Callable[[Targets], tuple[grpc.StatusCode, str]]:
    return lambda t: _rpc(lambda: t.raw("scorer", "/logmesh.v1.ScorerService/Score")(data, timeout=30))


def _score_message_over_limit(t: Targets) -> tuple[grpc.StatusCode, str]:
    size = t.limits("scorer").max_message_bytes + 1024
    request = spb.ScoreRequest(item=spb.ScoreItem(raw_line="x" * size)).SerializeToString()
    return _rpc(lambda: t.raw("scorer", "/logmesh.v1.ScorerService/Score")(request, timeout=60))


def _score_batch_over_limit(t: Targets) -> tuple[grpc.StatusCode, str]:
    limit = t.limits("scorer").max_batch_items
    with t.scorer() as scorer:
        try:
            list(scorer.score_stream([spb.ScoreItem(raw_line=NORMAL_LINE)] * (limit + 1), batch_size=limit + 1))
        except ItemFailed as exc:
            # the whole batch is refused; the same stream then takes a good batch
            replies = list(scorer.stub.ScoreStream(iter([
                spb.ScoreStreamRequest(batch_id=1, items=[spb.ScoreItem(raw_line=NORMAL_LINE)] * (limit + 1)),
                spb.ScoreStreamRequest(batch_id=2, items=[spb.ScoreItem(raw_line=NORMAL_LINE)])]), timeout=60))
            assert replies[0].HasField("error") and not replies[0].results
            assert replies[1].results[0].HasField("result")
            return status_code(exc.code), exc.message
    return grpc.StatusCode.OK, ""


def _score_stream_undecodable(t: Targets) -> tuple[grpc.StatusCode, str]:
    """An undecodable message inside a ScoreStream: that batch gets the error, the next one is scored."""
    channel = grpc.insecure_channel(t.address("scorer"))
    stream = channel.stream_stream("/logmesh.v1.ScorerService/ScoreStream")
    good = spb.ScoreStreamRequest(batch_id=2, items=[spb.ScoreItem(raw_line=NORMAL_LINE)]).SerializeToString()
    replies = [spb.ScoreStreamResponse.FromString(r) for r in stream(iter([b"\x12\x05\x12\x03\xff\xfe\xfd", good]),
                                                                      timeout=30)]
    assert replies[1].batch_id == 2 and replies[1].results[0].HasField("result")
    return status_code(replies[0].error.code), replies[0].error.message


def _score_deadline(t: Targets) -> tuple[grpc.StatusCode, str]:
    """The embedder behind this scorer stalls 1.5 s; the caller's 0.4 s deadline must bound the whole call."""
    import time
    with t.scorer("slow-scorer") as scorer:
        started = time.monotonic()
        result = _rpc(lambda: scorer.stub.Score(spb.ScoreRequest(item=spb.ScoreItem(raw_line=NORMAL_LINE)),
                                                timeout=0.4))
        assert time.monotonic() - started < 1.2
    return result


def _score_block(block: spb.BlockSession) -> Callable[[Targets], tuple[grpc.StatusCode, str]]:
    def call(t: Targets) -> tuple[grpc.StatusCode, str]:
        with t.scorer() as scorer:
            code, details = _rpc(lambda: scorer.stub.ScoreBlock(spb.ScoreBlockRequest(block=block), timeout=30))
            good = spb.BlockSession(block_id="blk_2", events=["E5", "E22"])
            results = list(scorer.score_blocks([good, block, good]))
            assert [r.WhichOneof("outcome") for r in results] == ["verdict", "error", "verdict"]
        return code, details
    return call


# --- the embedder ---

def _embed(text: str) -> Callable[[Targets], tuple[grpc.StatusCode, str]]:
    """Unary Embed of `text`, then the same text between two good ones in an EmbedStream."""
    def call(t: Targets) -> tuple[grpc.StatusCode, str]:
        with t.embedder() as embedder:
            code, details = _rpc(lambda: embedder.stub.Embed(epb.EmbedRequest(text=text), timeout=30))
            items = [epb.EmbedItem(record_id=r, text=x) for r, x in (("a", RECEIVING), ("b", text), ("c", RECEIVING))]
            [reply] = list(embedder.stub.EmbedStream(iter([epb.EmbedStreamRequest(batch_id=1, items=items)]),
                                                     timeout=30))
            assert [r.WhichOneof("outcome") for r in reply.results] == ["embedding", "error", "embedding"]
            assert status_code(reply.results[1].error.code) == code and reply.results[1].error.message == details
        return code, details
    return call


def _embed_raw(data: bytes) -> Callable[[Targets], tuple[grpc.StatusCode, str]]:
    return lambda t: _rpc(lambda: t.raw("embedder", "/logmesh.v1.EmbedderService/Embed")(data, timeout=30))


def _embed_message_over_limit(t: Targets) -> tuple[grpc.StatusCode, str]:
    size = t.limits("embedder").max_message_bytes + 1024
    request = epb.EmbedRequest(text="x" * size).SerializeToString()
    return _rpc(lambda: t.raw("embedder", "/logmesh.v1.EmbedderService/Embed")(request, timeout=60))


def _embed_batch_over_limit(t: Targets) -> tuple[grpc.StatusCode, str]:
    limit = t.limits("embedder").max_batch_items
    big = epb.EmbedStreamRequest(batch_id=1, items=[epb.EmbedItem(text=RECEIVING)] * (limit + 1))
    ok = epb.EmbedStreamRequest(batch_id=2, items=[epb.EmbedItem(text=RECEIVING)])
    with t.embedder() as embedder:
        replies = list(embedder.stub.EmbedStream(iter([big, ok]), timeout=60))
    assert not replies[0].results and replies[1].results[0].embedding.dim == 384  # the stream went on
    return status_code(replies[0].error.code), replies[0].error.message


def _embed_stream_undecodable(t: Targets) -> tuple[grpc.StatusCode, str]:
    stream = grpc.insecure_channel(t.address("embedder")).stream_stream("/logmesh.v1.EmbedderService/EmbedStream")
    good = epb.EmbedStreamRequest(batch_id=2, items=[epb.EmbedItem(text=RECEIVING)]).SerializeToString()
    replies = [epb.EmbedStreamResponse.FromString(r)
               for r in stream(iter([b"\x12\x05\x12\x03\xff\xfe\xfd", good]), timeout=30)]
    assert replies[1].batch_id == 2 and replies[1].results[0].embedding.dim == 384
    return status_code(replies[0].error.code), replies[0].error.message


def _embed_deadline(t: Targets) -> tuple[grpc.StatusCode, str]:
    with t.embedder("slow-embedder") as embedder:
        return _rpc(lambda: embedder.stub.Embed(epb.EmbedRequest(text=RECEIVING), timeout=0.3))


@dataclasses.dataclass(frozen=True)
class Case:
    name: str
    server: str  # which server gets it (and must stay SERVING): scorer, embedder, slow-scorer, slow-embedder
    call: Callable[[Targets], tuple[grpc.StatusCode, str]]
    code: grpc.StatusCode
    says: str  # a part of the message that names the problem


CASES = [
    # scorer
    Case("scorer Score: empty raw_line", "scorer", _score(spb.ScoreItem(raw_line="")), INVALID, "raw_line is empty"),
    Case("scorer Score: whitespace-only raw_line", "scorer", _score(spb.ScoreItem(raw_line=" \t\n")), INVALID, "empty"),
    Case("scorer Score: item with neither record nor raw_line", "scorer", _score(spb.ScoreItem()), INVALID,
         "neither record nor raw_line"),
    Case("scorer Score: record with an empty message", "scorer",
         _score(spb.ScoreItem(record=parse_line("", "x", 1))), INVALID, "empty message"),
    Case("scorer Score: line one byte over --max-line-bytes", "scorer", _score(spb.ScoreItem(raw_line=LONG)),
         INVALID, "line is 65537 bytes; the limit is 65536"),
    Case("scorer Score: 10 MiB line", "scorer", _score(spb.ScoreItem(raw_line="x" * HUGE)), INVALID,
         "the limit is 65536"),
    Case("scorer Score: record whose message is over --max-line-bytes", "scorer",
         _score(spb.ScoreItem(record=parse_line(NORMAL_LINE + LONG, "x", 1))), INVALID, "the limit is 65536"),
    Case("scorer Score: request over --max-message-bytes", "scorer", _score_message_over_limit,
         grpc.StatusCode.RESOURCE_EXHAUSTED, "larger than max"),
    Case("scorer Score: invalid UTF-8 in raw_line", "scorer", _score_raw(b"\x0a\x05\x12\x03\xff\xfe\xfd"), INVALID,
         "UTF-8"),
    Case("scorer Score: bytes that are not protobuf", "scorer", _score_raw(b"\xff\xff\xff\xff"), INVALID,
         "not a valid logmesh.v1.ScoreRequest"),
    Case("scorer ScoreStream: undecodable message in the stream", "scorer", _score_stream_undecodable, INVALID,
         "not a valid logmesh.v1.ScoreStreamRequest"),
    Case("scorer ScoreStream: batch one item over --max-batch", "scorer", _score_batch_over_limit, INVALID,
         "batch has 1025 items; the limit is 1024"),
    Case("scorer Score: embedding of the wrong dimension", "scorer", _score(_embedding(np.ones(100, np.float32))),
         INVALID, "embedding has dim 100; the model needs 384"),
    Case("scorer Score: embedding whose bytes do not match its dim", "scorer",
         _score(_embedding(np.ones(100, np.float32), dim=384)), INVALID, "dim 384 needs 1536"),
    Case("scorer Score: a NaN in the embedding", "scorer",
         _score(_embedding(np.where(np.arange(384) == 7, np.nan, 0.05).astype(np.float32))), INVALID, "NaN"),
    Case("scorer Score: an infinity in the embedding", "scorer",
         _score(_embedding(np.where(np.arange(384) == 0, np.inf, 0.05).astype(np.float32))), INVALID, "infinity"),
    Case("scorer ScoreBlock: empty block id", "scorer", _score_block(spb.BlockSession(block_id="", events=["E5"])),
         INVALID, "empty"),
    Case("scorer ScoreBlock: block without events", "scorer", _score_block(spb.BlockSession(block_id="blk_1")),
         INVALID, "no events"),
    Case("scorer Score: deadline (0.4 s) expires while the embedder stalls", "slow-scorer", _score_deadline,
         grpc.StatusCode.DEADLINE_EXCEEDED, "Deadline Exceeded"),
    # embedder
    Case("embedder Embed: empty text", "embedder", _embed(""), INVALID, "text is empty"),
    Case("embedder Embed: whitespace-only text", "embedder", _embed("  \n"), INVALID, "text is empty"),
    Case("embedder Embed: text one byte over --max-line-bytes", "embedder", _embed(LONG), INVALID,
         "text is 65537 bytes; the limit is 65536"),
    Case("embedder Embed: 10 MiB text", "embedder", _embed("x" * HUGE), INVALID, "the limit is 65536"),
    Case("embedder Embed: request over --max-message-bytes", "embedder", _embed_message_over_limit,
         grpc.StatusCode.RESOURCE_EXHAUSTED, "larger than max"),
    Case("embedder Embed: invalid UTF-8 in text", "embedder", _embed_raw(b"\x12\x03\xff\xfe\xfd"), INVALID, "UTF-8"),
    Case("embedder Embed: bytes that are not protobuf", "embedder", _embed_raw(b"\xff\xff\xff\xff"), INVALID,
         "not a valid logmesh.v1.EmbedRequest"),
    Case("embedder EmbedStream: undecodable message in the stream", "embedder", _embed_stream_undecodable, INVALID,
         "not a valid logmesh.v1.EmbedStreamRequest"),
    Case("embedder EmbedStream: batch one item over --max-batch", "embedder", _embed_batch_over_limit, INVALID,
         "batch has 1025 items; the limit is 1024"),
    Case("embedder Embed: deadline (0.3 s) expires while the model stalls", "slow-embedder", _embed_deadline,
         grpc.StatusCode.DEADLINE_EXCEEDED, "Deadline Exceeded"),
]


@pytest.fixture()
def targets(scorer_server, embedder_server, trained_models, stalling_embedder):
    t = Targets(scorer_server, embedder_server, trained_models, stalling_embedder)
    yield t
    t.close()


def _still_serving(t: Targets, server: str) -> None:
    """Health SERVING and a good request answered, on the server that got the bad input."""
    if "scorer" in server:
        with t.scorer(server) as scorer:
            assert scorer.health() == "SERVING"
            item = spb.ScoreItem(raw_line=NORMAL_LINE)
            if server == "slow-scorer":  # its embedder stalls on purpose: a line with its own embedding needs none
                item = _embedding(np.full(384, 1 / np.sqrt(384), np.float32))
            result = scorer.stub.Score(spb.ScoreRequest(item=item), timeout=30).result
            assert result.template_id == "E9" and result.anomaly_votes + result.normal_votes == 5
    else:
        with t.embedder(server) as embedder:
            assert embedder.health() == "SERVING"
            assert embedder.stub.Embed(epb.EmbedRequest(text=RECEIVING), timeout=30).embedding.dim == 384


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_bad_input_gets_its_status_and_the_server_stays_serving(case: Case, targets: Targets, reliability):
    code, details = case.call(targets)
    assert code == case.code, f"{case.name}: got {code.name}: {details}"
    assert case.says in details, f"{case.name}: message {details!r} does not say {case.says!r}"
    _still_serving(targets, case.server)
    reliability("grpc", case.name, f"{code.name}: {details[:160]}; server stayed SERVING")

"""Typed Python clients over the generated stubs.

    from logmesh.client import ScorerClient
    with ScorerClient("127.0.0.1:50052") as scorer:
        result = scorer.score_line("081109 204655 556 INFO dfs.DataNode$PacketResponder: Received block ...")
        print(result.verdict, result.score)
"""
from __future__ import annotations

import itertools
from typing import Iterable, Iterator, Sequence

import grpc
import numpy as np
from grpc_health.v1 import health_pb2, health_pb2_grpc

from logmesh import vectors
from logmesh.security import ChannelSecurity
from logmesh.v1 import (embedder_service_pb2 as epb, embedder_service_pb2_grpc as egrpc, log_record_pb2,
                        scorer_service_pb2 as spb, scorer_service_pb2_grpc as sgrpc, score_pb2)

DEFAULT_EMBEDDER = "127.0.0.1:50051"
DEFAULT_SCORER = "127.0.0.1:50052"
_OPTIONS = [("grpc.max_receive_message_length", 64 * 1024 * 1024),
            ("grpc.max_send_message_length", 64 * 1024 * 1024)]


class ItemFailed(Exception):
    """One item of a batch came back with a per-item error."""

    def __init__(self, record_id: str, code: int, message: str) -> None:
        name = next((c.name for c in grpc.StatusCode if c.value[0] == code), str(code))
        super().__init__(f"{record_id or '<item>'}: {name}: {message}")
        self.record_id, self.code, self.message = record_id, code, message


def _chunks(items: Iterable, size: int) -> Iterator[tuple[int, list]]:  # type: ignore[type-arg]
    iterator = iter(items)
    for batch_id in itertools.count():
        chunk = list(itertools.islice(iterator, size))
        if not chunk:
            return
        yield batch_id, chunk


def _results(replies: Iterable) -> Iterator:  # type: ignore[type-arg]
    """Per-item results of a batched stream; a whole-batch error raises ItemFailed."""
    for reply in replies:
        if reply.HasField("error"):
            raise ItemFailed(f"batch {reply.batch_id}", reply.error.code, reply.error.message)
        yield from reply.results


class _Client:
    service = ""

    def __init__(self, address: str, timeout: float = 30.0, security: ChannelSecurity | None = None) -> None:
        """`security` defaults to the LOGMESH_TLS_* / LOGMESH_TOKEN environment (security.py)."""
        self.address = address
        self.timeout = timeout
        self.security = security or ChannelSecurity.from_env()
        self.channel = self.security.channel(address, _OPTIONS)
        self._health = health_pb2_grpc.HealthStub(self.channel)

    def health(self, service: str | None = None, timeout: float = 5.0) -> str:
        """"SERVING", "NOT_SERVING", ... for the service (default: this client's)."""
        reply = self._health.Check(health_pb2.HealthCheckRequest(service=self.service if service is None else service),
                                   timeout=timeout)
        return health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)

    def wait_until_serving(self, timeout: float = 60.0) -> None:
        """Blocks until the health check says SERVING; raises TimeoutError with the last status."""
        import time
        deadline = time.monotonic() + timeout
        last = "no answer"
        while time.monotonic() < deadline:
            try:
                last = self.health(timeout=min(2.0, max(0.1, deadline - time.monotonic())))
                if last == "SERVING":
                    return
            except grpc.RpcError as exc:
                last = f"{exc.code().name}: {exc.details()}"
            time.sleep(0.1)
        raise TimeoutError(f"{self.service} at {self.address} not SERVING after {timeout:.0f}s (last: {last})")

    def close(self) -> None:
        self.channel.close()

    def __enter__(self):  # type: ignore[no-untyped-def]
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class EmbedderClient(_Client):
    service = "logmesh.v1.EmbedderService"

    def __init__(self, address: str = DEFAULT_EMBEDDER, timeout: float = 30.0,
                 security: ChannelSecurity | None = None) -> None:
        super().__init__(address, timeout, security)
        self.stub = egrpc.EmbedderServiceStub(self.channel)

    def embed(self, text: str, record_id: str = "") -> np.ndarray:
        reply = self.stub.Embed(epb.EmbedRequest(record_id=record_id, text=text), timeout=self.timeout)
        return vectors.from_message(reply.embedding)

    def embed_each(self, texts: Sequence[str], batch_size: int = 256,
                   timeout: float | None = None) -> tuple[np.ndarray, dict[int, ItemFailed]]:
        """Like embed_many, but a bad item does not fail the rest: (matrix with zero rows where an item
        failed, {position: ItemFailed}). A whole-batch error still raises ItemFailed."""
        batches = [epb.EmbedStreamRequest(batch_id=b, items=[epb.EmbedItem(record_id=str(i), text=t)
                                                             for i, t in enumerate(texts[s:s + batch_size], s)])
                   for b, s in enumerate(range(0, len(texts), batch_size))]
        matrix = np.zeros((len(texts), 384), np.float32)
        failed: dict[int, ItemFailed] = {}
        for reply in self.stub.EmbedStream(iter(batches), timeout=timeout or self.timeout):
            if reply.HasField("error"):
                raise ItemFailed(f"batch {reply.batch_id}", reply.error.code, reply.error.message)
            for result in reply.results:
                position = int(result.record_id)
                if result.HasField("error"):
                    failed[position] = ItemFailed(result.record_id, result.error.code, result.error.message)
                else:
                    matrix[position] = vectors.from_message(result.embedding)
        return matrix, failed

    def embed_many(self, texts: Sequence[str], batch_size: int = 256, timeout: float | None = None) -> np.ndarray:
        """(len(texts), dim) float32, over one EmbedStream; raises ItemFailed on the first bad item."""
        batches = [epb.EmbedStreamRequest(batch_id=b, items=[epb.EmbedItem(record_id=str(i), text=t)
                                                             for i, t in enumerate(texts[s:s + batch_size], s)])
                   for b, s in enumerate(range(0, len(texts), batch_size))]
        rows: list[np.ndarray] = []
        for reply in self.stub.EmbedStream(iter(batches), timeout=timeout or self.timeout):
            if reply.HasField("error"):
                raise ItemFailed(f"batch {reply.batch_id}", reply.error.code, reply.error.message)
            for result in reply.results:
                if result.HasField("error"):
                    raise ItemFailed(result.record_id, result.error.code, result.error.message)
                rows.append(vectors.from_message(result.embedding))
        return np.stack(rows) if rows else np.zeros((0, 384), np.float32)


class ScorerClient(_Client):
    service = "logmesh.v1.ScorerService"

    def __init__(self, address: str = DEFAULT_SCORER, timeout: float = 30.0,
                 security: ChannelSecurity | None = None) -> None:
        super().__init__(address, timeout, security)
        self.stub = sgrpc.ScorerServiceStub(self.channel)

    def score_line(self, raw_line: str) -> score_pb2.ScoreResult:
        """Scores one raw loghub HDFS line (the scorer parses it)."""
        return self.stub.Score(spb.ScoreRequest(item=spb.ScoreItem(raw_line=raw_line)), timeout=self.timeout).result

    def score_record(self, record: log_record_pb2.LogRecord) -> score_pb2.ScoreResult:
        return self.stub.Score(spb.ScoreRequest(item=spb.ScoreItem(record=record)), timeout=self.timeout).result

    def score_stream(self, items: Iterable[spb.ScoreItem], batch_size: int = 256,
                     timeout: float | None = None) -> Iterator[spb.ScoreItemResult]:
        """Scores items over one ScoreStream in batches; yields one ScoreItemResult per item, in order.
        A whole-batch error (over the server's limit) is raised as ItemFailed."""
        requests = (spb.ScoreStreamRequest(batch_id=i, items=chunk) for i, chunk in _chunks(items, batch_size))
        yield from _results(self.stub.ScoreStream(requests, timeout=timeout))

    def score_blocks(self, blocks: Iterable[spb.BlockSession], batch_size: int = 256,
                     timeout: float | None = None) -> Iterator[spb.ScoreBlockResult]:
        """Judges blocks over one ScoreBlockStream; one ScoreBlockResult per block, in order."""
        requests = (spb.ScoreBlockStreamRequest(batch_id=i, blocks=chunk) for i, chunk in _chunks(blocks, batch_size))
        yield from _results(self.stub.ScoreBlockStream(requests, timeout=timeout))

    def score_lines(self, raw_lines: Iterable[str], batch_size: int = 256) -> Iterator[spb.ScoreItemResult]:
        return self.score_stream((spb.ScoreItem(raw_line=line) for line in raw_lines), batch_size)

    def watch(self, min_score: float = 0.0, block_id: str = "", component: str = "", blocks_only: bool = False,
              timeout: float | None = None) -> Iterator[score_pb2.Anomaly]:
        """Anomalies as the scorer records them; runs until cancelled or `timeout` passes."""
        request = spb.WatchAnomaliesRequest(min_score=min_score, block_id=block_id, component=component,
                                            blocks_only=blocks_only)
        for reply in self.stub.WatchAnomalies(request, timeout=timeout):
            yield reply.anomaly

    def stats(self) -> spb.GetStatsResponse:
        return self.stub.GetStats(spb.GetStatsRequest(), timeout=self.timeout)

    def anomalies(self, page_size: int = 50, page_token: str = "", min_score: float = 0.0,
                  block_id: str = "") -> spb.ListAnomaliesResponse:
        return self.stub.ListAnomalies(spb.ListAnomaliesRequest(page_size=page_size, page_token=page_token,
                                                                min_score=min_score, block_id=block_id),
                                       timeout=self.timeout)


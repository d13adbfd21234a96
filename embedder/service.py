"""EmbedderService over gRPC: unary Embed and batched EmbedStream, with per-item errors."""
from __future__ import annotations

import logging
import threading
import time
from typing import Callable, Iterator

import grpc

from logmesh import vectors
from logmesh.embedder.cache import DEFAULT_CACHE_BYTES, EmbeddingCache
from logmesh.embedder.encoder import MODEL_NAME
from logmesh.embedder.engine import CachedEmbedder, Encoder
from logmesh.runtime.grpc_server import (Limits, Server, ServerSecurity, Undecodable, batch_problem, item_error,
                                 reject_undecodable)
from logmesh.runtime.replies import split_replies
from logmesh.v1 import embedder_service_pb2 as pb

log = logging.getLogger("logmesh.embedder")
SERVICE = pb.DESCRIPTOR.services_by_name["EmbedderService"]
#: a batch as a client's first call sends it (the encoder's batch size, HDFS-shape lengths): a fresh embedder's
#: first such call took 25-50 ms over the next ones (docs/benchmarks.md, cold start), after the one-line warm-up
WARM_UP_BATCH = ["dfs.DataNode$PacketResponder: PacketResponder <*> for block <*> terminating" + " warm-up" * (i % 8)
                 for i in range(32)]


def text_problem(text: str, limits: Limits) -> str | None:
    """Why `text` cannot be embedded, or None."""
    if not text.strip():
        return "text is empty; send the log line (or its message) to embed"
    size = len(text.encode("utf-8"))
    if size > limits.max_line_bytes:
        return f"text is {size} bytes; the limit is {limits.max_line_bytes} bytes (--max-line-bytes)"
    return None


class EmbedderServicer:
    def __init__(self, limits: Limits) -> None:
        self.limits = limits
        self.engine: CachedEmbedder | None = None
        self.load_error: str | None = None

    def _engine(self, context: grpc.ServicerContext) -> CachedEmbedder:
        if self.engine is None:
            reason = self.load_error or "the model is still loading"
            context.abort(grpc.StatusCode.UNAVAILABLE, f"{reason}; retry when health reports SERVING")
        return self.engine  # type: ignore[return-value]

    def Embed(self, request: pb.EmbedRequest, context: grpc.ServicerContext) -> pb.EmbedResponse:
        reject_undecodable(request, context)
        problem = text_problem(request.text, self.limits)
        if problem:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, problem)
        engine = self._engine(context)
        [vector] = engine.embed([request.text])
        return pb.EmbedResponse(embedding=vectors.to_message(request.record_id, MODEL_NAME, vector))

    def EmbedStream(self, requests: Iterator[pb.EmbedStreamRequest],
                    context: grpc.ServicerContext) -> Iterator[pb.EmbedStreamResponse]:
        for request in requests:  # an answer over the message limit goes in several replies (replies.py)
            reply = self._embed_batch(request, context)
            if reply.HasField("error"):
                yield reply
                continue
            yield from split_replies(reply.results, lambda chunk: pb.EmbedStreamResponse(batch_id=reply.batch_id,
                                                                                         results=chunk),
                                     self.limits.max_message_bytes, _too_large)

    def _embed_batch(self, request: pb.EmbedStreamRequest | Undecodable,
                     context: grpc.ServicerContext) -> pb.EmbedStreamResponse:
        if isinstance(request, Undecodable):
            return pb.EmbedStreamResponse(error=item_error(grpc.StatusCode.INVALID_ARGUMENT, request.reason))
        reply = pb.EmbedStreamResponse(batch_id=request.batch_id)
        too_big = batch_problem(len(request.items), self.limits)
        if too_big:
            reply.error.CopyFrom(item_error(grpc.StatusCode.INVALID_ARGUMENT, too_big))
            return reply
        engine = self._engine(context)
        problems = [text_problem(item.text, self.limits) for item in request.items]
        good = [item.text for item, p in zip(request.items, problems) if p is None]
        embedded = iter(engine.embed(good) if good else [])
        for item, problem in zip(request.items, problems):
            result = reply.results.add(record_id=item.record_id)
            if problem:
                result.error.CopyFrom(item_error(grpc.StatusCode.INVALID_ARGUMENT, problem))
            else:
                result.embedding.CopyFrom(vectors.to_message(item.record_id, MODEL_NAME, next(embedded)))
        return reply


def _too_large(result: pb.EmbedResult, size: int) -> pb.EmbedResult:
    return pb.EmbedResult(record_id=result.record_id[:256], error=item_error(
        grpc.StatusCode.RESOURCE_EXHAUSTED, f"the result is {size} bytes, over the message limit "
                                            "(--max-message-bytes); send a shorter record_id"))


def serve(port: int, host: str = "127.0.0.1", limits: Limits = Limits(), threads: int = 1,
          cache_bytes: int = DEFAULT_CACHE_BYTES, encoder_factory: Callable[[], Encoder] | None = None,
          security: ServerSecurity | None = None) -> Server:
    """Starts the server at once (NOT_SERVING) and loads the model in the background. `cache_bytes` bounds
    the embedding cache (embedder/cache.py)."""
    servicer = EmbedderServicer(limits)
    server = Server([(SERVICE, servicer)], port, host, limits, security).start()
    log.info("embedder listening", extra={"address": server.address, "threads": threads})

    def load() -> None:
        started = time.perf_counter()
        try:
            if encoder_factory is None:
                from logmesh.embedder.encoder import SentenceEncoder
                encoder: Encoder = SentenceEncoder(threads=threads)
            else:
                encoder = encoder_factory()
            engine = CachedEmbedder(encoder, EmbeddingCache(cache_bytes))
            engine.embed(["warm-up line"])  # first call pays the runtime's lazy init, not a client
            encoder.encode(WARM_UP_BATCH)  # and a full batch of line-long texts (not cached: nothing is kept)
        except Exception as exc:  # any failure is reported through health and UNAVAILABLE
            servicer.load_error = f"model failed to load: {exc}"
            log.exception("model failed to load")
            return
        servicer.engine = engine
        server.set_serving(True)
        log.info("embedder serving", extra={"model": MODEL_NAME, "dim": engine.dim,
                                            "backend": getattr(encoder, "backend", type(encoder).__name__),
                                            "load_s": round(time.perf_counter() - started, 2)})

    threading.Thread(target=load, name="model-loader", daemon=True).start()
    return server

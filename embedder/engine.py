"""Embedding with a cache in front: each distinct masked line shape reaches the model once."""
from __future__ import annotations

import threading
from concurrent.futures import Future
from typing import Protocol

import numpy as np
from prometheus_client import Counter

from logmesh.embedder.cache import EmbeddingCache
from logmesh.ingest.masking import mask
from logmesh.runtime.metrics import REGISTRY

ENCODED = Counter("logmesh_embedder_shapes_encoded_total",
                  "Line shapes that went through the model (a shape another call was encoding is waited for).",
                  registry=REGISTRY)


class Encoder(Protocol):
    dim: int

    def encode(self, texts: list[str]) -> np.ndarray: ...


class CachedEmbedder:
    """Masks each text (block ids, IPs, numbers), looks the shape up, encodes only the misses.

    Concurrent calls often miss the same new shape together (a job's tasks start on the same lines, and the
    encoder runs one call at a time), so a shape another call is encoding now is waited for, not encoded again."""

    def __init__(self, encoder: Encoder, cache: EmbeddingCache) -> None:
        self.encoder = encoder
        self.cache = cache
        self.dim = encoder.dim
        self.encoded = 0  # texts that went through the model
        self._in_flight: dict[str, Future[bytes]] = {}
        self._in_flight_lock = threading.Lock()

    def embed(self, texts: list[str]) -> list[bytes]:
        """float32 little-endian bytes per text, in order."""
        shapes = [mask(t) for t in texts]
        found = self.cache.get_many(shapes)
        missing = list(dict.fromkeys(s for s, v in zip(shapes, found) if v is None))
        if missing:
            fresh = self._encode_once(missing)
            found = [v if v is not None else fresh[s] for s, v in zip(shapes, found)]
        return found  # type: ignore[return-value]

    def _encode_once(self, shapes: list[str]) -> dict[str, bytes]:
        mine: dict[str, Future[bytes]] = {}
        theirs: dict[str, Future[bytes]] = {}
        with self._in_flight_lock:
            # a shape whose encode ended since our lookup is in the cache by now (put before it leaves in-flight)
            done = self.cache.peek_many([s for s in shapes if s not in self._in_flight])
            for shape in shapes:
                if shape in done:
                    continue
                if shape in self._in_flight:
                    theirs[shape] = self._in_flight[shape]
                else:
                    mine[shape] = self._in_flight[shape] = Future()
        out = dict(done)
        if mine:
            try:
                vectors = self.encoder.encode(list(mine))
                fresh = {s: vectors[i].astype("<f4").tobytes() for i, s in enumerate(mine)}
                self.cache.put_many(fresh)
            except BaseException as exc:
                for future in mine.values():
                    future.set_exception(exc)
                raise
            finally:
                with self._in_flight_lock:
                    for shape in mine:
                        del self._in_flight[shape]
            for shape, future in mine.items():
                future.set_result(fresh[shape])
            self.encoded += len(mine)
            ENCODED.inc(len(mine))
            out.update(fresh)
        for shape, future in theirs.items():
            out[shape] = future.result()  # the other call's error, if its encode failed
        return out

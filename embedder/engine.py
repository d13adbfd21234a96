"""Embedding with a cache in front: each distinct masked line shape reaches the model once."""
from __future__ import annotations

from typing import Protocol

import numpy as np

from logmesh.embedder.cache import EmbeddingCache
from logmesh.ingest.masking import mask


class Encoder(Protocol):
    dim: int

    def encode(self, texts: list[str]) -> np.ndarray: ...


class CachedEmbedder:
    """Masks each text (block ids, IPs, numbers), looks the shape up, encodes only the misses."""

    def __init__(self, encoder: Encoder, cache: EmbeddingCache) -> None:
        self.encoder = encoder
        self.cache = cache
        self.dim = encoder.dim
        self.encoded = 0  # texts that went through the model

    def embed(self, texts: list[str]) -> list[bytes]:
        """float32 little-endian bytes per text, in order."""
        shapes = [mask(t) for t in texts]
        found = self.cache.get_many(shapes)
        missing = list(dict.fromkeys(s for s, v in zip(shapes, found) if v is None))
        if missing:
            vectors = self.encoder.encode(missing)
            fresh = {s: vectors[i].astype("<f4").tobytes() for i, s in enumerate(missing)}
            self.cache.put_many(fresh)
            self.encoded += len(missing)
            found = [v if v is not None else fresh[s] for s, v in zip(shapes, found)]
        return found  # type: ignore[return-value]

"""The Embedding wire format: L2-normalised little-endian float32 bytes (see embedding.proto)."""
from __future__ import annotations

import numpy as np

from logmesh.v1 import embedding_pb2

DTYPE = np.dtype("<f4")


def to_message(record_id: str, model: str, vector: np.ndarray | bytes) -> embedding_pb2.Embedding:
    data = vector if isinstance(vector, bytes) else np.ascontiguousarray(vector, dtype=DTYPE).tobytes()
    return embedding_pb2.Embedding(record_id=record_id, model=model, dim=len(data) // 4, vector=data)


def from_message(embedding: embedding_pb2.Embedding) -> np.ndarray:
    """The vector as a float32 array (a view of the message's bytes, read-only)."""
    return np.frombuffer(embedding.vector, dtype=DTYPE)


def check(embedding: embedding_pb2.Embedding, dim: int) -> str | None:
    """Why `embedding` cannot be used with a `dim`-dimensional model, or None if it can."""
    if embedding.dim != dim:
        return f"embedding has dim {embedding.dim}; the model needs {dim}"
    if len(embedding.vector) != 4 * dim:
        return f"embedding vector is {len(embedding.vector)} bytes; dim {dim} needs {4 * dim} (float32 little-endian)"
    if not np.isfinite(from_message(embedding)).all():
        return "embedding vector contains NaN or infinity"
    return None

"""A block point's running mean vector, merged idempotently across micro-batches.

The block's events live in Spark's state (block_sessions.py); its vector lives in its vector-store
point, whose payload records the offsets of the lines already counted, so merging a replayed batch
changes nothing and the vector stays the mean of the block's line embeddings.
"""
from __future__ import annotations

import dataclasses

import numpy as np


@dataclasses.dataclass
class BlockLine:
    coordinates: str  # topic/partition/offset
    offset: int
    vector: np.ndarray
    record_id: str
    anomalous: bool


def merge(payload: dict | None, vector: np.ndarray | None,
          lines: list[BlockLine]) -> tuple[dict, np.ndarray | None]:
    """The block's payload and mean vector after adding `lines` it has not counted yet."""
    payload = dict(payload or {})
    seen = set(payload.get("offsets", []))
    fresh = sorted((l for l in lines if l.coordinates not in seen), key=lambda l: l.offset)
    n = int(payload.get("lines", 0))
    if not fresh:
        return payload, vector
    total = np.sum([l.vector for l in fresh], axis=0)
    if vector is not None and n:
        total = total + vector * n
    n += len(fresh)
    payload["offsets"] = [*payload.get("offsets", []), *(l.coordinates for l in fresh)]
    payload["anomalous_record_ids"] = [*payload.get("anomalous_record_ids", []),
                                       *(l.record_id for l in fresh if l.anomalous)]
    payload["lines"] = n
    return payload, (total / n).astype(np.float32)

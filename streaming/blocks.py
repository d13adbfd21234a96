"""Per-block accumulation across micro-batches, kept in the block's vector-store point.

A block point's payload holds the offsets of the lines already counted, so merging a replayed batch
changes nothing (idempotent), and the point's vector is the running mean of its lines' embeddings.
"""
from __future__ import annotations

import dataclasses

import numpy as np


@dataclasses.dataclass
class BlockLine:
    coordinates: str  # topic/partition/offset
    offset: int
    template_id: str
    event_time: str  # RFC 3339, "" when unknown
    vector: np.ndarray
    record_id: str
    anomalous: bool


def merge(payload: dict | None, vector: np.ndarray | None, lines: list[BlockLine]) -> tuple[dict, np.ndarray, bool]:
    """The block's payload and mean vector after adding `lines`; the flag says whether anything was new."""
    payload = dict(payload or {})
    seen = set(payload.get("offsets", []))
    fresh = sorted((l for l in lines if l.coordinates not in seen), key=lambda l: l.offset)
    n = int(payload.get("lines", 0))
    mean = vector if vector is not None and n else np.zeros(len(lines[0].vector), np.float32)
    if fresh:
        total = mean * n + np.sum([l.vector for l in fresh], axis=0)
        n += len(fresh)
        mean = (total / n).astype(np.float32)
        payload["offsets"] = [*payload.get("offsets", []), *(l.coordinates for l in fresh)]
        payload["events"] = [*payload.get("events", []), *(l.template_id for l in fresh)]
        payload["anomalous_record_ids"] = [*payload.get("anomalous_record_ids", []),
                                           *(l.record_id for l in fresh if l.anomalous)]
        times = [t for t in (payload.get("first_time"), payload.get("last_time"), *(l.event_time for l in fresh)) if t]
        if times:
            payload["first_time"], payload["last_time"] = min(times), max(times)
        payload["lines"] = n
    return payload, mean, bool(fresh)

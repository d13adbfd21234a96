"""A block point's running mean vector, merged idempotently across micro-batches.

The block's events live in Spark's state (block_sessions.py); its vector lives in its vector-store
point, whose payload records, per Kafka partition, the highest offset of the lines already counted
(`counted`), so merging a replayed batch changes nothing and the vector stays the mean of the block's
line embeddings. One offset per partition is enough: a block is a Kafka key, so its lines sit in one
partition, and Spark reads a partition's offsets in order, batch after batch. (Points written before
this kept every counted line's coordinates in `offsets`, which grew with the block and slowed every
upsert; they are read as before and rewritten in the new form on their next line.)
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

    @property
    def partition(self) -> str:
        return self.coordinates.rsplit("/", 1)[0]  # topic/partition


def counted(payload: dict) -> dict[str, int]:
    """topic/partition -> the highest offset a block point has counted (from either payload form)."""
    out = {k: int(v) for k, v in (payload.get("counted") or {}).items()}
    for coordinates in payload.get("offsets", []):  # the earlier form: every counted line's coordinates
        partition, offset = coordinates.rsplit("/", 1)
        out[partition] = max(out.get(partition, -1), int(offset))
    return out


def merge(payload: dict | None, vector: np.ndarray | None,
          lines: list[BlockLine]) -> tuple[dict, np.ndarray | None]:
    """The block's payload and mean vector after adding `lines` it has not counted yet."""
    payload = dict(payload or {})
    high = counted(payload)
    fresh = sorted((l for l in lines if l.offset > high.get(l.partition, -1)), key=lambda l: l.offset)
    n = int(payload.get("lines", 0))
    if not fresh:
        return payload, vector
    total = np.sum([l.vector for l in fresh], axis=0)
    if vector is not None and n:
        total = total + vector * n
    n += len(fresh)
    for line in fresh:
        high[line.partition] = max(high.get(line.partition, -1), line.offset)
    payload.pop("offsets", None)
    payload["counted"] = high
    payload["anomalous_record_ids"] = [*payload.get("anomalous_record_ids", []),
                                       *(l.record_id for l in fresh if l.anomalous)]
    payload["lines"] = n
    return payload, (total / n).astype(np.float32)

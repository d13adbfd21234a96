"""The anomaly history: a bounded, newest-first log of flagged lines and blocks, each entered with its
similar past cases (the nearest earlier anomalies, scorer/similar.py)."""
from __future__ import annotations

import threading
from collections import Counter, deque
from typing import Collection, Mapping, Sequence

import numpy as np
from google.protobuf.timestamp_pb2 import Timestamp

from logmesh.ingest.masking import line_shape
from logmesh.scorer.block_model import EVENTS
from logmesh.scorer.similar import Case, Item, Neighbours, SimilarIndex
from logmesh.v1 import score_pb2

SIMILAR_K = 5
LINE_DIM = 384
#: The share of two blocks' similarity that comes from their evidence events (events the served block model
#: never saw in a normal block: an exception, a timeout, a failed delete: what says *how* a block failed); the
#: rest comes from the routine events every block shares. So blocks that failed the same way come first, and
#: among them the ones whose write/replicate/delete history looked alike.
EVIDENCE_SHARE = 0.8
_EVENT_INDEX = {e: i for i, e in enumerate(EVENTS)}


class AnomalyHistory:
    def __init__(self, max_entries: int = 100_000, similar_k: int = SIMILAR_K, line_shapes: int = 4096,
                 block_profiles: int = 16_384) -> None:
        self._entries: deque[score_pb2.Anomaly] = deque(maxlen=max_entries)
        self._next_id = 1
        self._lock = threading.Condition()
        # distinct past cases kept (least recently seen dropped first): HDFS has ~30 templates, so a few
        # thousand masked line shapes is ample (6 MB); block profiles are 31 numbers each
        self.similar_lines = SimilarIndex(LINE_DIM, line_shapes, similar_k)             # key: masked line shape
        self.similar_blocks = SimilarIndex(len(EVENTS), block_profiles, similar_k)     # key: the bag of events

    def add_lines(self, results: Sequence[score_pb2.ScoreResult], vectors: Mapping[str, np.ndarray] | None = None,
                  labels: Mapping[str, int] | None = None, shapes: Sequence[str] | None = None) -> None:
        """Records flagged lines. `vectors` maps a masked line shape to its embedding (a shape seen before
        needs none); `labels` maps record ids to known labels; `shapes` are the results' masked shapes if the
        caller has them. Each entry gets its nearest earlier anomalous lines, one per distinct shape."""
        vectors, labels = vectors or {}, labels or {}
        if shapes is None:
            shapes = [line_shape(r.component, r.message) for r in results]
        items = [Item(shape, vectors.get(shape), Case(r.record_id, r.message, labels.get(r.record_id, 0), r.verdict))
                 for r, shape in zip(results, shapes)]
        now = Timestamp()
        now.GetCurrentTime()
        with self._lock:  # one order for the index and the log
            found = self.similar_lines.add(items)
            for result, similar in zip(results, found):
                entry = score_pb2.Anomaly(id=self._next_id, recorded_time=now, line=result)
                _fill(entry.line.similar, similar)
                self._entries.append(entry)
                self._next_id += 1
            self._lock.notify_all()

    def add_blocks(self, verdicts: Sequence[score_pb2.BlockVerdict], evidence: Collection[str] = ()) -> None:
        """Records block verdicts, each with its nearest earlier anomalous blocks (one per distinct bag of
        events, never the block itself): cosine over their event profiles (`block_profile`)."""
        items = []
        for v in verdicts:
            counts = Counter(v.events)
            items.append(Item(tuple(sorted(counts.items())), block_profile(counts, evidence),
                              Case(v.block_id, block_summary(v.events), v.label, v.verdict)))
        now = Timestamp()
        now.GetCurrentTime()
        with self._lock:
            found = self.similar_blocks.add(items)
            for verdict, similar in zip(verdicts, found):
                entry = score_pb2.Anomaly(id=self._next_id, recorded_time=now, block=verdict)
                _fill(entry.block.similar, similar)
                self._entries.append(entry)
                self._next_id += 1
            self._lock.notify_all()

    def page(self, size: int, before_id: int | None, min_score: float = 0.0,
             block_id: str = "") -> tuple[list[score_pb2.Anomaly], int | None]:
        """Up to `size` entries with id < before_id, newest first, and the id to continue below (or None)."""
        with self._lock:
            snapshot = list(self._entries)
        out: list[score_pb2.Anomaly] = []
        for entry in reversed(snapshot):
            if before_id is not None and entry.id >= before_id:
                continue
            subject = entry.line if entry.HasField("line") else entry.block
            if subject.score < min_score:
                continue
            if block_id and block_id not in (entry.line.block_ids if entry.HasField("line") else [entry.block.block_id]):
                continue
            if len(out) == size:
                return out, out[-1].id
            out.append(entry)
        return out, None

    @property
    def last_id(self) -> int:
        with self._lock:
            return self._next_id - 1

    def wait_after(self, after_id: int, timeout: float) -> list[score_pb2.Anomaly]:
        """Entries with id > after_id, oldest first; waits up to `timeout` seconds for one to arrive."""
        with self._lock:
            self._lock.wait_for(lambda: self._next_id - 1 > after_id, timeout)
            newer = self._next_id - 1 - after_id
            return list(self._entries)[-newer:] if newer > 0 else []

    def __len__(self) -> int:
        return len(self._entries)


def block_profile(counts: Mapping[str, int], evidence: Collection[str] = ()) -> np.ndarray:
    """A block's event profile, a unit vector over E1..E30 + "unknown" (other ids share that slot): log(1 + count)
    per event, the evidence events and the routine ones each scaled to unit length, then weighted so that the
    cosine of two profiles is EVIDENCE_SHARE x cos(evidence parts) + (1 - EVIDENCE_SHARE) x cos(routine parts)."""
    x = np.zeros(len(EVENTS), np.float32)
    is_evidence = np.zeros(len(EVENTS), bool)
    other = _EVENT_INDEX["unknown"]
    for event, n in counts.items():
        i = _EVENT_INDEX.get(event, other)
        x[i] += np.log1p(n)
        is_evidence[i] |= event in evidence
    for part, share in ((is_evidence, EVIDENCE_SHARE), (~is_evidence, 1.0 - EVIDENCE_SHARE)):
        norm = float(np.linalg.norm(x[part]))
        if norm > 0:
            x[part] *= np.sqrt(share) / norm
    return x


def block_summary(events: Sequence[str], limit: int = 12) -> str:
    """E.g. "14 events: E5x3 E22 E11x3 E9x3 E26x3 E7" (event ids in order of first appearance, with counts)."""
    counts = Counter(events)
    parts = [f"{e}x{n}" if n > 1 else e for e, n in counts.items()]
    more = f" +{len(parts) - limit} more" if len(parts) > limit else ""
    return f"{len(events)} event{'s' if len(events) != 1 else ''}: {' '.join(parts[:limit])}{more}"


def _fill(out, similar: Neighbours) -> None:  # type: ignore[no-untyped-def]
    for sim, case in similar:
        out.add(id=case.id, similarity=sim, label=case.label, text=case.text, verdict=case.verdict)

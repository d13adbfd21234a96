"""The anomaly history: a bounded, newest-first log of flagged lines (and, later, blocks)."""
from __future__ import annotations

import threading
from collections import deque

from google.protobuf.timestamp_pb2 import Timestamp

from logmesh.v1 import score_pb2


class AnomalyHistory:
    def __init__(self, max_entries: int = 100_000) -> None:
        self._entries: deque[score_pb2.Anomaly] = deque(maxlen=max_entries)
        self._next_id = 1
        self._lock = threading.Condition()

    def add_lines(self, results: list[score_pb2.ScoreResult]) -> None:
        now = Timestamp()
        now.GetCurrentTime()
        with self._lock:
            for result in results:
                self._entries.append(score_pb2.Anomaly(id=self._next_id, recorded_time=now, line=result))
                self._next_id += 1
            self._lock.notify_all()

    def add_blocks(self, verdicts: list[score_pb2.BlockVerdict]) -> None:
        now = Timestamp()
        now.GetCurrentTime()
        with self._lock:
            for verdict in verdicts:
                self._entries.append(score_pb2.Anomaly(id=self._next_id, recorded_time=now, block=verdict))
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

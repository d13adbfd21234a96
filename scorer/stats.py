"""Counters and latency percentiles for GetStats."""
from __future__ import annotations

import threading
import time
from collections import deque
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from logmesh.scorer.dead_letters import DeadLetterCount


class ScorerStats:
    def __init__(self, window: int = 10_000) -> None:
        self.started = time.monotonic()
        self.lines_scored = 0
        self.line_anomalies = 0
        self.items_rejected = 0
        self.blocks_scored = 0
        self.block_anomalies = 0
        self.block_kinds: dict[tuple[str, str], int] = {}  # (verdict, evidence_kind) -> blocks, for /metrics
        self._latencies_ms: deque[float] = deque(maxlen=window)
        self._recent: deque[tuple[float, int]] = deque()  # (monotonic time, lines) for the last minute
        self._lock = threading.Lock()
        # The streaming job's dead-letter count (scorer/dead_letters.py), when the scorer knows the broker.
        self.dead_letters: DeadLetterCount | None = None

    def record(self, lines: int, anomalies: int, rejected: int, seconds: float) -> None:
        now = time.monotonic()
        with self._lock:
            self.lines_scored += lines
            self.line_anomalies += anomalies
            self.items_rejected += rejected
            self._latencies_ms.append(seconds * 1000.0)
            self._recent.append((now, lines))
            while self._recent and self._recent[0][0] < now - 60:
                self._recent.popleft()

    def record_blocks(self, blocks: int, anomalies: int, rejected: int,
                      kinds: dict[tuple[str, str], int] | None = None) -> None:
        with self._lock:
            self.blocks_scored += blocks
            self.block_anomalies += anomalies
            self.items_rejected += rejected
            for key, n in (kinds or {}).items():
                self.block_kinds[key] = self.block_kinds.get(key, 0) + n

    def dead_letter_count(self) -> int | None:
        """Messages in the DLQ topic as last read (cached; never blocks on Kafka after the first read), or None
        when no broker was given or none was ever readable."""
        return None if self.dead_letters is None else self.dead_letters.value()

    def latency_ms(self) -> tuple[float, float]:
        with self._lock:
            values = np.fromiter(self._latencies_ms, dtype=float)
        if not len(values):
            return 0.0, 0.0
        p50, p99 = np.percentile(values, [50, 99])
        return float(p50), float(p99)

    def lines_per_second(self) -> float:
        now = time.monotonic()
        with self._lock:
            lines = sum(n for t, n in self._recent if t >= now - 60)
        return lines / min(60.0, max(now - self.started, 1e-9))

    def uptime(self) -> float:
        return time.monotonic() - self.started

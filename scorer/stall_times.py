"""How long a session may stay quiet before it has ended: learnt per state from normal sessions.

One quiet period for every session is wrong both ways. In HDFS the three "Receiving block" lines of a
write follow each other within seconds, while the write itself (to "Received block") takes a minute
or more: a block that logged only two receives and went quiet for a minute has failed, one that
logged three and went quiet is still being written. So the state of a session is its last event,
how many of that event it has seen (capped at 4) and its length (capped at 8: "E5 E22" is one
receive, "E5 E5 E5 E22" three), and a session in a state has ended once it has
been quiet for `margin` times the longest gap normal sessions showed after that state (at least
`floor` seconds). States with too few observations fall back to the fixed quiet period.

Gaps are learnt from the timestamps of normal blocks in raw logs while they are read
(`observe`), with a bounded sample per state, so a full HDFS_v1 log costs little memory.
"""
from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

import numpy as np

MAX_COUNT = 4
MAX_LENGTH = 8
SAMPLE = 10_000  # gaps kept per state (reservoir)
MIN_OBSERVATIONS = 20


def state(events: Sequence[str]) -> tuple[str, int, int] | None:
    if not events:
        return None
    last = events[-1]
    return last, min(MAX_COUNT, sum(1 for e in events if e == last)), min(MAX_LENGTH, len(events))


class StallTimes:
    def __init__(self, margin: float = 2.0, floor: float = 30.0, fallback: float = 600.0, seed: int = 0) -> None:
        self.margin, self.floor, self.fallback = margin, floor, fallback
        self._gaps: dict[tuple[str, int, int], list[float]] = {}
        self._seen: Counter = Counter()
        self._rng = np.random.default_rng(seed)
        self.timeouts: dict[tuple[str, int, int], float] = {}

    def observe(self, events_before: Sequence[str], gap_seconds: float) -> None:
        """A normal session in the state of `events_before` logged its next event `gap_seconds` later."""
        s = state(events_before)
        if s is None or gap_seconds < 0:
            return
        self._seen[s] += 1
        sample = self._gaps.setdefault(s, [])
        if len(sample) < SAMPLE:
            sample.append(gap_seconds)
        else:
            j = int(self._rng.integers(0, self._seen[s]))
            if j < SAMPLE:
                sample[j] = gap_seconds

    def freeze(self) -> "StallTimes":
        self.timeouts = {s: max(self.floor, self.margin * float(max(g)))
                         for s, g in self._gaps.items() if self._seen[s] >= MIN_OBSERVATIONS}
        self._gaps, self._seen = {}, Counter()  # the artifact keeps only the table
        return self

    def timeout(self, events: Sequence[str]) -> float:
        s = state(events)
        return self.timeouts.get(s, self.fallback) if s is not None else self.fallback

    def table(self) -> dict[str, float]:
        return {f"{e} x{n} of {k}": round(t, 1) for (e, n, k), t in sorted(self.timeouts.items())}

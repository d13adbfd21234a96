"""Similar past cases: for each anomaly entering the history, the nearest *earlier* anomalies, most similar first.

A case is keyed by what makes it distinct: a line by its masked shape (lines of one shape have one
embedding, so fifty "writeBlock ... received exception" lines are one case, not fifty neighbours), a block by
its bag of events. The index keeps one unit vector per distinct key in a preallocated matrix (bounded:
`capacity` keys, the least recently seen key is dropped first) and, per key, the last few concrete cases
(record or block ids with their text and label) so a lookup can name a real earlier line or block. A lookup is
one matrix product of the batch's distinct keys against the stored keys, then a top-k per key.

Thread-safe (one lock); nothing here knows about gRPC or protobuf.
"""
from __future__ import annotations

import threading
from collections import OrderedDict, deque
from dataclasses import dataclass
from typing import Hashable, Sequence

import numpy as np


@dataclass(frozen=True)
class Case:
    """One concrete past anomaly."""
    id: str          # record id of a line, block id of a block
    text: str        # the line's message, or a short summary of the block's events
    label: int = 0   # logmesh.v1.Label, 0 when unknown
    verdict: int = 2  # logmesh.v1.Verdict of the past case (the index holds anomalies)


@dataclass(frozen=True)
class Item:
    """One case to look up and then remember. `vector` may be None when the key was stored before
    (its stored vector is used); an unknown key without a vector is neither looked up nor stored."""
    key: Hashable
    vector: np.ndarray | None
    case: Case


Neighbours = list[tuple[float, Case]]  # (cosine similarity, earlier case), most similar first


class SimilarIndex:
    def __init__(self, dim: int, capacity: int = 8192, k: int = 5, cases_per_key: int = 2) -> None:
        if capacity < 1 or k < 1 or cases_per_key < 1:
            raise ValueError("capacity, k and cases_per_key must be positive")
        self.dim, self.capacity, self.k = dim, capacity, k
        self._cases_per_key = max(2, cases_per_key)  # two ids: one may be the very case being looked up
        self._matrix = np.zeros((capacity, dim), np.float32)
        self._slot: dict[Hashable, int] = {}
        self._cases: list[deque[Case] | None] = [None] * capacity
        self._recency: OrderedDict[Hashable, None] = OrderedDict()  # least recently seen first
        self._high = 0  # slots [0, _high) are in use
        self._lock = threading.Lock()
        self.evicted = 0

    def __len__(self) -> int:
        with self._lock:
            return len(self._slot)

    def add(self, items: Sequence[Item]) -> list[Neighbours]:
        """For each item, in order: its nearest earlier distinct cases (stored ones, and those earlier in
        `items`), never the item's own id; then the item is remembered. Returns one list per item."""
        out: list[Neighbours] = [[] for _ in items]
        if not items:
            return out
        with self._lock:
            # the batch's distinct keys and their unit vectors
            keys: list[Hashable] = []
            index: dict[Hashable, int] = {}
            vecs: list[np.ndarray] = []
            first: list[int] = []   # position of each distinct key's first item
            item_key: list[int] = []  # per item: its distinct key's index, or -1 (no vector: skipped)
            for pos, item in enumerate(items):
                j = index.get(item.key)
                if j is None:
                    vec = self._unit(item)
                    if vec is None:
                        item_key.append(-1)
                        continue
                    j = index[item.key] = len(keys)
                    keys.append(item.key)
                    vecs.append(vec)
                    first.append(pos)
                item_key.append(j)
            if not keys:
                return out
            q = np.stack(vecs)
            want = self.k + 3  # a key whose only stored case is the item itself is skipped: take spares
            # stored keys: one product, then each distinct key's best `want` slots, best first
            old_top: list[list[tuple[float, deque[Case]]]] = [[] for _ in keys]
            if self._high:
                sims = q @ self._matrix[: self._high].T
                t = min(want, self._high)
                top = np.argpartition(sims, -t, axis=1)[:, -t:] if t < self._high else \
                    np.broadcast_to(np.arange(self._high), (len(keys), self._high))
                for j in range(len(keys)):
                    row = [(float(sims[j, s]), self._cases[s]) for s in top[j]]
                    old_top[j] = sorted(row, key=_first, reverse=True)
            # keys new in this batch: among themselves (available once their first item has gone by)
            new = [j for j, key in enumerate(keys) if key not in self._slot]
            pending: dict[int, deque[Case]] = {j: deque(maxlen=self._cases_per_key) for j in new}
            new_first = [first[j] for j in new]  # ascending
            new_sims = q @ q[new].T if new else None
            merged: dict[tuple[int, int], list[tuple[float, deque[Case]]]] = {}
            available = 0  # new keys whose first item came before the current one
            for pos, item in enumerate(items):
                j = item_key[pos]
                if j < 0:
                    continue
                while available < len(new) and new_first[available] < pos:
                    available += 1
                candidates = merged.get((j, available))
                if candidates is None:  # the candidates change only when another new key becomes available
                    candidates = old_top[j]
                    if available:
                        row = new_sims[j, :available]  # type: ignore[index]
                        cols = np.arange(available)
                        if available > want:
                            cols = np.argpartition(-row, want - 1)[:want]
                        candidates = sorted(candidates + [(float(row[m]), pending[new[m]]) for m in cols],
                                            key=_first, reverse=True)
                    merged[(j, available)] = candidates
                found: Neighbours = []
                own = item.case.id
                for sim, cases in candidates:
                    if not cases:
                        continue
                    case = cases[-1]
                    if case.id == own:  # ids in one deque are distinct: the one before is another case
                        if len(cases) < 2:
                            continue
                        case = cases[-2]
                    found.append((sim if sim < 1.0 else 1.0, case))
                    if len(found) == self.k:
                        break
                out[pos] = found
                cases = self._cases[self._slot[keys[j]]] if keys[j] in self._slot else pending[j]
                _remember(cases, item.case)  # type: ignore[arg-type]
            # the batch's stored keys are now the most recently seen; then store its new keys
            for key in keys:
                if key in self._slot:
                    self._recency.move_to_end(key)
            for j in new[-self.capacity:]:
                slot = self._take_slot()
                self._slot[keys[j]] = slot
                self._matrix[slot] = q[j]
                self._cases[slot] = pending[j]
                self._recency[keys[j]] = None
        return out

    def vector(self, key: Hashable) -> np.ndarray | None:
        with self._lock:
            slot = self._slot.get(key)
            return None if slot is None else self._matrix[slot].copy()

    def _unit(self, item: Item) -> np.ndarray | None:
        if item.vector is None:
            slot = self._slot.get(item.key)
            return None if slot is None else self._matrix[slot]
        vec = np.asarray(item.vector, np.float32).reshape(-1)
        if vec.shape[0] != self.dim:
            raise ValueError(f"vector has {vec.shape[0]} dimensions; the index holds {self.dim}")
        norm = float(np.linalg.norm(vec))
        return vec / norm if norm > 0 and np.isfinite(norm) else None

    def _take_slot(self) -> int:
        if self._high < self.capacity:
            self._high += 1
            return self._high - 1
        oldest, _ = self._recency.popitem(last=False)  # full: forget the least recently seen key
        slot = self._slot.pop(oldest)
        self._cases[slot] = None
        self.evicted += 1
        return slot


def _first(pair: tuple[float, object]) -> float:
    return pair[0]


def _remember(cases: deque[Case], case: Case) -> None:
    for old in list(cases):
        if old.id == case.id:
            cases.remove(old)
    cases.append(case)

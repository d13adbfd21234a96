"""A bounded LRU cache from a line's masked shape to its embedding bytes."""
from __future__ import annotations

import threading
from collections import OrderedDict


class EmbeddingCache:
    def __init__(self, max_entries: int = 50_000) -> None:
        self._entries: OrderedDict[str, bytes] = OrderedDict()
        self._max = max_entries
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def get_many(self, keys: list[str]) -> list[bytes | None]:
        with self._lock:
            out = []
            for key in keys:
                value = self._entries.get(key)
                if value is None:
                    self.misses += 1
                else:
                    self._entries.move_to_end(key)
                    self.hits += 1
                out.append(value)
            return out

    def put_many(self, items: dict[str, bytes]) -> None:
        with self._lock:
            self._entries.update(items)
            for key in items:
                self._entries.move_to_end(key)
            while len(self._entries) > self._max:
                self._entries.popitem(last=False)

    def __len__(self) -> int:
        return len(self._entries)

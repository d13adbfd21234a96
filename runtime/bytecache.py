"""A thread-safe LRU map bounded by the bytes its entries hold, not by their count.

Keys here are masked log-line shapes: most are ~100 bytes, but a client may send 64 KB lines, so a count
bound lets a cache grow by gigabytes. Each entry is charged its key's and value's size plus a fixed
overhead for the bookkeeping around it (cachetools' LRUCache keeps three dict slots and our tuple).
"""
from __future__ import annotations

import sys
import threading
from typing import Callable, Generic, Hashable, Iterable, TypeVar

import cachetools

V = TypeVar("V")
#: What one entry costs beyond its key and value: the LRU's dict slots, order link and our (size, value) tuple.
ENTRY_OVERHEAD = 256
MiB = 1024 * 1024


def sizeof(value: object) -> int:
    """Bytes a cached value holds: a numpy array's buffer plus header, or the object's own size."""
    nbytes = getattr(value, "nbytes", None)
    return sys.getsizeof(value) if nbytes is None else int(nbytes) + 112


class ByteLRU(Generic[V]):
    """Least recently used entries go first once the total passes `max_bytes`. An entry larger than the
    whole budget is not stored (counted in `too_large`)."""

    def __init__(self, max_bytes: int, value_size: Callable[[V], int] = sizeof) -> None:
        if max_bytes < 1:
            raise ValueError("max_bytes must be positive")
        self.max_bytes = max_bytes
        self._value_size = value_size
        self._cache: cachetools.LRUCache = cachetools.LRUCache(max_bytes, getsizeof=_charged)
        self._lock = threading.Lock()
        self.too_large = 0

    def get(self, key: Hashable) -> V | None:
        with self._lock:
            found = self._cache.get(key)
        return None if found is None else found[1]

    def get_many(self, keys: Iterable[Hashable]) -> dict[Hashable, V]:
        """The entries of `keys` that are cached (each becomes most recently used)."""
        out = {}
        with self._lock:
            for key in keys:
                found = self._cache.get(key)
                if found is not None:
                    out[key] = found[1]
        return out

    def put_many(self, items: dict[Hashable, V]) -> None:
        sized = [(k, (sys.getsizeof(k) + self._value_size(v) + ENTRY_OVERHEAD, v)) for k, v in items.items()]
        with self._lock:
            for key, entry in sized:
                if entry[0] > self.max_bytes:
                    self.too_large += 1
                    continue
                self._cache[key] = entry

    def __contains__(self, key: Hashable) -> bool:
        with self._lock:
            return key in self._cache

    def __len__(self) -> int:
        with self._lock:
            return len(self._cache)

    @property
    def nbytes(self) -> int:
        """Bytes charged to the entries now held (at most max_bytes)."""
        with self._lock:
            return int(self._cache.currsize)


def _charged(entry: tuple[int, object]) -> int:
    return entry[0]

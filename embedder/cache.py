"""An LRU cache from a line's masked shape to its embedding bytes, bounded by the bytes it holds."""
from __future__ import annotations

import threading

from prometheus_client import Counter, Gauge

from logmesh.runtime.bytecache import MiB, ByteLRU
from logmesh.runtime.metrics import REGISTRY

#: ~40,000 typical HDFS shapes (a 1.5 KB vector, a ~100-byte key and the LRU's bookkeeping each); 64 KB lines
#: count at their size, so a flood of long distinct lines evicts instead of growing the server.
DEFAULT_CACHE_BYTES = 64 * MiB

LOOKUPS = Counter("logmesh_embedder_cache_lookups_total", "Line shapes looked up in the embedding cache.",
                  ("result",), registry=REGISTRY)
HELD = Gauge("logmesh_embedder_cache_bytes", "Bytes the embedding cache holds (bounded by --cache-mb).",
             registry=REGISTRY)


class EmbeddingCache:
    def __init__(self, max_bytes: int = DEFAULT_CACHE_BYTES) -> None:
        self._entries: ByteLRU[bytes] = ByteLRU(max_bytes, len)
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def get_many(self, keys: list[str]) -> list[bytes | None]:
        found = self._entries.get_many(keys)
        out = [found.get(key) for key in keys]
        hits = sum(v is not None for v in out)
        with self._lock:
            self.hits += hits
            self.misses += len(out) - hits
        LOOKUPS.labels("hit").inc(hits)
        LOOKUPS.labels("miss").inc(len(out) - hits)
        return out

    def peek_many(self, keys: list[str]) -> dict[str, bytes]:
        """The cached entries of `keys`, not counted as lookups (a second look within one call)."""
        return self._entries.get_many(keys)  # type: ignore[return-value]

    def put_many(self, items: dict[str, bytes]) -> None:
        self._entries.put_many(items)  # type: ignore[arg-type]
        HELD.set(self._entries.nbytes)

    @property
    def nbytes(self) -> int:
        return self._entries.nbytes

    def __len__(self) -> int:
        return len(self._entries)

"""The embedded default: Qdrant's own engine in-process through `qdrant-edge-py` (an "edge shard").

One shard per collection, in the folder `<path>/<collection>/` (edge_config.json, segments/, wal/).
Writes go to the WAL first (enabled by default), so a point acknowledged by `upsert` survives a process
crash even before `flush()` (tested); `flush()`/`close()` persist the segments themselves. One process
opens a shard at a time (the WAL is locked; a second open raises RuntimeError).

Index. An edge shard runs no background optimizer: new points land in an appendable, unindexed
segment and are searched exactly (brute force, ~1 ms at 10k, ~10 ms at 100k on 2 cores). The HNSW
graph is built only by `optimize()`, which blocks (seconds to a minute at 100k); call it in a
maintenance window, not on the hot path. After it, search is approximate: raise `hnsw_ef` (e.g. 256)
where recall matters, or pass `exact=True`. A search that HNSW answers with fewer than `limit` hits
while more points match (seen with many identical vectors under a filter) is re-run exactly.

Quirk of qdrant-edge-py 0.9.0 handled here: `MatchValue(True)` is converted to the integer 1 (its
value extraction tries int before bool, and Python's bool is an int), so a bool filter matches
nothing. Passing `numpy.bool_` makes it a real bool match.
"""
from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import qdrant_edge as qe

from logmesh.streaming.vector_store import (
    DEFAULT_COLLECTION, DEFAULT_DIM, Filter, Hit, Point, StoreClosedError, as_vector, check_filter,
    check_limit, key_of, point_id, points_from_records, prepare_points)

_UPSERT_CHUNK = 1024


class EdgeVectorStore:
    """A `VectorStore` on an in-process Qdrant edge shard persisted at `path/collection`."""

    engine = "qdrant-edge"

    def __init__(self, path: str | os.PathLike[str], collection: str = DEFAULT_COLLECTION,
                 dim: int = DEFAULT_DIM, *, hnsw_ef: int | None = None, exact: bool = False,
                 indexed_fields: Sequence[str] = ("kind",), max_search_threads: int | None = None,
                 indexing_threshold_kb: int | None = None) -> None:
        if not collection or "/" in collection or collection in (".", ".."):
            raise ValueError(f"bad collection name {collection!r}")
        self.collection, self.dim = collection, int(dim)
        self.root = Path(path)
        self.shard_dir = self.root / collection
        self._indexed_fields = tuple(indexed_fields)
        self.tune(hnsw_ef, exact)
        self._config = qe.EdgeConfig(
            vectors=qe.EdgeVectorParams(size=self.dim, distance=qe.Distance.Cosine),
            max_search_threads=max_search_threads,
            # optimize() builds HNSW only for segments above this size (engine default ~10 MB, i.e.
            # ~6.5k 384-d vectors); None keeps the shard's stored or default value.
            optimizers=(qe.EdgeOptimizersConfig(indexing_threshold=indexing_threshold_kb)
                        if indexing_threshold_kb is not None else None))
        self._shard: qe.EdgeShard | None = None
        self._closed = False
        self._close_hooks: list = []  # on_close
        self.exact_fallbacks = 0  # searches re-run exactly because HNSW returned too few hits
        if self._exists():
            self._shard = self._load()

    # -- lifecycle -----------------------------------------------------------------------------

    def _exists(self) -> bool:
        return (self.shard_dir / "edge_config.json").exists() or (self.shard_dir / "segments").is_dir()

    def _load(self) -> qe.EdgeShard:
        try:
            # Passing the config makes the engine check it against the stored segments.
            return qe.EdgeShard.load(str(self.shard_dir), self._config)
        except Exception as err:  # the engine raises plain Exception with a message
            msg = str(err)
            if "incompatible" in msg.lower():
                raise ValueError(f"collection {self.collection!r} at {self.shard_dir} does not match "
                                 f"dim={self.dim}, cosine: {msg}") from None
            if "WouldBlock" in msg:
                raise RuntimeError(f"{self.shard_dir} is already open (by this or another process): "
                                   f"{msg}") from None
            raise

    def ensure_collection(self) -> None:
        self._check_open(need_shard=False)
        if self._shard is None:
            if self._exists():
                self._shard = self._load()
            else:
                self.shard_dir.mkdir(parents=True, exist_ok=True)
                self._shard = qe.EdgeShard.create(str(self.shard_dir), self._config)
        schema = self._shard.info().payload_schema
        for name in self._indexed_fields:  # keyword indexes make filtered HNSW search efficient
            if name not in schema:
                self._shard.update(qe.UpdateOperation.create_field_index(name, qe.PayloadSchemaType.Keyword))

    def flush(self) -> None:
        self._check_open().flush()

    def on_close(self, hook) -> None:  # type: ignore[no-untyped-def]
        """Runs `hook()` when the store closes, before it does: the stream's write-behind
        (vector_store_spool.PointSpool) drains its queued upserts then."""
        self._close_hooks.append(hook)

    def close(self) -> None:
        if self._closed:
            return
        hooks, self._close_hooks = self._close_hooks, []
        try:
            for hook in hooks:
                hook()
        finally:
            self._closed = True
            shard, self._shard = self._shard, None
            if shard is not None:
                shard.flush()
                shard.close()

    def __enter__(self) -> EdgeVectorStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _check_open(self, need_shard: bool = True) -> qe.EdgeShard:
        if self._closed:
            raise StoreClosedError(f"vector store {self.shard_dir} is closed")
        if need_shard and self._shard is None:
            raise RuntimeError(f"collection {self.collection!r} does not exist at {self.shard_dir}: "
                               f"call ensure_collection()")
        return self._shard  # type: ignore[return-value]

    # -- data ----------------------------------------------------------------------------------

    def upsert(self, points: Sequence[Point]) -> None:
        shard = self._check_open()
        keys, ids, vectors, payloads = prepare_points(points, self.dim)
        rows = vectors.tolist()  # lists convert faster than numpy rows in 0.9.0
        for start in range(0, len(keys), _UPSERT_CHUNK):
            end = start + _UPSERT_CHUNK
            shard.update(qe.UpdateOperation.upsert_points(
                [qe.Point(i, v, p) for i, v, p in zip(ids[start:end], rows[start:end], payloads[start:end])]))

    def retrieve(self, ids: Sequence[str]) -> dict[str, Point]:
        shard = self._check_open()
        by_id = {point_id(k): k for k in ids}
        if not by_id:
            return {}
        records = shard.retrieve(list(by_id), with_payload=True, with_vector=True)
        return points_from_records(records, by_id)

    def search(self, vector: Any, limit: int = 10, filter: Filter | None = None) -> list[Hit]:
        shard = self._check_open()
        query = as_vector(vector, self.dim, "query vector").tolist()
        limit, flt = check_limit(limit), self._filter(filter)
        hits = shard.query(qe.QueryRequest(limit=limit, query=qe.Query.Nearest(query), filter=flt,
                                           params=self._params, with_payload=True, with_vector=False))
        if len(hits) < limit and not (self._params and self._params.exact) \
                and shard.count(qe.CountRequest(exact=True, filter=flt)) > len(hits):
            # HNSW came back short although more points match: it happens with many identical
            # vectors (blocks sharing one event profile), where the graph's neighbour heuristic
            # leaves copies unreachable (qdrant/qdrant#1788), worst under a filter. Answer exactly.
            self.exact_fallbacks += 1
            hits = shard.query(qe.QueryRequest(limit=limit, query=qe.Query.Nearest(query), filter=flt,
                                               params=qe.SearchParams(exact=True), with_payload=True,
                                               with_vector=False))
        return [Hit(key_of(h.payload, str(h.id)), float(h.score), dict(h.payload or {})) for h in hits]

    def count(self, filter: Filter | None = None) -> int:
        return int(self._check_open().count(qe.CountRequest(exact=True, filter=self._filter(filter))))

    def scroll(self, filter: Filter | None = None, batch: int = 256) -> Iterator[Point]:
        """Every point matching `filter` with its vector and payload, a page of `batch` at a time (training
        from the store reads it whole)."""
        shard, flt, offset = self._check_open(), self._filter(filter), None
        while True:
            records, offset = shard.scroll(qe.ScrollRequest(offset=offset, limit=check_limit(batch), filter=flt,
                                                            with_payload=True, with_vector=True))
            yield from points_from_records(records, {}).values()
            if offset is None:
                return

    # -- edge-only -----------------------------------------------------------------------------

    def optimize(self) -> bool:
        """Builds the HNSW index (and merges segments); blocks until done. True if anything changed."""
        return bool(self._check_open().optimize())

    def tune(self, hnsw_ef: int | None = None, exact: bool = False) -> None:
        """Search parameters for later searches: HNSW beam width (default: the engine's), or exact."""
        self._params = qe.SearchParams(hnsw_ef=hnsw_ef, exact=exact) if (hnsw_ef or exact) else None

    def info(self) -> Any:
        """The engine's ShardInfo: segments_count, points_count, indexed_vectors_count, payload_schema."""
        return self._check_open().info()

    @staticmethod
    def _filter(filter: Filter | None) -> qe.Filter | None:
        f = check_filter(filter)
        if f is None:
            return None
        return qe.Filter(must=[
            qe.FieldCondition(key=name, match=qe.MatchValue(np.bool_(v) if isinstance(v, bool) else v))
            for name, v in f.items()])

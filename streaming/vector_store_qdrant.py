"""`qdrant-client` behind the VectorStore interface: a Qdrant server, or the client's local mode.

- `QdrantClientStore.connect(url, api_key=...)`: a real Qdrant server (production, `--qdrant-url`).
  Upserts wait for the server's acknowledgement (`wait=True`), so a foreachBatch that returns has
  its points stored. A keyword payload index on "kind" is created with the collection.
- `QdrantClientStore.local(path)`: qdrant-client's pure-Python local mode persisted at `path`
  (or `":memory:"`). A fallback and a reference for tests: it re-implements Qdrant in Python
  (~1k upserts/s on disk, brute-force search, a warning above 20k points, payload indexes ignored).
"""
from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Sequence
from typing import Any

import grpc
from qdrant_client import QdrantClient, models
from qdrant_client.http.exceptions import ResponseHandlingException, UnexpectedResponse

from logmesh.streaming.vector_store import (
    DEFAULT_COLLECTION, DEFAULT_DIM, Filter, Hit, Point, StoreClosedError, StoreUnavailableError, as_vector,
    check_filter, check_limit, key_of, point_id, points_from_records, prepare_points)


class QdrantClientStore:
    """A `VectorStore` over a `QdrantClient` (server or local mode)."""

    def __init__(self, client: QdrantClient, collection: str = DEFAULT_COLLECTION, dim: int = DEFAULT_DIM,
                 *, server: bool, hnsw_ef: int | None = None, exact: bool = False,
                 indexed_fields: Sequence[str] = ("kind",), upsert_batch: int = 512) -> None:
        self.client, self.collection, self.dim = client, collection, int(dim)
        self.server = server
        self.engine = "qdrant-server" if server else "qdrant-client-local"
        self.tune(hnsw_ef, exact)
        self._indexed_fields = tuple(indexed_fields)
        self._upsert_batch = upsert_batch
        self._closed = False

    @classmethod
    def connect(cls, url: str, collection: str = DEFAULT_COLLECTION, dim: int = DEFAULT_DIM, *,
                api_key: str | None = None, prefer_grpc: bool = False, timeout: int | None = None,
                check_compatibility: bool = True, **options: Any) -> QdrantClientStore:
        """A Qdrant server at `url` (e.g. http://localhost:6333; gRPC on 6334 with prefer_grpc)."""
        client = QdrantClient(url=url, api_key=api_key, prefer_grpc=prefer_grpc, timeout=timeout,
                              check_compatibility=check_compatibility)
        return cls(client, collection, dim, server=True, **options)

    @classmethod
    def local(cls, path: str | os.PathLike[str], collection: str = DEFAULT_COLLECTION,
              dim: int = DEFAULT_DIM, **options: Any) -> QdrantClientStore:
        """qdrant-client local mode persisted at `path` (a folder), or in memory for ":memory:"."""
        path = os.fspath(path)
        client = QdrantClient(location=":memory:") if path == ":memory:" else QdrantClient(path=path)
        return cls(client, collection, dim, server=False, **options)

    # -- lifecycle -----------------------------------------------------------------------------

    def ensure_collection(self) -> None:
        with self._io() as client:
            if not client.collection_exists(self.collection):
                try:
                    client.create_collection(self.collection, vectors_config=models.VectorParams(
                        size=self.dim, distance=models.Distance.COSINE))
                except (ValueError, UnexpectedResponse):
                    # Another writer created it in between (server: 409, local: ValueError): fine if it exists.
                    if not client.collection_exists(self.collection):
                        raise
            params = client.get_collection(self.collection).config.params.vectors
            if not isinstance(params, models.VectorParams):
                raise ValueError(f"collection {self.collection!r} uses named vectors {list(params or {})}; "
                                 f"expected one unnamed {self.dim}-d cosine vector")
            if params.size != self.dim or params.distance != models.Distance.COSINE:
                raise ValueError(f"collection {self.collection!r} has dim={params.size}, "
                                 f"distance={params.distance.value}; expected dim={self.dim}, cosine")
            if self.server:  # local mode ignores payload indexes (and warns): only the server gets them
                for name in self._indexed_fields:
                    client.create_payload_index(self.collection, name, models.PayloadSchemaType.KEYWORD,
                                                wait=True)

    def flush(self) -> None:
        # Server: acknowledged writes (wait=True) are in its WAL. Local mode writes each upsert through
        # to its sqlite file. Nothing to do, but closed stores still refuse.
        self._check_open()

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self.client.close()

    def __enter__(self) -> QdrantClientStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _check_open(self) -> QdrantClient:
        if self._closed:
            raise StoreClosedError(f"vector store {self.engine}/{self.collection} is closed")
        return self.client

    @contextlib.contextmanager
    def _io(self) -> Iterator[QdrantClient]:
        """The open client; a transport failure (server down, refused, timed out) becomes
        StoreUnavailableError. HTTP errors the server answered with pass through unchanged."""
        client = self._check_open()
        try:
            yield client
        except ResponseHandlingException as err:  # REST transport
            raise StoreUnavailableError(f"Qdrant {self.engine} unreachable for collection "
                                        f"{self.collection!r}: {err}") from err
        except grpc.RpcError as err:  # prefer_grpc=True
            if err.code() not in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
                raise
            raise StoreUnavailableError(f"Qdrant {self.engine} unreachable for collection "
                                        f"{self.collection!r}: {err.details()}") from err

    def tune(self, hnsw_ef: int | None = None, exact: bool = False) -> None:
        """Search parameters for later searches (server HNSW beam width, or exact); local mode is always exact."""
        self._params = models.SearchParams(hnsw_ef=hnsw_ef, exact=exact) if (hnsw_ef or exact) else None

    # -- data ----------------------------------------------------------------------------------

    def upsert(self, points: Sequence[Point]) -> None:
        keys, ids, vectors, payloads = prepare_points(points, self.dim)
        step = self._upsert_batch
        with self._io() as client:
            for start in range(0, len(keys), step):
                end = start + step
                client.upsert(self.collection, wait=True, points=models.Batch(
                    ids=[str(i) for i in ids[start:end]], vectors=vectors[start:end].tolist(), payloads=payloads[start:end]))

    def retrieve(self, ids: Sequence[str]) -> dict[str, Point]:
        by_id = {point_id(k): k for k in ids}
        if not by_id:
            self._check_open()
            return {}
        with self._io() as client:
            records = client.retrieve(self.collection, list(by_id), with_payload=True, with_vectors=True)
        return points_from_records(records, by_id)

    def search(self, vector: Any, limit: int = 10, filter: Filter | None = None) -> list[Hit]:
        query = as_vector(vector, self.dim, "query vector").tolist()
        limit, flt = check_limit(limit), self._filter(filter)
        with self._io() as client:
            res = client.query_points(self.collection, query=query, limit=limit, query_filter=flt,
                                      search_params=self._params, with_payload=True, with_vectors=False)
        return [Hit(key_of(p.payload, str(p.id)), float(p.score), dict(p.payload or {})) for p in res.points]

    def count(self, filter: Filter | None = None) -> int:
        flt = self._filter(filter)
        with self._io() as client:
            return int(client.count(self.collection, count_filter=flt, exact=True).count)

    def scroll(self, filter: Filter | None = None, batch: int = 256) -> Iterator[Point]:
        """Every point matching `filter` with its vector and payload, a page of `batch` at a time."""
        flt, offset = self._filter(filter), None
        while True:
            with self._io() as client:
                records, offset = client.scroll(self.collection, scroll_filter=flt, limit=check_limit(batch),
                                                offset=offset, with_payload=True, with_vectors=True)
            yield from points_from_records(records, {}).values()
            if offset is None:
                return

    @staticmethod
    def _filter(filter: Filter | None) -> models.Filter | None:
        f = check_filter(filter)
        if f is None:
            return None
        return models.Filter(must=[
            models.FieldCondition(key=name, match=models.MatchValue(value=v)) for name, v in f.items()])

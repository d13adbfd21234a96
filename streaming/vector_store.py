"""The vector store behind one small interface: blocks and anomalous lines as 384-d cosine vectors.

Two real implementations share it (DESIGN.md, "Real parts, embedded defaults"):

- `EdgeVectorStore` (module `vector_store_edge`): Qdrant's own engine in-process through
  `qdrant-edge-py`, persisted in a folder. The embedded default.
- `QdrantClientStore` (module `vector_store_qdrant`): `qdrant-client`, either against a Qdrant
  server (`url`, optional `api_key`) or in its pure-Python local mode (`path`, or ":memory:").

`open_store(url, path)` picks one: a `url` means the server, otherwise the embedded store at `path`.

Ids. Callers name points with data-derived strings ("logmesh.logs/2/1234" for a line,
"blk_-160..." for a block). Qdrant only takes unsigned integers or UUIDs, so every key maps to
`uuid5(POINT_NAMESPACE, key)`: the same key always lands on the same point, so writing a batch twice
(Spark's foreachBatch is at-least-once) overwrites and never duplicates. The key itself is kept in the
payload under "key" and is what `retrieve` and `search` hand back.

Vectors. The collection uses cosine distance; both engines store the L2-normalised vector, so
`retrieve` returns unit vectors (equal to the input when the input was already normalised, as the
embedder's vectors are).
"""
from __future__ import annotations

import math
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, Union, runtime_checkable

import numpy as np

DEFAULT_COLLECTION = "logs_embeddings"
DEFAULT_DIM = 384
KEY_FIELD = "key"
# Fixed forever: changing it would re-key every stored point (uuid5(NAMESPACE_URL, "https://github.com/
# logmesh/logmesh/qdrant/point-id")). Other languages reproduce ids with any RFC 4122 uuid5.
POINT_NAMESPACE = uuid.UUID("f6748a6a-62fe-5668-a7da-844af21a33ef")

FilterValue = Union[str, bool, int]
Filter = Mapping[str, FilterValue]


def point_id(key: str) -> str:
    """The Qdrant point id (a UUID string) of a data-derived key; deterministic across processes."""
    return str(_point_uuid(key))


@dataclass(frozen=True)
class Point:
    """One stored vector: the caller's key, a float32 vector of the collection's dimension, a payload."""

    id: str
    vector: np.ndarray
    payload: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Hit:
    """A search result: the point's key, its cosine similarity to the query, and its payload."""

    key: str
    score: float
    payload: dict[str, Any]


@runtime_checkable
class VectorStore(Protocol):
    """What the streaming job and the scorer need from a vector store; both engines implement it."""

    collection: str
    dim: int

    def ensure_collection(self) -> None:
        """Creates the collection (dim, cosine) if missing; idempotent. Raises ValueError if it
        exists with another dimension or distance."""

    def upsert(self, points: Sequence[Point]) -> None:
        """Writes points; a key already stored is overwritten (vector and whole payload).
        Raises ValueError on a vector of the wrong dimension or with NaN/inf, before writing any."""

    def retrieve(self, ids: Sequence[str]) -> dict[str, Point]:
        """The stored points for these keys; keys not stored are absent from the result."""

    def search(self, vector: Any, limit: int = 10, filter: Filter | None = None) -> list[Hit]:
        """The `limit` nearest points by cosine similarity, best first, among those whose payload
        equals every (field, value) of `filter` (e.g. {"kind": "block"})."""

    def scroll(self, filter: Filter | None = None, batch: int = 256) -> Iterable[Point]:
        """Every point whose payload matches `filter`, with vector and payload, read a page at a time."""

    def count(self, filter: Filter | None = None) -> int:
        """Exact number of points (matching `filter`)."""

    def flush(self) -> None:
        """Makes every acknowledged write durable on disk (no-op where the engine already is)."""

    def close(self) -> None:
        """Flushes and releases the store (file locks included); idempotent."""

    def __enter__(self) -> VectorStore: ...

    def __exit__(self, *exc: object) -> None: ...


class StoreClosedError(RuntimeError):
    """An operation on a store after close()."""


class StoreUnavailableError(ConnectionError):
    """The Qdrant server could not be reached (map to gRPC UNAVAILABLE); the write can be retried."""


# ---------------------------------------------------------------------------------------------
# Validation shared by the implementations: errors are ValueErrors that name the point and field.
# ---------------------------------------------------------------------------------------------

def _point_uuid(key: str) -> uuid.UUID:
    if not isinstance(key, str) or not key:
        raise ValueError(f"point key must be a non-empty string, got {key!r}")
    return uuid.uuid5(POINT_NAMESPACE, key)


def _as_row(vector: Any, dim: int, what: str) -> np.ndarray:
    try:
        arr = np.asarray(vector, dtype=np.float32)
    except (TypeError, ValueError) as err:
        raise ValueError(f"{what}: not a numeric vector ({err})") from None
    if arr.ndim != 1 or arr.shape[0] != dim:
        got = arr.shape[0] if arr.ndim == 1 else f"shape {arr.shape}"
        raise ValueError(f"{what}: dimension mismatch: expected {dim}, got {got}")
    return arr


def _check_rows(vectors: np.ndarray, names: Sequence[str] | _LazyNames) -> None:
    finite = np.isfinite(vectors).all(axis=1)
    if not finite.all():
        raise ValueError(f"{names[int(np.argmin(finite))]}: contains NaN or infinity")
    nonzero = vectors.any(axis=1)
    if not nonzero.all():
        raise ValueError(f"{names[int(np.argmin(nonzero))]}: all zeros (no direction for cosine similarity)")


def as_vector(vector: Any, dim: int, what: str = "vector") -> np.ndarray:
    """`vector` as a contiguous float32 array of shape (dim,); ValueError otherwise."""
    arr = np.ascontiguousarray(_as_row(vector, dim, what))
    _check_rows(arr[None, :], [what])
    return arr


def prepare_points(points: Iterable[Point], dim: int) -> tuple[list[str], list[uuid.UUID], np.ndarray, list[dict]]:
    """Validated (keys, point uuids, vectors[n, dim], payloads) for an upsert; nothing is written
    when any point is invalid.

    Duplicate keys inside one call keep the last occurrence (what writing them one by one would leave).
    Each payload gets "key" = the point's key; a caller's "key" that says otherwise is an error.
    """
    last: dict[str, Point] = {}
    for p in points:
        if not isinstance(p, Point):
            raise TypeError(f"expected vector_store.Point, got {type(p).__name__}")
        last.pop(p.id, None)
        last[p.id] = p
    keys = list(last)
    ids = [_point_uuid(k) for k in keys]
    vectors = np.empty((len(keys), dim), dtype=np.float32)
    payloads: list[dict] = []
    for i, key in enumerate(keys):
        p = last[key]
        vectors[i] = _as_row(p.vector, dim, f"point {key!r}")
        payload = dict(p.payload or {})
        if payload.get(KEY_FIELD, key) != key:
            raise ValueError(f"point {key!r}: payload field {KEY_FIELD!r} is reserved for the point's key, "
                             f"got {payload[KEY_FIELD]!r}")
        payload[KEY_FIELD] = key
        payloads.append(payload)
    _check_rows(vectors, _LazyNames(keys))
    return keys, ids, vectors, payloads


class _LazyNames:
    """Error names built only for the row that failed."""

    def __init__(self, keys: list[str]) -> None:
        self._keys = keys

    def __getitem__(self, i: int) -> str:
        return f"point {self._keys[i]!r}"


def check_filter(filter: Filter | None) -> dict[str, FilterValue] | None:
    """The filter as a plain dict (None when empty); ValueError on a non-scalar value."""
    if not filter:
        return None
    out: dict[str, FilterValue] = {}
    for name, value in filter.items():
        if not isinstance(name, str) or not name:
            raise ValueError(f"filter field names must be non-empty strings, got {name!r}")
        if isinstance(value, (bool, np.bool_)):
            out[name] = bool(value)
        elif isinstance(value, (str, int, np.integer)):
            out[name] = value if isinstance(value, str) else int(value)
        else:
            raise ValueError(f"filter {name!r}: only str, bool and int equality is supported, got {value!r}")
    return out


def check_limit(limit: int) -> int:
    if not isinstance(limit, (int, np.integer)) or isinstance(limit, bool) or limit < 1:
        raise ValueError(f"limit must be a positive integer, got {limit!r}")
    return int(limit)


def points_from_records(records: Iterable[Any], by_id: Mapping[str, str]) -> dict[str, Point]:
    """Engine records (`.id`, `.vector`, `.payload`, as both engines return them) as Points by original key."""
    out: dict[str, Point] = {}
    for r in records:
        key = by_id.get(str(r.id)) or key_of(r.payload, str(r.id))
        out[key] = Point(key, np.asarray(r.vector, dtype=np.float32), dict(r.payload or {}))
    return out


def key_of(payload: Mapping[str, Any] | None, fallback: str) -> str:
    value = (payload or {}).get(KEY_FIELD)
    return value if isinstance(value, str) else fallback


def finite_score(score: float) -> float:
    s = float(score)
    return s if math.isfinite(s) else float("nan")


# ---------------------------------------------------------------------------------------------
# Factory
# ---------------------------------------------------------------------------------------------

EMBEDDED_ENGINES = ("edge", "qdrant-local")


def open_store(url: str | None = None, path: str | None = None, collection: str = DEFAULT_COLLECTION,
               dim: int = DEFAULT_DIM, *, api_key: str | None = None, embedded: str = "edge",
               ensure: bool = True, **options: Any) -> VectorStore:
    """Opens the store the deployment asks for.

    - `url` given: a Qdrant server through qdrant-client (`api_key` optional; `prefer_grpc=True`
      and `timeout=` pass through `options`). `path` is then ignored.
    - otherwise the embedded store persisted at `path` (a folder; created if missing):
      `embedded="edge"` (default) = qdrant-edge-py, the collection in `path/<collection>/`;
      `embedded="qdrant-local"` = qdrant-client's local mode (`path=":memory:"` for a throwaway one).

    `ensure=True` creates the collection if missing (and checks its dimension if present).
    Search tuning (`hnsw_ef=`, `exact=`) passes through `options` to either implementation.
    """
    if url:
        from logmesh.streaming.vector_store_qdrant import QdrantClientStore
        store: VectorStore = QdrantClientStore.connect(url, collection, dim, api_key=api_key, **options)
    elif not path:
        raise ValueError("open_store needs a Qdrant `url` or an embedded store `path`")
    elif embedded == "edge":
        from logmesh.streaming.vector_store_edge import EdgeVectorStore
        store = EdgeVectorStore(path, collection, dim, **options)
    elif embedded == "qdrant-local":
        from logmesh.streaming.vector_store_qdrant import QdrantClientStore
        store = QdrantClientStore.local(path, collection, dim, **options)
    else:
        raise ValueError(f"embedded engine must be one of {EMBEDDED_ENGINES}, got {embedded!r}")
    if ensure:
        try:
            store.ensure_collection()
        except BaseException:
            store.close()
            raise
    return store


def __getattr__(name: str) -> Any:
    """`from logmesh.streaming.vector_store import EdgeVectorStore` works without importing both engines."""
    if name == "EdgeVectorStore":
        from logmesh.streaming.vector_store_edge import EdgeVectorStore
        return EdgeVectorStore
    if name == "QdrantClientStore":
        from logmesh.streaming.vector_store_qdrant import QdrantClientStore
        return QdrantClientStore
    raise AttributeError(name)

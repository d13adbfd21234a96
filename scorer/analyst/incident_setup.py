"""The incident book as the scorer process builds it (scorer/service.py): its durable topic, its vector store for
similar incidents, and what the served model says about normal sessions."""
from __future__ import annotations

import hashlib
import logging
import os
import tempfile
import uuid
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np

from logmesh.scorer.analyst.grouping import DEFAULT_WINDOW_S
from logmesh.scorer.analyst.incident_store import MemoryIncidentStore, TopicIncidentStore
from logmesh.scorer.analyst.incident_vectors import COLLECTION, IncidentVectors
from logmesh.scorer.analyst.incidents import IncidentBook

log = logging.getLogger("logmesh.scorer.incidents")
VECTORS_DIR = "incident-vectors"
OWNER_FILE = "incidents-owner"  # in the state dir: whose records in the incidents topic are this book's


def normal_fraction(models: Any) -> Callable[[str], float]:
    """template -> share of the served model's complete normal training sessions holding it (NaN when the
    artifact predates NormalProfile.session_fraction and the template is a normal one)."""
    def fraction(template: str) -> float:
        block = models.block_scorer
        profile = block.model.profile
        fractions = getattr(profile, "session_fraction", None)
        if fractions:
            return float(fractions.get(template, 0.0))
        return float("nan") if template in profile.normal_events else 0.0
    return fraction


def family_of(models: Any) -> Callable[[], str]:
    """The served model's family (hdfs or bgl; hdfs before one is loaded), what a new incident says it is."""
    def family() -> str:
        scorer = models.scorer
        return str(getattr(scorer, "family", "") or "hdfs") if scorer is not None else "hdfs"
    return family


def _owner(state_dir: Path) -> str:
    """This state dir's book id (made once, kept in the folder): the owner its incident records carry."""
    path = state_dir / OWNER_FILE
    try:
        owner = path.read_text().strip()
    except FileNotFoundError:
        owner = ""
    if not owner:
        owner = uuid.uuid4().hex
        tmp = path.with_suffix(".tmp")
        tmp.write_text(owner + "\n")
        os.replace(tmp, path)
    return owner


def open_book(history: Any, bootstrap: str, topic: str, state_dir: Path | None, models: Any,
              shape_vectors: Callable[[list[str]], Mapping[str, np.ndarray]],
              kafka_options: Mapping[str, str] | None = None, qdrant_url: str | None = None,
              qdrant_api_key: str | None = None, window_s: float = DEFAULT_WINDOW_S, book: str | None = None,
              lease_timeout_s: float = 10.0, **book_options: Any) -> IncidentBook:
    """A book (not started) whose incidents live in `topic` at `bootstrap`. Without a state dir the history is
    memory only, so its ids restart with the process: the incidents do too (kept in memory, not in the topic,
    which would otherwise hold ids that no longer mean the same anomalies).

    With a state dir the book is leased (incident_lease.py): `book` is the name the replicas of one book share
    (--incidents-book; default: this state dir's own id, a book of one). The lease's member id is static per
    state dir, so a scorer restarted on its state dir holds the lease again at once; another replica takes over
    a dead owner's book after `lease_timeout_s`."""
    lease = None
    if state_dir is not None:
        from logmesh.scorer.analyst.incident_lease import IncidentLease
        owner = book or _owner(Path(state_dir))
        shared = f"book:{book}|{topic}" if book else f"{Path(state_dir).resolve()}|{topic}"
        stable = hashlib.blake2b(shared.encode(), digest_size=8).hexdigest()
        store: Any = TopicIncidentStore(bootstrap, topic, f"logmesh-incidents-{stable}", kafka_options, owner=owner)
        member = hashlib.blake2b(f"{Path(state_dir).resolve()}|{topic}".encode(), digest_size=8).hexdigest()
        lease = IncidentLease(bootstrap, topic, owner, kafka_options, lease_timeout_s, member=f"scorer-{member}")
    else:
        log.warning("no --state-dir: incidents are kept in memory only (the anomaly history is too)")
        store = MemoryIncidentStore()
    vectors = None
    try:
        from logmesh.streaming.vector_store import open_store
        if qdrant_url:
            vstore = open_store(url=qdrant_url, collection=COLLECTION, api_key=qdrant_api_key, timeout=5)
        else:
            where = Path(state_dir) / VECTORS_DIR if state_dir is not None else Path(
                tempfile.mkdtemp(prefix="logmesh-incident-vectors-"))
            vstore = open_store(path=str(where), collection=COLLECTION)
        vectors = IncidentVectors(vstore, shape_vectors)
    except Exception as exc:  # noqa: BLE001 - incidents go on without similar ones; say why
        log.error("no vector store for similar incidents; incidents are kept without them",
                  extra={"error": str(exc), "qdrant_url": qdrant_url or ""})
    return IncidentBook(history, store, vectors, normal_fraction(models), window_s, family=family_of(models),
                        lease=lease, **book_options)

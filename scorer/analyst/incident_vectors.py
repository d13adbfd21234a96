"""Similar past incidents by vector search in the Qdrant engine (streaming/vector_store.py), not a second index.

An incident's vector is the mean of its evidence lines' embeddings (their masked shapes, embedded as the scorer
embeds lines: its memo of anomalous shapes, else the embedder). Each incident is one point in the collection
`logmesh_incidents` (key = incident id, payload: kind "incident", its title, kind and sessions), written again
whenever its evidence changes. Searching with an incident's vector among the others gives its similar
incidents, each with what an analyst said about it (`analyst_label`).

The store is qdrant-edge in the scorer's state dir by default (a folder this scorer holds alone, beside its
history), or the Qdrant server of --qdrant-url. A store or embedder that does not answer costs the incidents
their similar cases (logged once per outage), never the incidents.
"""
from __future__ import annotations

import logging
from collections import OrderedDict
from typing import Any, Callable, Mapping

import numpy as np

from logmesh.ingest.masking import line_shape
from logmesh.streaming.vector_store import Point
from logmesh.v1 import feedback_pb2, incident_pb2

log = logging.getLogger("logmesh.scorer.incidents.similar")
COLLECTION = "logmesh_incidents"
SIMILAR_K = 5
_MEMO = 4096  # shapes whose vectors are kept (HDFS has ~30 templates; BGL ~400)

# shapes -> the embeddings of those it can find
ShapeVectors = Callable[[list[str]], Mapping[str, np.ndarray]]


def title_of(incident: incident_pb2.Incident) -> str:
    """Its summary's title, else its kind and first sessions, e.g. "exception: blk_1, blk_2 (+3)"."""
    if incident.HasField("summary") and incident.summary.title:
        return incident.summary.title
    kind = incident_pb2.IncidentKind.Name(incident.kind).removeprefix("INCIDENT_KIND_").lower().replace("_", " ")
    sessions = list(incident.session_keys)
    more = f" (+{len(sessions) - 2})" if len(sessions) > 2 else ""
    return f"{kind}: {', '.join(sessions[:2]) or 'no session'}{more}"


class IncidentVectors:
    def __init__(self, store: Any, shape_vectors: ShapeVectors, k: int = SIMILAR_K) -> None:
        self.store, self.shape_vectors, self.k = store, shape_vectors, k
        self._memo: OrderedDict[str, np.ndarray] = OrderedDict()
        self._failing = False

    def _vectors(self, shapes: list[str]) -> dict[str, np.ndarray]:
        found = {s: self._memo[s] for s in shapes if s in self._memo}
        missing = [s for s in shapes if s not in found]
        if missing:
            for shape, vector in self.shape_vectors(missing).items():
                found[shape] = self._memo[shape] = np.asarray(vector, np.float32)
                while len(self._memo) > _MEMO:
                    self._memo.popitem(last=False)
        return found

    def vector(self, incident: incident_pb2.Incident) -> np.ndarray | None:
        """The mean of its evidence lines' shape embeddings (unit length), or None when none could be embedded."""
        shapes = [line_shape(e.component, e.message) for e in incident.evidence]
        if not shapes:
            return None
        known = self._vectors(list(dict.fromkeys(shapes)))
        rows = [known[s] for s in shapes if s in known]
        if not rows:
            return None
        mean = np.mean(rows, axis=0)
        norm = float(np.linalg.norm(mean))
        return (mean / norm).astype(np.float32) if norm > 0 and np.isfinite(norm) else None

    def update(self, incidents: list[incident_pb2.Incident],
               analyst_label: Callable[[str], int] | None) -> dict[str, list[incident_pb2.SimilarIncident]]:
        """Writes the incidents' points, then finds each one's most similar other incidents, most similar first
        (written first, so incidents of one round find each other). Incidents left out of the result keep what
        they had: the store or the embedder did not answer, or none of their lines could be embedded."""
        try:
            vectors = {i.incident_id: v for i in incidents if (v := self.vector(i)) is not None}
            if not vectors:
                return {}
            self.store.upsert([Point(i.incident_id, vectors[i.incident_id], {
                "kind": "incident", "incident_id": i.incident_id, "title": title_of(i),
                "incident_kind": int(i.kind), "sessions": list(i.session_keys)[:20]})
                for i in incidents if i.incident_id in vectors])
            hits = {incident_id: self.store.search(v, limit=self.k + 1, filter={"kind": "incident"})
                    for incident_id, v in vectors.items()}
        except Exception as exc:  # noqa: BLE001 - similar cases are a help, never a reason to lose an incident
            if not self._failing:
                log.warning("similar incidents unavailable: the vector store or the embedder did not answer",
                            extra={"error": str(exc)})
            self._failing = True
            return {}
        if self._failing:
            log.info("similar incidents available again")
        self._failing = False
        out: dict[str, list[incident_pb2.SimilarIncident]] = {}
        for incident_id, found in hits.items():
            similar = out[incident_id] = []
            for hit in found:
                other = str(hit.payload.get("incident_id") or hit.key)
                if other == incident_id:
                    continue
                similar.append(incident_pb2.SimilarIncident(
                    incident_id=other, similarity=max(-1.0, min(1.0, float(hit.score))),
                    analyst_label=label(analyst_label, other), title=str(hit.payload.get("title", ""))[:512]))
                if len(similar) == self.k:
                    break
        return out

    def close(self) -> None:
        self.store.close()


def label(analyst_label: Callable[[str], int] | None, incident_id: str) -> int:
    if analyst_label is None:
        return feedback_pb2.FEEDBACK_LABEL_UNSPECIFIED
    try:
        return int(analyst_label(incident_id))
    except Exception:  # noqa: BLE001 - feedback's own trouble must not stop grouping
        log.exception("analyst_label failed", extra={"incident_id": incident_id})
        return feedback_pb2.FEEDBACK_LABEL_UNSPECIFIED

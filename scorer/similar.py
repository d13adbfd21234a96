"""Similar past cases for the history's entries, from the vector store the streaming job writes (Qdrant).

The job keeps every block (its mean line vector, verdict, events) and every anomalous line (its embedding,
text, component) as points (streaming/vector_store.py). For an entry read from the anomalies topic:

- a block: its own point's vector, searched among the anomalous blocks; one case per distinct bag of events
  (fifty blocks that failed the same way are one case, not five neighbours), never the block itself;
- a line: the embedding of its family's masked shape (`line_vectors`: the scorer's memo, else the embedder),
  searched among the anomalous lines; one case per distinct masked text, never the line itself. The shape is the
  one the job embedded and the scorer memoised: HDFS `component: message`, BGL `COMPONENT LEVEL: message` (the
  result's level_name says which), so a BGL line is searched by its own vector, not by an HDFS-style shape.

There is no second index here: the store is the one. The embedded store (qdrant-edge) is a folder only one
process can open, and the job's process holds it, so this runs against a Qdrant server (--qdrant-url); without
one, entries keep the `similar` the job gave them. A store that does not answer costs the entries their
similar cases (logged once per outage), never the entries.
"""
from __future__ import annotations

import logging
from collections import Counter
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from logmesh.ingest.masking import line_shape
from logmesh.v1 import log_record_pb2, score_pb2

log = logging.getLogger("logmesh.scorer.similar")
SIMILAR_K = 5
#: A similar case's text at most (the start of a longer line): five of them must not dwarf the entry.
CASE_TEXT_BYTES = 1024
#: Hits asked for per lookup: many may be one shape or one bag of events, and one is the entry itself.
_OVERFETCH = 8

# shapes -> the embeddings of those it can find (a shape it cannot is left out)
LineVectors = Callable[[list[str]], Mapping[str, np.ndarray]]


class SimilarCases:
    """Fills `similar` of entries that carry none, from `store` (a streaming.vector_store.VectorStore)."""

    def __init__(self, store: Any, line_vectors: LineVectors | None = None, k: int = SIMILAR_K) -> None:
        self.store, self.line_vectors, self.k = store, line_vectors, k
        self._failing = False

    def fill(self, entries: Sequence[score_pb2.Anomaly]) -> None:
        want = [e for e in entries if not (e.line.similar if e.HasField("line") else e.block.similar)]
        if not want:
            return
        try:
            self._fill_blocks([e.block for e in want if e.HasField("block")])
            self._fill_lines([e.line for e in want if e.HasField("line")])
        except Exception as exc:  # noqa: BLE001 - a store down costs similar cases, never the entries
            if not self._failing:
                log.warning("similar cases unavailable: the vector store did not answer; entries are recorded "
                            "without them", extra={"error": str(exc)})
            self._failing = True
            return
        if self._failing:
            log.info("similar cases available again")
        self._failing = False

    def _fill_blocks(self, blocks: list[score_pb2.BlockVerdict]) -> None:
        if not blocks:
            return
        points = self.store.retrieve(list(dict.fromkeys(b.block_id for b in blocks)))
        for block in blocks:
            point = points.get(block.block_id)
            if point is None:
                continue
            hits = self.store.search(point.vector, limit=self.k + _OVERFETCH, filter={"kind": "block", "is_anomaly": True})
            seen: set[tuple] = {_bag(block.events)}  # the block's own story is no "similar past case"
            for hit in hits:
                bag = _bag(hit.payload.get("events") or ())
                if hit.key == block.block_id or bag in seen:
                    continue
                seen.add(bag)
                block.similar.add(id=hit.key[:256], similarity=_clip(hit.score), label=_label(hit.payload),
                                  text=block_summary(hit.payload.get("events") or ()),
                                  verdict=score_pb2.VERDICT_ANOMALY)
                if len(block.similar) == self.k:
                    break

    def _fill_lines(self, lines: list[score_pb2.ScoreResult]) -> None:
        if not lines or self.line_vectors is None:
            return
        shapes = [result_shape(r) for r in lines]
        vectors = self.line_vectors(list(dict.fromkeys(shapes)))
        found: dict[str, list] = {}
        for shape in dict.fromkeys(shapes):
            if shape in vectors:
                found[shape] = self.store.search(vectors[shape], limit=self.k + _OVERFETCH,
                                                 filter={"kind": "line", "is_anomaly": True})
        for line, shape in zip(lines, shapes):
            seen = {case_key(line.component, line.message)}  # the lines of its own shape say nothing new
            for hit in found.get(shape, ()):
                p = hit.payload
                other = case_key(str(p.get("component", "")), str(p.get("text", "")))
                if p.get("record_id") == line.record_id or other in seen:
                    continue
                seen.add(other)
                line.similar.add(id=str(p.get("record_id", hit.key))[:256], similarity=_clip(hit.score),
                                 label=_label(p), text=_preview(str(p.get("text", ""))),
                                 verdict=score_pb2.VERDICT_ANOMALY)
                if len(line.similar) == self.k:
                    break


def result_shape(result: score_pb2.ScoreResult) -> str:
    """The masked shape a line's result was scored by, as ingest/families.record_shape gives it for the record:
    BGL (level_name set) `COMPONENT LEVEL: message`, HDFS `component: message`."""
    if result.level_name:
        from logmesh.ingest.families.bgl import message_shape
        return message_shape(f"{result.component} {result.level_name}" if result.component else "", result.message)
    return line_shape(result.component, result.message)


def case_key(component: str, text: str) -> str:
    """What makes two similar cases one: the masked component and text (stored points carry no level)."""
    return line_shape(component, text)


def block_summary(events: Sequence[str], limit: int = 12) -> str:
    """E.g. "14 events: E5x3 E22 E11x3 E9x3 E26x3 E7" (event ids in order of first appearance, with counts)."""
    counts = Counter(events)
    parts = [f"{e}x{n}" if n > 1 else e for e, n in counts.items()]
    more = f" +{len(parts) - limit} more" if len(parts) > limit else ""
    return f"{len(events)} event{'s' if len(events) != 1 else ''}: {' '.join(parts[:limit])}{more}"


def _bag(events: Sequence[str]) -> tuple:
    return tuple(sorted(Counter(events).items()))


def _label(payload: Mapping[str, Any]) -> int:
    """The payload's label ("anomaly", "normal", "unspecified": how the job writes it) as a logmesh.v1.Label."""
    name = str(payload.get("label") or "unspecified").upper()
    return log_record_pb2.Label.Value(f"LABEL_{name}") if f"LABEL_{name}" in log_record_pb2.Label.keys() else 0


def _clip(score: float) -> float:
    return max(-1.0, min(1.0, float(score)))


def _preview(text: str) -> str:
    if len(text) <= CASE_TEXT_BYTES // 4:  # at most 4 bytes a character: surely short enough
        return text
    data = text.encode("utf-8")
    return text if len(data) <= CASE_TEXT_BYTES else data[:CASE_TEXT_BYTES - 3].decode("utf-8", "ignore") + "…"

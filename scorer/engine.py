"""Scoring a batch of lines with one loaded artifact.

Every line model reads only the line's masked shape (and the shape's embedding), so member
probabilities are memoised per shape: after warm-up a line costs a dict lookup, and the embedder
is called only for shapes this artifact has never seen.
"""
from __future__ import annotations

import hashlib
from typing import Callable

import grpc
import numpy as np
from google.protobuf.timestamp_pb2 import Timestamp

from logmesh import vectors
from logmesh.runtime.bytecache import MiB, ByteLRU
from logmesh.runtime.grpc_server import Limits, item_error
from logmesh.ingest.hdfs import UNKNOWN_TEMPLATE, parse_line
from logmesh.ingest.templates import TEMPLATE_TEXT
from logmesh.ingest.families import family_of, record_shape
from logmesh.scorer.artifacts import Artifact
from logmesh.scorer.ensemble import THRESHOLD, majority
from logmesh.scorer.failure_text import failure_event
from logmesh.scorer.new_templates import NewTemplates
from logmesh.v1 import log_record_pb2, score_pb2, scorer_service_pb2 as spb

EMBEDDING_DIM = 384
#: Bytes of the shape memo (members' probabilities per masked shape: ~600 bytes for a typical HDFS shape, so
#: ~100,000 shapes) and of the anomalous shapes' embeddings kept for similar past cases (~2 KB each, ~16,000).
#: Keys count at their size: 64 KB lines evict others instead of growing the server.
MEMO_BYTES = 64 * MiB
ANOMALOUS_BYTES = 32 * MiB


def cache_budgets(total: int | None) -> dict[str, int]:
    """LineScorer's cache arguments for a total budget (None: the defaults): two thirds to the memo."""
    return {} if total is None else {"memo_bytes": max(1, total * 2 // 3), "anomalous_bytes": max(1, total // 3)}


# (shapes, seconds left of the caller's deadline or None) -> vectors; raises grpc.RpcError when the embedder is down
EmbedShapes = Callable[[list[str], float | None], np.ndarray]
ANOMALY, NORMAL = score_pb2.VERDICT_ANOMALY, score_pb2.VERDICT_NORMAL


def parse_hdfs(text: str) -> log_record_pb2.LogRecord:
    record = parse_line(text, "raw")
    if not record.component:  # not HDFS: a line of another family is marked as such, so it is refused by name
        from logmesh.ingest.families.bgl import BglFamily
        if BglFamily().parse(text).record.parsed:
            record.family = "bgl"
    return record


def resolve_record(item: spb.ScoreItem, limits: Limits,
                   parse: Callable[[str], log_record_pb2.LogRecord] = parse_hdfs
                   ) -> tuple[log_record_pb2.LogRecord | None, str | None]:
    """The item's LogRecord (a raw line parsed with `parse`, the served family's parser), or why there is none."""
    which = item.WhichOneof("input")
    if which is None:
        return None, "item has neither record nor raw_line; set one"
    if which == "raw_line":
        text = item.raw_line
        if not text.strip():
            return None, "raw_line is empty; send a log line"
    else:
        text = item.record.message
        if not text.strip() and not (item.record.family == "bgl" and item.record.component):  # BGL: may print none
            return None, f"record {item.record.id!r} has an empty message; nothing to score"
    size = len(text.encode("utf-8"))
    if size > limits.max_line_bytes:
        return None, f"line is {size} bytes; the limit is {limits.max_line_bytes} bytes (--max-line-bytes)"
    if which == "raw_line":
        record = parse(text)
        # Raw lines get a content-derived id, so the same line scored twice has the same id.
        record.id = "raw:" + hashlib.blake2b(text.encode("utf-8"), digest_size=8).hexdigest()
        return record, None
    return item.record, None


class LineScorer:
    def __init__(self, artifact: Artifact, embed: EmbedShapes, limits: Limits, memo_bytes: int = MEMO_BYTES,
                 anomalous_bytes: int = ANOMALOUS_BYTES) -> None:
        self.artifact = artifact
        self.ensemble = artifact.models["line"]
        self.members = self.ensemble.names
        self._embed = embed
        self._limits = limits
        self._new_templates = NewTemplates(getattr(self.ensemble, "templates", None), artifact.models.get("drain"))
        self._memo: ByteLRU[np.ndarray] = ByteLRU(memo_bytes)
        # embeddings of the shapes judged anomalous: what the history searches the vector store with for a
        # line's similar past cases (scorer/similar.py), without asking the embedder again
        self._anomalous: ByteLRU[np.ndarray] = ByteLRU(anomalous_bytes)
        # the events complete normal training sessions held (the session model's profile): a line of another
        # loghub template whose text names no fault is unfamiliar, and its NORMAL verdict says so
        profile = getattr(artifact.models.get("block"), "profile", None)
        self._normal_events: set[str] | None = getattr(profile, "normal_events", None) or None

    def score(self, items: list[spb.ScoreItem], timeout: float | None = None) -> list[spb.ScoreItemResult]:
        """One ScoreItemResult per item, in order; bad items and embedder outages become per-item errors.
        `timeout` (the caller's remaining deadline) bounds the call to the embedder."""
        results = [spb.ScoreItemResult() for _ in items]
        records: list[log_record_pb2.LogRecord | None] = []
        shapes: list[str] = []
        given: dict[str, np.ndarray] = {}  # shape -> embedding the caller sent
        for item, result in zip(items, results):
            record, problem = resolve_record(item, self._limits, self.parse_raw)
            if problem is None:
                problem = self.check_record(record)  # type: ignore[arg-type]
            if problem is None and item.HasField("embedding"):
                problem = vectors.check(item.embedding, EMBEDDING_DIM)
            if problem is not None:
                result.record_id = item.record.id if item.HasField("record") else ""
                result.error.CopyFrom(item_error(grpc.StatusCode.INVALID_ARGUMENT, problem))
                records.append(None)
                shapes.append("")
                continue
            shape = self.shape(record)  # type: ignore[arg-type]
            if item.HasField("embedding"):
                given.setdefault(shape, vectors.from_message(item.embedding))
            records.append(record)
            shapes.append(shape)

        wanted = {s for s, r in zip(shapes, records) if r is not None}
        probabilities, unavailable = self._probabilities(wanted, given, timeout)
        scored_time = Timestamp()
        scored_time.GetCurrentTime()
        record_of = {s: r for s, r in zip(shapes, records) if r is not None}
        verdicts = {shape: self._line_verdict(row, record_of[shape], shape) for shape, row in probabilities.items()}
        for record, shape, result in zip(records, shapes, results):
            if record is None:
                continue
            result.record_id = record.id
            if shape in unavailable:
                result.error.CopyFrom(item_error(grpc.StatusCode.UNAVAILABLE, unavailable[shape]))
                continue
            _fill(result.result, record, verdicts[shape], scored_time)
        return results

    def _probabilities(self, shapes: set[str], given: dict[str, np.ndarray],
                       timeout: float | None) -> tuple[dict[str, np.ndarray], dict[str, str]]:
        known: dict[str, np.ndarray] = self._memo.get_many(shapes)  # type: ignore[assignment]
        missing = [s for s in shapes if s not in known]
        unavailable: dict[str, str] = {}
        if missing:
            need = [s for s in missing if s not in given]
            embedded = dict(given)
            if need:
                try:
                    embedded.update(zip(need, self._embed(need, timeout)))
                except grpc.RpcError as exc:
                    reason = (f"embedder unavailable ({exc.code().name}: {exc.details()}); "
                              "the line was not scored, retry")
                    unavailable = {s: reason for s in need}
                    missing = [s for s in missing if s in given]
            if missing:
                matrix = np.stack([embedded[s] for s in missing])
                rows = self.ensemble.probabilities(missing, matrix)
                fresh = dict(zip(missing, rows))
                known.update(fresh)
                flagged = {s: v.copy() for s, v, row in zip(missing, matrix, rows) if _anomalous(row)}
                self._memo.put_many(fresh)  # type: ignore[arg-type]
                self._anomalous.put_many(flagged)  # type: ignore[arg-type]
        return known, unavailable

    # What differs between families (scorer/bgl_serving.py is BGL's): raw-line parsing, which records this model
    # may judge, the shape its members read, and the per-shape verdict.
    family = "hdfs"

    @staticmethod
    def parse_raw(text: str) -> log_record_pb2.LogRecord:
        return parse_hdfs(text)

    def check_record(self, record: log_record_pb2.LogRecord) -> str | None:
        """Why this model cannot judge `record` (a line of another family), or None."""
        family = family_of(record)
        if family == self.family:
            return None
        return (f"record {record.id[:100]!r} is a {family} line; this scorer serves a {self.family} model "
                f"({self.artifact.version}): send it to a scorer whose --model-dir holds a {family} model")

    @staticmethod
    def shape(record: log_record_pb2.LogRecord) -> str:
        return record_shape(record)

    def _line_verdict(self, row: np.ndarray, record: log_record_pb2.LogRecord, shape: str) -> score_pb2.ScoreResult:
        return self._verdict(row, record.template_id, shape)

    def anomalous_vectors(self, shapes: list[str]) -> dict[str, np.ndarray]:
        """The embeddings of those `shapes` this scorer judged anomalous and still remembers."""
        return self._anomalous.get_many(shapes)  # type: ignore[return-value]

    def _verdict(self, row: np.ndarray, template_id: str = "", shape: str = "") -> score_pb2.ScoreResult:
        """The part of a ScoreResult that depends only on the line's shape (the members' probabilities
        `row`, and whether its template is new to the model): built once per shape and call, then merged
        into each line's result. Building it per line (numpy reductions on 5 numbers, 5 vote messages)
        was half of the scorer's CPU."""
        anomaly_votes = int((row >= THRESHOLD).sum())
        normal_votes = len(row) - anomaly_votes
        new = self._new_templates.is_new(template_id, shape)
        voted = _anomalous(row)
        if new:
            reason = "new template " + self._new_templates.name(shape)
        elif voted:
            reason = f"{anomaly_votes} of {len(row)} members: lines like this carry failure evidence"
        elif self._unfamiliar(template_id):
            reason = (f"unfamiliar, not evidence: no normal session in training held {template_id} "
                      f"(\"{TEMPLATE_TEXT[template_id][:80]}\"), and its text names no fault")
        else:
            reason = ""
        out = score_pb2.ScoreResult(verdict=ANOMALY if voted or new else NORMAL, score=float(row.mean()),
                                    confidence=max(anomaly_votes, normal_votes) / len(row),
                                    anomaly_votes=anomaly_votes, normal_votes=normal_votes,
                                    model_version=self.artifact.version, new_template=new, reason=reason)
        for name, p in zip(self.members, row):
            out.votes.add(model=name, verdict=ANOMALY if p >= THRESHOLD else NORMAL, score=float(p))
        return out

    def _unfamiliar(self, template_id: str) -> bool:
        """A loghub template no complete normal training session held, whose text names no fault (E15, E19 on
        `../shared`): the session rule's "unfamiliar" (scorer/session_model.py), said on the line too so that a
        user reading one line learns why the model let it pass."""
        return (self._normal_events is not None and template_id in TEMPLATE_TEXT
                and template_id != UNKNOWN_TEMPLATE and template_id not in self._normal_events
                and not failure_event(template_id))


def _fill(out: score_pb2.ScoreResult, record: log_record_pb2.LogRecord, verdict: score_pb2.ScoreResult,
          scored_time: Timestamp) -> None:
    out.MergeFrom(verdict)
    out.record_id = record.id
    out.template_id = record.template_id
    out.block_ids.extend(record.block_ids)
    if record.HasField("event_time"):
        out.event_time.CopyFrom(record.event_time)
    out.scored_time.CopyFrom(scored_time)
    out.message = record.message
    out.component = record.component


def _anomalous(row: np.ndarray) -> bool:
    """The ensemble's verdict: a majority of members at or over the threshold (scorer/ensemble.py)."""
    return bool(majority(row))

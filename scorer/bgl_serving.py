"""Serving a BGL artifact (scorer/bgl.py trains it): line verdicts and session verdicts.

Lines: the artifact's line ensemble votes on the line's masked shape (component, printed level, message, as in
training), and a template training never saw at a level where alerts are common in training (`NovelTemplates`)
is evidence too: the rule `logmesh evaluate --format bgl` measures. The scorer names the line's event itself
(loghub's BGL templates in the artifact, then its frozen Drain3 clusters), so a record's verdict does not depend
on whether ingest had the template list; the result's template_id is that event.

Sessions: BGL labels lines, and a session (a node's lines, or a window) is anomalous when any of its lines is an
alert; the scorer judges a BlockSession whose block_id is the session key the same way: ANOMALY when the line
ensemble flagged any of its lines (anomalous_record_ids), score the share of its lines flagged. Like ScoreBlock
for HDFS it is pure; the stream keeps the alert status. Its evidence_kind is "anomalous_lines", or "frequency"
when the flagged session also holds an event more often than any normal training window, improbably at the
normal rate (scorer/rate_evidence.py): only the name, never the verdict or score.
"""
from __future__ import annotations

import grpc
import numpy as np

from logmesh.ingest.families.base import UNKNOWN_TEMPLATE
from logmesh.ingest.families.bgl import BglFamily
from logmesh.ingest.families.bgl import record_shape as bgl_shape
from logmesh.ingest.hdfs import match_line
from logmesh.runtime.grpc_server import item_error
from logmesh.scorer.artifacts import Artifact
from logmesh.scorer.block_scorer import copy_session
from logmesh.scorer.engine import ANOMALY, NORMAL, LineScorer
from logmesh.scorer.ensemble import THRESHOLD, majority
from logmesh.scorer.rate_evidence import burst, burst_reason, spreads
from logmesh.v1 import log_record_pb2, score_pb2, scorer_service_pb2 as spb

MAX_EVENTS = 100_000  # more lines than this in one session: not a session
#: distinct shapes whose event is remembered (an event costs a template scan and a Drain3 match)
EVENT_MEMO = 100_000


class BglLineScorer(LineScorer):
    family = "bgl"

    def __init__(self, artifact: Artifact, *args, **kwargs) -> None:  # type: ignore[no-untyped-def]
        super().__init__(artifact, *args, **kwargs)
        self._templates = artifact.models.get("templates")
        self._drain = artifact.models.get("drain")
        self._novel = artifact.models.get("novel")
        self._parser = BglFamily(self._templates)
        self._events: dict[str, str] = {}

    def parse_raw(self, text: str) -> log_record_pb2.LogRecord:  # type: ignore[override]
        record = self._parser.record(text, "raw")  # the label column, if any, is dropped unread
        if not record.component and match_line(text.rstrip("\r\n")):
            record.family = "hdfs"  # an HDFS line: refused by name (check_record), not judged as BGL text
        return record

    def check_record(self, record: log_record_pb2.LogRecord) -> str | None:
        problem = super().check_record(record)
        if problem is None:
            record.template_id = self.event(record)
        return problem

    @staticmethod
    def shape(record: log_record_pb2.LogRecord) -> str:
        return bgl_shape(record)

    def event(self, record: log_record_pb2.LogRecord) -> str:
        """The line's event as training named it: loghub's template id, else its Drain3 cluster, else unknown."""
        shape = bgl_shape(record)
        found = self._events.get(shape)
        if found is None:
            template = (self._templates.match(record.message) if self._templates and record.component else None)
            head = f"{record.component} {record.level_name}" if record.component else ""
            found = self._drain.event_id(template or UNKNOWN_TEMPLATE, head, record.message) if self._drain else (
                template or UNKNOWN_TEMPLATE)
            if len(self._events) >= EVENT_MEMO:
                self._events.clear()
            self._events[shape] = found
        return found

    def _line_verdict(self, row: np.ndarray, record: log_record_pb2.LogRecord, shape: str) -> score_pb2.ScoreResult:
        anomaly_votes = int((row >= THRESHOLD).sum())
        normal_votes = len(row) - anomaly_votes
        voted = bool(majority(row))
        novel = bool(self._novel is not None and self._novel.flags([record.template_id], [record.level_name], [shape])[0])
        known = novel and hasattr(self._novel, "known_alerts") and bool(
            self._novel.known_alerts([record.template_id], [record.level_name])[0])
        if voted:
            reason = f"{anomaly_votes} of {len(row)} members: lines like this are alerts"
        elif known:
            reason = (f"template {record.template_id} at level {record.level_name}: most of its training lines were "
                      "alerts")
        elif novel and self._novel.kin_labels([shape])[0] == 1:
            reason = (f"new template {record.template_id} at level {record.level_name}: the known templates that "
                      "open with the same words are all alerts")
        elif novel:
            reason = (f"new template {record.template_id} at level {record.level_name}: training never saw this "
                      f"kind of line, and {record.level_name} lines are often alerts")
        else:
            reason = ""
        out = score_pb2.ScoreResult(verdict=ANOMALY if voted or novel else NORMAL, score=float(row.mean()),
                                    confidence=max(anomaly_votes, normal_votes) / len(row),
                                    anomaly_votes=anomaly_votes, normal_votes=normal_votes,
                                    model_version=self.artifact.version, new_template=novel and not voted and not known,
                                    reason=reason, level_name=record.level_name)
        for name, p in zip(self.members, row):
            out.votes.add(model=name, verdict=ANOMALY if p >= THRESHOLD else NORMAL, score=float(p))
        return out


class BglSessionScorer:
    """ScoreBlock(Stream) for a BGL model: block_id is the session key (see the module doc)."""

    def __init__(self, artifact: Artifact) -> None:
        self.artifact = artifact
        # absent from artifacts trained before it (and those with only c56b1ba's "window_max", which named too much)
        self._normal = artifact.models.get("window_normal")
        self._window = int(artifact.meta.get("window") or 0)
        # per event, once: every flagged window is tested against the same normal spread
        self._spread = spreads(self._normal) if self._normal and self._normal.get("windows") else None

    def score(self, blocks: list[spb.BlockSession]) -> list[spb.ScoreBlockResult]:
        results = [spb.ScoreBlockResult(block_id=b.block_id) for b in blocks]
        for block, result in zip(blocks, results):
            problem = None
            if not block.block_id:
                problem = "block_id is empty; send the session key (a BGL node id, or a window's name)"
            elif not block.events:
                problem = f"session {block.block_id} has no events"
            elif len(block.events) > MAX_EVENTS:
                problem = f"session {block.block_id} has {len(block.events)} events; the limit is {MAX_EVENTS}"
            elif len(block.anomalous_record_ids) > len(block.events):
                problem = (f"session {block.block_id} names {len(block.anomalous_record_ids)} flagged lines but has "
                           f"{len(block.events)} events; send one event per line")
            if problem:
                result.error.CopyFrom(item_error(grpc.StatusCode.INVALID_ARGUMENT, problem))
                continue
            flagged = len(set(block.anomalous_record_ids))
            v = result.verdict
            v.block_id = block.block_id
            v.verdict = score_pb2.VERDICT_ANOMALY if flagged else score_pb2.VERDICT_NORMAL
            v.score = flagged / len(block.events)
            v.evidence_kind = "anomalous_lines" if flagged else "none"
            if flagged:
                # the verdict and score above are reached without it: it only names the kind
                over = burst(block.events, self._normal, self._window, self._spread)
                if over:
                    v.evidence_kind = "frequency"
                    v.reasons.append(burst_reason(over, self._window))
                v.reasons.append(f"{flagged} of {len(block.events)} lines flagged by the line ensemble")
            copy_session(v, block, self.artifact.version)
        return results

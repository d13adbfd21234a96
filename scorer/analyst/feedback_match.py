"""Suppression matching: which active suppressing label (action SUPPRESS or SUPPRESS_AND_LEARN, not expired)
covers an alert or an incident. When several do, the oldest wins, so a mark does not move as labels are added.

An alert (Anomaly) is covered by a label on
- its own line (record id), its block (a block's verdicts and the flagged lines naming it), or an incident that
  holds its history id (ITEM);
- its line's template (TEMPLATE) or node (NODE, feedback_scope.line_node) - lines only;
- its block's exact event sequence (SEQUENCE) - block verdicts only, so an ALERT, whose events are a prefix,
  matches once the same story is told whole.
An incident is covered by a label on the incident itself, or when every one of its sessions (ITEM on blocks),
evidence lines (ITEM on lines, TEMPLATE) or nodes (NODE) is: suppressing part of an incident leaves it shown.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Container, Iterable

from logmesh.scorer.analyst.feedback_scope import line_node, sequence_key
from logmesh.v1 import feedback_pb2 as fpb, incident_pb2, score_pb2

SUPPRESSING = (fpb.FEEDBACK_ACTION_SUPPRESS, fpb.FEEDBACK_ACTION_SUPPRESS_AND_LEARN)
ITEM, TEMPLATE, NODE, SEQUENCE = (fpb.FEEDBACK_SCOPE_ITEM, fpb.FEEDBACK_SCOPE_TEMPLATE, fpb.FEEDBACK_SCOPE_NODE,
                                  fpb.FEEDBACK_SCOPE_SEQUENCE)


def expiry(fb: fpb.Feedback) -> float | None:
    """When `fb` stops applying, in epoch seconds (None: never)."""
    return fb.expire_time.seconds + fb.expire_time.nanos / 1e9 if fb.HasField("expire_time") else None


def suppresses(fb: fpb.Feedback, now: float) -> bool:
    ends = expiry(fb)
    return fb.action in SUPPRESSING and (ends is None or ends > now)


@dataclass
class Suppressions:
    """An index of the suppressing labels, oldest first per key; built again whenever the set changes."""
    records: dict[str, str] = field(default_factory=dict)
    blocks: dict[str, str] = field(default_factory=dict)
    incidents: dict[str, str] = field(default_factory=dict)
    templates: dict[str, str] = field(default_factory=dict)
    nodes: dict[str, str] = field(default_factory=dict)
    sequences: dict[str, str] = field(default_factory=dict)

    @classmethod
    def of(cls, labels: Iterable[fpb.Feedback], now: float) -> "Suppressions":
        """From labels in the order they were stored (oldest first); those not suppressing at `now` left out."""
        index = cls()
        for fb in labels:
            if not suppresses(fb, now):
                continue
            table = index._table(fb)
            if table is not None:
                table.setdefault(fb.scope_value if fb.scope != ITEM else getattr(fb, fb.WhichOneof("subject")),
                                 fb.feedback_id)
        return index

    def _table(self, fb: fpb.Feedback) -> dict[str, str] | None:
        if fb.scope == ITEM:
            return {"record_id": self.records, "session_key": self.blocks,
                    "incident_id": self.incidents}.get(fb.WhichOneof("subject") or "")
        return {TEMPLATE: self.templates, NODE: self.nodes, SEQUENCE: self.sequences}.get(fb.scope)

    def __bool__(self) -> bool:
        return any((self.records, self.blocks, self.incidents, self.templates, self.nodes, self.sequences))

    def anomaly(self, entry: score_pb2.Anomaly, incident_anomalies: Callable[[str], Container[str | int]] | None = None) -> str:
        """The id of the oldest label covering `entry` ("" when none); `incident_anomalies(incident_id)` are the
        members an incident holds (incident_members)."""
        found: list[str] = []
        if entry.HasField("line"):
            line = entry.line
            found += [self.records.get(line.record_id, ""), self.templates.get(line.template_id, "")]
            found += [self.blocks.get(b, "") for b in line.block_ids]
            if self.nodes:
                found.append(self.nodes.get(line_node(line), ""))
        elif entry.HasField("block"):
            block = entry.block
            found.append(self.blocks.get(block.block_id, ""))
            if self.sequences and block.events:
                found.append(self.sequences.get(sequence_key(block.events), ""))
        if self.incidents and incident_anomalies is not None and (entry.source or entry.id):
            key = anomaly_key(entry)
            found += [fb_id for incident_id, fb_id in self.incidents.items() if key in incident_anomalies(incident_id)]
        return _oldest(found)

    def incident(self, inc: incident_pb2.Incident) -> str:
        """The id of the oldest label covering incident `inc` ("" when none)."""
        found = [self.incidents.get(inc.incident_id, "")]
        found.append(_all(self.blocks, inc.session_keys))
        found.append(_all(self.records, [e.record_id for e in inc.evidence]))
        found.append(_all(self.templates, [e.template_id for e in inc.evidence]))
        found.append(_all(self.nodes, inc.nodes))
        return _oldest(found)


def _all(table: dict[str, str], keys: Iterable[str]) -> str:
    """The oldest label among those covering every key, "" when some key is not covered (or there are none)."""
    keys = list(keys)
    if not table or not keys:
        return ""
    ids = [table.get(k, "") for k in keys]
    return "" if not all(ids) else _oldest(ids)


def _oldest(ids: Iterable[str]) -> str:
    """Feedback ids are fb-<sequence>: the smallest one set, "" when none is."""
    ids = [i for i in ids if i]
    return min(ids, key=lambda i: (len(i), i)) if ids else ""


def anomaly_key(entry: score_pb2.Anomaly) -> str | int:
    """What names an anomaly in incident_members: its source, the same on every history replica; its history id
    only when it has none (an entry a scorer recorded itself), which names it on this replica alone."""
    return entry.source or entry.id


def incident_members(incident: incident_pb2.Incident) -> frozenset[str | int]:
    """The anomaly_key of each anomaly grouped into `incident`. anomaly_sources line up with the last of its
    anomaly_ids (both capped alike); an incident stored before sources existed has fewer, or none, and its
    older anomalies fall back to their history ids: right on the replica that grouped them, possibly other
    entries on a follower (no better name was stored). Ids and sources never collide (int vs str)."""
    ids, sources = list(incident.anomaly_ids), list(incident.anomaly_sources)
    unnamed = len(ids) - len(sources)
    members: set[str | int] = set(ids[:unnamed]) if unnamed > 0 else set()
    members.update(source or anomaly_id for anomaly_id, source in zip(ids[max(unnamed, 0):], sources))
    return frozenset(members)

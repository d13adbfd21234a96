"""Which alerts belong together: the grouping rules of the incident book (scorer/analyst/incidents.py).

An anomaly from the history joins an open incident when
- it names a session (an HDFS block id; a BGL node or window) the incident already covers (a BGL node's
  alerts are one incident while they come within a window of each other; its node id is the incident's node), or
- it is a flagged line that shares a node and a template with the incident and its event time lies within the
  grouping window of the incident's latest line (blocks failing on the same DataNodes the same way, minutes
  apart, are one story).
Otherwise it starts an incident. An incident closes once the stream's event time (or, on a quiet feed, the wall
clock) has moved a whole window past its latest alert; an alert after that starts a new one.

Everything here is a pure function of protobuf messages, so the rules are unit-tested without a broker.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field

from google.protobuf.timestamp_pb2 import Timestamp

from logmesh.v1 import incident_pb2, score_pb2

#: Event-time distance within which a line on the same node and template joins (and after which an incident closes).
DEFAULT_WINDOW_S = 300.0
OPEN, CLOSED = incident_pb2.INCIDENT_STATE_OPEN, incident_pb2.INCIDENT_STATE_CLOSED
K = incident_pb2
# most telling first: the kind an incident shows is the highest-ranked kind among its alerts
_RANK = {K.INCIDENT_KIND_NEW_TEMPLATE: 5, K.INCIDENT_KIND_EXCEPTION: 4, K.INCIDENT_KIND_MISSING_STEP: 3,
         K.INCIDENT_KIND_RARE_SEQUENCE: 2, K.INCIDENT_KIND_FREQUENCY: 1, K.INCIDENT_KIND_UNSPECIFIED: 0}
# BlockVerdict.evidence_kind (scorer/session_model.py) -> IncidentKind
_BLOCK_KINDS = {"new_template": K.INCIDENT_KIND_NEW_TEMPLATE, "evidence_event": K.INCIDENT_KIND_EXCEPTION,
                "missing_step": K.INCIDENT_KIND_MISSING_STEP, "failure_pattern": K.INCIDENT_KIND_RARE_SEQUENCE,
                "frequency": K.INCIDENT_KIND_FREQUENCY}  # an event beyond every normal count: scorer/rate_evidence.py
# an IPv4 address (a DataNode, a client), without its port: "/10.251.42.84:50010" -> "10.251.42.84"
# a BlueGene/L node id, the session key BGL lines carry (ingest/families/bgl.py): "R02-M1-N0-C:J12-U11"
_BGL_NODE = re.compile(r"R\d\d-M\d-N[0-9A-F]-[CI]:J\d\d-U\d\d")
_IPV4 = re.compile(r"(?<![\d.])((?:25[0-5]|2[0-4]\d|1?\d?\d)(?:\.(?:25[0-5]|2[0-4]\d|1?\d?\d)){3})(?![\d.])")


def nodes_of(message: str) -> list[str]:
    """The hosts a line names (IPv4 addresses), in order of first mention."""
    return list(dict.fromkeys(_IPV4.findall(message)))


def line_kind(line: score_pb2.ScoreResult) -> int:
    """A flagged line's IncidentKind: a template the model never saw, else a line that carries failure evidence."""
    return K.INCIDENT_KIND_NEW_TEMPLATE if line.new_template else K.INCIDENT_KIND_EXCEPTION


def block_kind(block: score_pb2.BlockVerdict) -> int:
    """A block verdict's IncidentKind from its evidence_kind ("unfamiliar"/"none": not known)."""
    return _BLOCK_KINDS.get(block.evidence_kind, K.INCIDENT_KIND_UNSPECIFIED)


def stronger(a: int, b: int) -> int:
    """The more telling of two IncidentKinds."""
    return a if _RANK.get(a, 0) >= _RANK.get(b, 0) else b


def groupable(entry: score_pb2.Anomaly) -> bool:
    """Whether a history entry is an alert an incident is made of: a flagged line, a block's ALERT, or a block's
    FINAL verdict that is still anomalous (an INTERIM, or a block that ended normal, is no alert)."""
    if entry.HasField("line"):
        return entry.line.verdict == score_pb2.VERDICT_ANOMALY
    if entry.HasField("block"):
        b = entry.block
        return b.kind == score_pb2.BLOCK_VERDICT_KIND_ALERT or (
            b.kind == score_pb2.BLOCK_VERDICT_KIND_FINAL and b.verdict == score_pb2.VERDICT_ANOMALY)
    return False


def seconds(ts: Timestamp) -> float:
    return ts.seconds + ts.nanos / 1e9


@dataclass(frozen=True)
class Facts:
    """What grouping reads from one history entry."""
    sessions: tuple[str, ...]
    nodes: tuple[str, ...]
    template: str  # "" for a block
    event_s: float | None  # event time (seconds since the epoch); None when the entry carries none
    recorded_s: float  # when the history recorded it (an incident's times when none of its entries has one)


def event_last_seen(incident: incident_pb2.Incident) -> float | None:
    """An incident's last_seen_time when it is an event time; None when its cited lines carry none (its times
    are then the history's recording times, which must not be compared with event times). An incident citing no
    line (blocks only) keeps its last_seen_time, as its block verdicts' times are event times."""
    if incident.evidence and not any(e.HasField("event_time") for e in incident.evidence):
        return None
    return seconds(incident.last_seen_time)


def facts(entry: score_pb2.Anomaly) -> Facts:
    """An entry without an event time joins by its sessions only and moves no incident's times: event time and
    the wall clock are never compared."""
    recorded = seconds(entry.recorded_time)
    if entry.HasField("line"):
        r = entry.line
        when = seconds(r.event_time) if r.HasField("event_time") else None
        nodes = nodes_of(r.message) + [k for k in r.block_ids if _BGL_NODE.fullmatch(k)]  # a BGL line's node
        return Facts(tuple(dict.fromkeys(r.block_ids)), tuple(dict.fromkeys(nodes)), r.template_id, when, recorded)
    b = entry.block
    nodes = (b.block_id,) if _BGL_NODE.fullmatch(b.block_id) else ()  # a BGL node's session
    when = (seconds(b.last_time) if b.HasField("last_time") else seconds(b.first_time) if b.HasField("first_time")
            else None)
    return Facts((b.block_id,), nodes, "", when, recorded)


@dataclass
class _Open:
    sessions: set[str] = field(default_factory=set)
    nodes: set[str] = field(default_factory=set)
    templates: set[str] = field(default_factory=set)
    last_s: float | None = None  # the latest event time; None while no entry of it carried one


class OpenIndex:
    """The open incidents' sessions, nodes, templates and latest event time, to find the one an alert joins."""

    def __init__(self, window_s: float = DEFAULT_WINDOW_S) -> None:
        self.window_s = window_s
        self._open: dict[str, _Open] = {}
        self._by_session: dict[str, str] = {}
        self._by_node: dict[str, set[str]] = {}

    def __contains__(self, incident_id: str) -> bool:
        return incident_id in self._open

    def __len__(self) -> int:
        return len(self._open)

    def ids(self) -> list[str]:
        return list(self._open)

    def last_s(self, incident_id: str) -> float | None:
        return self._open[incident_id].last_s

    def match(self, f: Facts) -> str | None:
        """The open incident `f` joins, or None (it starts one)."""
        for s in f.sessions:
            if s in self._by_session:
                return self._by_session[s]
        if not f.template or f.event_s is None:
            return None
        best: tuple[float, str] | None = None
        for node in f.nodes:
            for incident_id in self._by_node.get(node, ()):
                o = self._open[incident_id]
                if o.last_s is None:  # no event time to compare: it joins by its sessions only
                    continue
                gap = abs(f.event_s - o.last_s)
                if f.template in o.templates and gap <= self.window_s and (best is None or gap < best[0]):
                    best = (gap, incident_id)
        return best[1] if best else None

    def add(self, incident_id: str, f: Facts) -> None:
        o = self._open.setdefault(incident_id, _Open())
        for s in f.sessions:
            o.sessions.add(s)
            self._by_session.setdefault(s, incident_id)
        for n in f.nodes:
            o.nodes.add(n)
            self._by_node.setdefault(n, set()).add(incident_id)
        if f.template:
            o.templates.add(f.template)
        if f.event_s is not None:
            o.last_s = f.event_s if o.last_s is None else max(o.last_s, f.event_s)

    def hold(self, incident: incident_pb2.Incident) -> None:
        """Indexes an open incident read back from the store (its evidence gives its templates)."""
        templates = {e.template_id for e in incident.evidence if e.template_id}
        last = event_last_seen(incident)
        self.add(incident.incident_id, Facts(tuple(incident.session_keys), tuple(incident.nodes), "", last,
                                             seconds(incident.last_seen_time)))
        self._open[incident.incident_id].templates |= templates

    def remove(self, incident_id: str) -> None:
        o = self._open.pop(incident_id, None)
        if o is None:
            return
        for s in o.sessions:
            if self._by_session.get(s) == incident_id:
                del self._by_session[s]
        for n in o.nodes:
            holders = self._by_node.get(n)
            if holders is not None:
                holders.discard(incident_id)
                if not holders:
                    del self._by_node[n]

    def stale(self, watermark_s: float) -> list[str]:
        """Open incidents whose latest line is more than a window older than `watermark_s` (event time)."""
        # one with no event time is closed by the window of wall-clock idleness only (IncidentBook)
        return [i for i, o in self._open.items() if o.last_s is not None and watermark_s - o.last_s > self.window_s]

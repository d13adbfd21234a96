"""Incidents built from real HDFS data (HDFS_5k.log and loghub's block labels), in the shape the IncidentBook
holds: one incident per anomalous block, its evidence one line per template (the first line of it, with the
count in the block and the share of normal blocks of the same file that hold the template), most telling
(rarest in normal blocks) first. For the summary and notification tests, which run without the book."""
from __future__ import annotations

from collections import Counter, defaultdict
from pathlib import Path

from logmesh.ingest.reader import iter_records, load_block_labels
from logmesh.v1 import incident_pb2, log_record_pb2 as lr

_CACHE: dict[Path, list[incident_pb2.Incident]] = {}


def _kind(templates: set[str], fractions: dict[str, float]) -> int:
    if any(fractions.get(t, 0.0) == 0.0 for t in templates):
        return incident_pb2.INCIDENT_KIND_EXCEPTION
    return incident_pb2.INCIDENT_KIND_RARE_SEQUENCE


def hdfs_incidents(data_dir: Path, log_name: str = "HDFS_5k.log") -> list[incident_pb2.Incident]:
    """Every anomalous block of `log_name` as an Incident (version 1), in the order the blocks first appear."""
    path = data_dir / log_name
    if path in _CACHE:
        return _CACHE[path]
    labels = load_block_labels(data_dir / "anomaly_label.csv")
    blocks: dict[str, list[lr.LogRecord]] = defaultdict(list)
    for record in iter_records(path, labels):
        if record.block_ids:
            blocks[record.block_ids[0]].append(record)
    normal = [recs for block, recs in blocks.items() if labels.get(block) == lr.LABEL_NORMAL]
    holding = Counter(t for recs in normal for t in {r.template_id for r in recs})
    fractions = {t: n / max(1, len(normal)) for t, n in holding.items()}
    incidents = []
    for n, (block, recs) in enumerate((b, r) for b, r in blocks.items() if labels.get(b) == lr.LABEL_ANOMALY):
        counts = Counter(r.template_id for r in recs)
        first: dict[str, lr.LogRecord] = {}
        for r in recs:
            first.setdefault(r.template_id, r)
        order = sorted(first, key=lambda t: (fractions.get(t, 0.0), -counts[t]))
        evidence = [incident_pb2.EvidenceLine(
            record_id=first[t].id, template_id=t, message=first[t].message[:1024], component=first[t].component,
            event_time=first[t].event_time, count_in_incident=counts[t],
            normal_session_fraction=fractions.get(t, 0.0), session_key=block) for t in order]
        nodes = sorted({tok.split(":")[0].lstrip("/") for r in recs for tok in r.message.split()
                        if tok.startswith("/10.")})[:5]
        incident = incident_pb2.Incident(
            incident_id=f"inc-{n + 1:06d}", version=1, update_id=n + 1, state=incident_pb2.INCIDENT_STATE_OPEN,
            kind=_kind(set(counts), fractions), family="hdfs", first_seen_time=recs[0].event_time,
            last_seen_time=recs[-1].event_time, session_keys=[block], nodes=nodes,
            anomaly_ids=[100 + n], evidence=evidence, max_score=0.95,
            reasons=[f"block holds template {t}, which no normal block holds" for t in order
                     if fractions.get(t, 0.0) == 0.0][:3] or ["rare sequence of events"])
        incidents.append(incident)
    _CACHE[path] = incidents
    return incidents

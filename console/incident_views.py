"""Incidents as plain dicts for the console's incident pages and their JSON twins. As in views.py, strings (log lines,
summaries an LLM wrote) pass through as they are: escaping is the renderer's job (Jinja2 autoescape)."""
from __future__ import annotations

import math
from typing import Any

from logmesh.console.views import iso, seconds
from logmesh.v1 import feedback_pb2, incident_pb2


def _name(enum, value: int, prefix: str) -> str:  # type: ignore[no-untyped-def]
    try:
        return enum.Name(value).removeprefix(prefix).lower()
    except ValueError:  # a value added after this build
        return str(value)


def summary(i: incident_pb2.Incident) -> dict[str, Any]:
    """One row of the incident list."""
    return {"incident_id": i.incident_id, "version": i.version, "update_id": i.update_id,
            "state": _name(incident_pb2.IncidentState, i.state, "INCIDENT_STATE_"),
            "kind": _name(incident_pb2.IncidentKind, i.kind, "INCIDENT_KIND_"), "family": i.family,
            "first_seen_time": iso(i.first_seen_time), "last_seen_time": iso(i.last_seen_time),
            "session_keys": list(i.session_keys), "nodes": list(i.nodes), "alerts": len(i.anomaly_ids),
            "max_score": round(i.max_score, 4), "title": i.summary.title if i.HasField("summary") else "",
            "suppressed_by_feedback_id": i.suppressed_by_feedback_id}


def _fraction(value: float) -> float | None:
    return round(value, 4) if math.isfinite(value) else None  # NaN: the served model could not say


def detail(i: incident_pb2.Incident) -> dict[str, Any]:
    """Everything the incident page shows: evidence, timeline, similar incidents, summary."""
    evidence = [{"record_id": e.record_id, "template_id": e.template_id, "message": e.message,
                 "component": e.component, "event_time": iso(e.event_time), "count_in_incident": e.count_in_incident,
                 "normal_session_fraction": _fraction(e.normal_session_fraction), "session_key": e.session_key}
                for e in i.evidence]
    # the timeline: the cited lines in event-time order (the evidence list is ordered by how telling a line is)
    timeline = sorted(evidence, key=lambda e: (e["event_time"] is None, e["event_time"] or "", e["record_id"]))
    out = summary(i) | {
        "reasons": list(i.reasons), "anomaly_ids": list(i.anomaly_ids),
        "anomaly_sources": list(i.anomaly_sources), "evidence": evidence, "timeline": timeline,
        "duration_seconds": round(max(0.0, seconds(i.last_seen_time) - seconds(i.first_seen_time)), 3),
        "similar": [{"incident_id": s.incident_id, "similarity": round(s.similarity, 4), "title": s.title,
                     "analyst_label": _name(feedback_pb2.FeedbackLabel, s.analyst_label, "FEEDBACK_LABEL_")}
                    for s in i.similar],
        "summary": None}
    if i.HasField("summary"):
        s = i.summary
        out["summary"] = {"title": s.title, "severity": _name(incident_pb2.Severity, s.severity, "SEVERITY_"),
                          "what_happened": s.what_happened, "cited_record_ids": list(s.cited_record_ids),
                          "likely_cause": s.likely_cause, "next_steps": list(s.next_steps),
                          "source": _name(incident_pb2.SummarySource, s.source, "SUMMARY_SOURCE_"), "model": s.model,
                          "incident_version": s.incident_version, "generated_time": iso(s.generated_time),
                          "fallback_reason": s.fallback_reason}
    return out

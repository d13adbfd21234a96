"""The deterministic incident summary: built from the incident's evidence alone, without a model.

Used when no LLM is configured (--llm-url), when its answers fail validation twice, or when the summary queue
is full. Same input, same summary (no clock besides generated_time), so tests and operators can rely on it.
"""
from __future__ import annotations

from logmesh.v1 import incident_pb2

_KIND_WORDS = {
    incident_pb2.INCIDENT_KIND_NEW_TEMPLATE: "A kind of line never seen in training",
    incident_pb2.INCIDENT_KIND_RARE_SEQUENCE: "A rare sequence of events",
    incident_pb2.INCIDENT_KIND_MISSING_STEP: "A session that skipped a step normal sessions take",
    incident_pb2.INCIDENT_KIND_EXCEPTION: "Lines reporting an error",
    incident_pb2.INCIDENT_KIND_FREQUENCY: "A normal kind of line at an abnormal rate",
}
_CAUSE = {
    incident_pb2.INCIDENT_KIND_NEW_TEMPLATE: "a code path or failure mode the model never saw in normal operation",
    incident_pb2.INCIDENT_KIND_RARE_SEQUENCE: "an operation that took an unusual path, often a retry after a failure",
    incident_pb2.INCIDENT_KIND_MISSING_STEP: "an operation that stopped part way (a node or pipeline failed)",
    incident_pb2.INCIDENT_KIND_EXCEPTION: "the error the cited lines report",
    incident_pb2.INCIDENT_KIND_FREQUENCY: "a retry loop or a flood of the same event",
}
# kinds that mean data or a service is failing now, not merely something unusual
_SERIOUS = {incident_pb2.INCIDENT_KIND_EXCEPTION, incident_pb2.INCIDENT_KIND_MISSING_STEP}
MAX_CITED = 5
_MESSAGE_CHARS = 160


def severity_for(incident: incident_pb2.Incident) -> int:
    """HIGH for an error or a missing step scored >= 0.9, MEDIUM for those below or any new template or rare
    sequence, LOW for a frequency change or an unknown kind."""
    if incident.kind in _SERIOUS:
        return incident_pb2.SEVERITY_HIGH if incident.max_score >= 0.9 else incident_pb2.SEVERITY_MEDIUM
    if incident.kind in (incident_pb2.INCIDENT_KIND_NEW_TEMPLATE, incident_pb2.INCIDENT_KIND_RARE_SEQUENCE):
        return incident_pb2.SEVERITY_MEDIUM
    return incident_pb2.SEVERITY_LOW


def _sessions(incident: incident_pb2.Incident) -> str:
    keys = list(incident.session_keys)
    if not keys:
        return "no named session"
    return keys[0] if len(keys) == 1 else f"{keys[0]} and {len(keys) - 1} more session{'s' * (len(keys) > 2)}"


def _clip(text: str, limit: int = _MESSAGE_CHARS) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _evidence_sentence(line: incident_pb2.EvidenceLine) -> str:
    normal = ("never seen in normal sessions" if line.normal_session_fraction <= 0
              else f"in {line.normal_session_fraction:.0%} of normal sessions")
    template = line.template_id or "an unknown template"
    return (f"{template} ({line.count_in_incident}x here, {normal}) at {line.record_id}: "
            f"\"{_clip(line.message)}\"")


def _cited(evidence: list[incident_pb2.EvidenceLine]) -> list[str]:
    """The evidence lines rarer than in half the normal sessions (the book puts the most telling first), else
    the first line: what shows the incident, not the normal lines around it."""
    rare = [e.record_id for e in evidence if e.record_id and e.normal_session_fraction < 0.5]
    return rare[:MAX_CITED] or [e.record_id for e in evidence[:1] if e.record_id]


def build(incident: incident_pb2.Incident, reason: str) -> incident_pb2.IncidentSummary:
    """The fallback summary of `incident` as it stands, marked SUMMARY_SOURCE_FALLBACK with `reason`."""
    kind = _KIND_WORDS.get(incident.kind, "Anomalous lines")
    family = f"{incident.family} " if incident.family else ""
    title = f"{kind} in {family}{_sessions(incident)}"
    evidence = list(incident.evidence)
    what = [f"{len(incident.anomaly_ids) or 'Some'} alert{'s' * (len(incident.anomaly_ids) != 1)} "
            f"(max score {incident.max_score:.2f}) over {_sessions(incident)}"
            + (f" on {', '.join(incident.nodes[:3])}" if incident.nodes else "") + "."]
    if evidence:
        what.append("Most telling: " + "; ".join(_evidence_sentence(e) for e in evidence[:3]) + ".")
    cause = _CAUSE.get(incident.kind, "not known from the evidence")
    if incident.reasons:
        cause = f"{cause}; the scorer's reasons: {'; '.join(incident.reasons[:3])}"
    steps = ["Read the cited lines in order, starting with the first."]
    if incident.nodes:
        steps.append(f"Check the health and logs of {', '.join(incident.nodes[:3])} around the incident's window.")
    if incident.session_keys:
        steps.append(f"Follow {incident.session_keys[0]} through the other nodes' logs to where it stopped.")
    if incident.similar:
        best = incident.similar[0]
        steps.append(f"Compare with the similar past incident {best.incident_id} (similarity {best.similarity:.2f}).")
    steps.append("Label it with `logmesh feedback` (true alarm, false alarm) so suppression and training learn from it.")
    return incident_pb2.IncidentSummary(
        title=_clip(title, 200), severity=severity_for(incident), what_happened=" ".join(what),
        cited_record_ids=_cited(evidence),
        likely_cause=cause[:1].upper() + cause[1:] + ".", next_steps=steps,
        source=incident_pb2.SUMMARY_SOURCE_FALLBACK, model="", incident_version=incident.version,
        fallback_reason=reason)

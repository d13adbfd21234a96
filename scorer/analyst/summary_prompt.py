"""The chat messages that ask an LLM to summarise an incident: its evidence lines by record id (with how often
each kind of line shows up here and in normal operation), kind, sessions, nodes and the scorer's reasons.

Kept short (a few evidence lines, clipped messages): small models have a 2k-token context, and the answer
(summary_check.py) must cite only the record ids listed here.
"""
from __future__ import annotations

from logmesh.v1 import incident_pb2

SEVERITIES = ("low", "medium", "high", "critical")
MAX_EVIDENCE = 8
MAX_MESSAGE_CHARS = 240
MAX_SESSIONS = 5

SYSTEM = (
    "You are a site reliability engineer reading an incident found by a log anomaly detector. "
    "Answer with one JSON object and nothing else, with exactly these keys: "
    '"title" (one line), "severity" (one of "low", "medium", "high", "critical"), '
    '"what_happened" (a few sentences), "cited_record_ids" (a list of record ids copied from the evidence '
    'that show what happened; cite no other id), "likely_cause" (one sentence), '
    '"next_steps" (a list of short actions, most useful first).'
)


def _kind(incident: incident_pb2.Incident) -> str:
    name = incident_pb2.IncidentKind.Name(incident.kind)
    return name.removeprefix("INCIDENT_KIND_").replace("_", " ").lower()


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def evidence_block(incident: incident_pb2.Incident) -> str:
    """One line per evidence line: record id, template, count here, share of normal sessions, session, text."""
    rows = []
    for e in list(incident.evidence)[:MAX_EVIDENCE]:
        normal = "never in normal sessions" if e.normal_session_fraction <= 0 else \
            f"in {e.normal_session_fraction:.0%} of normal sessions"
        rows.append(f"- record_id {e.record_id}: template {e.template_id or '?'}, {e.count_in_incident}x in this "
                    f"incident, {normal}; session {e.session_key or '?'}; {e.component}: "
                    f"{_clip(e.message, MAX_MESSAGE_CHARS)}")
    return "\n".join(rows) or "- (no evidence lines)"


def messages(incident: incident_pb2.Incident) -> list[dict[str, str]]:
    """The system and user messages of the chat-completions request for `incident`."""
    sessions = list(incident.session_keys)
    more = f" (+{len(sessions) - MAX_SESSIONS} more)" if len(sessions) > MAX_SESSIONS else ""
    lines = [
        f"Incident {incident.incident_id} ({incident.family or 'logs'}), kind: {_kind(incident)}, "
        f"max anomaly score {incident.max_score:.2f}, alerts: {len(incident.anomaly_ids)}.",
        f"Sessions: {', '.join(sessions[:MAX_SESSIONS]) or 'none'}{more}.",
    ]
    if incident.nodes:
        lines.append(f"Nodes: {', '.join(incident.nodes[:MAX_SESSIONS])}.")
    if incident.reasons:
        lines.append("Detector reasons: " + "; ".join(incident.reasons[:5]) + ".")
    lines += ["Evidence (cite these record ids):", evidence_block(incident)]
    return [{"role": "system", "content": SYSTEM}, {"role": "user", "content": "\n".join(lines)}]


def answer_schema(incident: incident_pb2.Incident) -> dict:
    """JSON schema of the answer, sent as response_format's "schema" (llama.cpp's server turns it into a grammar:
    a small model then cannot leave a field out or cite an id the evidence lacks, and the string lengths keep
    it within max_tokens; vLLM ignores the key and keeps plain JSON mode). summary_check.py checks it anyway."""
    def text(limit: int) -> dict:
        return {"type": "string", "minLength": 1, "maxLength": limit}
    ids = sorted(citable_ids(incident)) or [""]
    return {"type": "object", "additionalProperties": False,
            "required": ["title", "severity", "what_happened", "cited_record_ids", "likely_cause", "next_steps"],
            "properties": {
                "title": text(120), "severity": {"type": "string", "enum": list(SEVERITIES)},
                "what_happened": text(400),
                "cited_record_ids": {"type": "array", "items": {"type": "string", "enum": ids},
                                     "minItems": 1, "maxItems": 5},
                "likely_cause": text(200),
                "next_steps": {"type": "array", "items": text(120), "minItems": 1, "maxItems": 4}}}


def citable_ids(incident: incident_pb2.Incident) -> set[str]:
    """Every record id the answer may cite: the incident's evidence lines (all of them, not only those shown)."""
    return {e.record_id for e in incident.evidence if e.record_id}

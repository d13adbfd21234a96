"""Validation of an LLM's answer: a JSON object with every field present and of its type, a known severity, and
every cited record id an evidence line of the incident. A failed check raises InvalidSummary with the reason
(what the fallback summary carries as fallback_reason when the retry fails too)."""
from __future__ import annotations

import json
from typing import Any

from logmesh.v1 import incident_pb2
from logmesh.scorer.analyst.summary_prompt import SEVERITIES

_SEVERITY = {name: incident_pb2.Severity.Value(f"SEVERITY_{name.upper()}") for name in SEVERITIES}
_TEXT_FIELDS = ("title", "what_happened", "likely_cause")
MAX_FIELD_CHARS = 2000
MAX_STEPS = 10


class InvalidSummary(ValueError):
    """The answer is not a usable summary; `kind` names the failure for metrics (bounded label values)."""

    def __init__(self, kind: str, reason: str) -> None:
        super().__init__(reason)
        self.kind = kind


def _text(answer: dict[str, Any], key: str) -> str:
    value = answer.get(key)
    if not isinstance(value, str) or not value.strip():
        raise InvalidSummary("missing_field", f"field {key!r} missing or empty")
    return value.strip()[:MAX_FIELD_CHARS]


def _strings(answer: dict[str, Any], key: str) -> list[str]:
    value = answer.get(key)
    if isinstance(value, str):  # one step written as a string: still an answer
        value = [value]
    if not isinstance(value, list) or not value or not all(isinstance(v, str) and v.strip() for v in value):
        raise InvalidSummary("missing_field", f"field {key!r} missing or not a list of strings")
    return [v.strip()[:MAX_FIELD_CHARS] for v in value]


def parse(content: str, incident: incident_pb2.Incident, citable: set[str]) -> incident_pb2.IncidentSummary:
    """The IncidentSummary in `content` (the model's message), checked against `citable` (the incident's
    evidence record ids). Source, model and timestamps are the caller's to set."""
    try:
        answer = json.loads(content)
    except (json.JSONDecodeError, TypeError):
        raise InvalidSummary("not_json", f"answer is not JSON: {content[:80]!r}") from None
    if not isinstance(answer, dict):
        raise InvalidSummary("not_json", f"answer is JSON but not an object: {content[:80]!r}")
    fields = {key: _text(answer, key) for key in _TEXT_FIELDS}
    severity = answer.get("severity")
    if not isinstance(severity, str) or severity.strip().lower() not in _SEVERITY:
        raise InvalidSummary("bad_severity", f"severity {severity!r} is not one of {', '.join(SEVERITIES)}")
    cited = _strings(answer, "cited_record_ids")
    unknown = [c for c in cited if c not in citable]
    if unknown:
        raise InvalidSummary("unknown_citation", f"cited unknown id {unknown[0]}"
                             + (f" (and {len(unknown) - 1} more)" if len(unknown) > 1 else ""))
    return incident_pb2.IncidentSummary(
        title=fields["title"][:200], severity=_SEVERITY[severity.strip().lower()],
        what_happened=fields["what_happened"], cited_record_ids=list(dict.fromkeys(cited)),
        likely_cause=fields["likely_cause"], next_steps=_strings(answer, "next_steps")[:MAX_STEPS],
        incident_version=incident.version)

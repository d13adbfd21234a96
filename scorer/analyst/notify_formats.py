"""Webhook payloads for an incident: Alertmanager's webhook JSON (version 4, what Alertmanager itself posts to a
receiver: one alert per anomaly of the incident, grouped by incident id) and a Slack-compatible `{"text": ...}`
message (Slack incoming webhooks, Mattermost, Rocket.Chat and Teams' Slack-compatible hooks take it)."""
from __future__ import annotations

import hashlib
from typing import Any, Callable

from logmesh.v1 import incident_pb2

MAX_ALERTS = 50
_ZERO_TIME = "0001-01-01T00:00:00Z"  # Alertmanager's endsAt for an alert still firing


def _words(enum: Any, value: int, prefix: str) -> str:
    return enum.Name(value).removeprefix(prefix).lower()


def _title(incident: incident_pb2.Incident) -> str:
    if incident.HasField("summary") and incident.summary.title:
        return incident.summary.title
    return f"{_words(incident_pb2.IncidentKind, incident.kind, 'INCIDENT_KIND_')} incident in " \
           f"{', '.join(incident.session_keys[:3]) or incident.family or 'the logs'}"


def _severity(incident: incident_pb2.Incident) -> str:
    if incident.HasField("summary") and incident.summary.severity:
        return _words(incident_pb2.Severity, incident.summary.severity, "SEVERITY_")
    return "unknown"


def _time(ts: Any) -> str:
    return ts.ToJsonString() if ts.seconds or ts.nanos else _ZERO_TIME


def _link(console_url: str, incident: incident_pb2.Incident) -> str:
    return f"{console_url.rstrip('/')}/incidents/{incident.incident_id}" if console_url else ""


def alertmanager(incident: incident_pb2.Incident, console_url: str = "") -> dict[str, Any]:
    """Alertmanager webhook JSON (version 4) for `incident`."""
    status = "resolved" if incident.state == incident_pb2.INCIDENT_STATE_CLOSED else "firing"
    common = {"alertname": "LogmeshIncident", "incident_id": incident.incident_id, "family": incident.family,
              "kind": _words(incident_pb2.IncidentKind, incident.kind, "INCIDENT_KIND_"),
              "severity": _severity(incident)}
    annotations = {"summary": _title(incident)}
    if incident.HasField("summary"):
        annotations["description"] = incident.summary.what_happened
        annotations["summary_source"] = _words(incident_pb2.SummarySource, incident.summary.source, "SUMMARY_SOURCE_")
    ids = list(incident.anomaly_ids) or [0]
    alerts = []
    for anomaly_id in ids[:MAX_ALERTS]:
        labels = dict(common, anomaly_id=str(anomaly_id)) if anomaly_id else dict(common)
        fingerprint = hashlib.sha256(repr(sorted(labels.items())).encode()).hexdigest()[:16]
        alerts.append({"status": status, "labels": labels, "annotations": annotations,
                       "startsAt": _time(incident.first_seen_time),
                       "endsAt": _time(incident.last_seen_time) if status == "resolved" else _ZERO_TIME,
                       "generatorURL": _link(console_url, incident), "fingerprint": fingerprint})
    return {"version": "4", "groupKey": f'{{}}:{{incident_id="{incident.incident_id}"}}',
            "truncatedAlerts": max(0, len(ids) - MAX_ALERTS), "status": status, "receiver": "logmesh",
            "groupLabels": {"incident_id": incident.incident_id}, "commonLabels": common,
            "commonAnnotations": annotations, "externalURL": console_url, "alerts": alerts}


def slack(incident: incident_pb2.Incident, console_url: str = "") -> dict[str, Any]:
    """A Slack-compatible message (mrkdwn text) for `incident`."""
    lines = [f"*[{_severity(incident).upper()}] {_title(incident)}*"]
    if incident.HasField("summary"):
        s = incident.summary
        lines.append(s.what_happened)
        if s.likely_cause:
            lines.append(f"Likely cause: {s.likely_cause}")
        if s.next_steps:
            lines.append(f"Next: {s.next_steps[0]}")
        if s.cited_record_ids:
            lines.append("Lines: " + ", ".join(f"`{r}`" for r in s.cited_record_ids[:5]))
    sessions = ", ".join(incident.session_keys[:3]) + ("…" if len(incident.session_keys) > 3 else "")
    lines.append(f"Incident `{incident.incident_id}` · {incident.family or 'logs'} · "
                 f"{_words(incident_pb2.IncidentKind, incident.kind, 'INCIDENT_KIND_')} · "
                 f"{len(incident.anomaly_ids)} alerts · max score {incident.max_score:.2f}"
                 + (f" · {sessions}" if sessions else ""))
    if console_url:
        lines.append(_link(console_url, incident))
    return {"text": "\n".join(lines)}


FORMATS: dict[str, Callable[[incident_pb2.Incident, str], dict[str, Any]]] = {
    "alertmanager": alertmanager, "slack": slack}

"""Anomaly history entries as plain dicts: what the JSON endpoints return, the SSE feed sends and the
templates render. Strings are passed through as they are (log lines are attacker-controlled text): escaping
is the renderer's job (Jinja2 autoescape, textContent in the browser), never done or undone here."""
from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

from google.protobuf.json_format import MessageToDict
from google.protobuf.timestamp_pb2 import Timestamp

from logmesh.v1 import log_record_pb2, score_pb2, scorer_service_pb2 as spb

_VERDICT_KIND = {score_pb2.BLOCK_VERDICT_KIND_INTERIM: "interim", score_pb2.BLOCK_VERDICT_KIND_ALERT: "alert",
                 score_pb2.BLOCK_VERDICT_KIND_FINAL: "final"}


def iso(ts: Timestamp) -> str | None:
    """RFC 3339 UTC with milliseconds, or None for an unset timestamp."""
    if not ts.seconds and not ts.nanos:
        return None
    moment = datetime.fromtimestamp(ts.seconds + ts.nanos / 1e9, timezone.utc)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def seconds(ts: Timestamp) -> float:
    return ts.seconds + ts.nanos / 1e9


def verdict(value: int) -> str:
    """"anomaly", "normal" or "unspecified"."""
    return score_pb2.Verdict.Name(value).removeprefix("VERDICT_").lower()


def _label(value: int) -> str:
    """"unspecified", "normal" or "anomaly"."""
    try:
        return log_record_pb2.Label.Name(value).removeprefix("LABEL_").lower()
    except ValueError:  # a label added after this build
        return str(value)


def similar(cases) -> list[dict[str, Any]]:  # type: ignore[no-untyped-def]
    return [{"id": c.id, "similarity": round(c.similarity, 4), "label": _label(c.label), "text": c.text,
             "verdict": verdict(c.verdict)} for c in cases]


def summary(entry: score_pb2.Anomaly) -> dict[str, Any]:
    """One feed row: enough to list and link the entry."""
    out: dict[str, Any] = {"id": entry.id, "recorded_time": iso(entry.recorded_time)}
    if entry.HasField("line"):
        r = entry.line
        out.update(kind="line", score=round(r.score, 4), record_id=r.record_id, text=r.message, component=r.component,
                   template_id=r.template_id, block_ids=list(r.block_ids), reason=r.reason,
                   new_template=r.new_template, event_time=iso(r.event_time))
    else:
        b = entry.block
        out.update(kind="block", score=round(b.score, 4), block_id=b.block_id,
                   verdict_kind=_VERDICT_KIND.get(b.kind, "unspecified"), evidence_kind=b.evidence_kind,
                   text=b.reasons[0] if b.reasons else "", events=len(b.events), event_time=iso(b.last_time))
    return out


def detail(entry: score_pb2.Anomaly) -> dict[str, Any]:
    """Everything the anomaly page shows about one entry."""
    out = summary(entry) | {"trimmed": entry.trimmed, "source": entry.source,
                            "suppressed_by_feedback_id": entry.suppressed_by_feedback_id}
    if entry.HasField("line"):
        r = entry.line
        out.update(verdict=verdict(r.verdict), confidence=round(r.confidence, 4),
                   anomaly_votes=r.anomaly_votes, normal_votes=r.normal_votes, model_version=r.model_version,
                   votes=[{"model": v.model, "verdict": verdict(v.verdict), "score": round(v.score, 4)} for v in r.votes],
                   similar=similar(r.similar), scored_time=iso(r.scored_time))
    else:
        b = entry.block
        out.update(verdict=verdict(b.verdict), reasons=list(b.reasons), timeline=list(b.events),
                   first_time=iso(b.first_time), last_time=iso(b.last_time),
                   anomalous_record_ids=list(b.anomalous_record_ids), model_version=b.model_version,
                   label=_label(b.label), similar=similar(b.similar))
    return out


def stats(reply: spb.GetStatsResponse) -> dict[str, Any]:
    """GetStats with the proto's field names (as `logmesh stats` prints them)."""
    return MessageToDict(reply, preserving_proto_field_name=True, always_print_fields_with_no_presence=True,
                         unquote_int64_if_possible=True)

"""`logmesh incidents` (ListIncidents, or WatchIncidents with --watch) and `logmesh incident ID` (GetIncident):
the scorer's alerts grouped into incidents, with their evidence, similar past incidents and summary."""
from __future__ import annotations

import argparse
import contextlib
import json
import sys

from logmesh.cli.common import NON_NEGATIVE, UserError, client_args, channel_security, number

STATES = {"all": 0, "open": 1, "closed": 2}
SOURCES_SHOWN = 20  # the newest anomalies' topic coordinates `logmesh incident ID` lists


def _name(enum, value: int, prefix: str) -> str:  # type: ignore[no-untyped-def]
    try:
        return enum.Name(value).removeprefix(prefix).lower().replace("_", "-")
    except ValueError:
        return str(value)


def _json(message) -> str:  # type: ignore[no-untyped-def]
    from google.protobuf.json_format import MessageToDict
    return json.dumps(MessageToDict(message, preserving_proto_field_name=True), sort_keys=False)


@contextlib.contextmanager
def _refusals():  # type: ignore[no-untyped-def]
    """A request the scorer refuses (an unknown id, a bad page token) is a user's mistake: one error line, exit 2."""
    import grpc
    try:
        yield
    except grpc.RpcError as exc:
        if exc.code() in (grpc.StatusCode.NOT_FOUND, grpc.StatusCode.INVALID_ARGUMENT):
            raise UserError(f"{exc.details()}") from None
        if exc.code() == grpc.StatusCode.UNIMPLEMENTED:
            raise UserError("this scorer serves no incidents: start it with an --anomalies-topic and an "
                            "--incidents-topic (`logmesh serve scorer --help`)") from None
        raise


def _when(ts) -> str:  # type: ignore[no-untyped-def]
    return ts.ToDatetime().strftime("%Y-%m-%d %H:%M:%S") if ts.seconds else "-"


def _one_line(incident) -> str:  # type: ignore[no-untyped-def]
    from logmesh.v1 import incident_pb2
    sessions = list(incident.session_keys)
    more = f" +{len(sessions) - 3}" if len(sessions) > 3 else ""
    flags = "  [suppressed by " + incident.suppressed_by_feedback_id + "]" if incident.suppressed_by_feedback_id else ""
    title = f"  {incident.summary.title}" if incident.HasField("summary") and incident.summary.title else ""
    return (f"{incident.incident_id}  {_name(incident_pb2.IncidentState, incident.state, 'INCIDENT_STATE_'):6}  "
            f"{_name(incident_pb2.IncidentKind, incident.kind, 'INCIDENT_KIND_'):13}  "
            f"{_when(incident.first_seen_time)} .. {_when(incident.last_seen_time)}  score={incident.max_score:.2f}  "
            f"{len(incident.anomaly_ids)} alerts  {','.join(sessions[:3])}{more}{title}{flags}")


def _detail(incident) -> None:  # type: ignore[no-untyped-def]
    from logmesh.v1 import feedback_pb2, incident_pb2
    print(_one_line(incident))
    print(f"  version {incident.version}, update {incident.update_id}, family {incident.family or '-'}")
    print(f"  sessions: {', '.join(incident.session_keys) or '-'}")
    print(f"  nodes:    {', '.join(incident.nodes) or '-'}")
    sources = [s or "-" for s in incident.anomaly_sources]  # "-": an entry the history read from no topic
    older = f" (+{len(sources) - SOURCES_SHOWN} older)" if len(sources) > SOURCES_SHOWN else ""
    print(f"  read at:  {', '.join(sources[-SOURCES_SHOWN:]) or '-'}{older}")
    for reason in incident.reasons:
        print(f"  reason:   {reason}")
    if incident.HasField("summary"):
        s = incident.summary
        source = _name(incident_pb2.SummarySource, s.source, "SUMMARY_SOURCE_")
        print(f"  summary ({source}{', ' + s.model if s.model else ''}, for version {s.incident_version}"
              f"{', ' + s.fallback_reason if s.fallback_reason else ''}): "
              f"[{_name(incident_pb2.Severity, s.severity, 'SEVERITY_')}] {s.title}")
        for label, text in (("what happened", s.what_happened), ("likely cause", s.likely_cause)):
            if text:
                print(f"    {label}: {text}")
        for step in s.next_steps:
            print(f"    next: {step}")
        if s.cited_record_ids:
            print(f"    cites: {', '.join(s.cited_record_ids)}")
    print("  evidence (record id, template, lines here, share of normal sessions holding it):")
    for e in incident.evidence:
        fraction = "unknown" if e.normal_session_fraction != e.normal_session_fraction else f"{e.normal_session_fraction:.1%}"
        text = e.message if len(e.message) <= 160 else e.message[:159] + "…"
        print(f"    {e.record_id}  {e.template_id}  x{e.count_in_incident}  normal {fraction}  {_when(e.event_time)}  "
              f"{e.session_key}  {e.component}: {text}")
    if incident.similar:
        print("  similar past incidents:")
        for s in incident.similar:
            said = _name(feedback_pb2.FeedbackLabel, s.analyst_label, "FEEDBACK_LABEL_")
            print(f"    {s.similarity:.2f}  {s.incident_id}  {s.title}" + (f"  [analyst: {said}]" if s.analyst_label else ""))


def cmd_incidents(args: argparse.Namespace) -> int:
    from logmesh.client import IncidentClient
    with IncidentClient(args.scorer, timeout=args.timeout, security=channel_security(args)) as client:
        if args.watch:
            return _watch(client, args)
        with _refusals():
            found, token = client.list(args.limit, args.page_token, STATES[args.state], args.include_suppressed)
    for incident in found:
        print(_json(incident) if args.json else _one_line(incident))
    if not found and not args.json:
        print("no incidents", file=sys.stderr)
    if token:
        print(f"more: --page-token {token}", file=sys.stderr)
    return 0


def _watch(client, args: argparse.Namespace) -> int:  # type: ignore[no-untyped-def]
    print(f"watching incidents at {args.scorer} (Ctrl-C to stop) ...", file=sys.stderr, flush=True)
    changes = client.follow(args.after, on_reconnect=lambda status: print(status, file=sys.stderr, flush=True))
    try:
        with _refusals():
            _print_changes(changes, args)
    except KeyboardInterrupt:
        return 0
    return 0


def _print_changes(changes, args: argparse.Namespace) -> None:  # type: ignore[no-untyped-def]
    state = STATES[args.state]
    for incident in changes:
        if (state and incident.state != state) or (incident.suppressed_by_feedback_id and not args.include_suppressed):
            continue
        print(_json(incident) if args.json else f"update {incident.update_id}  {_one_line(incident)}", flush=True)


def cmd_incident(args: argparse.Namespace) -> int:
    from logmesh.client import IncidentClient
    with IncidentClient(args.scorer, timeout=args.timeout, security=channel_security(args)) as client:
        with _refusals():
            incident = client.get(args.incident_id)
    if args.json:
        print(_json(incident))
    else:
        _detail(incident)
    return 0


def setup_incidents(p: argparse.ArgumentParser) -> None:
    p.add_argument("--state", choices=list(STATES), default="all",
                   help="only open incidents (alerts still join them) or closed ones (default %(default)s)")
    p.add_argument("--include-suppressed", action="store_true",
                   help="also incidents an analyst's feedback suppresses (shown marked)")
    p.add_argument("--limit", type=number(int, 1, 10_000, what="list 1..10000 incidents"), default=20,
                   help="incidents to list, most recently changed first (default %(default)s)")
    p.add_argument("--page-token", default="", help="continue a listing from the token it printed")
    p.add_argument("--watch", action="store_true",
                   help="follow changes as they happen (WatchIncidents): a new incident, an alert joining, a "
                        "summary, a close, a suppression; resubscribes after a scorer restart, losing and "
                        "repeating nothing. Ctrl-C stops")
    p.add_argument("--after", type=NON_NEGATIVE, default=0, metavar="UPDATE_ID",
                   help="with --watch: first every change after this update id (the last one you saw), oldest "
                        "first; default: only changes from now on")
    p.add_argument("--json", action="store_true",
                   help="one JSON object per incident, the proto's field names (as grpcurl prints them)")
    client_args(p)
    p.set_defaults(func=cmd_incidents)


def setup_incident(p: argparse.ArgumentParser) -> None:
    p.add_argument("incident_id", metavar="ID", help="the incident id, e.g. inc-000042 (`logmesh incidents` lists them)")
    p.add_argument("--json", action="store_true", help="the incident as JSON, the proto's field names")
    client_args(p)
    p.set_defaults(func=cmd_incident)

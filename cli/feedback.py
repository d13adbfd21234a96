"""`logmesh feedback`: an analyst's label on a line, a block or an incident (SubmitFeedback), and
`logmesh feedback list` (ListFeedback), against the scorer that serves FeedbackService."""
from __future__ import annotations

import argparse
import json
import re
import sys
from datetime import datetime, timedelta, timezone

from logmesh.cli.common import POSITIVE, UserError, client_args

LABELS = {"true-alarm": 1, "false-alarm": 2, "normal": 3}
SCOPES = {"item": 1, "template": 2, "node": 3, "sequence": 4}
ACTIONS = {"suppress": 1, "learn": 2, "both": 3}
_DURATION = re.compile(r"^(\d+(?:\.\d+)?)\s*([smhdw])$")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}


def expiry(text: str) -> datetime:
    """"7d", "12h", "30m", "2w", "90s" from now, or an ISO time ("2026-12-08", "2026-12-08T09:00:00Z";
    without a zone: UTC)."""
    m = _DURATION.match(text.strip().lower())
    if m:
        return datetime.now(timezone.utc) + timedelta(**{_UNITS[m.group(2)]: float(m.group(1))})
    try:
        when = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is neither a duration (7d, 12h, 30m, 2w) nor an ISO time (2026-12-08T09:00:00Z)") from None
    return when if when.tzinfo else when.replace(tzinfo=timezone.utc)


def setup(p: argparse.ArgumentParser) -> None:
    p.add_argument("what", nargs="?", choices=["submit", "list"], default="submit",
                   help="submit a label (the default) or list the stored ones")
    subject = p.add_argument_group("subject (submit: exactly one)")
    subject.add_argument("--record-id", help="a flagged line's record id, as `logmesh anomalies` shows it")
    subject.add_argument("--block", help="an HDFS block id (or another family's session key, e.g. a BGL node)")
    subject.add_argument("--incident", help="an incident id, as `logmesh incidents` shows it")
    label = p.add_argument_group("the label (submit)")
    label.add_argument("--label", choices=list(LABELS),
                       help="true-alarm: a real failure; false-alarm: the alert was wrong; normal: normal operation")
    label.add_argument("--scope", choices=list(SCOPES), default="item",
                       help="item: this line, block or incident only (default); template: every line of its template; "
                            "node: everything from its node or host; sequence: every block with its exact event "
                            "sequence. The scorer resolves it (a template id, a node, a sequence key) and refuses a "
                            "scope the subject cannot resolve, e.g. a block whose flagged lines span two templates")
    label.add_argument("--action", choices=list(ACTIONS),
                       help="suppress: mark matching alerts and incidents suppressed now (they stay listed); learn: "
                            "fold the label into the next `logmesh train --feedback`; both")
    label.add_argument("--expires", type=expiry, metavar="WHEN",
                       help="when the label stops applying: a duration from now (7d, 12h, 30m, 2w) or an ISO time "
                            "(2026-12-08T09:00:00Z; UTC without a zone); default: never")
    label.add_argument("--comment", default="", help="free text for whoever reads it later (at most 4 KiB)")
    label.add_argument("--key", default="",
                       help="an idempotency key: sending the same key again returns the stored label and stores "
                            "nothing (also after a scorer restart); e.g. a ticket id")
    label.add_argument("--author", default="",
                       help="who gives it, when the scorer runs without tokens (with tokens, the token's identity "
                            "is recorded instead); default: anonymous")
    listing = p.add_argument_group("list")
    listing.add_argument("--limit", type=POSITIVE, default=50, help="most labels to show (default %(default)s)")
    listing.add_argument("--page-token", default="", help="continue from a previous list's 'more:' token")
    listing.add_argument("--include-expired", action="store_true", help="also labels whose expiry has passed")
    p.add_argument("--json", action="store_true",
                   help="print JSON with the proto's field names (one object; list: {feedback: [...], next_page_token})")
    client_args(p)
    p.set_defaults(func=cmd_feedback)


def _request(args: argparse.Namespace):  # type: ignore[no-untyped-def]
    from logmesh.v1 import feedback_pb2 as fpb
    given = [(name, value) for name, value in (("record_id", args.record_id), ("session_key", args.block),
                                                ("incident_id", args.incident)) if value is not None]
    if len(given) != 1:
        raise UserError("name exactly one subject: --record-id, --block or --incident")
    if args.label is None or args.action is None:
        raise UserError("give --label (true-alarm, false-alarm, normal) and --action (suppress, learn, both)")
    fb = fpb.Feedback(label=LABELS[args.label], scope=SCOPES[args.scope], action=ACTIONS[args.action],
                      comment=args.comment, client_key=args.key, author=args.author, **dict(given))
    if args.expires is not None:
        fb.expire_time.FromDatetime(args.expires.astimezone(timezone.utc).replace(tzinfo=None))
    return fb


def _describe(fb) -> str:  # type: ignore[no-untyped-def]
    from logmesh.v1 import feedback_pb2 as fpb
    subject = fb.WhichOneof("subject")
    what = {"record_id": "line", "session_key": "block", "incident_id": "incident"}.get(subject, "?")
    scope = fpb.FeedbackScope.Name(fb.scope).removeprefix("FEEDBACK_SCOPE_").lower()
    text = (f"{fb.feedback_id}  {fpb.FeedbackLabel.Name(fb.label).removeprefix('FEEDBACK_LABEL_').lower()}"
            f"  {what} {getattr(fb, subject) if subject else ''}  scope={scope}"
            + (f"={fb.scope_value}" if fb.scope_value else "")
            + f"  action={fpb.FeedbackAction.Name(fb.action).removeprefix('FEEDBACK_ACTION_').lower()}"
            + f"  by {fb.author}  at {fb.created_time.ToJsonString()}")
    if fb.HasField("expire_time"):
        text += f"  expires {fb.expire_time.ToJsonString()}"
    if fb.client_key:
        text += f"  key={fb.client_key}"
    if fb.comment:
        text += f"\n      {fb.comment}"
    return text


def cmd_feedback(args: argparse.Namespace) -> int:
    submit_only = [f"--{n.replace('_', '-')}" for n in ("record_id", "block", "incident", "label", "action", "expires")
                   if getattr(args, n) is not None] + [f for f, v in (("--comment", args.comment), ("--key", args.key),
                                                                      ("--author", args.author)) if v]
    if args.what == "list" and submit_only:
        raise UserError(f"{', '.join(submit_only)} {'belongs' if len(submit_only) == 1 else 'belong'} to submitting "
                        "a label; `logmesh feedback list` takes "
                        "--limit, --page-token, --include-expired, --json")
    request = _request(args) if args.what == "submit" else None
    import grpc
    from google.protobuf.json_format import MessageToDict

    from logmesh.cli.common import channel_security
    from logmesh.client import ScorerClient
    from logmesh.v1 import feedback_service_pb2 as fspb, feedback_service_pb2_grpc as fsgrpc
    with ScorerClient(args.scorer, timeout=args.timeout, security=channel_security(args)) as client:
        stub = fsgrpc.FeedbackServiceStub(client.channel)
        try:
            if request is not None:
                reply = stub.SubmitFeedback(fspb.SubmitFeedbackRequest(feedback=request), timeout=args.timeout)
            else:
                reply = stub.ListFeedback(fspb.ListFeedbackRequest(page_size=min(args.limit, 500),
                                                                   page_token=args.page_token,
                                                                   include_expired=args.include_expired),
                                          timeout=args.timeout)
        except grpc.RpcError as exc:
            if exc.code() == grpc.StatusCode.INVALID_ARGUMENT:
                raise UserError(exc.details()) from None
            if exc.code() == grpc.StatusCode.UNIMPLEMENTED:
                raise UserError(f"the scorer at {args.scorer} serves no feedback: start it with --feedback-topic "
                                "(and --bootstrap)") from None
            raise
    if args.json:
        print(json.dumps(MessageToDict(reply, preserving_proto_field_name=True), indent=2))
        return 0
    if request is not None:
        print(("already stored (same --key): " if reply.duplicate else "stored ") + _describe(reply.feedback))
        return 0
    for fb in reply.feedback:
        print(_describe(fb))
    if not reply.feedback:
        print("no feedback stored" + ("" if args.include_expired else " (in force; --include-expired for all)"),
              file=sys.stderr)
    if reply.next_page_token:
        print(f"more: --page-token {reply.next_page_token}", file=sys.stderr)
    return 0

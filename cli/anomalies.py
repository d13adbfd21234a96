"""`logmesh anomalies`, `logmesh tail` and `logmesh stats`: reading the scorer's anomaly history and counters."""
from __future__ import annotations

import argparse
import json
import sys

from logmesh.cli.common import SCORE, SCORER_ADDRESS, channel_security, client_args, client_security_args, number


def _print_similar(similar, indent: str, limit: int = 3) -> None:  # type: ignore[no-untyped-def]
    """The nearest earlier anomalies of an entry, one compact line each: similarity, id, text, known label."""
    labels = {1: "  [labelled normal]", 2: "  [labelled anomaly]"}
    for case in list(similar)[:limit]:
        text = case.text if len(case.text) <= 100 else case.text[:99] + "…"
        print(f"{indent}{case.similarity:.2f}  {case.id}  {text}{labels.get(case.label, '')}", flush=True)


_KINDS = {1: "INTERIM", 2: "ALERT", 3: "FINAL"}


def _trimmed(entry) -> str:  # type: ignore[no-untyped-def]
    return f"  (trimmed: {entry.trimmed})" if entry.trimmed else ""


def cmd_anomalies(args: argparse.Namespace) -> int:
    from logmesh.client import ScorerClient
    with ScorerClient(args.scorer, timeout=args.timeout, security=channel_security(args)) as scorer:
        # a page the scorer cut short (it holds at most 4 MiB) is followed until --limit entries are shown
        entries, token = scorer.list_anomalies(args.limit, args.page_token, args.min_score, args.block)
    for entry in entries:
        when = entry.recorded_time.ToJsonString()
        if entry.HasField("line"):
            r = entry.line
            print(f"#{entry.id}  {when}  LINE     score={r.score:.3f}  "
                  f"votes={r.anomaly_votes}/{r.anomaly_votes + r.normal_votes}  "
                  f"{','.join(r.block_ids)}  {r.message}{_trimmed(entry)}")
            _print_similar(r.similar, "      similar ")
        else:  # a block's alert and its final verdict are two entries: the kind tells them apart
            b = entry.block
            print(f"#{entry.id}  {when}  {_KINDS.get(b.kind, 'BLOCK'):7}  block {b.block_id}  score={b.score:.3f}  "
                  f"{len(b.events)} events{_trimmed(entry)}")
            _print_similar(b.similar, "      similar ")
    if not entries:
        print("no anomalies recorded", file=sys.stderr)
    if token:
        print(f"more: --page-token {token}", file=sys.stderr)
    return 0


def _print_live(entry) -> None:  # type: ignore[no-untyped-def]
    when = entry.recorded_time.ToDatetime().strftime("%H:%M:%S")
    if entry.HasField("block"):
        b = entry.block
        print(f"{when}  #{entry.id}  {_KINDS.get(b.kind, 'BLOCK'):7} {b.block_id}  score={b.score:.2f}  "
              f"events={' '.join(b.events[-12:])}"
              + (f"  read: {', '.join(b.anomalous_record_ids[:3])}" if b.anomalous_record_ids else ""), flush=True)
        _print_similar(b.similar, "          similar ")
    else:
        r = entry.line
        votes = " ".join(f"{v.model}={v.score:.2f}" for v in r.votes)
        print(f"{when}  #{entry.id}  LINE    {','.join(r.block_ids)}  score={r.score:.2f}  "
              f"votes={r.anomaly_votes}/{r.anomaly_votes + r.normal_votes} [{votes}]  {r.message[:100]}", flush=True)
        _print_similar(r.similar, "          similar ")


def cmd_tail(args: argparse.Namespace) -> int:
    from logmesh.client import ScorerClient
    with ScorerClient(args.scorer, security=channel_security(args)) as scorer:
        print(f"watching anomalies at {args.scorer} (Ctrl-C to stop) ...", file=sys.stderr, flush=True)
        # follow: when the scorer restarts, resubscribe after the last id shown (nothing lost or repeated)
        entries = scorer.follow(args.min_score, args.block, args.component, args.blocks_only,
                                on_reconnect=lambda status: print(status, file=sys.stderr, flush=True))
        try:
            for entry in entries:
                _print_live(entry)
        except KeyboardInterrupt:
            return 0
    return 0


def cmd_stats(args: argparse.Namespace) -> int:
    from logmesh.client import ScorerClient
    with ScorerClient(args.scorer, timeout=args.timeout, security=channel_security(args)) as scorer:
        stats = scorer.stats()
    from google.protobuf.json_format import MessageToDict
    # the proto's own field names, as grpcurl prints them
    print(json.dumps(MessageToDict(stats, always_print_fields_with_no_presence=True,
                                   preserving_proto_field_name=True), indent=2))
    return 0


def setup_anomalies(p: argparse.ArgumentParser) -> None:
    p.add_argument("--limit", type=number(int, 1, 1000, what="a page holds 1..1000 entries"), default=20,
                   help="entries per page, 1..1000 (default %(default)s)")
    p.add_argument("--page-token", default="", help="continue from a previous page (the token it printed)")
    p.add_argument("--min-score", type=SCORE, default=0.0,
                   help="only anomalies scored at least this high, 0..1 (default %(default)s: all)")
    p.add_argument("--block", default="", help="only this block id")
    client_args(p)
    p.set_defaults(func=cmd_anomalies)


def setup_tail(p: argparse.ArgumentParser) -> None:
    from logmesh.client import DEFAULT_SCORER
    p.add_argument("--min-score", type=SCORE, default=0.0,
                   help="only anomalies scored at least this high, 0..1 (default %(default)s: all)")
    p.add_argument("--block", default="", help="only this block id")
    p.add_argument("--component", default="", help="only lines of this component")
    p.add_argument("--blocks-only", action="store_true", help="only block alerts and final verdicts")
    p.add_argument("--scorer", type=SCORER_ADDRESS, default=DEFAULT_SCORER,
                   help="scorer address HOST:PORT (default %(default)s)")
    client_security_args(p)
    p.set_defaults(func=cmd_tail)


def setup_stats(p: argparse.ArgumentParser) -> None:
    client_args(p)
    p.set_defaults(func=cmd_stats)

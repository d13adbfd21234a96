"""`logmesh score LINE...`: one call to the scorer, verdicts printed. Loads the client and nothing heavy."""
from __future__ import annotations

import argparse
import json
import sys

from logmesh.cli.common import UserError, channel_security, client_args, target


HDFS_EXAMPLE = "081109 203615 148 INFO dfs.DataNode$PacketResponder: ..."
BGL_EXAMPLE = "- 1117838570 2005.06.03 R02-M1-N0-C:J12-U11 2005-06-03-15.42.50.675872 R02-M1-N0-C:J12-U11 RAS KERNEL INFO ..."


def _verdict(v: int) -> str:
    from logmesh.v1 import score_pb2
    return score_pb2.Verdict.Name(v).removeprefix("VERDICT_")


def _unparsed_warning(r, family: str = "hdfs") -> str | None:  # type: ignore[no-untyped-def]
    """Why a result's verdict deserves doubt: the line is not HDFS, or no HDFS_v1 template matches it (BGL: the
    line is not BGL, or neither a loghub template nor a template mined in training matches it)."""
    if r.template_id != "unknown":
        return None
    text = r.message if len(r.message) <= 60 else r.message[:59] + "…"
    if family == "bgl":
        if not r.component:
            return (f"warning: {text!r} did not parse as a BGL log line (template unknown): its verdict is a guess "
                    f"from the text alone; BGL lines look like '{BGL_EXAMPLE}'")
        return (f"warning: {text!r} matches no template the model knows (template unknown): its verdict rests on "
                "the text alone")
    if not r.component:
        return (f"warning: {text!r} did not parse as an HDFS log line (template unknown): its verdict is a guess "
                f"from the text alone; logmesh scores loghub HDFS lines like '{HDFS_EXAMPLE}'")
    return (f"warning: {text!r} matches none of HDFS_v1's templates (template unknown): its verdict rests on "
            "the text alone")


def cmd_score(args: argparse.Namespace) -> int:
    if args.line:
        lines = list(args.line)
        for n, line in enumerate(lines, 1):
            if not line.strip():
                raise UserError(f"line argument {n} is empty: give raw HDFS log lines ('{HDFS_EXAMPLE}')")
    else:
        if sys.stdin.isatty():
            print("reading log lines from stdin, one per line (Ctrl-D ends; or give lines as arguments) ...",
                  file=sys.stderr)
        lines = [line.rstrip("\n") for line in sys.stdin if line.strip()]
        if not lines:
            raise UserError("no log lines to score: give them as arguments or one per line on stdin")
    family = args.format if args.format != "auto" else _detect(lines)
    security = channel_security(args)
    target(args, "scorer", args.scorer)
    from logmesh.client import ScorerClient
    with ScorerClient(args.scorer, timeout=args.timeout, security=security) as scorer:
        if family == "bgl":  # parsed here, so a scorer of another family refuses them by name
            results = _score_records(scorer, lines)
        else:
            results = [scorer.score_line(lines[0])] if len(lines) == 1 else None
        if results is None:
            items = list(scorer.score_lines(lines))
            failed = [i for i in items if i.HasField("error")]
            for item in failed:
                print(f"error: {item.record_id}: {item.error.message}", file=sys.stderr)
            results = [i.result for i in items if i.HasField("result")]
    for r in results:
        warning = _unparsed_warning(r, family)
        if warning:
            print(warning, file=sys.stderr)
        if args.json:
            from google.protobuf.json_format import MessageToDict
            print(json.dumps(MessageToDict(r, preserving_proto_field_name=True)))
            continue
        votes = " ".join(f"{v.model}={v.score:.2f}" for v in r.votes)
        print(f"{_verdict(r.verdict)}  score={r.score:.3f}  confidence={r.confidence:.2f}  "
              f"votes={r.anomaly_votes}/{r.anomaly_votes + r.normal_votes} anomaly  [{votes}]  "
              f"template={r.template_id}  model={r.model_version}")
    return 0


def _detect(lines: list[str]) -> str:
    """hdfs or bgl, from the lines themselves (the family most of them parse as)."""
    from logmesh.ingest.families import FAMILIES
    scores = {name: cls().looks_like(lines[:20]) for name, cls in FAMILIES.items()}
    return max(scores, key=scores.get) if max(scores.values()) >= 0.5 else "hdfs"


def _score_records(scorer, lines: list[str]) -> list:  # type: ignore[no-untyped-def]
    """BGL lines as LogRecords of family bgl (the label column, if any, dropped unread)."""
    from logmesh.ingest.families.bgl import BglFamily
    from logmesh.v1 import scorer_service_pb2 as spb
    family = BglFamily()
    records = [family.record(line, "cli", n) for n, line in enumerate(lines, 1)]
    if len(records) == 1:
        return [scorer.score_record(records[0])]
    results = []
    for item in scorer.score_stream(spb.ScoreItem(record=r) for r in records):
        if item.HasField("error"):
            print(f"error: {item.record_id}: {item.error.message}", file=sys.stderr)
        else:
            results.append(item.result)
    return results


def setup(p: argparse.ArgumentParser) -> None:
    p.add_argument("line", nargs="*", help="raw HDFS or BGL log line(s); read stdin when none")
    p.add_argument("--format", choices=("auto", "hdfs", "bgl"), default="auto",
                   help="log family of the lines (default: detected from them); the scorer must serve a model "
                        "of that family")
    p.add_argument("--json", action="store_true", help="print each ScoreResult as JSON (the proto's field names)")
    client_args(p)
    p.set_defaults(func=cmd_score)

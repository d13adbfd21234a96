"""`logmesh similar`: nearest neighbours of a line or a block in the vector store."""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from logmesh.cli.common import (EMBEDDER_ADDRESS, POSITIVE, Unreachable, UserError, channel_security,
                                client_security_args, target)


def _open_similar_store(args: argparse.Namespace):  # type: ignore[no-untyped-def]
    from logmesh.streaming.vector_store import DEFAULT_COLLECTION, StoreUnavailableError, open_store
    if not args.qdrant_url:
        folder = Path(args.qdrant_path)
        if not (folder / DEFAULT_COLLECTION).is_dir():
            raise UserError(f"no vector store at {folder} yet: `logmesh stream` creates it as it stores blocks "
                            "and anomalous lines; run the job first, or give --qdrant-path / --qdrant-url of one")
    try:
        return open_store(url=args.qdrant_url, path=args.qdrant_path, api_key=args.qdrant_api_key, ensure=False)
    except RuntimeError as exc:
        if "already open" not in str(exc) and "WouldBlock" not in str(exc):
            raise
        raise UserError(f"the vector store at {args.qdrant_path} is in use by another process (a running "
                        "`logmesh stream`?); the embedded store opens in one process at a time: stop the job "
                        "first, or run the job and `similar` against a Qdrant server (--qdrant-url)") from None
    except StoreUnavailableError as exc:
        raise Unreachable(f"{exc}; is the Qdrant server at {args.qdrant_url} running?") from None


def cmd_similar(args: argparse.Namespace) -> int:
    from logmesh.ingest.families import record_shape
    if bool(args.line) == bool(args.block):
        raise UserError("give a log line or --block BLOCK_ID (one of them)")
    security = channel_security(args)
    store = _open_similar_store(args)  # before the embedder: a missing store is found without a round trip
    try:
        if args.block:
            found = store.retrieve([args.block])
            if args.block not in found:
                print(f"error: block {args.block} is not in the store ({args.qdrant_url or args.qdrant_path})",
                      file=sys.stderr)
                return 1
            vector, wanted = found[args.block].vector, {"kind": "block"}
        else:
            family = _family(args.format, args.line)
            record = _parse(family, args.line)
            if not record.component:
                print(f"warning: the line did not parse as an {family.upper()} log line (template unknown); "
                      f"searching with its whole text", file=sys.stderr)
            target(args, "embedder", args.embedder)
            from logmesh.client import EmbedderClient
            with EmbedderClient(args.embedder, security=security) as embedder:
                vector = embedder.embed(record_shape(record))  # the shape the job embedded and stored
            wanted = {"kind": "line"}
        hits = store.search(vector, limit=args.limit + bool(args.block), filter=wanted)
    finally:
        store.close()
    for hit in hits:
        if hit.key == args.block:
            continue
        p = hit.payload
        if p.get("kind") == "block":
            print(f"{hit.score:.3f}  block {hit.key}  {p.get('verdict', '?')} score={p.get('score', 0):.2f}  "
                  f"label={p.get('label', '-')}  events={' '.join(p.get('events', [])[:15])}")
        else:
            print(f"{hit.score:.3f}  line  {p.get('record_id', hit.key)}  anomaly={p.get('is_anomaly')}  "
                  f"label={p.get('label', '-')}  {p.get('text', '')[:100]}")
    if not hits:
        print("no similar points stored yet", file=sys.stderr)
    return 0


def _family(name: str, line: str) -> str:
    """--format, or for auto the family the line parses as (HDFS when neither)."""
    from logmesh.ingest.families.bgl import BglFamily
    return name if name != "auto" else ("bgl" if BglFamily().looks_like([line]) else "hdfs")


def _parse(family: str, line: str):  # type: ignore[no-untyped-def]
    if family == "bgl":
        from logmesh.ingest.families.bgl import BglFamily
        return BglFamily().record(line, "cli", 0)  # the label column, if any, is not read
    from logmesh.ingest.hdfs import parse_line
    return parse_line(line)


def setup(p: argparse.ArgumentParser) -> None:
    from logmesh.client import DEFAULT_EMBEDDER
    p.add_argument("line", nargs="?", help="a raw HDFS or BGL log line")
    p.add_argument("--format", choices=("auto", "hdfs", "bgl"), default="auto",
                   help="log family of the line (default: detected from it)")
    p.add_argument("--block", help="a block id (BGL: a node id) whose stored session vector to search with")
    p.add_argument("--limit", type=POSITIVE, default=10, help="most neighbours to print (default %(default)s)")
    p.add_argument("--qdrant-url", default=None, help="Qdrant server; default: the embedded store at --qdrant-path")
    p.add_argument("--qdrant-api-key", default=os.environ.get("QDRANT_API_KEY"),
                   help="API key for --qdrant-url (default: QDRANT_API_KEY)")
    p.add_argument("--qdrant-path", default="var/qdrant", help="embedded store folder (default %(default)s)")
    p.add_argument("--embedder", type=EMBEDDER_ADDRESS, default=DEFAULT_EMBEDDER,
                   help="embedder address HOST:PORT that embeds the line (default %(default)s)")
    client_security_args(p)
    p.set_defaults(func=cmd_similar)

"""The `logmesh` command line. Every subcommand has --help; servers log JSON lines to stderr.

A user mistake (a missing file, a wrong folder, a store in use, a port taken) ends with one `error:` line
that says what to do and exit code 2; a server that cannot be reached, exit code 1. LOGMESH_DEBUG=1 shows
the traceback behind an error. Each subcommand's options are built only when that subcommand runs, so
`logmesh score` imports neither Spark, pandas, Kafka nor torch.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Callable

import grpc

from logmesh.client import DEFAULT_EMBEDDER, DEFAULT_SCORER, EmbedderClient, ScorerClient

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # the model ships in a package; never reach for a hub
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

HDFS_EXAMPLE = "081109 203615 148 INFO dfs.DataNode$PacketResponder: ..."


class UserError(Exception):
    """A mistake the user can fix: printed as one `error:` line (what is wrong, what to do), exit code 2."""


class Unreachable(Exception):
    """A service or broker the command needs did not answer: one `error:` line, exit code 1."""


# --- argument types: a bad value is refused by argparse with its reason, not deep in a call ---

def _number(kind: type, low: float | None = None, high: float | None = None, what: str = "") -> Callable:
    def convert(text: str):  # type: ignore[no-untyped-def]
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not {'an integer' if kind is int else 'a number'}") from None
        if (low is not None and value < low) or (high is not None and value > high):
            raise argparse.ArgumentTypeError(f"{text} is out of range: {what}")
        return value
    convert.__name__ = kind.__name__  # argparse names the type in its messages
    return convert


POSITIVE = _number(int, 1, what="give a whole number of at least 1")
NON_NEGATIVE = _number(int, 0, what="give a whole number of at least 0")
PORT = _number(int, 0, 65535, what="a TCP port is 0..65535 (0: the service's default)")
SECONDS = _number(float, 0.0, what="give seconds as a number of at least 0")
POSITIVE_SECONDS = _number(float, 0.001, what="give seconds as a number above 0")
SCORE = _number(float, 0.0, 1.0, what="scores lie in [0, 1]")


def _limits_args(p: argparse.ArgumentParser) -> None:
    from logmesh.runtime.grpc_server import Limits
    d = Limits()
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default %(default)s: loopback only)")
    p.add_argument("--max-line-bytes", type=POSITIVE, default=d.max_line_bytes, help="longest line accepted (default %(default)s)")
    p.add_argument("--max-batch", type=POSITIVE, default=d.max_batch_items, help="most items in one stream message (default %(default)s)")
    p.add_argument("--max-message-bytes", type=POSITIVE, default=d.max_message_bytes, help="largest request message (default %(default)s)")
    p.add_argument("--max-concurrent-rpcs", type=POSITIVE, default=d.max_concurrent_rpcs, help="unary calls in the server at once, working or waiting their turn; more get RESOURCE_EXHAUSTED (default %(default)s)")
    p.add_argument("--max-open-streams", type=POSITIVE, default=d.max_open_streams, help="streaming calls open at once; more get RESOURCE_EXHAUSTED (default %(default)s)")
    p.add_argument("--workers", type=POSITIVE, default=d.workers, help="calls worked on at once (and as many stream messages); the rest wait their turn, round-robin per connection (default %(default)s)")
    p.add_argument("--stream-idle-timeout", type=POSITIVE_SECONDS, default=d.stream_idle_timeout, help="seconds a client stream may send nothing before the server ends it with DEADLINE_EXCEEDED (default %(default)s)")
    p.add_argument("--max-stream-items", type=POSITIVE, default=d.max_stream_items, help="items over one stream; more end it with RESOURCE_EXHAUSTED (default %(default)s)")
    p.add_argument("--max-streams-per-connection", type=POSITIVE, default=d.max_streams_per_connection, help="HTTP/2 streams one client connection may have open at once; more wait in the client (default %(default)s)")
    p.add_argument("--grace", type=SECONDS, default=10.0, help="seconds in-flight RPCs get to finish on SIGTERM (default %(default)s)")
    p.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"],
                   help="least severe server log lines written to stderr (default %(default)s)")
    g = p.add_argument_group("security", "TLS, mutual TLS and bearer tokens (README: Security). Plaintext is "
                                          "refused on a non-loopback --host unless --allow-plaintext.")
    g.add_argument("--tls-cert", help="server certificate (PEM); with --tls-key turns TLS on")
    g.add_argument("--tls-key", help="private key of --tls-cert (PEM)")
    g.add_argument("--tls-client-ca", help="require client certificates signed by this CA (mutual TLS)")
    g.add_argument("--token-file", help="accepted bearer tokens, one per line (also: LOGMESH_TOKENS=a,b); "
                                        "calls without one get UNAUTHENTICATED; health stays open. Keep it "
                                        "readable by its owner only (chmod 600): the server warns otherwise")
    g.add_argument("--allow-plaintext", action="store_true",
                   help="serve plaintext on a non-loopback --host (only behind a proxy or mesh that encrypts)")


def _server_security(args: argparse.Namespace):  # type: ignore[no-untyped-def]
    from logmesh.runtime.security import ServerSecurity, load_tokens
    return ServerSecurity(tls_cert=args.tls_cert, tls_key=args.tls_key, tls_client_ca=args.tls_client_ca,
                          tokens=load_tokens(args.token_file), allow_plaintext=args.allow_plaintext)


def _client_security_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("security", "defaults come from LOGMESH_TLS_CA, LOGMESH_TLS_CERT, LOGMESH_TLS_KEY, "
                                          "LOGMESH_TLS_SERVER_NAME, LOGMESH_TLS=1 and LOGMESH_TOKEN")
    g.add_argument("--tls", action="store_true", help="use TLS with the system's CA roots")
    g.add_argument("--tls-ca", help="CA certificate (PEM) to verify the server with; implies --tls")
    g.add_argument("--tls-cert", help="client certificate (PEM) for mutual TLS")
    g.add_argument("--tls-key", help="private key of --tls-cert")
    g.add_argument("--token", help="bearer token sent as 'authorization: Bearer <token>'")


def _channel_security(args: argparse.Namespace):  # type: ignore[no-untyped-def]
    from logmesh.security import ChannelSecurity
    security = ChannelSecurity.from_env(tls=args.tls, ca=args.tls_ca, cert=args.tls_cert, key=args.tls_key,
                                        token=args.token)
    for path, flag in ((security.ca, "--tls-ca / LOGMESH_TLS_CA"), (security.cert, "--tls-cert / LOGMESH_TLS_CERT"),
                       (security.key, "--tls-key / LOGMESH_TLS_KEY")):
        if path and not os.access(path, os.R_OK):
            raise UserError(f"cannot read {path} ({flag}): give a readable PEM file "
                            "(deploy/tls/make-certs.sh makes a local CA and certificates)")
    return security


def _limits(args: argparse.Namespace):  # type: ignore[no-untyped-def]
    from logmesh.runtime.grpc_server import Limits
    return Limits(max_message_bytes=args.max_message_bytes, max_line_bytes=args.max_line_bytes,
                  max_batch_items=args.max_batch, max_concurrent_rpcs=args.max_concurrent_rpcs,
                  max_stream_items=args.max_stream_items, max_streams_per_connection=args.max_streams_per_connection,
                  max_open_streams=args.max_open_streams, workers=args.workers,
                  stream_idle_timeout=args.stream_idle_timeout)


def _target(args: argparse.Namespace, service: str, address: str) -> None:
    """Names the server the next calls go to, so that an UNAVAILABLE names the right one."""
    args.target = (service, address)


def _check_port(host: str, port: int) -> None:
    """Binds the port once before gRPC does: a taken port is then one clear line, not gRPC's own log lines."""
    import socket
    host = host.strip("[]")
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        with socket.socket(family) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as gRPC does: TIME_WAIT is no obstacle
            s.bind((host, port))
    except OSError as exc:
        raise UserError(f"cannot listen on {host}:{port}: {exc.strerror} (another `logmesh serve`?); stop "
                        "the other server or pick another --port / --host") from None


def cmd_serve(args: argparse.Namespace) -> int:
    from logmesh.runtime import logs
    logs.setup(args.log_level)
    try:
        security = _server_security(args)
        security.check_bind(args.host)
        if security.tls:
            security.credentials()  # unreadable files fail here, with their names, not deep in grpc
    except ValueError as exc:
        raise UserError(str(exc)) from None
    port = args.port or (50051 if args.service == "embedder" else 50052)
    _check_port(args.host, port)
    from logmesh.scorer.state import StateError  # stdlib only: cheap for the embedder too
    try:
        if args.service == "embedder":
            from logmesh.embedder.service import serve
            server = serve(port, args.host, _limits(args), threads=args.threads, cache_bytes=args.cache_mb << 20,
                           security=security)
        else:
            from logmesh.scorer.service import serve
            server = serve(port, Path(args.model_dir), args.embedder, args.host, _limits(args),
                           reload_interval=args.reload_interval, security=security,
                           kafka_bootstrap=args.kafka_bootstrap, dlq_topic=args.dlq_topic,
                           state_dir=_state_dir(args), history_bytes=args.history_mb << 20,
                           cache_bytes=args.cache_mb << 20)
    except StateError as exc:
        raise UserError(str(exc)) from None
    except RuntimeError as exc:
        if "bind" not in str(exc).lower():
            raise
        raise UserError(f"cannot listen on {args.host}:{port}: the port is taken (another `logmesh serve`?) or "
                        "the address is not one of this machine's; stop the other server or pick another --port") from None
    server.serve_until_signal(args.grace)
    return 0


DEFAULT_STATE_DIR = "var/scorer-state"


def _state_dir(args: argparse.Namespace) -> Path | None:
    """The scorer's state dir: an explicit --state-dir must be usable (else a one-line error); the default
    is used when it can be (a read-only root or a second scorer in this folder: memory only, with a warning)."""
    from logmesh.scorer.state import StateDir, StateError
    if args.state_dir is not None:
        return Path(args.state_dir) if args.state_dir else None
    try:
        StateDir(Path(DEFAULT_STATE_DIR)).close()  # usable now? (the scorer takes it for good just after)
    except StateError as exc:
        print(f"warning: {exc}; the anomaly history is kept in memory only", file=sys.stderr)
        return None
    return Path(DEFAULT_STATE_DIR)


def _check_labels(path: Path, flag: str) -> None:
    """A labels file the trainer and the evaluator can read: `BlockId,Label` rows."""
    if not path.is_file():
        raise UserError(f"{flag} {path}: no such file; give the anomaly_label.csv (BlockId,Label) that labels "
                        "the log's blocks (loghub HDFS_v1 ships one; `logmesh generate` writes one beside its log)")
    try:
        with open(path, newline="", errors="replace") as f:
            header = f.readline()
    except OSError as exc:
        raise UserError(f"cannot read {flag} {path}: {exc.strerror}") from None
    columns = [c.strip().strip('"') for c in header.split(",")]
    if "BlockId" not in columns or "Label" not in columns:
        raise UserError(f"{flag} {path} is not a labels file: its first line should be the header "
                        f"'BlockId,Label' (found {header.strip()[:60]!r})")


def cmd_train(args: argparse.Namespace) -> int:
    from logmesh.runtime import logs
    logs.setup(args.log_level)
    data = Path(args.data)
    if not (data / "anomaly_label.csv").exists():
        raise UserError(f"{data} has no anomaly_label.csv; point --data at a loghub HDFS_v1 folder "
                        "(raw *.log files plus anomaly_label.csv)")
    _check_labels(data / "anomaly_label.csv", "--data")
    from logmesh.scorer.dataset import log_files
    if not log_files(data):  # checked before the embedding model loads
        raise UserError(f"{data} has anomaly_label.csv but no raw *.log file to train on: put the HDFS logs "
                        "(e.g. HDFS.log) beside the labels (HDFS_2k.log alone does not count: it is unlabelled)")
    out = Path(args.out)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"cannot create --out {out}: {exc.strerror}; give a folder you can write to") from None
    if not os.access(out, os.W_OK):
        raise UserError(f"cannot write to --out {out}: give a folder you can write to")
    from logmesh.embedder.encoder import SentenceEncoder
    from logmesh.scorer.train import train
    encoder = SentenceEncoder(threads=args.threads)
    try:
        path = train(data, out, encoder.encode, seed=args.seed, limit=args.limit, sessions=args.sessions,
                     quiet_seconds=args.quiet_seconds, validation=args.validation, target_fpr=args.target_fpr)
    except FileNotFoundError as exc:  # e.g. logs whose blocks the labels do not name
        raise UserError(f"{exc}; check that the logs and anomaly_label.csv belong together") from None
    from logmesh.scorer.train import summary
    print(summary(path, json.loads((path / "meta.json").read_text())))
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    if not Path(args.logs).exists():
        raise UserError(f"--logs {args.logs}: no such file or folder; give a raw HDFS log file or a folder of them")
    _check_labels(Path(args.labels), "--labels")
    from logmesh.scorer.evaluate import run_evaluate
    return run_evaluate(args)


def _verdict(v: int) -> str:
    from logmesh.v1 import score_pb2
    return score_pb2.Verdict.Name(v).removeprefix("VERDICT_")


def _unparsed_warning(r) -> str | None:  # type: ignore[no-untyped-def]
    """Why a result's verdict deserves doubt: the line is not HDFS, or no HDFS_v1 template matches it."""
    if r.template_id != "unknown":
        return None
    text = r.message if len(r.message) <= 60 else r.message[:59] + "…"
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
    security = _channel_security(args)
    _target(args, "scorer", args.scorer)
    with ScorerClient(args.scorer, timeout=args.timeout, security=security) as scorer:
        results = [scorer.score_line(lines[0])] if len(lines) == 1 else None
        if results is None:
            items = list(scorer.score_lines(lines))
            failed = [i for i in items if i.HasField("error")]
            for item in failed:
                print(f"error: {item.record_id}: {item.error.message}", file=sys.stderr)
            results = [i.result for i in items if i.HasField("result")]
    for r in results:
        warning = _unparsed_warning(r)
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
    with ScorerClient(args.scorer, timeout=args.timeout, security=_channel_security(args)) as scorer:
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
    with ScorerClient(args.scorer, security=_channel_security(args)) as scorer:
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
    with ScorerClient(args.scorer, timeout=args.timeout, security=_channel_security(args)) as scorer:
        stats = scorer.stats()
    from google.protobuf.json_format import MessageToDict
    # the proto's own field names, as grpcurl prints them
    print(json.dumps(MessageToDict(stats, always_print_fields_with_no_presence=True,
                                   preserving_proto_field_name=True), indent=2))
    return 0


def _embedder_of(stats) -> tuple[str | None, str]:  # type: ignore[no-untyped-def]
    """The embedder a scorer says it calls (GetStats.embedder_address) and why it cannot reach it, if so;
    (None, "") from a scorer too old to say."""
    fields = stats.DESCRIPTOR.fields_by_name
    address = stats.embedder_address if "embedder_address" in fields else ""
    status = stats.embedder_status if "embedder_status" in fields else ""
    return address or None, status


def _state(client) -> str:  # type: ignore[no-untyped-def]
    try:
        return client.health()
    except grpc.RpcError as exc:
        return f"DOWN ({exc.code().name})"


def cmd_health(args: argparse.Namespace) -> int:
    """The scorer first: unless --embedder is given, the embedder checked is the one the scorer says it uses."""
    security = _channel_security(args)
    with ScorerClient(args.scorer, timeout=5.0, security=security) as scorer:
        scorer_state = _state(scorer)
        embedder, why, problem = args.embedder, "--embedder", ""
        if embedder is None and not scorer_state.startswith("DOWN"):
            try:
                embedder, problem = _embedder_of(scorer.stats())
                why = "the scorer's embedder"
            except grpc.RpcError:  # e.g. UNAUTHENTICATED without a token: health is open, GetStats is not
                embedder = None
        if embedder is None:
            embedder, why = DEFAULT_EMBEDDER, ("the default: the scorer did not say which embedder it uses; "
                                               "give --embedder")
    print(f"{'scorer':9} {args.scorer:22} {scorer_state}" + (f"  ({problem})" if problem else ""))
    with EmbedderClient(embedder, security=security) as client:
        embedder_state = _state(client)
    print(f"{'embedder':9} {embedder:22} {embedder_state}  ({why})")
    return int(scorer_state != "SERVING" or embedder_state != "SERVING")


def cmd_stream(args: argparse.Namespace) -> int:
    from logmesh.runtime import logs
    from logmesh.streaming.job import config_from_args, run
    logs.setup(args.log_level)
    _read_kafka_config(args, spark=True)
    config = config_from_args(args)
    try:
        run(config)
    except TimeoutError as exc:  # a service never became SERVING within the wait
        raise Unreachable(f"{exc}; start it, or point --embedder/--scorer at the running one") from None
    except RuntimeError as exc:
        if "already open" in str(exc):
            raise UserError(f"{exc}; the embedded vector store opens in one process at a time: stop the other "
                            "job or `logmesh similar`, or use a Qdrant server (--qdrant-url)") from None
        raise
    return 0


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
    from logmesh.ingest.hdfs import parse_line
    from logmesh.ingest.masking import line_shape
    if bool(args.line) == bool(args.block):
        raise UserError("give a log line or --block BLOCK_ID (one of them)")
    security = _channel_security(args)
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
            record = parse_line(args.line)
            if not record.component:
                print(f"warning: the line did not parse as an HDFS log line (template unknown); searching with "
                      f"its whole text", file=sys.stderr)
            _target(args, "embedder", args.embedder)
            with EmbedderClient(args.embedder, security=security) as embedder:
                vector = embedder.embed(line_shape(record.component, record.message))
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


# --- the parser: each subcommand's options are added only when it is the one that runs ---

def _client_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--scorer", default=DEFAULT_SCORER, help="scorer address HOST:PORT (default %(default)s)")
    p.add_argument("--timeout", type=POSITIVE_SECONDS, default=30.0, help="seconds per call (default %(default)s)")
    _client_security_args(p)


def _serve_common(p: argparse.ArgumentParser, port: int) -> None:
    p.add_argument("--port", type=PORT, default=0, help=f"port to listen on (default {port})")
    _limits_args(p)


def _setup_serve(p: argparse.ArgumentParser) -> None:
    services = p.add_subparsers(dest="service", required=True, metavar="SERVICE",
                                help="which server (`logmesh serve SERVICE --help` lists its options)")
    e = services.add_parser("embedder", help="the embedding server (all-MiniLM-L6-v2), default port 50051",
                            description="Serve EmbedderService: 384-d all-MiniLM-L6-v2 embeddings of masked line "
                                        "shapes, cached. NOT_SERVING until the model has loaded.")
    _serve_common(e, 50051)
    e.add_argument("--threads", type=POSITIVE, default=1,
                   help="model threads, ONNX Runtime or torch (default %(default)s: safe on a shared 2-core box)")
    e.add_argument("--cache-mb", type=POSITIVE, default=64,
                   help="MiB the embedding cache may hold, keys (line shapes) and vectors (default %(default)s)")
    s = services.add_parser("scorer", help="the scoring server (line ensemble, block model, history), port 50052",
                            description="Serve ScorerService with the newest artifact in --model-dir (hot reload); "
                                        "it calls the embedder for shapes it has not seen. NOT_SERVING until an "
                                        "artifact is loaded (GetStats.model_status says why).")
    _serve_common(s, 50052)
    s.add_argument("--model-dir", default="models", help="folder of model artifacts; the newest is served (default %(default)s)")
    s.add_argument("--embedder", default=DEFAULT_EMBEDDER, help="embedder address HOST:PORT (default %(default)s)")
    s.add_argument("--reload-interval", type=POSITIVE_SECONDS, default=5.0,
                   help="seconds between checks for a newer artifact (default %(default)s)")
    s.add_argument("--kafka-bootstrap", default=None,
                   help="Kafka broker HOST:PORT; with --dlq-topic, `logmesh stats` reports the DLQ's message count")
    s.add_argument("--dlq-topic", default=None, help="the streaming job's dead-letter topic, e.g. logmesh.dlq")
    s.add_argument("--state-dir", default=None,
                   help=f"folder where the anomaly history and counters survive a restart (default {DEFAULT_STATE_DIR} "
                        "when writable; '' keeps them in memory only)")
    s.add_argument("--history-mb", type=POSITIVE, default=128,
                   help="MiB the anomaly history may hold; the oldest entries go first (default %(default)s)")
    s.add_argument("--cache-mb", type=POSITIVE, default=96,
                   help="MiB the per-shape caches may hold (verdicts and anomalous shapes' vectors) (default %(default)s)")
    for q in (e, s):
        q.set_defaults(func=cmd_serve)


def _setup_train(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", required=True, help="folder with raw HDFS *.log files and anomaly_label.csv")
    p.add_argument("--out", default="models", help="model dir to add the artifact to (default %(default)s)")
    p.add_argument("--seed", type=int, default=0,
                   help="random seed of the split and the models; same data and seed, same artifact (default %(default)s)")
    p.add_argument("--limit", type=POSITIVE, default=None, help="use at most this many lines")
    p.add_argument("--threads", type=POSITIVE, default=2, help="model threads for embedding, ONNX Runtime or torch (default %(default)s)")
    from logmesh.scorer.train_args import add_train_args
    add_train_args(p)
    p.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"],
                   help="least severe log lines written to stderr (default %(default)s)")
    p.set_defaults(func=cmd_train)


def _setup_score(p: argparse.ArgumentParser) -> None:
    p.add_argument("line", nargs="*", help="raw HDFS log line(s); read stdin when none")
    p.add_argument("--json", action="store_true", help="print each ScoreResult as JSON (the proto's field names)")
    _client_args(p)
    p.set_defaults(func=cmd_score)


def _setup_evaluate(p: argparse.ArgumentParser) -> None:
    from logmesh.scorer.evaluate import add_evaluate_args
    add_evaluate_args(p)
    p.set_defaults(func=cmd_evaluate)


def _setup_anomalies(p: argparse.ArgumentParser) -> None:
    p.add_argument("--limit", type=_number(int, 1, 1000, what="a page holds 1..1000 entries"), default=20,
                   help="entries per page, 1..1000 (default %(default)s)")
    p.add_argument("--page-token", default="", help="continue from a previous page (the token it printed)")
    p.add_argument("--min-score", type=SCORE, default=0.0,
                   help="only anomalies scored at least this high, 0..1 (default %(default)s: all)")
    p.add_argument("--block", default="", help="only this block id")
    _client_args(p)
    p.set_defaults(func=cmd_anomalies)


def _setup_tail(p: argparse.ArgumentParser) -> None:
    p.add_argument("--min-score", type=SCORE, default=0.0,
                   help="only anomalies scored at least this high, 0..1 (default %(default)s: all)")
    p.add_argument("--block", default="", help="only this block id")
    p.add_argument("--component", default="", help="only lines of this component")
    p.add_argument("--blocks-only", action="store_true", help="only block alerts and final verdicts")
    p.add_argument("--scorer", default=DEFAULT_SCORER, help="scorer address HOST:PORT (default %(default)s)")
    _client_security_args(p)
    p.set_defaults(func=cmd_tail)


def _setup_stats(p: argparse.ArgumentParser) -> None:
    _client_args(p)
    p.set_defaults(func=cmd_stats)


def _kafka_config_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--kafka-config", metavar="FILE", default=None,
                   help="librdkafka properties, one KEY=VALUE per line (kcat -F's format, e.g. "
                        "deploy/k8s/kafka/make-secrets.sh's <principal>.properties): credentials stay off the "
                        "command line; --kafka-option wins over it. Keep it owner-only (chmod 600)")


SPARK_JAAS = {"SCRAM-SHA-256": "org.apache.kafka.common.security.scram.ScramLoginModule",
              "SCRAM-SHA-512": "org.apache.kafka.common.security.scram.ScramLoginModule",
              "PLAIN": "org.apache.kafka.common.security.plain.PlainLoginModule"}


def _read_kafka_config(args: argparse.Namespace, spark: bool = False) -> None:
    """Merges --kafka-config into args.kafka_options (explicit --kafka-option wins); for the job, also Spark's
    Java `sasl.jaas.config` from sasl.username/password, unless --spark-kafka-option gives one."""
    if args.kafka_config:
        from logmesh.ingest.producer import parse_kafka_option
        path = Path(args.kafka_config)
        try:
            lines = path.read_text().splitlines()
        except OSError as exc:
            raise UserError(f"cannot read --kafka-config {path}: {exc.strerror}; give a librdkafka properties "
                            "file (deploy/k8s/kafka/make-secrets.sh writes one per principal)") from None
        if path.stat().st_mode & 0o066:  # it holds a password
            print(f"warning: --kafka-config {path} can be read or changed by other users: chmod 600 {path}",
                  file=sys.stderr)
        options = {}
        for n, line in enumerate(lines, 1):
            if line.strip() and not line.lstrip().startswith("#"):
                try:
                    key, value = parse_kafka_option(line.strip())
                except ValueError as exc:
                    raise UserError(f"--kafka-config {path}, line {n}: {exc}") from None
                options[key] = value
        args.kafka_options = {**options, **(args.kafka_options or {})}
    o = args.kafka_options or {}
    if spark and "sasl.jaas.config" not in (args.spark_kafka_options or {}) and o.get("sasl.username") \
            and o.get("sasl.mechanism", "").upper() in SPARK_JAAS:
        args.spark_kafka_options = {**(args.spark_kafka_options or {}), "sasl.jaas.config": (
            f'{SPARK_JAAS[o["sasl.mechanism"].upper()]} required username="{o["sasl.username"]}" '
            f'password="{o.get("sasl.password", "")}";')}


def _setup_ingest(p: argparse.ArgumentParser) -> None:
    from logmesh.ingest.producer import add_ingest_args
    add_ingest_args(p)
    _kafka_config_arg(p)
    run = p.get_default("func")

    def cmd_ingest(args: argparse.Namespace) -> int:
        _read_kafka_config(args)
        return run(args)
    p.set_defaults(func=cmd_ingest)


def _setup_generate(p: argparse.ArgumentParser) -> None:
    from logmesh.ingest.generator import add_generate_args
    add_generate_args(p)


def _setup_stream(p: argparse.ArgumentParser) -> None:
    from logmesh.streaming.job import add_args
    add_args(p)
    _kafka_config_arg(p)
    p.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"],
                   help="least severe log lines written to stderr (default %(default)s)")
    p.set_defaults(func=cmd_stream)


def _setup_similar(p: argparse.ArgumentParser) -> None:
    p.add_argument("line", nargs="?", help="a raw HDFS log line")
    p.add_argument("--block", help="a block id whose stored session vector to search with")
    p.add_argument("--limit", type=POSITIVE, default=10, help="most neighbours to print (default %(default)s)")
    p.add_argument("--qdrant-url", default=None, help="Qdrant server; default: the embedded store at --qdrant-path")
    p.add_argument("--qdrant-api-key", default=os.environ.get("QDRANT_API_KEY"),
                   help="API key for --qdrant-url (default: QDRANT_API_KEY)")
    p.add_argument("--qdrant-path", default="var/qdrant", help="embedded store folder (default %(default)s)")
    p.add_argument("--embedder", default=DEFAULT_EMBEDDER,
                   help="embedder address HOST:PORT that embeds the line (default %(default)s)")
    _client_security_args(p)
    p.set_defaults(func=cmd_similar)


def _setup_health(p: argparse.ArgumentParser) -> None:
    p.add_argument("--scorer", default=DEFAULT_SCORER, help="scorer address HOST:PORT (default %(default)s)")
    p.add_argument("--embedder", default=None,
                   help="embedder address HOST:PORT (default: the one the scorer says it uses, else "
                        f"{DEFAULT_EMBEDDER})")
    _client_security_args(p)
    p.set_defaults(func=cmd_health)


# name: (help in `logmesh --help`, description in `logmesh NAME --help`, adds the options)
COMMANDS: dict[str, tuple[str, str | None, Callable[[argparse.ArgumentParser], None]]] = {
    "serve": ("run the embedder or the scorer gRPC server",
              "Run a gRPC server with health checking and reflection: `logmesh serve embedder` or `logmesh serve "
              "scorer` (each has its own --help). It reports NOT_SERVING until its model is loaded; SIGTERM "
              "stops it gracefully.", _setup_serve),
    "train": ("train a model artifact from labelled HDFS logs",
              "Fit the line ensemble on a loghub HDFS_v1 folder (*.log + anomaly_label.csv) and "
              "save a versioned artifact with its metrics under --out.", _setup_train),
    "score": ("score raw log lines and print verdict, score and votes",
              "Score raw HDFS lines given as arguments, or one per line on stdin. A line that is not in HDFS "
              "format (template unknown) is scored on its text alone, with a warning.", _setup_score),
    "evaluate": ("block-level precision/recall/F1/FPR of the newest artifact on a labelled log",
                 "Judge every labelled block of a raw HDFS log with the newest artifact in --model-dir and print "
                 "precision, recall, F1 and false-positive rate for the block model, each line member and the "
                 "ensemble (docs/evaluation.md). Runs locally; no server needed.", _setup_evaluate),
    "anomalies": ("list recorded anomalies, newest first",
                  "Page through the scorer's anomaly history (ListAnomalies), newest first: flagged lines with "
                  "their votes, block alerts and final verdicts, each with its most similar past cases.",
                  _setup_anomalies),
    "tail": ("show anomalies live as the scorer records them",
             "Subscribe to WatchAnomalies and print each new anomalous line or block alert.", _setup_tail),
    "stats": ("print the scorer's counters, latencies and model as JSON",
              "Print the scorer's GetStats as JSON with the proto's field names (as grpcurl does): lines and "
              "blocks scored, anomalies, rejected items, latency p50/p99, the loaded model and why none is.",
              _setup_stats),
    "ingest": ("produce raw HDFS logs to Kafka as LogRecords", None, _setup_ingest),
    "generate": ("write realistic HDFS logs with labelled anomalous blocks", None, _setup_generate),
    "stream": ("run the Spark Structured Streaming job (Kafka -> scorer -> Kafka, Qdrant)",
               "Read LogRecords from Kafka with Spark's Kafka source; in a foreachBatch sink "
               "embed and score each micro-batch over gRPC streams, write results to Kafka and "
               "blocks and anomalous lines to the vector store. Checkpointed: a restart resumes.", _setup_stream),
    "similar": ("show the stored lines or blocks most similar to a line or a block",
                "Nearest neighbours in the vector store: for a raw log line, the most similar "
                "stored (anomalous) lines; with --block, the most similar stored blocks.", _setup_similar),
    "health": ("check both servers' gRPC health (exit 0 when both are SERVING)",
               "Check grpc.health.v1 of the scorer and of the embedder it uses (it names it in GetStats; "
               "--embedder checks another). Exit 0 when both are SERVING, 1 otherwise.", _setup_health),
}


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The whole CLI (command None), or one whose only complete subcommand is `command` (what main uses)."""
    parser = argparse.ArgumentParser(
        prog="logmesh", description="Real-time anomaly detection for HDFS logs over gRPC.",
        epilog="Start with: logmesh serve embedder & logmesh serve scorer --model-dir models & logmesh score LINE")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND",
                                help="what to do (`logmesh COMMAND --help` explains each)")
    for name, (help_text, description, setup) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=description or help_text[0].upper() + help_text[1:] + ".")
        if command is None or command == name:
            setup(p)
    return parser


def _command_of(argv: list[str]) -> str:
    """The subcommand named on the command line (the first word that is not an option), or ""."""
    return next((a for a in argv if not a.startswith("-")), "")


def _fail(message: str, code: int) -> int:
    print(f"error: {message}", file=sys.stderr)
    return code


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser(_command_of(argv)).parse_args(argv)
    try:
        return args.func(args)
    except UserError as exc:
        return _fail(str(exc), 2)
    except Unreachable as exc:
        return _fail(str(exc), 1)
    except grpc.RpcError as exc:
        service, address = getattr(args, "target", None) or ("scorer", getattr(args, "scorer", ""))
        hint = {
            grpc.StatusCode.UNAVAILABLE: f"is the {service} running at {address}? start it with `logmesh serve "
                                         f"{service}` (a TLS server also answers UNAVAILABLE to a plaintext "
                                         "client: --tls-ca)",
            grpc.StatusCode.UNAUTHENTICATED: "give a token the server accepts: --token or LOGMESH_TOKEN",
        }.get(exc.code(), "")
        print(f"error: {exc.code().name}: {exc.details()}" + (f"\n  {hint}" if hint else ""), file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # e.g. `logmesh anomalies | head`: the reader left; nothing to report
        sys.stdout = open(os.devnull, "w")
        return 0
    except ConnectionError as exc:  # e.g. a Qdrant server that does not answer
        return _fail(f"{exc}; is it running, and is the address right?", 1)
    except (ValueError, OSError) as exc:
        # configuration and environment problems raised below the CLI (unreadable files, bad settings):
        # their message, without the stack; LOGMESH_DEBUG=1 shows where they came from
        if os.environ.get("LOGMESH_DEBUG"):
            raise
        if isinstance(exc, OSError) and exc.filename:
            return _fail(f"{exc.filename}: {exc.strerror or exc}; check the path and its permissions", 2)
        return _fail(f"{exc} (LOGMESH_DEBUG=1 shows where)", 2)
    except Exception as exc:
        if type(exc).__module__.startswith("confluent_kafka") and not os.environ.get("LOGMESH_DEBUG"):
            return _fail(f"Kafka: {exc}; is the broker at --bootstrap up, and do the Kafka options (credentials) "
                         "match it?", 1)
        raise


if __name__ == "__main__":
    sys.exit(main())

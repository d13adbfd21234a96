"""The `logmesh` command line. Every subcommand has --help; servers log JSON lines to stderr."""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import grpc

from logmesh.client import DEFAULT_EMBEDDER, DEFAULT_SCORER, EmbedderClient, ScorerClient

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # the model ships in a package; never reach for a hub
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


def _limits_args(p: argparse.ArgumentParser) -> None:
    from logmesh.grpc_server import Limits
    d = Limits()
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default %(default)s: loopback only)")
    p.add_argument("--max-line-bytes", type=int, default=d.max_line_bytes, help="longest line accepted (default %(default)s)")
    p.add_argument("--max-batch", type=int, default=d.max_batch_items, help="most items in one stream message (default %(default)s)")
    p.add_argument("--max-message-bytes", type=int, default=d.max_message_bytes, help="largest request message (default %(default)s)")
    p.add_argument("--max-concurrent-rpcs", type=int, default=d.max_concurrent_rpcs, help="RPCs served at once; more get RESOURCE_EXHAUSTED (default %(default)s)")
    p.add_argument("--max-stream-items", type=int, default=d.max_stream_items, help="items over one stream; more end it with RESOURCE_EXHAUSTED (default %(default)s)")
    p.add_argument("--max-streams-per-connection", type=int, default=d.max_streams_per_connection, help="streams one client connection may have open at once; more wait (default %(default)s)")
    p.add_argument("--grace", type=float, default=10.0, help="seconds in-flight RPCs get to finish on SIGTERM (default %(default)s)")
    p.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    g = p.add_argument_group("security", "TLS, mutual TLS and bearer tokens (README: Security). Plaintext is "
                                          "refused on a non-loopback --host unless --allow-plaintext.")
    g.add_argument("--tls-cert", help="server certificate (PEM); with --tls-key turns TLS on")
    g.add_argument("--tls-key", help="private key of --tls-cert (PEM)")
    g.add_argument("--tls-client-ca", help="require client certificates signed by this CA (mutual TLS)")
    g.add_argument("--token-file", help="accepted bearer tokens, one per line (also: LOGMESH_TOKENS=a,b); "
                                        "calls without one get UNAUTHENTICATED; health stays open")
    g.add_argument("--allow-plaintext", action="store_true",
                   help="serve plaintext on a non-loopback --host (only behind a proxy or mesh that encrypts)")


def _server_security(args: argparse.Namespace):  # type: ignore[no-untyped-def]
    from logmesh.security import ServerSecurity, load_tokens
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
    return ChannelSecurity.from_env(tls=args.tls, ca=args.tls_ca, cert=args.tls_cert, key=args.tls_key,
                                    token=args.token)


def _limits(args: argparse.Namespace):  # type: ignore[no-untyped-def]
    from logmesh.grpc_server import Limits
    return Limits(max_message_bytes=args.max_message_bytes, max_line_bytes=args.max_line_bytes,
                  max_batch_items=args.max_batch, max_concurrent_rpcs=args.max_concurrent_rpcs,
                  max_stream_items=args.max_stream_items, max_streams_per_connection=args.max_streams_per_connection)


def cmd_serve(args: argparse.Namespace) -> int:
    from logmesh import logs
    logs.setup(args.log_level)
    try:
        security = _server_security(args)
        security.check_bind(args.host)
        if security.tls:
            security.credentials()  # unreadable files fail here, with their names, not deep in grpc
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.service == "embedder":
        from logmesh.embedder.service import serve
        server = serve(args.port or 50051, args.host, _limits(args), threads=args.threads, cache_size=args.cache_size,
                       security=security)
    else:
        from logmesh.scorer.service import serve
        server = serve(args.port or 50052, Path(args.model_dir), args.embedder, args.host, _limits(args),
                       reload_interval=args.reload_interval, security=security,
                       kafka_bootstrap=args.kafka_bootstrap, dlq_topic=args.dlq_topic)
    server.serve_until_signal(args.grace)
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from logmesh import logs
    logs.setup(args.log_level)
    data = Path(args.data)
    if not (data / "anomaly_label.csv").exists():
        print(f"error: {data} has no anomaly_label.csv; point --data at a loghub HDFS_v1 folder "
              "(raw *.log files plus anomaly_label.csv)", file=sys.stderr)
        return 2
    from logmesh.embedder.encoder import SentenceEncoder
    from logmesh.scorer.train import train
    encoder = SentenceEncoder(threads=args.threads)
    path = train(data, Path(args.out), encoder.encode, seed=args.seed, limit=args.limit)
    meta = json.loads((path / "meta.json").read_text())
    ens = meta["metrics"]["line"]["ensemble"]
    print(f"saved {path}  (held-out line precision {ens['precision']:.3f} recall {ens['recall']:.3f} "
          f"f1 {ens['f1']:.3f}; {meta['data']['lines']} lines, {meta['train_seconds']} s)")
    return 0


def _verdict(v: int) -> str:
    from logmesh.v1 import score_pb2
    return score_pb2.Verdict.Name(v).removeprefix("VERDICT_")


def cmd_score(args: argparse.Namespace) -> int:
    lines = args.line or [line.rstrip("\n") for line in sys.stdin if line.strip()]
    with ScorerClient(args.scorer, timeout=args.timeout, security=_channel_security(args)) as scorer:
        results = [scorer.score_line(lines[0])] if len(lines) == 1 else None
        if results is None:
            items = list(scorer.score_lines(lines))
            failed = [i for i in items if i.HasField("error")]
            for item in failed:
                print(f"error: {item.record_id}: {item.error.message}", file=sys.stderr)
            results = [i.result for i in items if i.HasField("result")]
    for r in results:
        if args.json:
            from google.protobuf.json_format import MessageToDict
            print(json.dumps(MessageToDict(r)))
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


def cmd_anomalies(args: argparse.Namespace) -> int:
    with ScorerClient(args.scorer, timeout=args.timeout, security=_channel_security(args)) as scorer:
        page = scorer.anomalies(args.limit, args.page_token, args.min_score, args.block)
    for entry in page.anomalies:
        if entry.HasField("line"):
            r = entry.line
            print(f"#{entry.id}  {entry.recorded_time.ToJsonString()}  line  score={r.score:.3f}  "
                  f"votes={r.anomaly_votes}/{r.anomaly_votes + r.normal_votes}  "
                  f"{','.join(r.block_ids)}  {r.message}")
            _print_similar(r.similar, "      similar ")
        else:
            b = entry.block
            print(f"#{entry.id}  {entry.recorded_time.ToJsonString()}  block {b.block_id}  score={b.score:.3f}")
            _print_similar(b.similar, "      similar ")
    if not page.anomalies:
        print("no anomalies recorded", file=sys.stderr)
    if page.next_page_token:
        print(f"more: --page-token {page.next_page_token}", file=sys.stderr)
    return 0


def cmd_tail(args: argparse.Namespace) -> int:
    with ScorerClient(args.scorer, security=_channel_security(args)) as scorer:
        print(f"watching anomalies at {args.scorer} (Ctrl-C to stop) ...", file=sys.stderr)
        try:
            for entry in scorer.watch(args.min_score, args.block, args.component, args.blocks_only):
                when = entry.recorded_time.ToDatetime().strftime("%H:%M:%S")
                if entry.HasField("block"):
                    b = entry.block
                    kind = {2: "ALERT", 3: "FINAL"}.get(b.kind, "BLOCK")
                    print(f"{when}  {kind:5} {b.block_id}  score={b.score:.2f}  events={' '.join(b.events[-12:])}"
                          + (f"  read: {', '.join(b.anomalous_record_ids[:3])}" if b.anomalous_record_ids else ""),
                          flush=True)
                    _print_similar(b.similar, "          similar ")
                else:
                    r = entry.line
                    votes = " ".join(f"{v.model}={v.score:.2f}" for v in r.votes)
                    print(f"{when}  LINE  {','.join(r.block_ids)}  score={r.score:.2f}  "
                          f"votes={r.anomaly_votes}/{r.anomaly_votes + r.normal_votes} [{votes}]  {r.message[:100]}",
                          flush=True)
                    _print_similar(r.similar, "          similar ")
        except KeyboardInterrupt:
            return 0
    return 0


def cmd_stats(args: argparse.Namespace) -> int:
    with ScorerClient(args.scorer, timeout=args.timeout, security=_channel_security(args)) as scorer:
        stats = scorer.stats()
    from google.protobuf.json_format import MessageToDict
    print(json.dumps(MessageToDict(stats, always_print_fields_with_no_presence=True), indent=2))
    return 0


def cmd_health(args: argparse.Namespace) -> int:
    status = 0
    security = _channel_security(args)
    for name, client in (("embedder", EmbedderClient(args.embedder, security=security)),
                         ("scorer", ScorerClient(args.scorer, security=security))):
        with client:
            try:
                state = client.health()
            except grpc.RpcError as exc:
                state = f"DOWN ({exc.code().name})"
            print(f"{name:9} {client.address:22} {state}")
            status |= state != "SERVING"
    return status


def cmd_stream(args: argparse.Namespace) -> int:
    from logmesh import logs
    from logmesh.streaming.job import config_from_args, run
    logs.setup(args.log_level)
    run(config_from_args(args))
    return 0


def cmd_similar(args: argparse.Namespace) -> int:
    from logmesh.ingest.hdfs import parse_line
    from logmesh.ingest.masking import line_shape
    from logmesh.streaming.vector_store import open_store
    if bool(args.line) == bool(args.block):
        print("error: give a log line or --block BLOCK_ID (one of them)", file=sys.stderr)
        return 2
    store = open_store(url=args.qdrant_url, path=args.qdrant_path, api_key=args.qdrant_api_key, ensure=False)
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
            with EmbedderClient(args.embedder, security=_channel_security(args)) as embedder:
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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="logmesh", description="Real-time anomaly detection for HDFS logs over gRPC.",
        epilog="Start with: logmesh serve embedder & logmesh serve scorer --model-dir models & logmesh score LINE")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("serve", help="run the embedder or the scorer gRPC server",
                       description="Run a gRPC server with health checking and reflection. It reports NOT_SERVING "
                                   "until its model is loaded; SIGTERM stops it gracefully.")
    p.add_argument("service", choices=["embedder", "scorer"])
    p.add_argument("--port", type=int, default=0, help="port (default 50051 for the embedder, 50052 for the scorer)")
    p.add_argument("--threads", type=int, default=1, help="embedder: torch threads (default 1: safe on a shared 2-core box)")
    p.add_argument("--cache-size", type=int, default=50_000, help="embedder: line shapes kept in the embedding cache")
    p.add_argument("--model-dir", default="models", help="scorer: folder of model artifacts; the newest is served (default %(default)s)")
    p.add_argument("--embedder", default=DEFAULT_EMBEDDER, help="scorer: embedder address (default %(default)s)")
    p.add_argument("--reload-interval", type=float, default=5.0, help="scorer: seconds between checks for a newer artifact")
    p.add_argument("--kafka-bootstrap", default=None,
                   help="scorer: Kafka broker HOST:PORT; with --dlq-topic, `logmesh stats` reports the DLQ's message count")
    p.add_argument("--dlq-topic", default=None, help="scorer: the streaming job's dead-letter topic, e.g. logmesh.dlq")
    _limits_args(p)
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("train", help="train a model artifact from labelled HDFS logs",
                       description="Fit the line ensemble on a loghub HDFS_v1 folder (*.log + anomaly_label.csv) and "
                                   "save a versioned artifact with its metrics under --out.")
    p.add_argument("--data", required=True, help="folder with raw HDFS *.log files and anomaly_label.csv")
    p.add_argument("--out", default="models", help="model dir to add the artifact to (default %(default)s)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--limit", type=int, default=None, help="use at most this many lines")
    p.add_argument("--threads", type=int, default=2, help="torch threads for embedding (default %(default)s)")
    p.add_argument("--log-level", default="info")
    p.set_defaults(func=cmd_train)

    def client_args(p: argparse.ArgumentParser) -> None:
        p.add_argument("--scorer", default=DEFAULT_SCORER, help="scorer address (default %(default)s)")
        p.add_argument("--timeout", type=float, default=30.0, help="seconds per call (default %(default)s)")
        _client_security_args(p)

    p = sub.add_parser("score", help="score raw log lines and print verdict, score and votes",
                       description="Score raw HDFS lines given as arguments, or one per line on stdin.")
    p.add_argument("line", nargs="*", help="raw HDFS log line(s); read stdin when none")
    p.add_argument("--json", action="store_true", help="print each ScoreResult as JSON")
    client_args(p)
    p.set_defaults(func=cmd_score)

    from logmesh.scorer.evaluate import add_evaluate_args, run_evaluate
    p = sub.add_parser("evaluate", help="block-level precision/recall/F1/FPR of the newest artifact on a labelled log")
    add_evaluate_args(p)
    p.set_defaults(func=run_evaluate)

    p = sub.add_parser("anomalies", help="list recorded anomalies, newest first")
    p.add_argument("--limit", type=int, default=20, help="entries per page (default %(default)s)")
    p.add_argument("--page-token", default="", help="continue from a previous page")
    p.add_argument("--min-score", type=float, default=0.0)
    p.add_argument("--block", default="", help="only this block id")
    client_args(p)
    p.set_defaults(func=cmd_anomalies)

    p = sub.add_parser("tail", help="show anomalies live as the scorer records them",
                       description="Subscribe to WatchAnomalies and print each new anomalous line or block alert.")
    p.add_argument("--min-score", type=float, default=0.0)
    p.add_argument("--block", default="", help="only this block id")
    p.add_argument("--component", default="", help="only lines of this component")
    p.add_argument("--blocks-only", action="store_true", help="only block alerts and final verdicts")
    p.add_argument("--scorer", default=DEFAULT_SCORER, help="scorer address (default %(default)s)")
    _client_security_args(p)
    p.set_defaults(func=cmd_tail)

    p = sub.add_parser("stats", help="print the scorer's counters, latencies and model as JSON")
    client_args(p)
    p.set_defaults(func=cmd_stats)

    from logmesh.ingest.generator import add_generate_args
    from logmesh.ingest.producer import add_ingest_args
    add_ingest_args(sub.add_parser("ingest", help="produce raw HDFS logs to Kafka as LogRecords"))
    add_generate_args(sub.add_parser("generate", help="write realistic HDFS logs with labelled anomalous blocks"))

    p = sub.add_parser("stream", help="run the Spark Structured Streaming job (Kafka -> scorer -> Kafka, Qdrant)",
                       description="Read LogRecords from Kafka with Spark's Kafka source; in a foreachBatch sink "
                                   "embed and score each micro-batch over gRPC streams, write results to Kafka and "
                                   "blocks and anomalous lines to the vector store. Checkpointed: a restart resumes.")
    from logmesh.streaming.job import add_args as add_stream_args
    add_stream_args(p)
    p.add_argument("--log-level", default="info")
    p.set_defaults(func=cmd_stream)

    p = sub.add_parser("similar", help="show the stored lines or blocks most similar to a line or a block",
                       description="Nearest neighbours in the vector store: for a raw log line, the most similar "
                                   "stored (anomalous) lines; with --block, the most similar stored blocks.")
    p.add_argument("line", nargs="?", help="a raw HDFS log line")
    p.add_argument("--block", help="a block id whose stored session vector to search with")
    p.add_argument("--limit", type=int, default=10)
    p.add_argument("--qdrant-url", default=None, help="Qdrant server; default: the embedded store at --qdrant-path")
    p.add_argument("--qdrant-api-key", default=os.environ.get("QDRANT_API_KEY"),
                   help="API key for --qdrant-url (default: QDRANT_API_KEY)")
    p.add_argument("--qdrant-path", default="var/qdrant", help="embedded store folder (default %(default)s)")
    p.add_argument("--embedder", default=DEFAULT_EMBEDDER, help="embedder used to embed the line")
    _client_security_args(p)
    p.set_defaults(func=cmd_similar)

    from logmesh.bench import add_bench_args
    add_bench_args(sub)

    p = sub.add_parser("health", help="check both servers' gRPC health (exit 0 when both are SERVING)")
    p.add_argument("--embedder", default=DEFAULT_EMBEDDER)
    p.add_argument("--scorer", default=DEFAULT_SCORER)
    _client_security_args(p)
    p.set_defaults(func=cmd_health)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except grpc.RpcError as exc:
        target = getattr(args, "scorer", "")
        hint = {
            grpc.StatusCode.UNAVAILABLE: f"is the scorer running at {target}? start it with `logmesh serve scorer` "
                                         "(a TLS server also answers UNAVAILABLE to a plaintext client: --tls-ca)",
            grpc.StatusCode.UNAUTHENTICATED: "give a token the server accepts: --token or LOGMESH_TOKEN",
        }.get(exc.code(), "")
        print(f"error: {exc.code().name}: {exc.details()}" + (f"\n  {hint}" if hint else ""), file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())

"""`logmesh serve embedder|scorer`: a gRPC server with its limits and security options."""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from logmesh.cli.common import EMBEDDER_ADDRESS, PORT, POSITIVE, POSITIVE_FLOAT, POSITIVE_SECONDS, SECONDS, UserError
from logmesh.cli.kafka_config import kafka_config_arg, read_kafka_config


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
    p.add_argument("--metrics-port", type=PORT, default=None, metavar="PORT",
                   help="serve Prometheus metrics at http://HOST:PORT/metrics (RPCs by method and code, latency, "
                        "cache; deploy/prometheus); 0: any free port, named in the 'metrics serving' log line; "
                        "default: off")
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


def _limits(args: argparse.Namespace):  # type: ignore[no-untyped-def]
    from logmesh.runtime.grpc_server import Limits
    return Limits(max_message_bytes=args.max_message_bytes, max_line_bytes=args.max_line_bytes,
                  max_batch_items=args.max_batch, max_concurrent_rpcs=args.max_concurrent_rpcs,
                  max_stream_items=args.max_stream_items, max_streams_per_connection=args.max_streams_per_connection,
                  max_open_streams=args.max_open_streams, workers=args.workers,
                  stream_idle_timeout=args.stream_idle_timeout)


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
    if args.service == "scorer" and Path(args.model_dir).is_file():  # a folder yet to be made is fine: hot reload
        raise UserError(f"--model-dir {args.model_dir} is a file, not a folder: give the folder `logmesh train "
                        "--out` wrote the artifacts to")
    port = args.port  # 0: the OS picks a free one; the "listening" log line names it
    _check_port(args.host, port)
    from logmesh.runtime import tracing  # imports OpenTelemetry only when tracing is asked for
    try:
        tracing.setup(args.service, args.trace, args.trace_endpoint)
    except tracing.TracingError as exc:
        raise UserError(str(exc)) from None
    if args.metrics_port is not None:
        from logmesh.runtime.metrics import serve_metrics
        try:
            serve_metrics(args.metrics_port, args.host, component=args.service)
        except OSError as exc:
            reason = getattr(exc.__cause__, "strerror", None) or exc
            raise UserError(f"cannot serve metrics on {args.host}:{args.metrics_port}: {reason}; pick another "
                            "--metrics-port (0: any free port) or leave it out (no metrics)") from None
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
                           cache_bytes=args.cache_mb << 20, anomalies_topic=args.anomalies_topic or None,
                           kafka_options=_history_kafka_options(args), qdrant_url=args.qdrant_url,
                           qdrant_api_key=args.qdrant_api_key or os.environ.get("QDRANT_API_KEY"),
                           feedback_topic=args.feedback_topic or None,
                           incidents_topic=args.incidents_topic or None, incident_window_s=args.incident_window,
                           incident_outputs=_incident_outputs(args), incident_book=args.incidents_book or None,
                           incident_lease_timeout_s=args.incident_lease_timeout)
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


def _incident_outputs(args: argparse.Namespace):  # type: ignore[no-untyped-def]
    """--llm-* and --notify-* as the scorer's IncidentOutputs; a bad --notify-url is one error line."""
    from logmesh.scorer.analyst.notify import Target
    from logmesh.scorer.analyst.outputs import IncidentOutputs
    for spec in args.notify_urls:
        try:
            Target.parse(spec)
        except ValueError as exc:
            raise UserError(str(exc)) from None
    if args.llm_url and not args.llm_url.startswith(("http://", "https://")):
        raise UserError(f"--llm-url {args.llm_url!r}: want the base URL of an OpenAI-compatible API, "
                        "e.g. http://127.0.0.1:8000/v1")
    return IncidentOutputs(llm_url=args.llm_url, llm_model=args.llm_model, llm_timeout=args.llm_timeout,
                           summary_defer_max_s=args.summary_defer_max_s, summary_busy_rate=args.summary_busy_rate,
                           notify_urls=tuple(args.notify_urls), notify_wait=args.notify_wait)


def _history_kafka_options(args: argparse.Namespace) -> dict[str, str]:
    """--kafka-option KEY=VALUE over --kafka-config FILE, checked against librdkafka, for the history's consumer."""
    from logmesh.ingest.kafka_options import check_kafka_options
    read_kafka_config(args)
    try:
        check_kafka_options(args.kafka_options or {})
    except ValueError as exc:
        raise UserError(str(exc)) from None
    return args.kafka_options or {}


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


def _serve_common(p: argparse.ArgumentParser, port: int) -> None:
    from logmesh.runtime.tracing_args import add_trace_args
    p.add_argument("--port", type=PORT, default=port,
                   help="port to listen on; 0: any free port, named in the server's 'listening' log line "
                        "(default %(default)s)")
    _limits_args(p)
    add_trace_args(p)


def setup(p: argparse.ArgumentParser) -> None:
    services = p.add_subparsers(dest="service", required=True, metavar="SERVICE",
                                help="which server (`logmesh serve SERVICE --help` lists its options)")
    _setup_embedder(services.add_parser(
        "embedder", help="the embedding server (all-MiniLM-L6-v2), default port 50051",
        description="Serve EmbedderService: 384-d all-MiniLM-L6-v2 embeddings of masked line shapes, cached. "
                    "NOT_SERVING until the model has loaded."))
    _setup_scorer(services.add_parser(
        "scorer", help="the scoring server (line ensemble, block model, the anomaly history), port 50052",
        description="Serve ScorerService with the newest artifact in --model-dir (hot reload); it calls the "
                    "embedder for shapes it has not seen. NOT_SERVING until an artifact is loaded "
                    "(GetStats.model_status says why). Scoring records nothing: the anomaly history is what "
                    "the streaming job commits to --anomalies-topic, kept in --state-dir."))
    from logmesh.cli import console  # the web console over the scorer: its options and handler live there
    console.setup(services.add_parser("console", help=console.HELP, description=console.DESCRIPTION))


def _setup_embedder(e: argparse.ArgumentParser) -> None:
    _serve_common(e, 50051)
    e.add_argument("--threads", type=POSITIVE, default=1,
                   help="model threads, ONNX Runtime or torch (default %(default)s: safe on a shared 2-core box)")
    e.add_argument("--cache-mb", type=POSITIVE, default=64,
                   help="MiB the embedding cache may hold, keys (line shapes) and vectors (default %(default)s)")
    e.set_defaults(func=cmd_serve)


def _setup_scorer(s: argparse.ArgumentParser) -> None:
    from logmesh.client import DEFAULT_EMBEDDER
    from logmesh.ingest.kafka_options import KafkaOptionAction  # no Kafka client is loaded by it
    _serve_common(s, 50052)
    s.add_argument("--model-dir", default="models", help="folder of model artifacts; the newest is served (default %(default)s)")
    s.add_argument("--embedder", type=EMBEDDER_ADDRESS, default=DEFAULT_EMBEDDER, help="embedder address HOST:PORT (default %(default)s)")
    s.add_argument("--reload-interval", type=POSITIVE_SECONDS, default=5.0,
                   help="seconds between checks for a newer artifact (default %(default)s)")
    s.add_argument("--bootstrap", "--kafka-bootstrap", dest="kafka_bootstrap", default="127.0.0.1:9092", metavar="HOSTS",
                   help="Kafka bootstrap servers HOST:PORT[,...]: the anomaly history reads --anomalies-topic there, "
                        "and with --dlq-topic `logmesh stats` reports the DLQ's message count (default %(default)s)")
    s.add_argument("--anomalies-topic", default="logmesh.anomalies",
                   help="the streaming job's anomalies topic: read (read_committed) into the anomaly history that "
                        "ListAnomalies / WatchAnomalies / `logmesh anomalies` / `logmesh tail` serve; a broker that "
                        "is down is retried while the scorer scores; '' turns the history off (default %(default)s)")
    s.add_argument("--kafka-option", dest="kafka_options", metavar="KEY=VALUE", action=KafkaOptionAction, default={},
                   help="a librdkafka property for the history's Kafka consumer (repeatable), e.g. "
                        "security.protocol=SASL_SSL, sasl.mechanism=SCRAM-SHA-512, ssl.ca.location=ca.pem")
    kafka_config_arg(s)
    s.add_argument("--qdrant-url", default=None,
                   help="the Qdrant server the streaming job writes (its --qdrant-url): the history takes each "
                        "entry's similar past cases from it. Without one, entries keep what the job gave them "
                        "(the embedded store is a folder only the job's process can open)")
    s.add_argument("--qdrant-api-key", default=None,
                   help="API key for --qdrant-url (default: the QDRANT_API_KEY environment variable)")
    s.add_argument("--feedback-topic", default="logmesh.feedback",
                   help="the compacted topic at --bootstrap where analyst labels are kept (FeedbackService, `logmesh "
                        "feedback`; `make kafka-up` creates it): read back at start, so labels and their suppressions "
                        "survive a restart; '' turns feedback off (default %(default)s)")
    s.add_argument("--incidents-topic", default="logmesh.incidents",
                   help="the compacted topic at --bootstrap where incidents are kept (IncidentService, `logmesh "
                        "incidents`; `make kafka-up` creates it): the history's alerts grouped into incidents, read "
                        "back at start with their ids; needs --anomalies-topic; '' turns incidents off (default "
                        "%(default)s). Without a --state-dir incidents are kept in memory only, like the history")
    s.add_argument("--incident-window", type=POSITIVE_SECONDS, default=300.0, metavar="SECONDS",
                   help="alerts on the same node and template within this many seconds of event time join one "
                        "incident, and an incident no alert joined for this long closes (default %(default)s)")
    s.add_argument("--incidents-book", default=None, metavar="NAME",
                   help="the incident book replicas share (give every replica of one deployment the same NAME and "
                        "the same topics, each its own --state-dir): the replica holding the book's lease groups, "
                        "numbers, summarises and notifies incidents, the others follow and serve reads, and one takes "
                        "over when the owner dies (default: this state dir's own book)")
    s.add_argument("--incident-lease-timeout", type=POSITIVE_SECONDS, default=10.0, metavar="SECONDS",
                   help="how long a dead owner keeps the incident book's lease before another replica takes it over "
                        "(the lease consumer group's session timeout: at least the broker's "
                        "group.min.session.timeout.ms, 6 by default; default %(default)s)")
    g = s.add_argument_group("incident summaries and notifications", "each incident version is summarised "
                             "off the scoring path (README: Incident summaries)")
    g.add_argument("--llm-url", default=None, metavar="URL",
                   help="base URL of an OpenAI-compatible chat-completions API (vLLM, llama.cpp's server, Ollama, "
                        "TGI), e.g. http://127.0.0.1:8000/v1; bearer token from $LOGMESH_LLM_TOKEN. Without it "
                        "every summary is built from the evidence (marked fallback, reason 'no --llm-url')")
    g.add_argument("--llm-model", default=None,
                   help="model name to ask for (default: the first model the server lists at /models)")
    g.add_argument("--llm-timeout", type=POSITIVE_SECONDS, default=30.0, metavar="SECONDS",
                   help="seconds per LLM call, connect to last byte; the call is tried twice, then the summary "
                        "is built from the evidence (default %(default)s)")
    g.add_argument("--summary-defer-max-s", type=SECONDS, default=None, metavar="SECONDS",
                   help="an LLM summary starts only while scoring is quiet (see --summary-busy-rate), or once it "
                        "has waited this long: for an LLM that shares this machine's CPU. 0: never wait "
                        "(default: 20 when --llm-url's host is loopback, else 0)")
    g.add_argument("--summary-busy-rate", type=POSITIVE_FLOAT, default=1.0, metavar="MESSAGES",
                   help="scoring counts as busy while the last second held at least this many scoring requests "
                        "and stream messages (Score, ScoreStream, ScoreBlock, ScoreBlockStream) (default %(default)s)")
    g.add_argument("--notify-url", dest="notify_urls", action="append", default=[], metavar="[FORMAT=]URL",
                   help="webhook for incidents (repeatable), one notification per incident: FORMAT alertmanager "
                        "(Alertmanager's webhook JSON, the default) or slack ({\"text\": ...}), e.g. "
                        "slack=https://hooks.slack.com/services/...; retried, then kept in "
                        "STATE_DIR/notify-dead-letters.jsonl")
    g.add_argument("--notify-wait", type=SECONDS, default=30.0, metavar="SECONDS",
                   help="seconds a notification waits for the incident's summary before it goes without one "
                        "(default %(default)s)")
    s.add_argument("--dlq-topic", default=None, help="the streaming job's dead-letter topic, e.g. logmesh.dlq")
    s.add_argument("--state-dir", default=None,
                   help=f"folder where the anomaly history (entries, their ids, how far the topic was read) and the "
                        f"counters survive a restart (default {DEFAULT_STATE_DIR} "
                        "when writable; '' keeps them in memory only)")
    s.add_argument("--history-mb", type=POSITIVE, default=128,
                   help="MiB the anomaly history may hold; the oldest entries go first (default %(default)s)")
    s.add_argument("--cache-mb", type=POSITIVE, default=96,
                   help="MiB the per-shape caches may hold (verdicts and anomalous shapes' vectors) (default %(default)s)")
    s.set_defaults(func=cmd_serve)

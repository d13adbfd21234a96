"""`logmesh serve console`: the analyst console (logmesh.console), a web page over the scorer's gRPC APIs.

Standard library only at import: `--help` loads neither grpc nor the web stack. The port is bound here before
uvicorn starts (a taken port is one `error:` line), and the scorer is asked once for its stats (an unreachable
scorer or a refused token is one `error:` line too) before the page is served.
"""
from __future__ import annotations

import argparse
import ipaddress
import signal
import socket

from logmesh.cli.common import (POSITIVE, POSITIVE_SECONDS, PORT, Unreachable, UserError, channel_security,
                                client_args, number)

HELP = "the analyst console: a web page over the scorer's anomaly history, default port 8080"
DESCRIPTION = ("Serve the analyst console over HTTP: the live anomaly feed (server-sent events from WatchAnomalies, "
               "resumed after the last id a browser saw), a page per anomaly (verdict, reasons, evidence, events, "
               "lines to read, similar past cases, feedback buttons that call SubmitFeedback), rates over time and "
               "templates among anomalies. It reads the "
               "scorer only over gRPC, with the CLI's TLS options and token. Its own HTTP is plaintext with no "
               "login: it listens on loopback unless --host says otherwise (then --allow-plaintext).")
MINUTES = number(float, 1.0, 24 * 60.0, what="give minutes between 1 and 1440")


def setup(p: argparse.ArgumentParser) -> None:
    p.add_argument("--port", type=PORT, default=8080, help="HTTP port to listen on; 0: any free port, named in the "
                   "'console at' log line (default %(default)s)")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default %(default)s: loopback only)")
    p.add_argument("--allow-plaintext", action="store_true",
                   help="listen on a non-loopback --host although the console's HTTP has neither TLS nor login "
                        "(only behind a proxy that encrypts and authenticates)")
    client_args(p)  # --scorer, --timeout, --tls, --tls-ca, --tls-cert, --tls-key, --token
    p.add_argument("--stats-interval", type=POSITIVE_SECONDS, default=5.0,
                   help="seconds between the GetStats samples the lines-per-second chart is drawn from (default %(default)s)")
    p.add_argument("--chart-minutes", type=MINUTES, default=30.0,
                   help="minutes the charts and the template counts cover (default %(default)s)")
    p.add_argument("--max-feeds", type=POSITIVE, default=16,
                   help="live feeds (browser tabs) open at once, each one WatchAnomalies call; more get 503 "
                        "(default %(default)s)")
    p.add_argument("--author", default="console",
                   help="who the feedback buttons' labels are given by, when the scorer runs without tokens (with "
                        "tokens, the scorer records the token's identity); default: %(default)s")
    p.add_argument("--access-log", action="store_true", help="log every HTTP request (default: only errors)")
    p.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"],
                   help="least severe log lines written to stderr (default %(default)s)")
    p.set_defaults(func=cmd_console)


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def bind(host: str, port: int) -> socket.socket:
    """The listening socket, bound here so that a taken port is one clear line (uvicorn serves on it)."""
    host = host.strip("[]")
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # TIME_WAIT from a previous run is no obstacle
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise UserError(f"cannot listen on {host}:{port}: {exc.strerror}; stop what holds it or pick another "
                        "--port / --host") from None
    sock.listen(128)
    sock.set_inheritable(True)
    return sock


def probe(scorer: str, security, timeout: float) -> None:  # type: ignore[no-untyped-def]
    """Asks the scorer for its stats once: unreachable or refusing, the console would show nothing."""
    import grpc
    from logmesh.client import ScorerClient
    try:
        with ScorerClient(scorer, timeout=min(timeout, 10.0), security=security) as client:
            client.stats()
    except ValueError as exc:  # a bad address
        raise UserError(f"--scorer {scorer!r}: {exc}") from None
    except grpc.RpcError as exc:
        code = exc.code()
        if code == grpc.StatusCode.UNAUTHENTICATED:
            raise UserError(f"the scorer at {scorer} refused the token ({exc.details()}): give one it accepts "
                            "with --token or LOGMESH_TOKEN") from None
        raise Unreachable(f"cannot reach the scorer at {scorer} ({code.name}: {exc.details()}): start it with "
                          "`logmesh serve scorer`, or point --scorer at it (a TLS scorer needs --tls-ca)") from None


def cmd_console(args: argparse.Namespace) -> int:
    from logmesh.runtime import logs
    logs.setup(args.log_level)
    if not _is_loopback(args.host) and not args.allow_plaintext:
        raise UserError(f"--host {args.host} is not loopback and the console's HTTP has no TLS or login: put it "
                        "behind a proxy that adds both and pass --allow-plaintext, or keep --host 127.0.0.1")
    security = channel_security(args)
    sock = bind(args.host, args.port)
    probe(args.scorer, security, args.timeout)

    import logging
    import uvicorn
    from logmesh.console import create_app
    app = create_app(args.scorer, security, timeout=args.timeout, stats_interval=args.stats_interval,
                     chart_minutes=args.chart_minutes, max_feeds=args.max_feeds, author=args.author)
    host, port = sock.getsockname()[:2]
    shown = f"[{host}]" if ":" in host else host
    logging.getLogger("logmesh.console").info(f"console at http://{shown}:{port}/",
                                              extra={"url": f"http://{shown}:{port}/", "scorer": args.scorer})
    config = uvicorn.Config(app, log_config=None, access_log=args.access_log, log_level=args.log_level,
                            timeout_graceful_shutdown=3, lifespan="on")
    # uvicorn stops gracefully on SIGTERM, then raises it again for the handler it found: a stop asked for is
    # exit 0, as for the gRPC servers (SIGINT stays KeyboardInterrupt: "interrupted", 130)
    signal.signal(signal.SIGTERM, lambda *_: None)
    uvicorn.Server(config).run(sockets=[sock])
    return 0


def main(argv: list[str] | None = None) -> int:
    """`python -m logmesh.cli.console ...`: the same command without the `logmesh serve` parser above it."""
    from logmesh.cli.common import run
    parser = argparse.ArgumentParser(prog="logmesh serve console", description=DESCRIPTION)
    setup(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())

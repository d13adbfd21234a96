"""What every command shares: the two errors a user sees, argument types that refuse a bad value with its
reason, the client's address and security options, and the handling that turns an exception into one
`error:` line and an exit code. Standard library only: each command imports what it needs itself."""
from __future__ import annotations

import argparse
import os
import sys
from typing import Callable


class UserError(Exception):
    """A mistake the user can fix: printed as one `error:` line (what is wrong, what to do), exit code 2."""


class Unreachable(Exception):
    """A service or broker the command needs did not answer: one `error:` line, exit code 1."""


# --- argument types: a bad value is refused by argparse with its reason, not deep in a call ---

def number(kind: type, low: float | None = None, high: float | None = None, what: str = "") -> Callable:
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


POSITIVE = number(int, 1, what="give a whole number of at least 1")
NON_NEGATIVE = number(int, 0, what="give a whole number of at least 0")
PORT = number(int, 0, 65535, what="a TCP port is 0..65535 (0: any free port)")
SECONDS = number(float, 0.0, what="give seconds as a number of at least 0")
POSITIVE_SECONDS = number(float, 0.001, what="give seconds as a number above 0")
POSITIVE_FLOAT = number(float, 1e-9, what="give a number above 0")
SCORE = number(float, 0.0, 1.0, what="scores lie in [0, 1]")
SHARE = number(float, 0.0, 1.0, what="a share lies in [0, 1]")


def server_address(port: int) -> Callable:
    """A gRPC server address: HOST:PORT, a list IP:PORT,IP:PORT or a gRPC target (dns:///NAME:PORT). A URL or a
    host without a port is refused here: gRPC would try port 443 or fail to resolve the scheme as a host name."""
    def convert(text: str) -> str:
        if text.split("://", 1)[0].lower() in ("http", "https", "grpc", "grpcs"):
            raise argparse.ArgumentTypeError(f"{text!r} is a URL: give the server's HOST:PORT, e.g. 127.0.0.1:{port} "
                                             "(TLS: --tls or --tls-ca)")
        if text.strip() and ":" not in text:
            raise argparse.ArgumentTypeError(f"{text!r} has no port: give HOST:PORT, e.g. {text.strip()}:{port}")
        return text
    convert.__name__ = "address"
    return convert


SCORER_ADDRESS, EMBEDDER_ADDRESS = server_address(50052), server_address(50051)


def retype(p: argparse.ArgumentParser, types: dict[str, Callable]) -> None:
    """Gives options that another module added (ingest/, streaming/) the CLI's checked types, so that a bad value
    is refused by the parser with its reason. An option that is not there is a programming error: KeyError."""
    by_flag = {flag: action for action in p._actions for flag in action.option_strings}
    for flag, kind in types.items():
        by_flag[flag].type = kind


def client_security_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("security", "defaults come from LOGMESH_TLS_CA, LOGMESH_TLS_CERT, LOGMESH_TLS_KEY, "
                                          "LOGMESH_TLS_SERVER_NAME, LOGMESH_TLS=1 and LOGMESH_TOKEN")
    g.add_argument("--tls", action="store_true", help="use TLS with the system's CA roots")
    g.add_argument("--tls-ca", help="CA certificate (PEM) to verify the server with; implies --tls")
    g.add_argument("--tls-cert", help="client certificate (PEM) for mutual TLS")
    g.add_argument("--tls-key", help="private key of --tls-cert")
    g.add_argument("--token", help="bearer token sent as 'authorization: Bearer <token>'")


def channel_security(args: argparse.Namespace):  # type: ignore[no-untyped-def]
    from logmesh.security import ChannelSecurity
    security = ChannelSecurity.from_env(tls=args.tls, ca=args.tls_ca, cert=args.tls_cert, key=args.tls_key,
                                        token=args.token)
    for path, flag in ((security.ca, "--tls-ca / LOGMESH_TLS_CA"), (security.cert, "--tls-cert / LOGMESH_TLS_CERT"),
                       (security.key, "--tls-key / LOGMESH_TLS_KEY")):
        if path and not os.access(path, os.R_OK):
            raise UserError(f"cannot read {path} ({flag}): give a readable PEM file "
                            "(deploy/tls/make-certs.sh makes a local CA and certificates)")
    return security


def target(args: argparse.Namespace, service: str, address: str) -> None:
    """Names the server the next calls go to, so that an UNAVAILABLE names the right one."""
    args.target = (service, address)


def client_args(p: argparse.ArgumentParser) -> None:
    from logmesh.client import DEFAULT_SCORER
    p.add_argument("--scorer", type=SCORER_ADDRESS, default=DEFAULT_SCORER,
                   help="scorer address HOST:PORT (default %(default)s)")
    p.add_argument("--timeout", type=POSITIVE_SECONDS, default=30.0, help="seconds per call (default %(default)s)")
    client_security_args(p)


def fail(message: str, code: int) -> int:
    print(f"error: {message}", file=sys.stderr)
    return code


def run(args: argparse.Namespace) -> int:
    """Runs the parsed command: a user mistake is one `error:` line and exit 2, an unreachable service or
    broker exit 1, never a traceback (LOGMESH_DEBUG=1 shows it for configuration errors)."""
    try:
        return args.func(args)
    except UserError as exc:
        return fail(str(exc), 2)
    except Unreachable as exc:
        return fail(str(exc), 1)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # e.g. `logmesh anomalies | head`: the reader left; nothing to report
        sys.stdout = open(os.devnull, "w")
        return 0
    except ConnectionError as exc:  # e.g. a Qdrant server that does not answer
        return fail(f"{exc}; is it running, and is the address right?", 1)
    except (ValueError, OSError) as exc:
        # configuration and environment problems raised below the CLI (unreadable files, bad settings):
        # their message, without the stack; LOGMESH_DEBUG=1 shows where they came from
        if os.environ.get("LOGMESH_DEBUG"):
            raise
        if isinstance(exc, OSError) and exc.filename:
            return fail(f"{exc.filename}: {exc.strerror or exc}; check the path and its permissions", 2)
        return fail(f"{exc} (LOGMESH_DEBUG=1 shows where)", 2)
    except Exception as exc:
        grpc = sys.modules.get("grpc")  # only a command that imported grpc can raise its errors
        if grpc is not None and isinstance(exc, grpc.RpcError):
            return _rpc_failed(args, exc, grpc)
        if type(exc).__module__.startswith("confluent_kafka") and not os.environ.get("LOGMESH_DEBUG"):
            return fail(f"Kafka: {exc}; is the broker at --bootstrap up, and do the Kafka options (credentials) "
                        "match it?", 1)
        raise


# what gRPC's client says when it reached no server (as opposed to an UNAVAILABLE the server itself answered)
_NOT_REACHED = ("failed to connect", "connections to all backends failing", "dns resolution failed", "socket closed",
                "connection refused", "connection reset", "broken pipe", "handshake", "empty address list")


def _rpc_failed(args: argparse.Namespace, exc, grpc) -> int:  # type: ignore[no-untyped-def]
    service, address = getattr(args, "target", None) or ("scorer", getattr(args, "scorer", ""))
    unavailable = (f"is the {service} running at {address}? start it with `logmesh serve {service}` (a TLS server "
                   "also answers UNAVAILABLE to a plaintext client: --tls-ca)")
    details = (exc.details() or "").lower()
    if "errors resolving" in details or "dns resolution failed" in details:
        example = {"scorer": "127.0.0.1:50052", "embedder": "127.0.0.1:50051"}.get(service, "127.0.0.1:PORT")
        unavailable = (f"{address} does not resolve: check the host name, or give the {service}'s HOST:PORT, "
                       f"e.g. {example}")
    elif not any(marker in details for marker in _NOT_REACHED):
        # the server answered UNAVAILABLE itself (no model yet, its embedder down): its reason says why
        unavailable = (f"the {service} at {address} is up but cannot serve this yet (the reason above); retry, "
                       "or see `logmesh health`")
    hint = {
        grpc.StatusCode.UNAVAILABLE: unavailable,
        grpc.StatusCode.UNAUTHENTICATED: "give a token the server accepts: --token or LOGMESH_TOKEN",
    }.get(exc.code(), "")
    print(f"error: {exc.code().name}: {exc.details()}" + (f"\n  {hint}" if hint else ""), file=sys.stderr)
    return 1

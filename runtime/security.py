"""Server transport security and token authentication (the client half is logmesh.security).

Servers: TLS with `--tls-cert/--tls-key`, mutual TLS with `--tls-client-ca` (a client certificate signed by
that CA is then required), and bearer tokens with `--token-file` or LOGMESH_TOKENS. Plaintext is only
allowed on a loopback address unless `--allow-plaintext` says otherwise. Health checking stays open
without a token, so probes (Kubernetes, Envoy, `logmesh health`) need no secret.

Clients read LOGMESH_TLS_CA, LOGMESH_TLS_CERT, LOGMESH_TLS_KEY, LOGMESH_TLS_SERVER_NAME and LOGMESH_TOKEN
from the environment (CLI flags override them), so the Spark job and the scorer's own calls to the
embedder are secured by the same settings as the CLI.
"""
from __future__ import annotations

import collections
import dataclasses
import hmac
import ipaddress
import logging
import os
import socket
from typing import Any, Callable

import grpc

from logmesh.security import read_secret as _read

HEALTH_PREFIX = "/grpc.health.v1.Health/"  # open: probes carry no token



def is_loopback(host: str) -> bool:
    """True for 127.0.0.0/8, ::1 and names that resolve only to loopback (e.g. localhost)."""
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        pass
    try:
        addresses = {info[4][0] for info in socket.getaddrinfo(host, None)}
    except OSError:
        return False
    return bool(addresses) and all(ipaddress.ip_address(a.split("%")[0]).is_loopback for a in addresses)


def warn_if_shared(path: str, what: str) -> bool:
    """Logs a warning when a secret file is readable or writable by its group or by everyone (its tokens
    then let any local user call the server). True if it is."""
    mode = os.stat(path).st_mode & 0o777
    if not mode & 0o066:
        return False
    logging.getLogger("logmesh.security").warning(
        f"{what} can be read or changed by other users", extra={"path": str(path), "mode": oct(mode),
                                                    "fix": f"chmod 600 {path} (create it under umask 077)"})
    return True


def load_tokens(token_file: str | None, env: str | None = None) -> frozenset[str]:
    """Accepted tokens: one per line of `token_file` (blank lines and # comments skipped), plus the
    comma-separated LOGMESH_TOKENS. Empty means no token is required."""
    tokens = set()
    data = _read(token_file, "token file")
    if data is not None:
        warn_if_shared(token_file, "token file")
        tokens.update(t.strip() for t in data.decode().splitlines() if t.strip() and not t.lstrip().startswith("#"))
        if not tokens:
            raise ValueError(f"token file {token_file} holds no token; put one token per line")
    env = os.environ.get("LOGMESH_TOKENS", "") if env is None else env
    tokens.update(t.strip() for t in env.split(",") if t.strip())
    return frozenset(tokens)


@dataclasses.dataclass(frozen=True)
class ServerSecurity:
    """What a server requires of its callers. The default (nothing) is plaintext on loopback only."""

    tls_cert: str | None = None
    tls_key: str | None = None
    tls_client_ca: str | None = None  # set: mutual TLS, a client certificate signed by this CA is required
    tokens: frozenset[str] = frozenset()
    allow_plaintext: bool = False  # plaintext on a non-loopback address (e.g. behind a TLS-terminating mesh)

    def __post_init__(self) -> None:
        if bool(self.tls_cert) != bool(self.tls_key):
            raise ValueError("give both --tls-cert and --tls-key (a certificate and its private key)")
        if self.tls_client_ca and not self.tls_cert:
            raise ValueError("--tls-client-ca needs --tls-cert/--tls-key: mutual TLS is TLS with client certificates")

    @property
    def tls(self) -> bool:
        return bool(self.tls_cert)

    def credentials(self) -> grpc.ServerCredentials:
        cert, key = _read(self.tls_cert, "TLS certificate"), _read(self.tls_key, "TLS key")
        ca = _read(self.tls_client_ca, "client CA")
        return grpc.ssl_server_credentials([(key, cert)], root_certificates=ca, require_client_auth=ca is not None)

    def check_bind(self, host: str) -> None:
        if not self.tls and not self.allow_plaintext and not is_loopback(host):
            raise ValueError(f"refusing to serve plaintext on {host}, which is not a loopback address: give "
                             "--tls-cert and --tls-key (deploy/tls/make-certs.sh makes a local CA), or "
                             "--allow-plaintext if a proxy or mesh in front already encrypts")

    def interceptors(self) -> list[grpc.ServerInterceptor]:
        return [TokenAuth(self.tokens)] if self.tokens else []

    def describe(self) -> dict[str, Any]:
        return {"tls": self.tls, "mutual_tls": bool(self.tls_client_ca), "tokens": len(self.tokens)}


class TokenAuth(grpc.ServerInterceptor):
    """Refuses calls without an accepted `authorization: Bearer <token>` with UNAUTHENTICATED; health is open."""

    def __init__(self, tokens: frozenset[str]) -> None:
        self._tokens = [t.encode() for t in tokens]

    def _accepted(self, metadata: tuple) -> str | None:
        """None when accepted, else why not."""
        values = [v for k, v in (metadata or ()) if k == "authorization"]
        if not values:
            return ("missing bearer token: send metadata 'authorization: Bearer <token>' "
                    "(logmesh clients: LOGMESH_TOKEN or --token; grpcurl: -H 'authorization: Bearer <token>')")
        scheme, _, token = (values[0] if isinstance(values[0], str) else values[0].decode()).partition(" ")
        if scheme.lower() != "bearer" or not token:
            return "authorization metadata must be 'Bearer <token>'"
        given = token.strip().encode()
        # compare against every token in constant time, so timing tells nothing about which one nearly matched
        if not any([hmac.compare_digest(given, t) for t in self._tokens]):
            return "token not accepted by this server"
        return None

    def intercept_service(self, continuation: Callable, details: grpc.HandlerCallDetails):  # type: ignore[no-untyped-def]
        if details.method.startswith(HEALTH_PREFIX):
            return continuation(details)
        problem = self._accepted(details.invocation_metadata)
        handler = continuation(details)
        if problem is None or handler is None:
            return handler

        def deny(_request: Any, context: grpc.ServicerContext) -> Any:
            context.abort(grpc.StatusCode.UNAUTHENTICATED, problem)

        kind = {(False, False): grpc.unary_unary_rpc_method_handler,
                (False, True): grpc.unary_stream_rpc_method_handler,
                (True, False): grpc.stream_unary_rpc_method_handler,
                (True, True): grpc.stream_stream_rpc_method_handler}[(handler.request_streaming,
                                                                      handler.response_streaming)]
        return kind(deny, request_deserializer=handler.request_deserializer,
                    response_serializer=handler.response_serializer)

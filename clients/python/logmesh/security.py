"""Client transport security: TLS roots, an optional client certificate and a bearer token per channel.

Clients read LOGMESH_TLS_CA, LOGMESH_TLS_CERT, LOGMESH_TLS_KEY, LOGMESH_TLS_SERVER_NAME and LOGMESH_TOKEN
from the environment (CLI flags override them), so the Spark job and the scorer's own calls to the
embedder are secured by the same settings as the CLI. The servers' half is logmesh.runtime.security.
"""
from __future__ import annotations

import collections
import dataclasses
import os
from pathlib import Path
from typing import Any

import grpc


def read_secret(path: str | None, what: str) -> bytes | None:
    """The bytes of a PEM or token file, or None for no path; a ValueError that names the file otherwise."""
    if not path:
        return None
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise ValueError(f"cannot read {what} {path}: {exc.strerror}") from exc

@dataclasses.dataclass(frozen=True)
class ChannelSecurity:
    """How a client reaches a server: TLS roots, an optional client certificate, an optional token."""

    tls: bool = False
    ca: str | None = None  # PEM roots; None with tls=True: the system's roots
    cert: str | None = None  # client certificate (mutual TLS)
    key: str | None = None
    server_name: str | None = None  # expected name in the server's certificate, if not the address's host
    token: str | None = None

    @classmethod
    def from_env(cls, **overrides: Any) -> "ChannelSecurity":
        """LOGMESH_TLS_CA / _CERT / _KEY / _SERVER_NAME, LOGMESH_TLS=1 (system roots), LOGMESH_TOKEN; a
        non-None override wins."""
        env = os.environ
        values = {"ca": env.get("LOGMESH_TLS_CA") or None, "cert": env.get("LOGMESH_TLS_CERT") or None,
                  "key": env.get("LOGMESH_TLS_KEY") or None, "server_name": env.get("LOGMESH_TLS_SERVER_NAME") or None,
                  "token": env.get("LOGMESH_TOKEN") or None}
        values.update({k: v for k, v in overrides.items() if v is not None and k != "tls"})
        tls = bool(overrides.get("tls")) or env.get("LOGMESH_TLS", "") in ("1", "true") or bool(
            values["ca"] or values["cert"])
        return cls(tls=tls, **values)

    def channel(self, address: str, options: list[tuple[str, Any]]) -> grpc.Channel:
        if self.tls:
            creds = grpc.ssl_channel_credentials(root_certificates=read_secret(self.ca, "TLS CA"),
                                                 private_key=read_secret(self.key, "TLS client key"),
                                                 certificate_chain=read_secret(self.cert, "TLS client certificate"))
            if self.server_name:
                options = [*options, ("grpc.ssl_target_name_override", self.server_name)]
            channel = grpc.secure_channel(address, creds, options=options)
        else:
            channel = grpc.insecure_channel(address, options=options)
        if self.token:
            channel = grpc.intercept_channel(channel, BearerToken(self.token))
        return channel


class _Details(collections.namedtuple("_Details", ("method", "timeout", "metadata", "credentials",
                                                   "wait_for_ready", "compression")),
               grpc.ClientCallDetails):
    pass


class BearerToken(grpc.UnaryUnaryClientInterceptor, grpc.UnaryStreamClientInterceptor,
                  grpc.StreamUnaryClientInterceptor, grpc.StreamStreamClientInterceptor):
    """Adds `authorization: Bearer <token>` to every call (over TLS or, on loopback, plaintext)."""

    def __init__(self, token: str) -> None:
        self._header = ("authorization", f"Bearer {token}")

    def _with_token(self, details: grpc.ClientCallDetails) -> _Details:
        metadata = [*(details.metadata or ()), self._header]
        return _Details(details.method, details.timeout, metadata, details.credentials,
                        getattr(details, "wait_for_ready", None), getattr(details, "compression", None))

    def intercept_unary_unary(self, continuation, details, request):  # type: ignore[no-untyped-def]
        return continuation(self._with_token(details), request)

    def intercept_unary_stream(self, continuation, details, request):  # type: ignore[no-untyped-def]
        return continuation(self._with_token(details), request)

    def intercept_stream_unary(self, continuation, details, requests):  # type: ignore[no-untyped-def]
        return continuation(self._with_token(details), requests)

    def intercept_stream_stream(self, continuation, details, requests):  # type: ignore[no-untyped-def]
        return continuation(self._with_token(details), requests)

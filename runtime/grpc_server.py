"""What both gRPC servers share: tolerant request decoding, health, reflection, limits, admission
(admission.py: who is served when), graceful stop.

Requests are decoded by our own deserializer so that undecodable bytes (e.g. invalid UTF-8 in a
string field) reach the handler as `Undecodable` and get INVALID_ARGUMENT with a reason, instead
of grpcio's generic INTERNAL "Exception deserializing request".
"""
from __future__ import annotations

import dataclasses
import logging
import signal
import threading
from typing import Any, Callable

import grpc
from google.protobuf import message_factory
from google.protobuf.descriptor import ServiceDescriptor
from google.protobuf.message import DecodeError
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from logmesh.runtime import reflection, tracing
from logmesh.runtime.admission import Admission, abort_noted, note
from logmesh.runtime.call_events import CallEvents
from logmesh.runtime.metrics import MetricsInterceptor
from logmesh.runtime.security import ServerSecurity
from logmesh.v1 import common_pb2

__all__ = ["Limits", "Server", "ServerSecurity", "Undecodable"]

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class Limits:
    """Server-wide limits; each is also a CLI flag of `logmesh serve`."""

    max_message_bytes: int = 32 * 1024 * 1024  # one request message (a whole batch)
    max_line_bytes: int = 64 * 1024  # one log line's text
    max_batch_items: int = 1024  # items in one stream message
    max_stream_items: int = 5_000_000  # items over a whole stream; a client then opens a new one
    # Unary calls in the server at once (working or waiting their turn), server-wide; beyond, RESOURCE_EXHAUSTED
    # at once. Each holds a thread, so this bounds threads, far above what clients use.
    max_concurrent_rpcs: int = 512
    max_open_streams: int = 256  # streaming calls open at once, server-wide; beyond, RESOURCE_EXHAUSTED at once
    # HTTP/2 SETTINGS_MAX_CONCURRENT_STREAMS per connection: above the two limits, so the transport never
    # refuses (REFUSED_STREAM) a call the server would queue.
    max_streams_per_connection: int = 1024
    workers: int = 16  # unary calls working at once, and stream messages being worked on; others wait, fairly
    stream_idle_timeout: float = 60.0  # a client stream that sends nothing this long ends (DEADLINE_EXCEEDED)


@dataclasses.dataclass(frozen=True)
class Undecodable:
    """A request message whose bytes did not parse; handlers answer it with INVALID_ARGUMENT."""

    reason: str
    size: int


def _tolerant(message_cls: type) -> Callable[[bytes], Any]:
    def deserialize(data: bytes) -> Any:
        try:
            return message_cls.FromString(data)
        except DecodeError as exc:
            return Undecodable(f"request is not a valid {message_cls.DESCRIPTOR.full_name}: {exc}", len(data))
    return deserialize


def _items(message: Any) -> int:
    """Items a request message carries: the length of its repeated message fields (items, blocks)."""
    if isinstance(message, Undecodable):
        return 0
    return sum(len(value) for field, value in message.ListFields()
               if field.is_repeated and field.message_type is not None)


def _capped(behaviour: Callable, limit: int) -> Callable:
    """Wraps a client-streaming handler so a stream carrying more than `limit` items in total ends with
    RESOURCE_EXHAUSTED, answered after the items before it (one client cannot hold a stream forever)."""
    def handle(requests: Any, context: grpc.ServicerContext) -> Any:
        def counted() -> Any:
            total = 0
            for request in requests:
                total += _items(request)
                if total > limit:
                    problem = f"stream carried more than {limit} items (--max-stream-items); open a new stream"
                    note("oversized", problem)
                    abort_noted(context, grpc.StatusCode.RESOURCE_EXHAUSTED, problem)
                yield request
        return behaviour(counted(), context)
    return handle


def generic_handler(service: ServiceDescriptor, servicer: object,
                    limits: "Limits | None" = None) -> grpc.GenericRpcHandler:
    """Builds the service's method handlers from its descriptor, with tolerant request decoding and the
    per-stream item cap."""
    handlers = {}
    for method in service.methods:
        request_cls = message_factory.GetMessageClass(method.input_type)
        response_cls = message_factory.GetMessageClass(method.output_type)
        kind = {
            (False, False): grpc.unary_unary_rpc_method_handler,
            (False, True): grpc.unary_stream_rpc_method_handler,
            (True, False): grpc.stream_unary_rpc_method_handler,
            (True, True): grpc.stream_stream_rpc_method_handler,
        }[(method.client_streaming, method.server_streaming)]
        behaviour = getattr(servicer, method.name)
        if method.client_streaming and limits is not None:
            behaviour = _capped(behaviour, limits.max_stream_items)
        handlers[method.name] = kind(
            behaviour,
            request_deserializer=_tolerant(request_cls),
            response_serializer=response_cls.SerializeToString,
        )
    return grpc.method_handlers_generic_handler(service.full_name, handlers)


def item_error(code: grpc.StatusCode, message: str) -> common_pb2.ItemError:
    """A per-item (or per-batch) error inside a stream reply."""
    return common_pb2.ItemError(code=code.value[0], message=message)


def status_code(number: int) -> grpc.StatusCode:
    """The StatusCode for an ItemError's code number."""
    return next(c for c in grpc.StatusCode if c.value[0] == number)


def batch_problem(items: int, limits: Limits, noun: str = "items") -> str | None:
    """Why a stream message with `items` entries is refused as a whole, or None (and counts it)."""
    if items > limits.max_batch_items:
        problem = f"batch has {items} {noun}; the limit is {limits.max_batch_items} (--max-batch); split it"
        note("oversized", problem)
        return problem
    return None


def time_left(context: grpc.ServicerContext) -> float | None:
    """Seconds until the call's deadline, or None when the caller set none (grpcio then reports a
    far-future deadline, which must not be passed on as a timeout)."""
    remaining = context.time_remaining()
    return None if remaining is None or remaining > 10 * 365 * 86400 else remaining


def reject_undecodable(request: Any, context: grpc.ServicerContext) -> None:
    """Aborts a unary call whose request did not decode."""
    if isinstance(request, Undecodable):
        context.abort(grpc.StatusCode.INVALID_ARGUMENT, request.reason)


class Server:
    """A gRPC server with health checking, reflection (v1 and v1alpha), admission (admission.py), optional
    TLS / mutual TLS / bearer tokens (security.py) and a graceful SIGTERM stop.

    Health starts NOT_SERVING; the owner calls `set_serving(True)` once it can do its job.
    """

    def __init__(self, services: list[tuple[ServiceDescriptor, object]], port: int, host: str = "127.0.0.1",
                 limits: Limits = Limits(), security: ServerSecurity | None = None,
                 events: CallEvents | None = None) -> None:
        self.limits = limits
        self.security = security = security or ServerSecurity()
        security.check_bind(host)
        self.events = events or CallEvents(", ".join(s.name for s, _ in services))
        options = [
            ("grpc.max_receive_message_length", limits.max_message_bytes),
            ("grpc.max_send_message_length", limits.max_message_bytes),
            ("grpc.so_reuseport", 0),
            ("grpc.max_concurrent_streams", limits.max_streams_per_connection),
        ]
        self.admission = Admission(limits.workers, limits.max_concurrent_rpcs, limits.max_open_streams,
                                   limits.stream_idle_timeout, self.events)
        # No maximum_concurrent_rpcs: grpcio would refuse health checks too; admission bounds calls instead.
        # metrics outermost: every call is counted with its code, refusals by admission and auth included;
        # admission sees auth refusals
        # tracing (off by default: runtime/tracing.py) outside metrics, so a call's span covers all the rest
        traced = [tracing.ServerTracing()] if tracing.ON else []
        self._server = grpc.server(self.admission.call_pool, options=options,
                                   interceptors=[*traced, MetricsInterceptor(), self.admission, *security.interceptors()])
        self._names = [s.full_name for s, _ in services]
        self.servicers = {s.name: servicer for s, servicer in services}  # for in-process callers and tests
        for descriptor, servicer in services:
            self._server.add_generic_rpc_handlers((generic_handler(descriptor, servicer, limits),))
        self.health = health.HealthServicer(experimental_non_blocking=True)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self._server)
        reflection.enable(self._server, self._names + [health_pb2.DESCRIPTOR.services_by_name["Health"].full_name])
        bind = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        self.port = (self._server.add_secure_port(bind, security.credentials()) if security.tls
                     else self._server.add_insecure_port(bind))
        if self.port == 0:
            raise OSError(f"cannot listen on {host}:{port}: the port is taken or not allowed; pick another with --port")
        self.address = f"{host}:{self.port}"
        self._stopped = threading.Event()
        self._on_stop: list[Callable[[], None]] = []
        self.set_serving(False)

    def on_stop(self, callback: Callable[[], None]) -> None:
        """Calls `callback` once the server has stopped (e.g. to end the owner's background checks)."""
        self._on_stop.append(callback)

    def set_serving(self, serving: bool, live: bool | None = None) -> None:
        """Health of the named services (readiness probes ask for one); `live` (default: `serving`) is the
        server-wide status "" that liveness probes ask for, which a dependency's outage must not fail (a
        restart would not bring the dependency back)."""
        def status(up: bool) -> int:
            return health_pb2.HealthCheckResponse.SERVING if up else health_pb2.HealthCheckResponse.NOT_SERVING
        self.health.set("", status(serving if live is None else live))
        for name in self._names:
            self.health.set(name, status(serving))

    def start(self) -> "Server":
        self._server.start()
        return self

    def stop(self, grace: float = 10.0) -> None:
        """Stops taking new RPCs, lets in-flight ones finish for up to `grace` seconds."""
        self.health.enter_graceful_shutdown()
        self._server.stop(grace).wait()
        self.admission.shutdown()
        for callback in self._on_stop:
            callback()
        self._stopped.set()

    def serve_until_signal(self, grace: float = 10.0) -> None:
        """Blocks until SIGTERM or SIGINT, then stops gracefully."""
        def on_signal(signum: int, _frame: object) -> None:
            log.info("stopping", extra={"signal": signal.Signals(signum).name, "grace_s": grace})
            threading.Thread(target=self.stop, args=(grace,), daemon=True).start()
        signal.signal(signal.SIGTERM, on_signal)
        signal.signal(signal.SIGINT, on_signal)
        self._stopped.wait()
        log.info("stopped")

"""Prometheus metrics every logmesh process shares: one registry per process, served on `--metrics-port`.

RPC metrics follow the conventions of the gRPC Prometheus interceptors (go-grpc-prometheus, the Java and
Python ports): `grpc_server_started_total`, `grpc_server_handled_total` (by status code),
`grpc_server_msg_received_total`, `grpc_server_msg_sent_total` and the `grpc_server_handling_seconds`
histogram, labelled by `grpc_type`, `grpc_service`, `grpc_method` (and `grpc_code`): label sets bounded by
the services' methods and the 17 status codes. Health and reflection calls are counted like any other.

The interceptor sits outermost, so a call refused by admission (RESOURCE_EXHAUSTED) or by authentication
(UNAUTHENTICATED) is counted with its code. Metrics of one component (the embedder's cache, the scorer's
verdicts, the job's batches) are declared in that component, on the same registry (`REGISTRY`).
"""
from __future__ import annotations

import functools
import logging
import threading
import time
from typing import Any, Callable, Iterator

import grpc
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

log = logging.getLogger(__name__)

# One registry for the process: two servers in one process (the tests, an all-in-one deployment) share it,
# their methods apart by grpc_service. Not prometheus_client's global REGISTRY, so importing a library that
# registers there adds nothing to what logmesh serves.
REGISTRY = CollectorRegistry(auto_describe=True)

# Latency buckets from 0.5 ms to 60 s: a cached embed answers in under a millisecond, a scoring stream
# message of 1,024 lines in tens of milliseconds, a reflection or watch stream lasts minutes (+Inf).
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)

_LABELS = ("grpc_type", "grpc_service", "grpc_method")
STARTED = Counter("grpc_server_started_total", "RPCs started on the server.", _LABELS, registry=REGISTRY)
HANDLED = Counter("grpc_server_handled_total", "RPCs completed on the server, by status code.",
                  (*_LABELS, "grpc_code"), registry=REGISTRY)
RECEIVED = Counter("grpc_server_msg_received_total", "Request messages received by the server.", _LABELS,
                   registry=REGISTRY)
SENT = Counter("grpc_server_msg_sent_total", "Response messages sent by the server.", _LABELS, registry=REGISTRY)
HANDLING = Histogram("grpc_server_handling_seconds", "Time from the start of an RPC to its status.", _LABELS,
                     buckets=LATENCY_BUCKETS, registry=REGISTRY)
BUILD = Gauge("logmesh_build_info", "Always 1; the labels say which logmesh component runs.", ("component",),
              registry=REGISTRY)

_TYPES = {(False, False): "unary", (True, False): "client_stream", (False, True): "server_stream",
          (True, True): "bidi_stream"}


def _split(method: str) -> tuple[str, str]:
    """'/logmesh.v1.ScorerService/Score' -> ('logmesh.v1.ScorerService', 'Score')."""
    service, _, name = method.lstrip("/").rpartition("/")
    return service or "unknown", name or method


class _Counted:
    """A request iterator that counts the messages the handler takes from it."""

    def __init__(self, requests: Iterator[Any], received: Any) -> None:
        self._requests, self._received = requests, received

    def __iter__(self) -> "_Counted":
        return self

    def __next__(self) -> Any:
        message = next(self._requests)
        self._received.inc()
        return message


class MetricsInterceptor(grpc.ServerInterceptor):
    """Counts and times every RPC (see the module docstring). Keeps the handler's attributes (admission
    reads `experimental_thread_pool` off it), so it may sit anywhere in the interceptor chain."""

    def intercept_service(self, continuation: Callable, details: grpc.HandlerCallDetails):  # type: ignore[no-untyped-def]
        handler = continuation(details)
        if handler is None:
            return None
        kind = _TYPES[(handler.request_streaming, handler.response_streaming)]
        labels = (kind, *_split(details.method))
        attribute = {"unary": "unary_unary", "client_stream": "stream_unary", "server_stream": "unary_stream",
                     "bidi_stream": "stream_stream"}[kind]
        behaviour = getattr(handler, attribute)
        make = getattr(grpc, f"{attribute}_rpc_method_handler")
        return make(self._wrap(behaviour, labels, handler.request_streaming, handler.response_streaming),
                    request_deserializer=handler.request_deserializer,
                    response_serializer=handler.response_serializer)

    @staticmethod
    def _wrap(behaviour: Callable, labels: tuple[str, str, str], streaming_in: bool,
              streaming_out: bool) -> Callable:
        started, received, sent = STARTED.labels(*labels), RECEIVED.labels(*labels), SENT.labels(*labels)
        handling = HANDLING.labels(*labels)

        def finish(context: grpc.ServicerContext, begun: float, outcome: str) -> None:
            """`outcome` is the code when the handler set none: OK, UNKNOWN (it raised), CANCELLED (client left)."""
            handling.observe(time.perf_counter() - begun)
            code = context.code()  # set by abort() / set_code()
            HANDLED.labels(*labels, code.name if isinstance(code, grpc.StatusCode) else outcome).inc()

        def replies(request: Any, context: grpc.ServicerContext, begun: float) -> Iterator[Any]:
            outcome = "UNKNOWN"
            try:
                for reply in behaviour(request, context):
                    sent.inc()
                    yield reply
                outcome = "OK"
            except GeneratorExit:  # grpcio closes the generator when the client cancels or the call ends early
                outcome = "CANCELLED"
                raise
            finally:
                finish(context, begun, outcome)

        @functools.wraps(behaviour)
        def run(request: Any, context: grpc.ServicerContext) -> Any:
            begun = time.perf_counter()
            started.inc()
            if streaming_in:
                request = _Counted(request, received)
            else:
                received.inc()
            if streaming_out:
                return replies(request, context, begun)
            outcome = "UNKNOWN"
            try:
                reply = behaviour(request, context)
                outcome = "OK"
                sent.inc()
                return reply
            finally:
                finish(context, begun, outcome)

        return run


def serve_metrics(port: int, host: str = "127.0.0.1", component: str = "") -> int:
    """Serves REGISTRY at http://host:port/metrics (a daemon thread); returns the port bound (port 0 picks
    one). Raises OSError naming the port when it is taken."""
    if component:
        BUILD.labels(component).set(1)
    try:
        server, thread = start_http_server(port, addr=host, registry=REGISTRY)
    except OSError as exc:
        raise OSError(f"cannot serve metrics on {host}:{port}: {exc.strerror or exc}; "
                      "pick another port with --metrics-port (0: any free port)") from exc
    bound = server.server_address[1]
    log.info("metrics serving", extra={"url": f"http://{host}:{bound}/metrics", "component": component})
    _SERVERS.append(server)
    return bound


_SERVERS: list[Any] = []
_LOCK = threading.Lock()


def stop_metrics() -> None:
    """Stops every metrics HTTP server this process started (tests, a graceful stop)."""
    with _LOCK:
        while _SERVERS:
            server = _SERVERS.pop()
            server.shutdown()
            server.server_close()

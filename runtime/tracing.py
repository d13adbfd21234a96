"""Optional OpenTelemetry traces across the hops: ingest's Kafka records -> the stream job's task -> the
embedder -> the scorer. Off by default.

On for a process when it is started with `--trace` (`logmesh serve embedder|scorer`, `logmesh stream`,
`logmesh ingest`) or when the standard OTEL_TRACES_EXPORTER names an exporter (otlp or console); off whatever
else is set when OTEL_SDK_DISABLED=true. Where spans go: --trace-endpoint, else the standard
OTEL_EXPORTER_OTLP_TRACES_ENDPOINT / OTEL_EXPORTER_OTLP_ENDPOINT (OTLP over gRPC, default localhost:4317);
the service name is OTEL_SERVICE_NAME, else logmesh-<component>. Sampling follows OTEL_TRACES_SAMPLER (the
SDK's default: every root, and whatever the parent decided).

Off, nothing here imports OpenTelemetry (`ON` is False and every caller checks it first), so the servers, the
job and the CLI start as before and their hot paths run no tracing code.

How the context crosses, the W3C way (`traceparent`):
- ingest opens one PRODUCER span per RECORDS_PER_SPAN records and puts its traceparent in each record's
  Kafka headers (`ProducerSpans`): a trace per chunk of records, not per record, so a replay of millions of
  lines makes thousands of traces, and the per-line cost is one header.
- the stream job's task reads the headers (Spark's includeHeaders, only when tracing is on) and runs its
  work in one CONSUMER span per task call (`task_span`), the child of the first record's producer span,
  linked to the other chunks' spans the task holds (the SDK keeps at most 128 links).
- the job's gRPC calls carry the context in their metadata (`ClientTracing`, a client interceptor on the
  executors' channels); the servers continue it in a SERVER span per call (`ServerTracing`, beside the
  metrics interceptor). Health checks are not traced (probes call them every few seconds).
"""
from __future__ import annotations

import collections
import os
import threading
import time
from typing import Any, Callable, Iterator

import grpc

ON = False  # set by setup(); read before touching anything below
RECORDS_PER_SPAN = 1000  # ingest: records that share one producer span (and so one trace)
TRACEPARENT = "traceparent"
UNTRACED_PREFIXES = ("/grpc.health.v1.Health/", "/grpc.reflection.")
_EXPORTERS = ("otlp", "console")
_lock = threading.Lock()
_provider: Any = None
_flush_failed_at = 0.0


class TracingError(ValueError):
    """A tracing setting that cannot work (the message says which and why)."""


def wanted(flag: bool = False) -> bool:
    """Whether tracing is asked for: the flag, or OTEL_TRACES_EXPORTER naming an exporter (and the SDK not
    disabled by OTEL_SDK_DISABLED)."""
    if os.environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    exporter = os.environ.get("OTEL_TRACES_EXPORTER", "").strip().lower()
    return flag or exporter not in ("", "none")


def check() -> str:
    """The exporter tracing would use ("otlp" or "console"), or TracingError for an exporter or protocol logmesh
    does not ship, or a missing SDK: what a process asked to trace checks before it starts its work."""
    exporter = os.environ.get("OTEL_TRACES_EXPORTER", "").strip().lower()
    exporter = "otlp" if exporter in ("", "none") else exporter  # --trace wins over the environment's "none"
    if exporter not in _EXPORTERS:
        raise TracingError(f"OTEL_TRACES_EXPORTER={exporter!r}: logmesh ships the {' and '.join(_EXPORTERS)} "
                           "trace exporters")
    protocol = (os.environ.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
                or os.environ.get("OTEL_EXPORTER_OTLP_PROTOCOL") or "grpc").strip().lower()
    if exporter == "otlp" and protocol != "grpc":
        raise TracingError(f"OTLP protocol {protocol!r}: logmesh exports traces over OTLP/gRPC only; "
                           "set OTEL_EXPORTER_OTLP_PROTOCOL=grpc (a collector's port 4317)")
    try:
        import opentelemetry.sdk.trace  # noqa: F401
        if exporter == "otlp":
            import opentelemetry.exporter.otlp.proto.grpc.trace_exporter  # noqa: F401
    except ImportError:
        raise TracingError("tracing needs the OpenTelemetry SDK and its OTLP exporter: "
                           "pip install 'logmesh[tracing]'") from None
    return exporter


def setup(component: str, flag: bool = False, endpoint: str | None = None) -> bool:
    """Turns tracing on for this process when asked (see `wanted`): a TracerProvider named after `component`
    (unless OTEL_SERVICE_NAME), exporting in batches to `endpoint` or the standard one. Idempotent; returns
    whether tracing is on. Raises TracingError as `check` does."""
    global ON, _provider
    if not wanted(flag):
        return ON
    with _lock:
        if ON:
            return True
        exporter_name = check()
        from opentelemetry import trace
        from opentelemetry.sdk.resources import SERVICE_NAME, Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter
        if exporter_name == "otlp":
            from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
            exporter = OTLPSpanExporter(endpoint=endpoint or None)
        else:
            exporter = ConsoleSpanExporter()
        name = os.environ.get("OTEL_SERVICE_NAME") or f"logmesh-{component}"
        _provider = TracerProvider(resource=Resource.create({SERVICE_NAME: name}))
        _provider.add_span_processor(BatchSpanProcessor(exporter))
        trace.set_tracer_provider(_provider)
        ON = True
        return True


def tracer():  # type: ignore[no-untyped-def]
    from opentelemetry import trace
    return trace.get_tracer("logmesh")


def flush(timeout_s: float = 1.0) -> None:
    """Exports what this process has ended so far (a Spark Python worker may be killed without its exit
    handlers). After a flush that failed (the collector is away), the next ones are skipped for a minute,
    so a task does not wait `timeout_s` each time."""
    global _flush_failed_at
    if not ON or time.monotonic() - _flush_failed_at < 60.0:
        return
    if not _provider.force_flush(int(timeout_s * 1000)):
        _flush_failed_at = time.monotonic()


def shutdown() -> None:
    """Ends tracing for this process, exporting what is left (the SDK also does so at exit)."""
    global ON
    if ON:
        _provider.shutdown()
        ON = False


# --- Kafka: the producer's side -------------------------------------------------------------------------

class ProducerSpans:
    """One PRODUCER span per RECORDS_PER_SPAN records; `headers()` is the current span's traceparent as a
    Kafka header list, for the next record."""

    def __init__(self, topic: str, per_span: int = RECORDS_PER_SPAN) -> None:
        self.topic, self.per_span = topic, per_span
        self._span: Any = None
        self._headers: list[tuple[str, bytes]] = []
        self._left = 0

    def headers(self) -> list[tuple[str, bytes]]:
        if self._left == 0:
            self.close()
            from opentelemetry import propagate, trace
            from opentelemetry.trace import SpanKind
            self._span = tracer().start_span(f"{self.topic} publish", kind=SpanKind.PRODUCER, attributes={
                "messaging.system": "kafka", "messaging.destination.name": self.topic,
                "messaging.operation.type": "publish"})
            carrier: dict[str, str] = {}
            propagate.inject(carrier, context=trace.set_span_in_context(self._span))
            self._headers = [(k, v.encode()) for k, v in carrier.items()]
            self._left = self.per_span
            self._count = 0
        self._left -= 1
        self._count += 1
        return self._headers

    def close(self) -> None:
        if self._span is not None:
            self._span.set_attribute("messaging.batch.message_count", self._count)
            self._span.end()
            self._span = None
        self._left = 0


# --- the stream job's task ------------------------------------------------------------------------------

def header_column(source):  # type: ignore[no-untyped-def]
    """Spark: the Kafka source's rows (read with includeHeaders) with the record's traceparent as a string
    column (null when it has none) in place of the headers array."""
    from pyspark.sql import functions as F
    value = F.expr(f"element_at(filter(headers, h -> h.key = '{TRACEPARENT}'), 1).value").cast("string")
    return source.withColumn(TRACEPARENT, value).drop("headers")


def _context(traceparent: str):  # type: ignore[no-untyped-def]
    from opentelemetry import propagate
    return propagate.extract({TRACEPARENT: traceparent})


class task_span:
    """A context manager: the task's CONSUMER span over `traceparents` (its records', None where a record has
    none): the child of the first record's context, linked to the other distinct ones. Ends with a flush."""

    def __init__(self, name: str, traceparents: list[str | None], attributes: dict | None = None) -> None:
        self.name, self.attributes = name, attributes or {}
        self.distinct = list(dict.fromkeys(t for t in traceparents if t))
        self._scope: Any = None

    def __enter__(self):  # type: ignore[no-untyped-def]
        from opentelemetry import trace
        from opentelemetry.trace import Link, SpanKind
        parent = _context(self.distinct[0]) if self.distinct else None
        links = [Link(trace.get_current_span(_context(t)).get_span_context()) for t in self.distinct[1:129]]
        self._scope = tracer().start_as_current_span(self.name, context=parent, kind=SpanKind.CONSUMER,
                                                     links=links, attributes=self.attributes)
        return self._scope.__enter__()

    def __exit__(self, *exc: object) -> None:
        self._scope.__exit__(*exc)
        flush()


def traced_security(security):  # type: ignore[no-untyped-def]
    """The client library's ChannelSecurity, whose channels carry ClientTracing: pass it as a client's
    `security` and every channel the client opens (the scorer client opens two) propagates the context."""
    return _TracedSecurity(security)


class _TracedSecurity:
    def __init__(self, inner) -> None:  # type: ignore[no-untyped-def]
        self._inner = inner

    def channel(self, target: str, options: Any) -> grpc.Channel:
        return grpc.intercept_channel(self._inner.channel(target, options), ClientTracing())

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


# --- gRPC ----------------------------------------------------------------------------------------------

class _Details(collections.namedtuple("_Details", ("method", "timeout", "metadata", "credentials",
                                                   "wait_for_ready", "compression")), grpc.ClientCallDetails):
    pass


def _rpc_attributes(method: str) -> dict[str, str]:
    service, _, name = method.lstrip("/").partition("/")
    return {"rpc.system": "grpc", "rpc.service": service, "rpc.method": name}


class ClientTracing(grpc.UnaryUnaryClientInterceptor, grpc.UnaryStreamClientInterceptor,
                    grpc.StreamUnaryClientInterceptor, grpc.StreamStreamClientInterceptor):
    """A CLIENT span per call made under a span (the job's task span), its context in the call's metadata
    (traceparent); the span ends when the call does, with its status code. Calls outside any span (a block
    scoring call after its task's lines, health checks) go as they are."""

    def _call(self, continuation: Callable, details: grpc.ClientCallDetails, request: Any) -> Any:
        from opentelemetry import propagate, trace
        from opentelemetry.trace import SpanKind, Status, StatusCode
        if details.method.startswith(UNTRACED_PREFIXES) or not trace.get_current_span().get_span_context().is_valid:
            return continuation(details, request)  # no root spans here: a trace starts at its records
        span = tracer().start_span(details.method.lstrip("/"), kind=SpanKind.CLIENT,
                                   attributes=_rpc_attributes(details.method))
        carrier: dict[str, str] = {}
        propagate.inject(carrier, context=trace.set_span_in_context(span))
        metadata = [*(details.metadata or ()), *carrier.items()]
        details = _Details(details.method, details.timeout, metadata, details.credentials,
                           getattr(details, "wait_for_ready", None), getattr(details, "compression", None))
        try:
            call = continuation(details, request)
        except BaseException as exc:
            span.record_exception(exc)
            span.set_status(Status(StatusCode.ERROR, str(exc)[:200]))
            span.end()
            raise

        def done(future: Any) -> None:
            code = future.code()
            if code is not None:
                span.set_attribute("rpc.grpc.status_code", code.value[0])
                if code != grpc.StatusCode.OK:
                    span.set_status(Status(StatusCode.ERROR, code.name))
            span.end()
        call.add_done_callback(done)
        return call

    def intercept_unary_unary(self, continuation, client_call_details, request):  # type: ignore[no-untyped-def]
        return self._call(continuation, client_call_details, request)

    def intercept_unary_stream(self, continuation, client_call_details, request):  # type: ignore[no-untyped-def]
        return self._call(continuation, client_call_details, request)

    def intercept_stream_unary(self, continuation, client_call_details, request_iterator):  # type: ignore[no-untyped-def]
        return self._call(continuation, client_call_details, request_iterator)

    def intercept_stream_stream(self, continuation, client_call_details, request_iterator):  # type: ignore[no-untyped-def]
        return self._call(continuation, client_call_details, request_iterator)


_KINDS = {(False, False): "unary_unary", (False, True): "unary_stream", (True, False): "stream_unary",
          (True, True): "stream_stream"}


class ServerTracing(grpc.ServerInterceptor):
    """A SERVER span per call, continuing the caller's context from its metadata (a root where it sent none);
    made current while the handler runs (each step of a reply stream), so the server's own calls continue it."""

    def intercept_service(self, continuation: Callable, details: grpc.HandlerCallDetails):  # type: ignore[no-untyped-def]
        handler = continuation(details)
        if handler is None or details.method.startswith(UNTRACED_PREFIXES):
            return handler
        attribute = _KINDS[(handler.request_streaming, handler.response_streaming)]
        carrier = {k: v for k, v in (details.invocation_metadata or ()) if k in (TRACEPARENT, "tracestate")}
        wrapped = _serve_traced(getattr(handler, attribute), details.method, carrier, handler.response_streaming)
        return getattr(grpc, f"{attribute}_rpc_method_handler")(
            wrapped, request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer)


def _serve_traced(behaviour: Callable, method: str, carrier: dict, streaming_out: bool) -> Callable:
    from opentelemetry import propagate, trace
    from opentelemetry.trace import SpanKind, Status, StatusCode

    def start():  # type: ignore[no-untyped-def]
        return tracer().start_span(method.lstrip("/"), context=propagate.extract(carrier), kind=SpanKind.SERVER,
                                   attributes=_rpc_attributes(method))

    def finish(span: Any, context: grpc.ServicerContext, failure: BaseException | None) -> None:
        code = context.code() if isinstance(context.code(), grpc.StatusCode) else (
            grpc.StatusCode.OK if failure is None else grpc.StatusCode.UNKNOWN)
        span.set_attribute("rpc.grpc.status_code", code.value[0])
        if code != grpc.StatusCode.OK:
            span.set_status(Status(StatusCode.ERROR, code.name))
        span.end()

    def replies(request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
        span, failure = start(), None
        try:
            with trace.use_span(span, end_on_exit=False):
                steps = iter(behaviour(request, context))
            while True:
                with trace.use_span(span, end_on_exit=False):
                    try:
                        reply = next(steps)
                    except StopIteration:
                        return
                yield reply
        except BaseException as exc:  # GeneratorExit: the client left; abort(): the handler's code
            failure = exc
            raise
        finally:
            finish(span, context, failure)

    def unary(request: Any, context: grpc.ServicerContext) -> Any:
        span, failure = start(), None
        try:
            with trace.use_span(span, end_on_exit=False):
                return behaviour(request, context)
        except BaseException as exc:
            failure = exc
            raise
        finally:
            finish(span, context, failure)

    return replies if streaming_out else unary

"""An OTLP trace receiver for the tests: a real gRPC server implementing opentelemetry-proto's
TraceService/Export (what a collector's OTLP/gRPC receiver is), keeping every span it is sent with the
service.name of the process that sent it."""
from __future__ import annotations

import dataclasses
import threading
from concurrent import futures

import grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc


@dataclasses.dataclass(frozen=True)
class ReceivedSpan:
    service: str
    name: str
    kind: int  # opentelemetry.proto.trace.v1.Span.SpanKind
    trace_id: str
    span_id: str
    parent_id: str  # "" for a root
    links: tuple[str, ...]  # the linked spans' ids


class Receiver(trace_service_pb2_grpc.TraceServiceServicer):
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._spans: list[ReceivedSpan] = []
        self.exports = 0
        self._server = grpc.server(futures.ThreadPoolExecutor(4))
        trace_service_pb2_grpc.add_TraceServiceServicer_to_server(self, self._server)
        self.port = self._server.add_insecure_port("127.0.0.1:0")
        self.endpoint = f"http://127.0.0.1:{self.port}"

    def Export(self, request, context):  # type: ignore[no-untyped-def]  # noqa: N802 (the proto's name)
        got = []
        for resource_spans in request.resource_spans:
            service = next((a.value.string_value for a in resource_spans.resource.attributes
                            if a.key == "service.name"), "")
            for scope in resource_spans.scope_spans:
                for s in scope.spans:
                    got.append(ReceivedSpan(service, s.name, s.kind, s.trace_id.hex(), s.span_id.hex(),
                                            s.parent_span_id.hex(), tuple(link.span_id.hex() for link in s.links)))
        with self._lock:
            self._spans += got
            self.exports += 1
        return trace_service_pb2.ExportTraceServiceResponse()

    def spans(self) -> list[ReceivedSpan]:
        with self._lock:
            return list(self._spans)

    def __enter__(self) -> "Receiver":
        self._server.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.stop(0)

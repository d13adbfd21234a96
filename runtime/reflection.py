"""Server reflection over both grpc.reflection.v1 and grpc.reflection.v1alpha, resolving method names too.

grpcio-reflection (1.85) serves only v1alpha (grpc/grpc#38576 asks for v1). v1 is v1alpha promoted
unchanged: the same messages with the same field numbers under another package (grpc-go's reflection
serves both from one implementation), so the v1alpha servicer answers v1 too, registered under the v1
service name with the same (wire-identical) message codecs. The v1 service's own descriptor is derived from
v1alpha's by renaming the package, so `describe grpc.reflection.v1.ServerReflection` works as well.

upb's DescriptorPool.FindFileContainingSymbol does not resolve a method ("pkg.Service.Method"), which
tools use to look a call up (grpcurl `describe logmesh.v1.ScorerService.Score`): `_MethodAwarePool` adds that.
"""
from __future__ import annotations

from typing import Any

import grpc
from google.protobuf import descriptor_pb2, descriptor_pool
from grpc_reflection.v1alpha import reflection, reflection_pb2

V1ALPHA = reflection.SERVICE_NAME  # grpc.reflection.v1alpha.ServerReflection
V1 = "grpc.reflection.v1.ServerReflection"
_V1_FILE = "grpc/reflection/v1/reflection.proto"


class _MethodAwarePool:
    """A DescriptorPool whose FindFileContainingSymbol also finds the file of a service's method."""

    def __init__(self, pool: descriptor_pool.DescriptorPool) -> None:
        self._pool = pool

    def __getattr__(self, name: str) -> Any:
        return getattr(self._pool, name)

    def FindFileContainingSymbol(self, symbol: str) -> Any:  # noqa: N802 (the DescriptorPool method name)
        try:
            return self._pool.FindFileContainingSymbol(symbol)
        except KeyError:
            service, _, method = symbol.rpartition(".")
            try:
                found = self._pool.FindServiceByName(service)
            except KeyError:
                raise KeyError(symbol) from None
            if method not in found.methods_by_name:
                raise KeyError(symbol) from None
            return found.file


def _add_v1_descriptor(pool: descriptor_pool.DescriptorPool) -> None:
    """Adds grpc/reflection/v1/reflection.proto to `pool`: v1alpha's file under the v1 package."""
    try:
        pool.FindFileByName(_V1_FILE)
        return
    except KeyError:
        pass
    proto = descriptor_pb2.FileDescriptorProto()
    reflection_pb2.DESCRIPTOR.CopyToProto(proto)
    old, new = f".{proto.package}.", ".grpc.reflection.v1."
    proto.name, proto.package = _V1_FILE, "grpc.reflection.v1"
    proto.ClearField("options")
    for message in proto.message_type:
        for field in message.field:
            if field.type_name.startswith(old):
                field.type_name = new + field.type_name[len(old):]
    for service in proto.service:
        for method in service.method:
            method.input_type = new + method.input_type[len(old):]
            method.output_type = new + method.output_type[len(old):]
    pool.AddSerializedFile(proto.SerializeToString())


def enable(server: grpc.Server, service_names: list[str]) -> None:
    """Registers reflection v1 and v1alpha on `server`, listing `service_names` and both reflection services."""
    pool = descriptor_pool.Default()
    _add_v1_descriptor(pool)
    servicer = reflection.ReflectionServicer([*service_names, V1, V1ALPHA], pool=_MethodAwarePool(pool))
    for name in (V1, V1ALPHA):
        handler = grpc.stream_stream_rpc_method_handler(
            servicer.ServerReflectionInfo,
            request_deserializer=reflection_pb2.ServerReflectionRequest.FromString,
            response_serializer=reflection_pb2.ServerReflectionResponse.SerializeToString)
        server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(name, {"ServerReflectionInfo": handler}),))

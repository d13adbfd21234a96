"""Server reflection answers over grpc.reflection.v1 and v1alpha, and resolves a method by its name
(`logmesh.v1.ScorerService.Score`), as grpcurl's `describe` and other tools look calls up. Clients: grpc-go's
v1 and v1alpha reflection stubs (clients/go/cmd/logmesh-load), grpcio-reflection's v1alpha stub, grpcurl."""
from __future__ import annotations

import subprocess

import grpc
import pytest
from google.protobuf import descriptor_pb2
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from go_tools import load_client

METHOD = "logmesh.v1.ScorerService.Score"


@pytest.fixture(scope="module")
def scorer_address(tmp_path_factory):
    """A real scorer with no model and no embedder: reflection needs neither."""
    from logmesh.scorer.service import serve
    server = serve(0, tmp_path_factory.mktemp("no-models"), "127.0.0.1:1", reload_interval=60)
    yield server.address
    server.stop(0)


def _files(response: reflection_pb2.ServerReflectionResponse) -> list[descriptor_pb2.FileDescriptorProto]:
    assert response.WhichOneof("message_response") == "file_descriptor_response", response.error_response
    return [descriptor_pb2.FileDescriptorProto.FromString(b)
            for b in response.file_descriptor_response.file_descriptor_proto]


def _ask(address: str, path: str, request: reflection_pb2.ServerReflectionRequest):
    with grpc.insecure_channel(address) as channel:
        call = channel.stream_stream(path, request_serializer=reflection_pb2.ServerReflectionRequest.SerializeToString,
                                     response_deserializer=reflection_pb2.ServerReflectionResponse.FromString)
        return next(call(iter([request]), timeout=10))


@pytest.mark.parametrize("version", ["v1", "v1alpha"])
def test_a_method_name_resolves_to_its_file(scorer_address, version):
    # v1's messages are v1alpha's (same fields, same numbers), so one codec asks both services
    response = _ask(scorer_address, f"/grpc.reflection.{version}.ServerReflection/ServerReflectionInfo",
                    reflection_pb2.ServerReflectionRequest(file_containing_symbol=METHOD))
    files = _files(response)
    assert files[0].name == "logmesh/v1/scorer_service.proto"
    [service] = [s for s in files[0].service if s.name == "ScorerService"]
    assert "Score" in [m.name for m in service.method]
    # what it imports comes along, so a client can build every message type
    assert {"logmesh/v1/score.proto", "logmesh/v1/common.proto", "google/protobuf/timestamp.proto"} <= {
        f.name for f in files}


def test_unknown_symbols_are_still_not_found(scorer_address):
    with grpc.insecure_channel(scorer_address) as channel:
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        for symbol in ("logmesh.v1.ScorerService.NoSuchMethod", "logmesh.v1.NoSuchService.Score", "Score"):
            [reply] = list(stub.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(
                file_containing_symbol=symbol)]), timeout=10))
            assert reply.error_response.error_code == grpc.StatusCode.NOT_FOUND.value[0], symbol


def test_both_reflection_services_are_listed_and_described(scorer_address, grpcurl):
    listed = subprocess.run([grpcurl, "-plaintext", scorer_address, "list"], capture_output=True, text=True, timeout=30)
    assert listed.returncode == 0, listed.stderr
    assert {"grpc.reflection.v1.ServerReflection", "grpc.reflection.v1alpha.ServerReflection",
            "logmesh.v1.ScorerService", "grpc.health.v1.Health"} <= set(listed.stdout.split())
    described = subprocess.run([grpcurl, "-plaintext", scorer_address, "describe", "grpc.reflection.v1.ServerReflection"],
                               capture_output=True, text=True, timeout=30)
    assert described.returncode == 0 and "grpc.reflection.v1.ServerReflectionRequest" in described.stdout, described.stderr


@pytest.mark.parametrize("version", ["v1", "v1alpha"])
def test_grpc_go_reflection_clients_resolve_the_method(scorer_address, version):
    done = subprocess.run([str(load_client()), "-addr", scorer_address, "-rpc", "reflect", "-reflection", version,
                           "-symbol", METHOD], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "logmesh/v1/scorer_service.proto" in done.stdout.split()


def test_grpcurl_describes_the_method(scorer_address, grpcurl):
    done = subprocess.run([grpcurl, "-plaintext", scorer_address, "describe", METHOD],
                          capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    assert "is a method" in done.stdout and "rpc Score ( .logmesh.v1.ScoreRequest )" in done.stdout

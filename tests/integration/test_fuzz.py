"""Fuzzing with hypothesis: the code that meets bytes and text from outside must answer, never raise.

Deterministic (`derandomize=True`: the same cases on every run, so CI is reproducible) and without a
per-case deadline (the box is shared). Each target records a row of docs/reliability.md with its case count.
"""
from __future__ import annotations

import re
import time
from collections import Counter

import grpc
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from logmesh import vectors
from logmesh.runtime.grpc_server import Undecodable, _tolerant
from logmesh.ingest.hdfs import parse_line
from logmesh.ingest.masking import line_shape, mask
from logmesh.streaming.decode import KafkaRow, Rejected, decode
from logmesh.v1 import (embedder_service_pb2 as epb, embedding_pb2, log_record_pb2, scorer_service_pb2 as spb)

NORMAL_LINE = ("081109 204655 556 INFO dfs.DataNode$PacketResponder: Received block "
               "blk_3587508140051953248 of size 67108864 from /10.251.42.84")


def fuzz_settings(n: int) -> settings:
    return settings(max_examples=n, derandomize=True, deadline=None, database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


def _summary(outcomes: Counter, seconds: float) -> str:
    parts = ", ".join(f"{k} {v}" for k, v in outcomes.most_common())
    return f"{sum(outcomes.values())} cases in {seconds:.1f} s: {parts}; no exception"


def _mutated(seed: bytes) -> st.SearchStrategy[bytes]:
    """`seed` with some bytes overwritten, inserted or cut off: near-valid protobuf, where parsers break."""
    @st.composite
    def mutate(draw) -> bytes:  # type: ignore[no-untyped-def]
        data = bytearray(seed)
        for _ in range(draw(st.integers(1, 4))):
            i = draw(st.integers(0, max(0, len(data) - 1)))
            op = draw(st.sampled_from(["set", "insert", "cut"]))
            if op == "set" and data:
                data[i] = draw(st.integers(0, 255))
            elif op == "insert":
                data[i:i] = draw(st.binary(min_size=1, max_size=8))
            else:
                data = data[:i]
        return bytes(data)
    return mutate()


RECORD_BYTES = parse_line(NORMAL_LINE, "HDFS.log", 7).SerializeToString()


# --- streaming/decode.py: Kafka values ---

def test_fuzz_kafka_decode(reliability):
    outcomes: Counter = Counter()

    @fuzz_settings(1500)
    @given(st.one_of(st.binary(max_size=600), _mutated(RECORD_BYTES), st.none()), st.binary(max_size=20) | st.none())
    def run(value: bytes | None, key: bytes | None) -> None:
        out = decode(KafkaRow("logmesh.logs", 3, 42, key, value))
        assert isinstance(out, (log_record_pb2.LogRecord, Rejected))
        if isinstance(out, Rejected):
            assert out.reason and out.row.value == value and out.row.key == key  # kept byte for byte for the DLQ
            outcomes["Rejected"] += 1
        else:
            assert out.id and out.message
            out.SerializeToString()  # what the sink sends on must serialize
            outcomes["LogRecord"] += 1

    started = time.monotonic()
    run()
    reliability("fuzz", "Kafka value decode (streaming/decode.py) on arbitrary and mutated LogRecord bytes",
                _summary(outcomes, time.monotonic() - started))


# --- ingest: parsing and masking arbitrary text ---

_HDFS_LIKE = st.builds(
    lambda d, t, pid, level, comp, msg: f"{d} {t} {pid} {level} {comp}: {msg}",
    st.from_regex(r"\A\d{6}\Z"), st.from_regex(r"\A\d{6}\Z"), st.integers(0, 2**40).map(str),
    st.sampled_from(["INFO", "WARN", "ERROR", "FATAL", "DEBUG", "X"]),
    st.from_regex(r"\A[a-zA-Z.$]{1,30}\Z"), st.text(max_size=200))


def test_fuzz_parse_line_and_masking(reliability):
    outcomes: Counter = Counter()

    @fuzz_settings(1200)
    @given(st.one_of(st.text(max_size=300), _HDFS_LIKE, st.text(alphabet="0123456789 blk_-./:x", max_size=120)))
    def run(line: str) -> None:
        record = parse_line(line, "fuzz.log", 3)
        assert record.id == "fuzz:3" or record.id == "fuzz.log:3"
        assert all(b in line for b in record.block_ids)
        record.SerializeToString()
        outcomes["parsed" if record.component else "kept whole, template unknown"] += 1
        for text in (line, record.message):
            masked = mask(text)
            assert not re.search(r"\d", masked), masked  # no number survives masking
            assert mask(masked) == masked  # a shape is its own shape
        line_shape(record.component, record.message)

    started = time.monotonic()
    run()
    reliability("fuzz", "parse_line and masking (logmesh.ingest) on arbitrary text and HDFS-shaped lines",
                _summary(outcomes, time.monotonic() - started))


# --- grpc_server.py: the tolerant request deserializer ---

REQUESTS = [spb.ScoreRequest, spb.ScoreStreamRequest, spb.ScoreBlockRequest, spb.ScoreBlockStreamRequest,
            spb.ListAnomaliesRequest, spb.GetStatsRequest, epb.EmbedRequest, epb.EmbedStreamRequest]
SEEDS = [spb.ScoreRequest(item=spb.ScoreItem(raw_line=NORMAL_LINE)).SerializeToString(),
         spb.ScoreStreamRequest(batch_id=3, items=[spb.ScoreItem(record=parse_line(NORMAL_LINE, "x", 1))]
                                ).SerializeToString(),
         epb.EmbedStreamRequest(batch_id=1, items=[epb.EmbedItem(record_id="a", text=NORMAL_LINE)]).SerializeToString()]


def test_fuzz_tolerant_request_deserializer(reliability):
    outcomes: Counter = Counter()

    @fuzz_settings(1200)
    @given(st.sampled_from(REQUESTS), st.one_of(st.binary(max_size=400), *(_mutated(s) for s in SEEDS)))
    def run(cls, data: bytes) -> None:
        out = _tolerant(cls)(data)
        if isinstance(out, Undecodable):
            assert out.size == len(data) and cls.DESCRIPTOR.full_name in out.reason
            outcomes["Undecodable (INVALID_ARGUMENT)"] += 1
        else:
            assert isinstance(out, cls)
            out.SerializeToString()
            outcomes["decoded"] += 1

    started = time.monotonic()
    run()
    reliability("fuzz", "tolerant gRPC request deserializer (grpc_server.py) on arbitrary and mutated bytes, "
                        "all 8 request types", _summary(outcomes, time.monotonic() - started))


# --- vectors.py: the embedding checks ---

_FLOATS = st.lists(st.floats(width=32, allow_nan=True, allow_infinity=True), min_size=0, max_size=400)


def test_fuzz_vector_checks(reliability):
    outcomes: Counter = Counter()

    @fuzz_settings(1000)
    @given(st.one_of(
        st.builds(lambda dim, data: embedding_pb2.Embedding(dim=dim, vector=data),
                  st.one_of(st.just(384), st.integers(0, 2**32 - 1)), st.binary(max_size=1600)),
        _FLOATS.map(lambda xs: vectors.to_message("r", "m", np.array(xs, np.float32))),
        st.lists(st.floats(-1e3, 1e3, width=32), min_size=384, max_size=384).map(
            lambda xs: vectors.to_message("r", "m", np.array(xs, np.float32)))))
    def run(embedding: embedding_pb2.Embedding) -> None:
        problem = vectors.check(embedding, 384)
        if problem is None:
            vec = vectors.from_message(embedding)
            assert vec.shape == (384,) and np.isfinite(vec).all()
            outcomes["usable"] += 1
        else:
            assert isinstance(problem, str) and problem
            outcomes["refused with a reason"] += 1

    started = time.monotonic()
    run()
    reliability("fuzz", "embedding checks (vectors.py) on arbitrary dims, bytes and float vectors",
                _summary(outcomes, time.monotonic() - started))


# --- over a real channel: random bytes as requests to the servers ---

@pytest.mark.parametrize("server, method, seed", [
    ("scorer", "/logmesh.v1.ScorerService/Score", SEEDS[0]),
    ("embedder", "/logmesh.v1.EmbedderService/Embed",
     epb.EmbedRequest(record_id="a", text=NORMAL_LINE).SerializeToString()),
])
def test_fuzz_raw_requests_over_a_real_channel(server, method, seed, scorer_server, embedder_server, reliability):
    from logmesh.client import EmbedderClient, ScorerClient
    address = {"scorer": scorer_server, "embedder": embedder_server}[server].address
    channel = grpc.insecure_channel(address)
    call = channel.unary_unary(method)
    outcomes: Counter = Counter()

    @settings(max_examples=250, derandomize=True, deadline=None, database=None,
              suppress_health_check=[HealthCheck.too_slow])
    @given(st.one_of(st.binary(max_size=300), _mutated(seed)))
    def run(data: bytes) -> None:
        try:
            call(data, timeout=60)
            outcomes["OK"] += 1
        except grpc.RpcError as exc:
            assert exc.code() == grpc.StatusCode.INVALID_ARGUMENT, f"{data!r}: {exc.code().name}: {exc.details()}"
            assert exc.details()
            outcomes["INVALID_ARGUMENT"] += 1

    started = time.monotonic()
    try:
        run()
    finally:
        channel.close()
    client = ScorerClient(address) if server == "scorer" else EmbedderClient(address)
    with client:
        assert client.health() == "SERVING"
    reliability("fuzz", f"random and mutated bytes as {method.rsplit('/', 1)[1]} requests to the {server}",
                _summary(outcomes, time.monotonic() - started).replace("; no exception",
                                                                       "; never INTERNAL/UNKNOWN; server stayed SERVING"))

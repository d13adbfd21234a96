"""The protobuf contracts: round trips, the vector wire format, and documented fields."""
from __future__ import annotations

import math

import numpy as np
from google.protobuf import json_format

from logmesh import vectors
from logmesh.ingest.hdfs import parse_line
from logmesh.v1 import (embedder_service_pb2, log_record_pb2, score_pb2, scorer_service_pb2)

LINE = ("081109 204655 556 INFO dfs.DataNode$PacketResponder: Received block "
        "blk_3587508140051953248 of size 67108864 from /10.251.42.84")


def test_log_record_round_trips_binary_and_json():
    record = parse_line(LINE, "HDFS.log", 7)
    record.label = log_record_pb2.LABEL_ANOMALY
    again = log_record_pb2.LogRecord.FromString(record.SerializeToString())
    assert again == record
    assert json_format.Parse(json_format.MessageToJson(record), log_record_pb2.LogRecord()) == record
    assert again.id == "HDFS.log:7" and again.block_ids == ["blk_3587508140051953248"]


def test_embedding_bytes_round_trip_exactly():
    vec = np.random.default_rng(1).standard_normal(384).astype(np.float32)
    msg = vectors.to_message("r1", "all-MiniLM-L6-v2", vec)
    back = embedder_service_pb2.EmbedResponse.FromString(
        embedder_service_pb2.EmbedResponse(embedding=msg).SerializeToString()).embedding
    assert back.dim == 384 and len(back.vector) == 1536
    assert np.array_equal(vectors.from_message(back), vec)


def test_vector_check_names_each_problem():
    good = vectors.to_message("r", "m", np.ones(384, np.float32))
    assert vectors.check(good, 384) is None
    assert "dim 3" in vectors.check(vectors.to_message("r", "m", np.ones(3, np.float32)), 384)
    truncated = vectors.to_message("r", "m", np.ones(384, np.float32))
    truncated.vector = truncated.vector[:-4]
    assert "1532 bytes" in vectors.check(truncated, 384)
    nan = np.ones(384, np.float32)
    nan[7] = math.nan
    assert "NaN" in vectors.check(vectors.to_message("r", "m", nan), 384)


def test_score_messages_round_trip_with_oneofs():
    result = score_pb2.ScoreResult(record_id="a", verdict=score_pb2.VERDICT_ANOMALY, score=0.9,
                                   votes=[score_pb2.ModelVote(model="mlp", verdict=score_pb2.VERDICT_ANOMALY, score=1)])
    item = scorer_service_pb2.ScoreItemResult(record_id="a", result=result)
    reply = scorer_service_pb2.ScoreStreamResponse(batch_id=3, results=[item])
    again = scorer_service_pb2.ScoreStreamResponse.FromString(reply.SerializeToString())
    assert again == reply and again.results[0].WhichOneof("outcome") == "result"
    anomaly = score_pb2.Anomaly(id=1, block=score_pb2.BlockVerdict(block_id="blk_1", events=["E5", "E7"]))
    assert score_pb2.Anomaly.FromString(anomaly.SerializeToString()).WhichOneof("subject") == "block"


def test_every_message_and_field_is_documented():
    """buf lint checks style; this checks the contract promise that every field says what it means."""
    from pathlib import Path
    import re
    for proto in (Path(__file__).resolve().parents[2] / "protos/logmesh/v1").glob("*.proto"):
        lines = proto.read_text().splitlines()
        for i, line in enumerate(lines):
            if re.match(r"\s*(message|enum|service|rpc)\s", line) or re.match(
                    r"\s*(optional |repeated )?[\w.]+ \w+ = \d+;", line):
                assert lines[i - 1].strip().startswith("//"), f"{proto.name}:{i + 1} undocumented: {line.strip()}"

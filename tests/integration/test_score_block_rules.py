"""ScoreBlock against a real scorer: events the model does not know are refused with a reason, and the kind a
verdict answers is the kind the anomaly history records (the rule on ScorerService.ScoreBlock)."""
from __future__ import annotations

import uuid

import grpc
import pytest

from logmesh.client import ScorerClient
from logmesh.v1 import score_pb2, scorer_service_pb2 as spb

ALERT, FINAL, INTERIM = (score_pb2.BLOCK_VERDICT_KIND_ALERT, score_pb2.BLOCK_VERDICT_KIND_FINAL,
                         score_pb2.BLOCK_VERDICT_KIND_INTERIM)
ANOMALY = score_pb2.VERDICT_ANOMALY
#: the opening of a write that failed (E7: writeBlock ... received exception, never in a normal block)
FAILED_WRITE = ["E5", "E5", "E5", "E22", "E7"]


@pytest.fixture()
def scorer(own_scorer):
    with ScorerClient(own_scorer.address) as client:
        yield client


def _block(block_id: str, events: list[str], closed: bool = False) -> spb.ScoreBlockRequest:
    return spb.ScoreBlockRequest(block=spb.BlockSession(block_id=block_id, events=events, closed=closed))


def test_unknown_events_are_invalid_argument_with_a_reason(scorer):
    with pytest.raises(grpc.RpcError) as info:
        scorer.stub.ScoreBlock(_block("blk_1", ["E99", "hello"]), timeout=30)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "'E99'" in info.value.details() and "'hello'" in info.value.details()
    assert "E1..E30" in info.value.details()  # says what to send instead
    # in a stream: that block gets a per-block error, the others their verdicts
    results = list(scorer.score_blocks([spb.BlockSession(block_id="blk_2", events=["E5", "E99"]),
                                        spb.BlockSession(block_id="blk_3", events=["E5", "E22", "unknown"])]))
    assert [r.WhichOneof("outcome") for r in results] == ["error", "verdict"]
    assert results[0].error.code == grpc.StatusCode.INVALID_ARGUMENT.value[0] and "'E99'" in results[0].error.message


def _recorded(scorer, block_id: str) -> list[int]:
    """The kinds the history holds for a block, oldest first."""
    entries = scorer.anomalies(page_size=1000, block_id=block_id).anomalies
    return [e.block.kind for e in reversed(entries) if e.HasField("block")]


def test_the_kind_answered_is_the_kind_recorded(scorer):
    block_id = f"blk_rule_{uuid.uuid4().hex[:8]}"
    first = scorer.stub.ScoreBlock(_block(block_id, FAILED_WRITE), timeout=30).verdict
    assert first.verdict == ANOMALY
    assert first.kind == ALERT and _recorded(scorer, block_id) == [ALERT]  # the same kind both ways
    again = scorer.stub.ScoreBlock(_block(block_id, FAILED_WRITE + ["E5"]), timeout=30).verdict
    assert again.kind == INTERIM and _recorded(scorer, block_id) == [ALERT]  # an alert is raised once
    done = scorer.stub.ScoreBlock(_block(block_id, FAILED_WRITE + ["E5"], closed=True), timeout=30).verdict
    assert done.kind == FINAL and _recorded(scorer, block_id) == [ALERT, FINAL]
    same = scorer.stub.ScoreBlock(_block(block_id, FAILED_WRITE + ["E5"], closed=True), timeout=30).verdict
    assert same.kind == FINAL and _recorded(scorer, block_id) == [ALERT, FINAL]  # the same story: nothing new
    # streams answer by the same rule
    other = f"blk_rule_{uuid.uuid4().hex[:8]}"
    [streamed] = list(scorer.score_blocks([spb.BlockSession(block_id=other, events=FAILED_WRITE)]))
    assert streamed.verdict.kind == ALERT and _recorded(scorer, other) == [ALERT]

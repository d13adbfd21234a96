"""Scoring against a real scorer is pure: Score, ScoreStream, ScoreBlock and ScoreBlockStream answer verdicts and
record nothing (the anomaly history is the job's anomalies topic); a block verdict's kind is FINAL when the block
is closed and INTERIM otherwise, never ALERT (the job's); events the model does not know are refused with a
reason; and a closed block quiet for less than the learnt stall time of its state is judged as a cut prefix."""
from __future__ import annotations

import uuid

import grpc
import pytest

from logmesh.client import ScorerClient
from logmesh.scorer.stall_times import state
from logmesh.v1 import score_pb2, scorer_service_pb2 as spb

ALERT, FINAL, INTERIM = (score_pb2.BLOCK_VERDICT_KIND_ALERT, score_pb2.BLOCK_VERDICT_KIND_FINAL,
                         score_pb2.BLOCK_VERDICT_KIND_INTERIM)
ANOMALY, NORMAL = score_pb2.VERDICT_ANOMALY, score_pb2.VERDICT_NORMAL
#: the opening of a write that failed (E7: writeBlock ... received exception, never in a normal block)
FAILED_WRITE = ["E5", "E5", "E5", "E22", "E7"]
#: three receives and the allocation, then nothing: a write in flight, or (once it has ended) missing steps
IN_FLIGHT = ["E5", "E5", "E5", "E22"]
EXCEPTION_LINE = ("081109 214043 2561 INFO dfs.DataNode$DataXceiver: writeBlock blk_-3102267849859399193 "
                  "received exception java.io.IOException: Could not read from stream")


@pytest.fixture()
def scorer(own_scorer):
    with ScorerClient(own_scorer.address) as client:
        yield client


def _block(block_id: str, events: list[str], closed: bool = False, quiet: float = 0.0) -> spb.ScoreBlockRequest:
    return spb.ScoreBlockRequest(block=spb.BlockSession(block_id=block_id, events=events, closed=closed,
                                                        quiet_seconds=quiet))


def test_unknown_events_are_invalid_argument_with_a_reason(scorer):
    with pytest.raises(grpc.RpcError) as info:
        scorer.stub.ScoreBlock(_block("blk_1", ["E99", "hello"]), timeout=30)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "'E99'" in info.value.details() and "'hello'" in info.value.details()
    assert "E1..E30" in info.value.details()  # says what to send instead
    # in a stream: that block gets a per-block error, the others their verdicts
    results = list(scorer.score_blocks([spb.BlockSession(block_id="blk_2", events=["E5", "E99"]),
                                        spb.BlockSession(block_id="blk_3", events=["E5", "E22", "unknown"]),
                                        spb.BlockSession(block_id="blk_4", events=["E5"], quiet_seconds=-1)]))
    assert [r.WhichOneof("outcome") for r in results] == ["error", "verdict", "error"]
    assert results[0].error.code == grpc.StatusCode.INVALID_ARGUMENT.value[0] and "'E99'" in results[0].error.message
    assert "quiet_seconds" in results[2].error.message


def _everything(scorer) -> list[bytes]:
    entries, _ = scorer.list_anomalies(100_000)
    return [e.SerializeToString() for e in entries]


def test_scoring_records_nothing_and_kinds_follow_closed(scorer):
    before, stats = _everything(scorer), scorer.stats()
    block_id = f"blk_pure_{uuid.uuid4().hex[:8]}"
    first = scorer.stub.ScoreBlock(_block(block_id, FAILED_WRITE), timeout=30).verdict
    again = scorer.stub.ScoreBlock(_block(block_id, FAILED_WRITE + ["E5"]), timeout=30).verdict
    done = scorer.stub.ScoreBlock(_block(block_id, FAILED_WRITE + ["E5"], closed=True), timeout=30).verdict
    assert [v.verdict for v in (first, again, done)] == [ANOMALY] * 3
    # the first anomalous verdict is no ALERT here: the job, which keeps the block's alert status, raises it
    assert [v.kind for v in (first, again, done)] == [INTERIM, INTERIM, FINAL]
    # pure: the same request, the same answer (nothing was remembered in between)
    assert scorer.stub.ScoreBlock(_block(block_id, FAILED_WRITE), timeout=30).verdict.kind == INTERIM
    streamed = list(scorer.score_blocks([spb.BlockSession(block_id=block_id, events=FAILED_WRITE),
                                         spb.BlockSession(block_id=block_id, events=FAILED_WRITE, closed=True)]))
    assert [r.verdict.kind for r in streamed] == [INTERIM, FINAL]
    assert scorer.score_line(EXCEPTION_LINE).verdict == ANOMALY
    assert all(r.result.verdict == ANOMALY for r in scorer.score_lines([EXCEPTION_LINE] * 3))
    assert _everything(scorer) == before  # ListAnomalies unchanged by Score, ScoreStream, ScoreBlock(Stream)
    after = scorer.stats()
    assert after.blocks_scored - stats.blocks_scored == 6 and after.block_anomalies - stats.block_anomalies == 6
    assert after.line_anomalies - stats.line_anomalies == 4 and after.history_status == "off"


def test_a_closed_block_quiet_for_less_than_its_stall_time_is_judged_as_a_cut_prefix(scorer, own_scorer):
    model = own_scorer.servicers["ScorerService"].models.block_scorer.model
    learnt = model.stall_times.timeouts.get(state(IN_FLIGHT)) if model.stall_times is not None else None
    assert learnt, "the trained session model learnt no stall time for a write in flight (E22 after three E5)"
    block_id = f"blk_quiet_{uuid.uuid4().hex[:8]}"
    ended = scorer.stub.ScoreBlock(_block(block_id, IN_FLIGHT, closed=True, quiet=learnt * 2), timeout=30).verdict
    unknown = scorer.stub.ScoreBlock(_block(block_id, IN_FLIGHT, closed=True), timeout=30).verdict
    cut = scorer.stub.ScoreBlock(_block(block_id, IN_FLIGHT, closed=True, quiet=learnt / 2), timeout=30).verdict
    prefix = scorer.stub.ScoreBlock(_block(block_id, IN_FLIGHT), timeout=30).verdict
    # quiet long enough (or for an unknown time): a write that ended before its last steps
    assert ended.verdict == ANOMALY and ended.evidence_kind == "missing_step" and ended.kind == FINAL
    assert unknown.verdict == ANOMALY and unknown.evidence_kind == "missing_step"
    # quiet for less than normal writes pause there: a write still in flight, judged as the open prefix is
    assert cut.verdict == NORMAL == prefix.verdict and cut.score == prefix.score and cut.kind == FINAL
    assert any("cut prefix" in r and f"{learnt:g} s" in r for r in cut.reasons)

"""BGL's frequency kind (scorer/rate_evidence.py, scorer/bgl_serving.py) on hand-made sessions whose answer is known
by construction: what training keeps of its normal windows, the rate test a burst must pass (above the normal most
is not enough), the sliding window a session is read through, and a flagged session's kind, verdict and score.
Real data: tests/integration/test_bgl_frequency_kind.py."""
from __future__ import annotations

import numpy as np

from logmesh.scorer import rate_evidence
from logmesh.scorer.analyst import grouping
from logmesh.scorer.artifacts import Artifact
from logmesh.scorer.bgl import Part
from logmesh.scorer.bgl_serving import BglSessionScorer
from logmesh.v1 import incident_pb2, score_pb2, scorer_service_pb2 as spb

K = incident_pb2
ANOMALY, NORMAL = score_pb2.VERDICT_ANOMALY, score_pb2.VERDICT_NORMAL


def test_training_keeps_only_windows_without_an_alert_line_and_what_a_rate_test_needs():
    events = ["A", "A", "B", "A", "A", "A", "C", "C", "C"]
    truth = np.asarray([0, 0, 0, 1, 0, 0, 0, 0, 0])
    windows = [np.arange(0, 3), np.arange(3, 6), np.arange(6, 9)]  # the second holds an alert line
    part = Part(["s"] * 9, events, truth, [None] * 9, windows)
    assert part.normal_window_events() == [["A", "A", "B"], ["C", "C", "C"]]  # A x3 of the alert window is not normal
    assert rate_evidence.window_normal(part.normal_window_events()) == {
        "windows": 2, "max": {"A": 2, "B": 1, "C": 3}, "held": {"A": 1, "B": 1, "C": 1},
        "lines": {"A": 2, "B": 1, "C": 3}, "squares": {"A": 4, "B": 1, "C": 9}}


def test_window_counts_read_a_long_session_through_a_sliding_window():
    events = ["A"] * 3 + ["B"] * 5 + ["A"] * 2
    assert rate_evidence.window_counts(events, 4) == {"A": 3, "B": 4}
    assert rate_evidence.window_counts(events, 100) == {"A": 5, "B": 5}  # shorter than the window: all of it
    # spread out, A never reaches 3 in any 4 consecutive lines although the session holds 4
    assert rate_evidence.window_counts(["A", "B", "B", "B", "A", "B", "B", "B", "A", "B", "A"], 4)["A"] == 2


def _normal(windows: int, **held: tuple[int, int]) -> dict:
    """`windows` normal windows, the first `held[e][0]` of which hold `held[e][1]` lines of e each."""
    return rate_evidence.window_normal([[e for e, (k, n) in held.items() if i < k for _ in range(n)]
                                        for i in range(windows)])


def test_above_the_normal_most_is_not_a_burst_when_the_normal_rate_explains_it():
    normal = _normal(1000, A=(1000, 1))  # A once in every normal window: most 1, mean 1
    assert rate_evidence.burst(["A", "A"] + ["X"] * 98, normal, 100) == []  # twice: P(>= 2) is about 1 in 3
    assert rate_evidence.burst(["A"] * 12 + ["X"] * 88, normal, 100) == [("A", 12, 1, 1.0)]  # 12: about 5e-9
    assert rate_evidence.burst(["A"] * 12, None, 100) == [] == rate_evidence.burst(["A"] * 12, {}, 100)
    assert rate_evidence.burst(["A"] * 12, normal, 0) == []  # an artifact without a window size names none


def test_a_rare_template_twice_is_a_repetition_and_three_times_may_be_a_burst():
    normal = _normal(1000, A=(1000, 1), R=(1, 1))  # R seen once in 1000 windows
    assert rate_evidence.tail(2, 1, 1000, 1.0) < rate_evidence.FAMILY_P / 2  # improbable, but two lines
    assert rate_evidence.burst(["R", "R"], normal, 100) == []
    assert rate_evidence.burst(["R"] * 3, normal, 100) == [("R", 3, 1, 0.001)]


def test_templates_that_come_in_runs_need_a_longer_burst():
    # B in runs of 10 in a tenth of the windows: mean 1, variance 9; a Poisson count of mean 1 would make 11 a burst
    runs = _normal(100, B=(10, 10))
    assert rate_evidence.tail(11, 100, 100, 1.0) < 1e-6 < 0.01 < rate_evidence.tail(11, 100, 100, 9.0)
    assert rate_evidence.burst(["B"] * 11, runs, 100) == []
    assert rate_evidence.burst(["B"] * 60, runs, 100) == [("B", 60, 10, 1.0)]
    # a template seen in too few windows to know its runs takes the spread of those seen often enough
    rare = _normal(100, B=(10, 10), R=(2, 1))
    assert rate_evidence.burst(["R"] * 3, rare, 100) == []  # with a Poisson spread 3 would be a burst
    assert rate_evidence.burst(["R"] * 3, _normal(100, R=(2, 1)), 100) == [("R", 3, 1, 0.02)]


def test_the_most_improbable_burst_is_cited_first():
    normal = _normal(1000, A=(1000, 1), C=(1000, 2))
    assert [e for e, *_ in rate_evidence.burst(["A"] * 9 + ["C"] * 20, normal, 100)] == ["C", "A"]


def _scorer(normal: dict | None, window: int = 4) -> BglSessionScorer:
    models = {"family": "bgl"} if normal is None else {"family": "bgl", "window_normal": normal}
    return BglSessionScorer(Artifact("v1", models, {"family": "bgl", "window": window}))


def test_a_flagged_session_with_a_burst_is_named_frequency_and_nothing_else_changes():
    node = "R02-M1-N0-C:J12-U11"
    sessions = [spb.BlockSession(block_id=node, events=["A", "A", "A", "B"], anomalous_record_ids=["r:4"]),
                spb.BlockSession(block_id="w1", events=["A", "B", "B"], anomalous_record_ids=["r:9"]),  # no burst
                spb.BlockSession(block_id="w2", events=["A", "A", "A"], closed=True)]  # a burst but nothing flagged
    now = [r.verdict for r in _scorer(_normal(1000, A=(10, 1), B=(1000, 2))).score(sessions)]
    then = [r.verdict for r in _scorer(None).score(sessions)]  # an artifact trained before window_normal
    assert [(v.block_id, v.verdict, v.score, list(v.anomalous_record_ids), v.kind) for v in now] == [
        (v.block_id, v.verdict, v.score, list(v.anomalous_record_ids), v.kind) for v in then]
    assert [v.verdict for v in now] == [ANOMALY, ANOMALY, NORMAL]
    assert [v.evidence_kind for v in then] == ["anomalous_lines", "anomalous_lines", "none"]
    assert [v.evidence_kind for v in now] == ["frequency", "anomalous_lines", "none"]
    assert list(now[0].reasons) == ["more often than any normal window of 4 lines, and improbably at the normal rate: "
                                    "A x3 (normal windows at most 1, 0.01 on average)",
                                    "1 of 4 lines flagged by the line ensemble"]
    assert list(now[1].reasons) == list(then[1].reasons)


def test_a_burst_alone_shows_frequency_and_a_flagged_line_outranks_it():
    burst = score_pb2.BlockVerdict(block_id="w1", verdict=ANOMALY, evidence_kind="frequency")
    assert grouping.block_kind(burst) == K.INCIDENT_KIND_FREQUENCY
    assert grouping.block_kind(score_pb2.BlockVerdict(evidence_kind="anomalous_lines")) == K.INCIDENT_KIND_UNSPECIFIED
    alert = score_pb2.ScoreResult(verdict=ANOMALY)
    for line in (alert, score_pb2.ScoreResult(verdict=ANOMALY, new_template=True)):
        kind = grouping.line_kind(line)
        assert grouping.stronger(kind, grouping.block_kind(burst)) == kind != K.INCIDENT_KIND_FREQUENCY

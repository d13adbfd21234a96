"""BGL's frequency kind (scorer/rate_evidence.py, scorer/bgl_serving.py) on hand-made sessions whose answer is known
by construction: the normal per-window maximum training keeps, the sliding window a session is read through, and a
flagged session's kind, verdict and score. Real data: tests/integration/test_bgl_frequency_kind.py."""
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


def test_the_normal_window_maximum_counts_only_windows_without_an_alert_line():
    events = ["A", "A", "B", "A", "A", "A", "C", "C", "C"]
    truth = np.asarray([0, 0, 0, 1, 0, 0, 0, 0, 0])
    windows = [np.arange(0, 3), np.arange(3, 6), np.arange(6, 9)]  # the second holds an alert line
    part = Part(["s"] * 9, events, truth, [None] * 9, windows)
    assert part.normal_window_max() == {"A": 2, "B": 1, "C": 3}  # A x3 of the alert window is not normal


def test_window_counts_read_a_long_session_through_a_sliding_window():
    events = ["A"] * 3 + ["B"] * 5 + ["A"] * 2
    assert rate_evidence.window_counts(events, 4) == {"A": 3, "B": 4}
    assert rate_evidence.window_counts(events, 100) == {"A": 5, "B": 5}  # shorter than the window: all of it
    # spread out, A never reaches 3 in any 4 consecutive lines although the session holds 4
    assert rate_evidence.window_counts(["A", "B", "B", "B", "A", "B", "B", "B", "A", "B", "A"], 4)["A"] == 2


def test_burst_names_events_normal_windows_hold_beyond_their_most_most_excessive_first():
    most = {"A": 2, "B": 4, "C": 1}
    events = ["A"] * 3 + ["B"] * 4 + ["C"] * 3 + ["X"] * 50  # B at its most; X no normal window holds
    assert rate_evidence.burst(events, most, 100) == [("C", 3, 1), ("A", 3, 2)]
    assert rate_evidence.burst(events, None, 100) == [] == rate_evidence.burst(events, {}, 100)
    assert rate_evidence.burst(events, most, 0) == []  # an artifact without a window size names none


def _scorer(window_max: dict | None, window: int = 4) -> BglSessionScorer:
    models = {"family": "bgl"} if window_max is None else {"family": "bgl", "window_max": window_max}
    return BglSessionScorer(Artifact("v1", models, {"family": "bgl", "window": window}))


def test_a_flagged_session_with_a_burst_is_named_frequency_and_nothing_else_changes():
    node = "R02-M1-N0-C:J12-U11"
    sessions = [spb.BlockSession(block_id=node, events=["A", "A", "A", "B"], anomalous_record_ids=["r:4"]),
                spb.BlockSession(block_id="w1", events=["A", "B", "B"], anomalous_record_ids=["r:9"]),  # no burst
                spb.BlockSession(block_id="w2", events=["A", "A", "A"], closed=True)]  # a burst but nothing flagged
    now = [r.verdict for r in _scorer({"A": 2, "B": 2}).score(sessions)]
    then = [r.verdict for r in _scorer(None).score(sessions)]  # an artifact trained before window_max
    assert [(v.block_id, v.verdict, v.score, list(v.anomalous_record_ids), v.kind) for v in now] == [
        (v.block_id, v.verdict, v.score, list(v.anomalous_record_ids), v.kind) for v in then]
    assert [v.verdict for v in now] == [ANOMALY, ANOMALY, NORMAL]
    assert [v.evidence_kind for v in then] == ["anomalous_lines", "anomalous_lines", "none"]
    assert [v.evidence_kind for v in now] == ["frequency", "anomalous_lines", "none"]
    assert list(now[0].reasons) == ["more often than any normal window of 4 lines: A x3 (normal windows at most 2)",
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

"""The frequency kind (scorer/rate_evidence.py): which flagged verdicts it names, on hand-made sessions where the
answer is known by construction, and how grouping ranks it. Real data: tests/integration/test_frequency_kind.py."""
from __future__ import annotations

import copy

from logmesh.scorer import rate_evidence
from logmesh.scorer.analyst import grouping
from logmesh.scorer.session_model import SessionModel
from logmesh.v1 import incident_pb2, score_pb2

K = incident_pb2
WRITE = ["E22", "E5", "E5", "E5", "E11", "E9", "E11", "E9", "E11", "E9", "E26", "E26", "E26"]
DELETE = ["E23", "E23", "E23", "E21", "E21", "E21"]
REPLICATE = ["E18", "E16"]  # a transfer asked and done once: normal alone, failing when the file is then deleted


def _model() -> SessionModel:
    """Normal: plain writes that are deleted, and writes re-replicated once; failing: re-replicated, then deleted
    (a pair pattern: E18 with E23), and writes that failed with an exception (E7)."""
    normal = [WRITE + DELETE] * 300 + [WRITE + REPLICATE] * 100
    failing = [WRITE + REPLICATE + DELETE] * 60 + [WRITE[:4] + ["E7"]] * 30
    return SessionModel(0, n_estimators=30).fit(normal + failing, [0] * 400 + [1] * 90)


def test_beyond_normal_names_events_above_every_normal_count_most_excessive_first():
    most = {"E26": 10, "E2": 3, "E5": 10}
    events = ["E26"] * 11 + ["E2"] * 6 + ["E5"] * 10 + ["E7"] * 50  # E5 at the normal most; E7 no normal session holds
    assert rate_evidence.beyond_normal(events, most) == [("E2", 6, 3), ("E26", 11, 10)]
    assert rate_evidence.beyond_normal(events, None) == [] == rate_evidence.beyond_normal(events, {})


def test_relabel_names_only_flagged_combination_verdicts():
    most = {"E26": 10}
    many = ["E26"] * 12
    for kind in ("failure_pattern", "missing_step"):
        reasons = ["E18 with E23: together in failing sessions, almost never in normal ones"]
        assert rate_evidence.relabel(kind, True, many, most, reasons) == "frequency"
        assert reasons[0] == "more often than any normal session: E26 x12 (normal sessions at most 10)"
        assert len(reasons) == 2  # the pattern's reason stays
    for kind in ("evidence_event", "new_template"):  # the event names the failure; its count only says it repeated
        reasons = ["event E7 never seen in a normal session"]
        assert rate_evidence.relabel(kind, True, many, most, reasons) == kind and len(reasons) == 1
    assert rate_evidence.relabel("unfamiliar", False, many, most, []) == "unfamiliar"  # no alert: nothing to name
    assert rate_evidence.relabel("failure_pattern", True, ["E26"] * 10, most, []) == "failure_pattern"
    assert rate_evidence.relabel("failure_pattern", True, many, None, []) == "failure_pattern"  # an older artifact


def test_the_session_model_names_a_pattern_with_a_count_beyond_normal_frequency_and_nothing_else_changes():
    model = _model()
    assert model.profile.max_count["E16"] == 1 and model.profile.max_count["E26"] == 3
    before = copy.deepcopy(model)
    del before.profile.max_count  # the same model as an artifact trained before max_count
    pattern = WRITE + REPLICATE + DELETE
    retried = WRITE + ["E18"] + ["E16"] * 4 + DELETE  # the transfer done four times: no normal session did
    exception = retried + ["E7"]
    unflagged = WRITE[:4] + ["E18"] + ["E16"] * 4 + DELETE[:2]  # an open prefix of it: a pattern, but no alert
    sessions = [pattern, retried, exception, WRITE + DELETE, unflagged]
    closed = [True, True, True, True, False]
    now, then = model.judge(sessions, closed), before.judge(sessions, closed)
    assert [(j.anomalous, j.score) for j in now] == [(j.anomalous, j.score) for j in then]
    assert [j.anomalous for j in now] == [True, True, True, False, False]
    assert [j.kind for j in then] == ["failure_pattern", "failure_pattern", "evidence_event", "none", "failure_pattern"]
    assert [j.kind for j in now] == ["failure_pattern", "frequency", "evidence_event", "none", "failure_pattern"]
    assert now[1].reasons[0] == "more often than any normal session: E16 x4 (normal sessions at most 1)"
    assert now[1].reasons[1:] == then[1].reasons


def test_grouping_maps_frequency_and_ranks_it_below_every_other_known_kind():
    assert grouping.block_kind(score_pb2.BlockVerdict(evidence_kind="frequency")) == K.INCIDENT_KIND_FREQUENCY
    for other in (K.INCIDENT_KIND_NEW_TEMPLATE, K.INCIDENT_KIND_EXCEPTION, K.INCIDENT_KIND_MISSING_STEP,
                  K.INCIDENT_KIND_RARE_SEQUENCE):
        assert grouping.stronger(K.INCIDENT_KIND_FREQUENCY, other) == other
        assert grouping.stronger(other, K.INCIDENT_KIND_FREQUENCY) == other
    assert grouping.stronger(K.INCIDENT_KIND_UNSPECIFIED, K.INCIDENT_KIND_FREQUENCY) == K.INCIDENT_KIND_FREQUENCY

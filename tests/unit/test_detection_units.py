"""Detection building blocks on hand-made data, where the right answer is known by construction."""
from __future__ import annotations

import numpy as np
import pytest

from logmesh.scorer import completeness
from logmesh.scorer.normal_profile import NormalProfile, mine_invariants
from logmesh.scorer.session_model import SessionModel
from logmesh.scorer.stall_times import StallTimes
from logmesh.scorer.validation import Blocks, clopper_pearson, f1_at, grouped_splits, sequence_groups

WRITE = ["E22", "E5", "E5", "E5", "E11", "E9", "E11", "E9", "E11", "E9", "E26", "E26", "E26"]
DELETE = ["E23", "E23", "E23", "E21", "E21", "E21"]


def _normal(reads: int = 0, delete: bool = True) -> list[str]:
    return WRITE + ["E3"] * reads + (DELETE if delete else [])


def test_a_duplicate_heavy_set_never_puts_one_sequence_on_both_sides():
    rng = np.random.default_rng(0)
    # 6 distinct sequences repeated hundreds of times (HDFS: 4,854 normal sessions, 839 distinct)
    kinds = [_normal(0), _normal(2), _normal(4, False), ["E22", "E5", "E5"], ["E5", "E22"], WRITE + ["E7"]]
    labels_of = [0, 0, 0, 1, 1, 1]
    picks = rng.integers(0, len(kinds), 600)
    blocks = Blocks([list(kinds[k]) for k in picks], np.asarray([labels_of[k] for k in picks]),
                    np.ones(600, bool), np.asarray(["complete"] * 600), np.asarray(["x"] * 600), np.arange(600))
    groups = sequence_groups(blocks)
    assert len(set(groups.tolist())) == 6
    for seed in range(3):
        for train_idx, test_idx in grouped_splits(blocks, 3, seed):
            assert not {tuple(blocks.sessions[i]) for i in train_idx} & {tuple(blocks.sessions[i]) for i in test_idx}


def test_clopper_pearson_and_f1_at_prevalence_on_known_values():
    lo, hi = clopper_pearson(0, 971)
    assert lo == 0 and hi == pytest.approx(1 - 0.025 ** (1 / 971), rel=1e-6)  # "< 0.38%", not "0%"
    assert hi == pytest.approx(0.0038, abs=0.0001)
    lo, hi = clopper_pearson(5, 10)
    assert lo == pytest.approx(0.187, abs=0.001) and hi == pytest.approx(0.813, abs=0.001)
    # recall 1, FPR 0.27% at 2.93% prevalence: precision 0.0293 / (0.0293 + 0.0027 * 0.9707) = 0.918
    assert f1_at(1.0, 0.0027, 0.0293) == pytest.approx(2 * 0.91789 / 1.91789, abs=1e-4)


def test_invariants_are_mined_from_normal_sessions_and_the_wider_one_wins():
    from collections import Counter
    plain = [Counter(_normal(r)) for r in range(5)] * 10
    rerep = [Counter(WRITE + ["E25", "E18", "E5", "E16", "E6", "E26", "E26", "E21"])] * 5  # a 4th replica
    def canonical(terms):  # a relation and its negation are the same invariant
        terms = sorted(terms)
        return tuple((e, w if terms[0][1] > 0 else -w) for e, w in terms)
    found = {canonical(i.terms) for i in mine_invariants(plain + rerep, ["E5", "E9", "E6", "E11", "E26"], 0.99, 5)}
    assert (("E11", 1), ("E9", -1)) in found  # every "Received" has its PacketResponder
    assert (("E5", 1), ("E6", -1), ("E9", -1)) in found  # E5 = E9 + E6 explains re-replication ...
    assert (("E5", 1), ("E9", -1)) not in found  # ... so the narrower E5 = E9, broken by it, is dropped


def test_missing_steps_are_evidence_only_once_a_session_has_ended():
    profile = NormalProfile(min_sessions=5).fit([_normal(r) for r in range(10)])
    stalled = ["E22", "E5", "E5"]
    assert profile.evidence(stalled, closed=True).kind == "missing_step"
    assert not profile.evidence(stalled, closed=False)  # a write still in progress is not missing a step
    assert profile.evidence(WRITE + ["E7"], closed=False).kind == "evidence_event"


def _model() -> SessionModel:
    normal = [_normal(r % 5, r % 3 > 0) for r in range(300)]
    failing = [["E22", "E5", "E5"], ["E5", "E22"], WRITE + ["E7", "E10"], WRITE + ["E14"]] * 50
    return SessionModel(0, n_estimators=30).fit(normal + failing, [0] * 300 + [1] * 200)


def test_an_unfamiliar_normal_session_without_evidence_is_not_a_failure():
    model = _model()
    busy = _normal(300)  # far more reads than any training session: unfamiliar, but nothing failed
    [j] = model.judge([busy], [True])
    assert not j.anomalous and j.score < model.threshold and j.kind in {"none", "unfamiliar"}
    [j] = model.judge([WRITE + ["E7"]], [True])
    assert j.anomalous and j.kind == "evidence_event" and "E7" in j.reasons[0]
    [j] = model.judge([["E22", "E5", "E5"]], [True])
    assert j.anomalous and j.kind == "missing_step"
    [j] = model.judge([["E22", "E5", "E5"]], [False])  # the same prefix, still open: no verdict yet
    assert not j.anomalous


def test_a_checked_missing_step_is_a_failure_whatever_the_forest_learnt():
    model = _model()
    lost = [e for e in WRITE if e != "E26"] + ["E26", "E26"] + DELETE[:2] + DELETE[3:5]  # one replica never stored
    assert model._raw([lost], [True])[0] < model.threshold  # no failing session like it in training
    [j] = model.judge([lost], [True])
    assert j.anomalous and j.kind == "missing_step" and any("E26" in r for r in j.reasons)
    [j] = model.judge([_normal(2)], [True])
    assert not j.anomalous


def test_a_new_template_in_a_session_is_evidence():
    [j] = _model().judge([WRITE + ["unknown"]], [False])
    assert "new template unknown" in j.reasons


def _log(ended_share: float, n: int = 200):
    """Blocks of a raw log: (sessions, last times, end time); `ended_share` of the tail blocks finished."""
    rng = np.random.default_rng(1)
    sessions, last = [], []
    for i in range(n):
        t = 1000.0 + i * 10
        tail = t > 1000 + n * 10 - 600
        finished = not tail or rng.random() < ended_share
        sessions.append(_normal(0, False) if finished else ["E22", "E5", "E5", "E5"])
        last.append(t)
    return sessions, last, 1000.0 + n * 10


def test_a_cut_log_is_judged_as_cut_and_a_file_of_complete_sessions_as_complete():
    profile = NormalProfile(min_sessions=5).fit([_normal(r, r % 2 == 0) for r in range(20)])
    sessions, last, end = _log(ended_share=0.2)  # writes in progress crowd at the end: a cut
    d = completeness.decide(sessions, last, end, profile.unfinished, "auto")
    assert d.rule == "cut" and not all(d.closed) and d.summary()["judged_open"] > 0
    sessions, last, end = _log(ended_share=1.0)  # every session finished: complete
    d = completeness.decide(sessions, last, end, profile.unfinished, "auto")
    assert d.rule == "complete" and all(d.closed)
    assert completeness.decide(sessions, last, end, profile.unfinished, "cut").rule == "cut"
    with pytest.raises(ValueError, match="--sessions"):
        completeness.decide(sessions, last, end, profile.unfinished, "sometimes")


def test_stall_times_are_learnt_per_state():
    stall = StallTimes(margin=2, floor=10)
    for _ in range(30):
        stall.observe(["E22", "E5"], 1.0)  # the second receive follows within a second
        stall.observe(["E22", "E5", "E5", "E5"], 60.0)  # the write takes a minute
    stall.freeze()
    assert stall.timeout(["E22", "E5"]) == 10  # the floor
    assert stall.timeout(["E22", "E5", "E5", "E5"]) == 120
    assert stall.timeout(["E9"]) == stall.fallback  # never observed


def test_an_invariant_is_evidence_only_where_normal_sessions_were_seen_to_keep_it():
    # 2,000 plain writes with deletes keep E11 = E23 (each replica written is deleted); 10 normal
    # re-replications delete without an invalidSet line, so the relation holds at 99.5% overall and is
    # broken by every re-replication: it was never checked on them, so breaking it is not a missing step
    rerep = WRITE + ["E25", "E18", "E5", "E16", "E6", "E26", "E26", "E21"]
    profile = NormalProfile(min_sessions=5, domain_sessions=10).fit([_normal(r % 5) for r in range(2000)] + [rerep] * 10)
    ev = profile.evidence(rerep, closed=True)
    assert not ev and any(inv.support < 1 for inv, _ in ev.unchecked)
    assert profile.evidence(["E22", "E5", "E5"], closed=True).kind == "missing_step"  # a stalled plain write still is
    no_receive = [e for e in rerep if e != "E6"]  # transmitted, never received: checked on the 10 re-replications
    assert profile.evidence(no_receive, closed=True).kind == "missing_step"
    # a count beyond what every normal session keeping the relation held (a block allocated twice) is outside it too
    twice = ["E22"] + WRITE + ["E5"]
    assert not profile.evidence(twice, closed=True) and profile.evidence(twice, closed=True).unchecked


def test_the_threshold_is_chosen_on_complete_sessions_and_says_when_there_are_none():
    from logmesh.scorer.validation import choose_threshold
    scores = np.array([0.1, 0.2, 0.7, 0.95, 0.99])
    labels = np.array([0, 0, 0, 1, 1])
    t, choice = choose_threshold(scores, labels, np.ones(5, bool), target_fpr=0.0)
    assert t == 0.71 and choice["met"] and choice["oof_fpr"] == 0.0 and choice["oof_recall"] == 1.0
    assert (choice["normal"], choice["anomalous"]) == (3, 2)
    # only cut logs: nothing complete to choose on, so the floor, and no made-up FPR or recall
    t, choice = choose_threshold(scores, labels, np.zeros(5, bool), target_fpr=0.0)
    assert t == 0.5 and not choice["met"] and choice["oof_fpr"] is None and choice["oof_recall"] is None

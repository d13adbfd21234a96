"""An event no normal session held is failure evidence only when its template names a fault (issue 14)."""
from __future__ import annotations

from logmesh.scorer.failure_text import failure_event, reads_like_failure
from logmesh.scorer.new_templates import NewTemplates
from logmesh.scorer.session_model import SessionModel

WRITE = ["E22", "E5", "E5", "E5", "E11", "E9", "E11", "E9", "E11", "E9", "E26", "E26", "E26"]
DELETE = ["E23", "E23", "E23", "E21", "E21", "E21"]
# a normal re-replication, as the 18 in sessions_normal.txt: ask, transfer, the new replica received and stored
REREPLICATE = ["E25", "E18", "E5", "E16", "E6", "E26", "E26", "E21"]


def test_loghub_templates_are_read_for_faults():
    for e in ("E1", "E7", "E8", "E10", "E13", "E17", "E20", "E24", "E27", "E28", "E29"):
        assert failure_event(e), e
    for e in ("E6", "E15", "E16", "E18", "E19", "E25", "E30", "E21", "E3"):
        assert not failure_event(e), e
    assert failure_event("unknown") and failure_event("N7")  # no text known: a new template stays novel evidence
    assert reads_like_failure("java.lang.OutOfMemoryError: Java heap space")
    assert not reads_like_failure("Starting Periodic block scanner.")


def _fit(text_rule: bool) -> SessionModel:
    # training normals never re-replicate; many failing sessions do (the held-out family rare:E16)
    normal = [WRITE + ["E3"] * (r % 4) + (DELETE if r % 3 else []) for r in range(300)]
    failing = ([["E22", "E5", "E5"], WRITE + ["E7", "E10"], WRITE + ["E20"]] * 40
               + [WRITE + REREPLICATE + DELETE + ["E27"]] * 40)
    return SessionModel(0, n_estimators=30, text_rule=text_rule).fit(normal + failing, [0] * 300 + [1] * 160)


def test_an_unseen_event_that_names_no_fault_is_unfamiliar_not_evidence():
    session = WRITE + REREPLICATE
    [before] = _fit(text_rule=False).judge([session], [True])
    assert before.anomalous and before.kind == "evidence_event"  # the rule it replaces: every unseen event
    model = _fit(text_rule=True)
    [j] = model.judge([session], [True])
    assert not j.anomalous and j.kind == "unfamiliar" and j.score < model.threshold
    assert any("E16 never seen in a normal session, but its template names no fault" in r for r in j.reasons)
    # a fault beside it is still evidence, and so is a template no training line had
    [j] = model.judge([session + ["E27"]], [True])
    assert j.anomalous and j.kind == "evidence_event" and any("E27" in r for r in j.reasons)
    [j] = model.judge([session + ["unknown"]], [True])
    assert j.anomalous and j.kind == "new_template"


def test_a_loghub_template_training_never_had_is_new_only_if_it_names_a_fault():
    novel = NewTemplates(known={"E5", "E26"})
    assert not novel.is_new("E30", "BLOCK* ask <*> to delete <*>")  # normal bookkeeping the dev data lacks
    assert novel.is_new("E29", "PendingReplicationMonitor timed out block <*>")
    assert not novel.is_new("E5", "Receiving block <*>")


def test_a_rare_family_held_out_reports_the_failures_holding_its_event_too():
    import numpy as np

    from logmesh.scorer.baselines import EventCountBaseline
    from logmesh.scorer.validation import Blocks, family_holdout
    # reads, verifications and failed serves vary most (the `heavy:` families), as in the real data
    normal = [WRITE + ["E3"] * (r % 7) + ["E2"] * (r % 5) + ["E4"] * (r % 3) + (DELETE if r % 3 else [])
              for r in range(588)]
    normal += [WRITE + REREPLICATE + ["E3"] * r for r in range(12)]  # the rare family: 2% of normal sessions
    failing = [WRITE + REREPLICATE + ["E27"] * (1 + r % 4) for r in range(40)]  # a fault beside re-replication
    failing += [WRITE + REREPLICATE + DELETE + ["E3"] * r for r in range(30)]  # none: only the family's event
    failing += [WRITE[:k] for k in range(2, 5)] * 10
    n = len(normal) + len(failing)
    blocks = Blocks(normal + failing, np.asarray([0] * len(normal) + [1] * len(failing)), np.ones(n, bool),
                    np.asarray(["complete"] * n), np.asarray(["x"] * n), np.arange(n))
    models = {"logmesh": lambda seed: SessionModel(seed, n_estimators=20),
              "decision_tree": lambda seed: EventCountBaseline("decision_tree", seed)}
    row = family_holdout(models, blocks, folds=3)["rare:E16"]
    assert row["sessions"] == 12 and row["logmesh"]["flagged"] == 0  # re-replication names no fault: unfamiliar
    caught = row["failing_caught"]
    assert caught["failing"] == 70
    assert 40 <= caught["logmesh"] < 70  # the faults (E27) are caught; re-replication alone is not evidence
    assert caught["decision_tree"] >= caught["logmesh"]


def test_a_pair_pattern_needs_normal_sessions_to_avoid_the_pair_not_just_a_rare_event():
    from logmesh.scorer.session_model import _pair_patterns
    # 1,000 normal sessions: 20 re-replicate (E16, r < 20), 300 verify (E2, 19 <= r < 319), 600 delete the file
    # (E23, r >= 400). One re-replication is verified (6 expected by chance), none deleted (12 expected).
    normal = [list(WRITE) + (["E16"] if r < 20 else []) + (["E2"] if 19 <= r < 319 else [])
              + (["E23"] if r >= 400 else []) for r in range(1000)]
    failing = [WRITE + ["E16", "E2", "E23"]] * 100
    labels = [0] * len(normal) + [1] * len(failing)
    events = {"E16", "E2", "E23"} | set(WRITE)
    loose = _pair_patterns(normal + failing, labels, events)
    assert {("E16", "E2"), ("E16", "E23")} <= loose  # rare together in normal sessions: both, by the share rule
    strict = _pair_patterns(normal + failing, labels, events, alpha=0.01)
    assert ("E16", "E23") in strict  # 12 expected, 0 seen: normal sessions avoid it
    assert ("E16", "E2") not in strict  # 6 expected, 1 seen (p 0.017): the rarity of E16, not avoidance

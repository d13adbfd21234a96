"""One majority vote of the line ensemble (scorer/ensemble.py `majority`), which training, the scorer's engine and
the evaluation all apply: anomaly when more than half the members give P(anomaly) >= 0.5."""
from __future__ import annotations

import itertools

import numpy as np

from logmesh.scorer.engine import _anomalous
from logmesh.scorer.ensemble import THRESHOLD, anomaly_votes, combine, majority


def test_majority_of_five_on_rows_and_matrices() -> None:
    rows = np.array([[0.9, 0.8, 0.6, 0.1, 0.2], [0.9, 0.8, 0.1, 0.1, 0.2], [0.5, 0.5, 0.5, 0.49, 0.49]], np.float32)
    assert majority(rows).tolist() == [True, False, True]  # 3, 2, 3 votes: 0.5 itself is a vote
    assert anomaly_votes(rows).tolist() == [3, 2, 3]
    assert [bool(majority(r)) for r in rows] == [True, False, True]
    verdict, score, votes = combine(rows)
    assert verdict.tolist() == [True, False, True] and votes.tolist() == [3, 2, 3]
    assert np.allclose(score, rows.mean(axis=1))


def test_the_engine_votes_as_the_ensemble_for_every_pattern() -> None:
    for pattern in itertools.product([0.1, THRESHOLD, 0.9], repeat=5):
        row = np.array(pattern, np.float32)
        assert _anomalous(row) is bool(majority(row)) is (sum(p >= THRESHOLD for p in pattern) >= 3), pattern
    assert majority(np.array([0.9, 0.9, 0.1, 0.1], np.float32)) == False  # noqa: E712  (a tie is no majority)

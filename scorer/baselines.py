"""The simple baselines every detection figure stands beside, fitted on the same split in the same run.

Both read only a session's event-count vector, as in loglizer (He et al., ISSRE 2016): a decision tree
on raw counts, and a logistic regression on log(1 + count). They ignore whether a session has ended.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.tree import DecisionTreeClassifier

NAMES = ("decision_tree", "logistic_regression")


class EventCountBaseline:
    def __init__(self, kind: str, seed: int = 0) -> None:
        if kind not in NAMES:
            raise ValueError(f"unknown baseline {kind!r}; one of {', '.join(NAMES)}")
        self.kind = kind
        self.seed = seed
        self.threshold = 0.5
        self.vocab: dict[str, int] = {}
        self.model = None

    def _counts(self, sessions: Sequence[Sequence[str]]) -> np.ndarray:
        x = np.zeros((len(sessions), len(self.vocab) + 1), np.float32)
        other = len(self.vocab)
        for row, events in enumerate(sessions):
            for e in events:
                x[row, self.vocab.get(e, other)] += 1
        return np.log1p(x) if self.kind == "logistic_regression" else x

    def fit(self, sessions: Sequence[Sequence[str]], labels: Sequence[int], closed=None) -> "EventCountBaseline":
        self.vocab = {e: i for i, e in enumerate(sorted({e for s in sessions for e in s}))}
        if self.kind == "decision_tree":
            self.model = DecisionTreeClassifier(random_state=self.seed)
        else:
            self.model = LogisticRegression(max_iter=5000)
        y = np.asarray(labels)
        self.model.fit(self._counts(sessions), y)
        return self

    def probabilities(self, sessions: Sequence[Sequence[str]], closed=None) -> np.ndarray:
        if not len(sessions):
            return np.zeros(0, np.float32)
        proba = self.model.predict_proba(self._counts(sessions))
        if proba.shape[1] == 1:
            return np.full(len(sessions), float(self.model.classes_[0]), np.float32)
        return proba[:, 1].astype(np.float32)


def make_baselines(seed: int = 0) -> dict[str, EventCountBaseline]:
    return {name: EventCountBaseline(name, seed) for name in NAMES}

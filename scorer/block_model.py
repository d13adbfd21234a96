"""The block (session) model: judges a block from the events seen so far.

Features are loglizer's event-count vector plus the session length and whether the block is closed.
A stream judges a block before it ends, so training also shows the model open prefixes: a prefix of
a normal block is normal, and a prefix of a failing block counts as failing only once it holds an
event that never occurs in normal training blocks (an exception, a timeout). Missing steps can only
be seen when a block closes.
"""
from __future__ import annotations

import numpy as np
from sklearn.ensemble import RandomForestClassifier

from logmesh.ingest.templates import EVENT_IDS

EVENTS: tuple[str, ...] = (*EVENT_IDS, "unknown")
_INDEX = {e: i for i, e in enumerate(EVENTS)}
THRESHOLD = 0.5


def features(sessions: list[list[str]], closed: list[bool]) -> np.ndarray:
    x = np.zeros((len(sessions), len(EVENTS) + 2), np.float32)
    for row, (events, done) in enumerate(zip(sessions, closed)):
        for e in events:
            x[row, _INDEX.get(e, len(EVENTS) - 1)] += 1
        x[row, -2] = len(events)
        x[row, -1] = float(done)
    return x


class BlockModel:
    def __init__(self, seed: int = 0) -> None:
        self.seed = seed
        self.classifier = RandomForestClassifier(n_estimators=100, min_samples_leaf=1, n_jobs=1, random_state=seed)
        self.normal_only_events: set[str] = set()

    def fit(self, sessions: list[list[str]], labels: list[int]) -> "BlockModel":
        rng = np.random.default_rng(self.seed)
        seen_in_normal = {e for s, y in zip(sessions, labels) if y == 0 for e in s}
        self.evidence_events = set(EVENTS) - seen_in_normal  # events that alone mark a block as failing
        all_sessions, all_closed, all_labels = list(sessions), [True] * len(sessions), list(labels)
        for s, y in zip(sessions, labels):  # one random open prefix per block
            if len(s) < 2:
                continue
            prefix = s[: int(rng.integers(1, len(s)))]
            all_sessions.append(prefix)
            all_closed.append(False)
            all_labels.append(int(y == 1 and any(e in self.evidence_events for e in prefix)))
        self.classifier.fit(features(all_sessions, all_closed), np.asarray(all_labels))
        return self

    def probabilities(self, sessions: list[list[str]], closed: list[bool]) -> np.ndarray:
        return self.classifier.predict_proba(features(sessions, closed))[:, 1].astype(np.float32)

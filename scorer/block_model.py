"""The block (session) model: judges a block from the events seen so far.

Features (loglizer's event-count vector, grown to see order):
- the count of each event id (loghub E1..E30, Drain-mined ids seen in training, one "other" slot);
- counts of the event bigrams seen in training (order: a block that deletes before it writes);
- where the first *evidence* event sits (an event never seen in a normal training block: an
  exception, a timeout), as a fraction of the session, or -1 when there is none;
- count differences that a healthy finished write keeps at zero (INVARIANTS: E5 = E11 = E9 = E26,
  E23 = E21) and failed reads without a successful one (E4 - E3);
- the session length and whether the block is closed.

A stream judges a block before it ends, so training also shows the model open prefixes: a prefix of
a normal block is normal, and a prefix of a failing block counts as failing only once it holds an
evidence event. Missing steps can only be seen when a block closes.
"""
from __future__ import annotations

from collections import Counter

import numpy as np
from sklearn.ensemble import RandomForestClassifier

from logmesh.ingest.templates import EVENT_IDS

EVENTS: tuple[str, ...] = (*EVENT_IDS, "unknown")
_INDEX = {e: i for i, e in enumerate(EVENTS)}
THRESHOLD = 0.5
MAX_BIGRAMS = 300
#: Count differences that are zero in a healthy, finished write (loglizer's mined invariants on HDFS:
#: every "Receiving" E5 has its PacketResponder E11, "Received" E9 and namenode addStoredBlock E26;
#: every invalidSet E23 a delete E21) and reads that only fail (E4 without any E3).
INVARIANTS: tuple[tuple[str, str], ...] = (
    ("E5", "E11"), ("E5", "E9"), ("E5", "E26"), ("E9", "E26"), ("E11", "E9"), ("E23", "E21"), ("E4", "E3"),
)


def features(sessions: list[list[str]], closed: list[bool]) -> np.ndarray:
    """The original count features (artifacts made before bigrams were added still use this)."""
    x = np.zeros((len(sessions), len(EVENTS) + 2), np.float32)
    for row, (events, done) in enumerate(zip(sessions, closed)):
        for e in events:
            x[row, _INDEX.get(e, len(EVENTS) - 1)] += 1
        x[row, -2] = len(events)
        x[row, -1] = float(done)
    return x


class BlockModel:
    def __init__(self, seed: int = 0, n_estimators: int = 100) -> None:
        self.seed = seed
        self.classifier = RandomForestClassifier(n_estimators=n_estimators, min_samples_leaf=1, max_features=0.3, bootstrap=False, n_jobs=1,
                                                 random_state=seed)
        self.evidence_events: set[str] = set()
        self.vocab: dict[str, int] | None = None  # None: a model from before the order features
        self.bigrams: dict[tuple[str, str], int] = {}

    # -- features -------------------------------------------------------------------------------
    def _build_vocab(self, sessions: list[list[str]]) -> None:
        seen = Counter(e for s in sessions for e in s)
        names = list(EVENT_IDS) + sorted((e for e in seen if e not in _INDEX), key=lambda e: -seen[e])[:50]
        self.vocab = {e: i for i, e in enumerate(names)}
        pairs = Counter(p for s in sessions for p in zip(s, s[1:]))
        self.bigrams = {p: i for i, (p, _) in enumerate(pairs.most_common(MAX_BIGRAMS))}
        self.invariants = [(a, b) for a, b in INVARIANTS if a in self.vocab and b in self.vocab]

    def features(self, sessions: list[list[str]], closed: list[bool]) -> np.ndarray:
        if getattr(self, "vocab", None) is None:
            return features(sessions, closed)
        nv, nb = len(self.vocab), len(self.bigrams)
        other, base = nv, nv + 1 + nb
        invariants = [(self.vocab[a], self.vocab[b]) for a, b in getattr(self, "invariants", ())]
        x = np.zeros((len(sessions), base + 3 + len(invariants)), np.float32)
        vocab, bigrams, evidence = self.vocab, self.bigrams, self.evidence_events
        for row, (events, done) in enumerate(zip(sessions, closed)):
            xr = x[row]
            first_evidence = -1
            for k, e in enumerate(events):
                xr[vocab.get(e, other)] += 1
                if first_evidence < 0 and e in evidence:
                    first_evidence = k
            for p in zip(events, events[1:]):
                j = bigrams.get(p)
                if j is not None:
                    xr[nv + 1 + j] += 1
            xr[base] = first_evidence / len(events) if first_evidence >= 0 and events else -1.0
            xr[base + 1] = len(events)
            xr[base + 2] = float(done)
            for k, (a, b) in enumerate(invariants):
                xr[base + 3 + k] = xr[a] - xr[b]
        return x

    # -- fit / predict --------------------------------------------------------------------------
    def fit(self, sessions: list[list[str]], labels: list[int], closed: list[bool] | None = None) -> "BlockModel":
        """`closed[i]` False marks a session known to be cut short (a log that ends mid-session): it
        trains as an open prefix, failing only if it already holds evidence."""
        rng = np.random.default_rng(self.seed)
        closed = [True] * len(sessions) if closed is None else list(closed)
        seen_in_normal = {e for s, y in zip(sessions, labels) if y == 0 for e in s}
        all_events = {e for s in sessions for e in s}
        self.evidence_events = (set(EVENTS) | all_events) - seen_in_normal  # events that alone mark a failure
        self._build_vocab(sessions)
        ev = self.evidence_events
        all_sessions, all_closed, all_labels = [], [], []
        for s, y, done in zip(sessions, labels, closed):
            all_sessions.append(s)
            all_closed.append(done)
            all_labels.append(int(y == 1 and (done or any(e in ev for e in s))))
            if len(s) < 2:
                continue
            prefix = s[: int(rng.integers(1, len(s)))]  # one random open prefix per block
            all_sessions.append(prefix)
            all_closed.append(False)
            all_labels.append(int(y == 1 and any(e in ev for e in prefix)))
        # identical (session, closed, label) rows train once with their count as weight: HDFS sessions
        # repeat a lot, so this is what lets 575k blocks train in seconds
        rows = Counter(zip(map(tuple, all_sessions), all_closed, all_labels))
        keys = list(rows)
        x = self.features([list(k[0]) for k in keys], [k[1] for k in keys])
        self.classifier.fit(x, np.asarray([k[2] for k in keys]),
                            sample_weight=np.asarray([rows[k] for k in keys], np.float64))
        return self

    def probabilities(self, sessions: list[list[str]], closed: list[bool]) -> np.ndarray:
        proba = self.classifier.predict_proba(self.features(sessions, closed))
        if proba.shape[1] == 1:  # trained on one class only
            return np.full(len(sessions), float(self.classifier.classes_[0]), np.float32)
        return proba[:, 1].astype(np.float32)

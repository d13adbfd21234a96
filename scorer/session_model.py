"""The session (block) model: a supervised forest gated by a model of normal behaviour.

Why two parts. A forest on event counts learns the dev data well and the rest of the world badly:
trained on the first hours of HDFS.log it called later normal traffic (hundreds of reads, retried
reads, a replica deleted after re-replication) failures, because "unlike the normal sessions I saw"
and "failing" were the same thing to it. So:
- the forest (`RandomForestClassifier`) reads features that extrapolate safely: which events occur,
  their counts capped at what a normal session reaches (300 reads look like the most reads seen), and
  the residuals of the invariants of normal sessions; no raw lengths or counts to extrapolate;
- the gate (`NormalProfile`) lets it call a session anomalous only when the session carries evidence
  of a failure (an event no normal session holds whose template names a fault, scorer/failure_text.py,
  or, once ended, a broken invariant), or when it holds two events that co-occur in many failing sessions and almost never in
  a normal one (a re-replication followed by a delete of the file). An unfamiliar session without evidence stays normal, with a
  score held below the threshold, and says so. A template training never saw at all is novel
  evidence the forest cannot weigh: such a session is anomalous ("new template") whatever it says; so is
  an ended session breaking an invariant where normal sessions were seen to keep it (a checked missing
  step: scorer/normal_profile.py), since the forest never saw most ways a step goes missing.

A stream judges a session before it ends, so training also shows open prefixes: a prefix of a normal
session is normal; a prefix of a failing one counts as failing only once it holds an evidence event.
"""
from __future__ import annotations

import dataclasses
from collections import Counter
from collections.abc import Sequence

import numpy as np
from sklearn.ensemble import RandomForestClassifier

from logmesh.scorer.failure_text import failure_event
from logmesh.scorer.normal_profile import Evidence, NormalProfile
from logmesh.scorer.rate_evidence import relabel

#: Score given at most to a session the gate holds back (no evidence, not a known failure pattern).
UNFAMILIAR_CAP = 0.25
#: Score given at least to a session that breaks an invariant where normal sessions were seen to keep it
#: (invariant mining's own rule: a checked relation broken is the anomaly). Above every threshold the
#: chooser can pick (0.5-0.99), so validation scores what the shipped model does. The forest alone knew
#: no better than 0.73 for a replica whose addStoredBlock never came (no such block in the real data).
MISSING_STEP_FLOOR = 0.99
#: Two events form a failure pattern when they co-occur in at least this many failing sessions ...
MIN_PATTERN_SUPPORT = 20
#: ... and in at most this share of normal sessions (re-replication followed by a delete of the file) ...
MAX_PATTERN_NORMAL_SHARE = 0.001
#: ... and complete normal sessions hold it together less often than chance would (one-sided Poisson p <= this).
#: Without it every pair of re-replication (18 normal sessions) with a common event was a pattern: 16 pairs,
#: the `long` family's false alarms (re-replication with a verification: 3 together expected, 2 seen).
PATTERN_ALPHA = 0.01


@dataclasses.dataclass
class Judgement:
    """One session's verdict with its reasons (what an analyst reads)."""
    score: float
    anomalous: bool
    reasons: list[str]
    # "new_template", "evidence_event", "missing_step", "failure_pattern", "frequency" (a pattern or missing step
    # whose session holds an event beyond every normal session's count: scorer/rate_evidence.py), "unfamiliar", "none"
    kind: str


class SessionModel:
    """`fit(sessions, labels, closed)`, then `probabilities(sessions, closed)` (gated scores in [0, 1],
    anomalous at >= `threshold`) and `judge(...)` for the reasons."""

    version = 2  # BlockModel (scorer/block_model.py) was 1

    def __init__(self, seed: int = 0, n_estimators: int = 200, text_rule: bool = True,
                 pattern_alpha: float | None = PATTERN_ALPHA) -> None:
        self.seed = seed
        # an event no normal session held is evidence only if its template reads like a failure
        # (scorer/failure_text.py); False: every such event is evidence (the rule before it, for comparison)
        self.text_rule = text_rule
        self.pattern_alpha = pattern_alpha  # None: no avoidance test (the rule before it, for comparison)
        self.n_estimators = n_estimators
        self.threshold = 0.5
        self.profile = NormalProfile()
        self.vocab: dict[str, int] = {}
        self.caps: dict[str, int] = {}
        self.failure_patterns: set[tuple[str, str]] = set()
        self.stall_times = None  # scorer/stall_times.StallTimes, set by training when raw logs have times
        self.classifier = RandomForestClassifier(n_estimators=n_estimators, max_features=0.3, min_samples_leaf=1,
                                                 bootstrap=False, n_jobs=1, random_state=seed)

    @property
    def evidence_events(self) -> set[str]:
        """Events that alone mark a failure: every known or loghub event no complete normal session
        held whose template names a fault (what the history weighs similar past blocks by, as for BlockModel)."""
        from logmesh.ingest.templates import EVENT_IDS
        return {e for e in (set(EVENT_IDS) | self.profile.known_events) - self.profile.normal_events if self._fault(e)}

    # -- features -------------------------------------------------------------------------------
    def features(self, sessions: Sequence[Sequence[str]], closed: Sequence[bool]) -> np.ndarray:
        nv = len(self.vocab)
        invariants = self.profile.invariants
        normal = self.profile.normal_events
        base = 2 * nv + 1
        x = np.zeros((len(sessions), base + len(invariants) + 3), np.float32)
        for row, (events, done) in enumerate(zip(sessions, closed)):
            counts = Counter(events)
            xr = x[row]
            for e, n in counts.items():
                i = self.vocab.get(e)
                if i is None:
                    xr[2 * nv] += 1  # events training never saw
                    continue
                xr[i] = 1.0
                xr[nv + i] = np.log1p(min(n, self.caps[e]))
            broken = 0
            for k, inv in enumerate(invariants):
                r = inv.residual(counts)
                xr[base + k] = max(-3, min(3, r))
                broken += r != 0
            xr[-3] = sum(1 for e in counts if e not in normal)
            xr[-2] = broken if done else 0
            xr[-1] = float(done)
        return x

    # -- fit ------------------------------------------------------------------------------------
    def fit(self, sessions: Sequence[Sequence[str]], labels: Sequence[int],
            closed: Sequence[bool] | None = None) -> "SessionModel":
        closed = [True] * len(sessions) if closed is None else list(closed)
        labels = [int(y) for y in labels]
        known = {e for s in sessions for e in s}
        self.profile.fit([s for s, y, d in zip(sessions, labels, closed) if y == 0 and d], known)
        self.vocab = {e: i for i, e in enumerate(sorted(known))}
        self.caps = _caps(sessions, labels)
        rows = self._training_rows(sessions, labels, closed)
        keys = list(rows)
        x = self.features([k[0] for k in keys], [k[1] for k in keys])
        y = np.asarray([k[2] for k in keys])
        self.classifier.fit(x, y, sample_weight=np.asarray([rows[k] for k in keys], np.float64))
        self.failure_patterns = _pair_patterns(sessions, labels, self.profile.normal_events, closed,
                                               getattr(self, "pattern_alpha", None))
        return self

    def _training_rows(self, sessions, labels, closed) -> Counter:
        """(events, closed, label) -> weight. Each session trains as it is and as one random open
        prefix; identical rows train once with their count as weight (HDFS repeats sequences a lot)."""
        rng = np.random.default_rng(self.seed)
        evidence_events = lambda s: any(e not in self.profile.normal_events and self._fault(e) for e in s)
        rows: Counter = Counter()
        for s, y, done in zip(sessions, labels, closed):
            s = tuple(s)
            rows[(s, done, int(y == 1 and (done or evidence_events(s))))] += 1
            if len(s) >= 2:
                prefix = s[: int(rng.integers(1, len(s)))]
                rows[(prefix, False, int(y == 1 and evidence_events(prefix)))] += 1
        return rows

    # -- judge ----------------------------------------------------------------------------------
    def _raw(self, sessions, closed) -> np.ndarray:
        proba = self.classifier.predict_proba(self.features(sessions, closed))
        if proba.shape[1] == 1:
            return np.full(len(sessions), float(self.classifier.classes_[0]), np.float32)
        return proba[:, 1].astype(np.float32)

    def _fault(self, event: str) -> bool:
        return not getattr(self, "text_rule", False) or failure_event(event)

    def _gate(self, events: Sequence[str], done: bool) -> tuple[Evidence, bool]:
        evidence = self.profile.evidence(events, done)
        if getattr(self, "text_rule", False):
            # events no normal session held whose template names no fault: unfamiliar, not evidence
            evidence.unfamiliar = [e for e in evidence.events if not failure_event(e)]
            evidence.events = [e for e in evidence.events if failure_event(e)]
        present = set(events)
        pattern = next((p for p in self._patterns_in_order() if p[0] in present and p[1] in present), None)
        return evidence, pattern

    def _patterns_in_order(self) -> tuple[tuple[str, str], ...]:
        """The failure patterns sorted: a set's order changes with the process's hash seed and with a copy, and the
        pattern a verdict cites must not (the same block, the same reason on every replica)."""
        order = self.__dict__.get("_pattern_order")
        if order is None or len(order) != len(self.failure_patterns):
            order = self._pattern_order = tuple(sorted(self.failure_patterns))
        return order

    def probabilities(self, sessions: Sequence[Sequence[str]], closed: Sequence[bool]) -> np.ndarray:
        if not len(sessions):
            return np.zeros(0, np.float32)
        return np.asarray([j.score for j in self.judge(sessions, closed)], np.float32)

    def judge(self, sessions: Sequence[Sequence[str]], closed: Sequence[bool]) -> list[Judgement]:
        if not len(sessions):
            return []
        raw = self._raw(sessions, closed)
        out = []
        for events, done, p in zip(sessions, closed, raw):
            evidence, pattern = self._gate(events, done)
            reasons = evidence.reasons(self.profile.known_events)
            if any(e not in self.profile.known_events for e in evidence.events):
                # a template training never saw: the forest cannot know it, the gate does; novel evidence
                kind, score = "new_template", max(float(p), self.threshold)
            elif evidence.broken and not evidence.events:  # a checked missing step, nothing the forest must weigh
                kind, score = evidence.kind, max(float(p), MISSING_STEP_FLOOR)
            elif evidence:
                kind, score = evidence.kind, float(p)
            elif pattern:
                kind, score = "failure_pattern", float(p)
                reasons.append(f"{pattern[0]} with {pattern[1]}: together in failing sessions, almost never in normal ones")
            else:
                score = float(min(p, UNFAMILIAR_CAP))
                kind = "unfamiliar" if p >= self.threshold or evidence.unfamiliar else "none"
                if kind == "unfamiliar":
                    reasons.append("unlike the normal sessions seen in training, but without failure evidence")
                    reasons += [f"event {e} never seen in a normal session, but its template names no fault"
                                for e in evidence.unfamiliar[:3]]
                    reasons += [f"breaks {inv.describe()} by {r:+d}, which no normal session like it was seen to keep"
                                for inv, r in evidence.unchecked[:3]]
            anomalous = score >= self.threshold
            # only the kind's name: the verdict and score above are reached without it (scorer/rate_evidence.py)
            kind = relabel(kind, anomalous, events, getattr(self.profile, "max_count", None), reasons)
            out.append(Judgement(score, anomalous, reasons, kind))
        return out


def _caps(sessions, labels) -> dict[str, int]:
    """Per event, the count that counts as "many": the 99th percentile over the normal sessions that
    hold it (over all sessions holding it for events normal sessions never have)."""
    per_event: dict[str, list[int]] = {}
    per_event_any: dict[str, list[int]] = {}
    for s, y in zip(sessions, labels):
        for e, n in Counter(s).items():
            per_event_any.setdefault(e, []).append(n)
            if y == 0:
                per_event.setdefault(e, []).append(n)
    return {e: max(1, int(np.percentile(per_event.get(e) or v, 99))) for e, v in per_event_any.items()}


def _pair_patterns(sessions, labels, normal_events: set[str], closed=None,
                   alpha: float | None = None) -> set[tuple[str, str]]:
    """Pairs of events that normal sessions hold separately but almost never together, while many
    failing sessions hold both (association rules with confidence >= 0.99). With `alpha`, a pair is
    kept only if complete normal sessions hold it together significantly less often than their
    holders of each event would by chance (Poisson, one-sided): rarity that is merely the rarity of
    one event (18 normal re-replications, 820 verifications: 3 together expected, 2 seen) is not avoidance."""
    closed = [True] * len(sessions) if closed is None else closed
    together_normal: Counter = Counter()
    together_failing: Counter = Counter()
    together_complete: Counter = Counter()
    holders: Counter = Counter()
    normal_total = complete_total = 0
    for s, y, done in zip(sessions, labels, closed):
        present = sorted(set(s) & normal_events)
        pairs = [(a, b) for i, a in enumerate(present) for b in present[i + 1:]]
        if y == 0:
            normal_total += 1
            together_normal.update(pairs)
            if done:
                complete_total += 1
                holders.update(present)
                together_complete.update(pairs)
        else:
            together_failing.update(pairs)
    out = set()
    for pair, n in together_failing.items():
        m = together_normal[pair]
        if n >= MIN_PATTERN_SUPPORT and m <= MAX_PATTERN_NORMAL_SHARE * normal_total and n / (n + m) >= 0.99:
            if alpha is not None and complete_total:
                from scipy.stats import poisson
                expected = holders[pair[0]] * holders[pair[1]] / complete_total
                if poisson.cdf(together_complete[pair], expected) > alpha:
                    continue
            out.add(pair)
    return out

"""A model of normal behaviour, learnt from complete normal sessions only.

It answers one question for the session model: does this session carry *evidence* of a failure,
or is it merely unfamiliar? Evidence is
- an event that no complete normal session ever held (an exception, a timeout), or a template no
  training line had at all ("new template");
- for a session that has ended, a broken invariant: a count relation that every normal session keeps
  (invariant mining, Lou et al., USENIX ATC 2010: each "Receiving block" has its "Received block",
  each replica stored is acknowledged, each block put in an invalidSet is deleted). A write that never
  finished breaks them; a normal session with hundreds of reads does not.

An invariant is only evidence where it was checked. Mined at 99.5% support over all normal sessions,
`E11 + E26 = 2*E5` holds for plain writes and is broken by every normal re-replication (0.4% of them):
a relation says nothing about sessions unlike the ones it was checked on. So each invariant keeps its
domain: the pairs of events that at least `DOMAIN_SESSIONS` normal sessions holding both kept it in
(`DOMAIN_SUPPORT` of them), and per event the most of it a keeping session held. A session outside
the domain (an event pair, or a count, no normal sessions vouched for) that breaks the invariant is
unfamiliar, not missing a step. Relations among rare events are mined from 10 sessions on (the 18
normal re-replications give `E16 = E18 = E25`), since the domain now keeps them where they belong.

The relations are mined from the data (pairs and triples of event counts with small integer
weights), so a new log family needs no hand-written rules. Open sessions (still being written, or cut
by the end of a log) are judged on evidence events only: a missing step is not missing yet.
"""
from __future__ import annotations

import dataclasses
import itertools
from collections import Counter
from collections.abc import Iterable, Sequence

import numpy as np

#: Normal sessions holding a pair of events that must have kept an invariant before it is evidence for
#: sessions holding that pair (0 exceptions in 10 bounds the break rate below 26% at 95%: weak, but
#: re-replication, 18 of the shared data's 4,955 normal sessions, is judged on it)
DOMAIN_SESSIONS = 10
DOMAIN_SUPPORT = 0.9
#: Weights tried for each event of a candidate relation (sum(w_i * count_i) == 0).
_WEIGHTS = (1, 2, -1, -2)


@dataclasses.dataclass(frozen=True)
class Invariant:
    """sum(weight * count(event)) == 0 in (nearly) every complete normal session."""
    terms: tuple[tuple[str, int], ...]
    support: float  # share of the normal sessions touching these events that keep the relation
    sessions: int  # how many normal sessions touched these events

    def residual(self, counts: Counter) -> int:
        return sum(w * counts[e] for e, w in self.terms)

    def describe(self) -> str:
        left = " + ".join(f"{w}*{e}" if w != 1 else e for e, w in self.terms if w > 0)
        right = " + ".join(f"{-w}*{e}" if w != -1 else e for e, w in self.terms if w < 0)
        return f"{left} = {right}"


def mine_invariants(sessions: Sequence[Counter], events: Sequence[str], support: float = 0.995,
                    min_sessions: int = 20, max_terms: int = 3) -> list[Invariant]:
    """Sparse integer relations between event counts that hold in at least `support` of the normal
    sessions in which any of their events occurs. A relation over three events is kept only when it
    explains more sessions than every relation already found among its events (E5 = E9 + E6 beside
    E5 = E9 when re-replication adds a receive)."""
    events = list(events)
    if not sessions or not events:
        return []
    m = np.array([[c[e] for e in events] for c in sessions], np.int64)
    found: list[Invariant] = []
    for k in range(2, max_terms + 1):
        for combo in itertools.combinations(range(len(events)), k):
            sub = m[:, combo]
            active = (sub > 0).any(axis=1)
            n = int(active.sum())
            if n < min_sessions:
                continue
            sub = sub[active]
            best: tuple[float, tuple[int, ...]] | None = None
            for w in itertools.product(_WEIGHTS, repeat=k):
                if w[0] < 0 or all(x > 0 for x in w) or np.gcd.reduce(np.abs(w)) != 1:
                    continue
                ok = float(((sub @ np.asarray(w)) == 0).mean())
                if ok >= support and (best is None or ok > best[0]):
                    best = (ok, w)
            if best is None:
                continue
            names = {events[i] for i in combo}
            inner = [f for f in found if {e for e, _ in f.terms} <= names]
            if inner and best[0] <= max(f.support for f in inner):
                continue
            # the wider relation explains the exceptions of the narrower ones it contains: keep it alone
            found = [f for f in found if f not in inner]
            found.append(Invariant(tuple((events[i], int(x)) for i, x in zip(combo, best[1])), best[0], n))
    return found


@dataclasses.dataclass
class Evidence:
    """Why a session looks like a failure; empty when it does not."""
    events: list[str]  # events never seen in a complete normal session (first occurrence order)
    broken: list[tuple[Invariant, int]]  # invariants the (ended) session breaks, with the residual
    # invariants it breaks outside where they were checked (not evidence; said in an unfamiliar verdict)
    unchecked: list[tuple[Invariant, int]] = dataclasses.field(default_factory=list)
    # events no normal session held that the session model does not count as evidence (their template
    # names no fault: scorer/failure_text.py); said in an unfamiliar verdict
    unfamiliar: list[str] = dataclasses.field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.events or self.broken)

    def reasons(self, known: Iterable[str] = ()) -> list[str]:
        known = set(known)
        out = [f"new template {e}" if e not in known else f"event {e} never seen in a normal session"
               for e in self.events]
        out += [f"missing step: {inv.describe()} broken by {r:+d}" for inv, r in self.broken]
        return out

    @property
    def kind(self) -> str:
        """The incident kind an analyst reads first: exception/new template beats a missing step."""
        if self.events:
            return "evidence_event"
        return "missing_step" if self.broken else "none"


class NormalProfile:
    """Fitted on complete normal sessions (event id lists). `known_events` are every event the
    training data held (both classes): an event outside it is a new template."""

    def __init__(self, support: float = 0.995, min_sessions: int = 10, domain_sessions: int | None = None) -> None:
        self.support = support
        self.min_sessions = min_sessions
        self.domain_sessions = DOMAIN_SESSIONS if domain_sessions is None else domain_sessions
        self.normal_events: set[str] = set()
        self.known_events: set[str] = set()
        self.invariants: list[Invariant] = []
        # event -> share of the complete normal sessions holding it (what an incident's evidence lines are
        # counted against; artifacts trained before it have none: scorer/analyst/incidents.py says "unknown")
        self.session_fraction: dict[str, float] = {}
        # event -> the most of it any complete normal session held (scorer/rate_evidence.py: a count beyond it is
        # rate evidence; artifacts trained before it have none, and their verdicts keep their kinds)
        self.max_count: dict[str, int] = {}
        # per invariant, where it was checked: (event index, V x V bool "pair vouched for", max count per event)
        self.domain_index: dict[str, int] = {}
        self.domains: list[tuple[np.ndarray, np.ndarray]] = []

    def fit(self, normal_complete: Sequence[Sequence[str]], known_events: Iterable[str] = ()) -> "NormalProfile":
        counts = [Counter(s) for s in normal_complete]
        seen = Counter(e for c in counts for e in c)
        self.normal_events = set(seen)
        self.session_fraction = {e: n / len(counts) for e, n in seen.items()}
        self.max_count = {e: max(c[e] for c in counts if e in c) for e in seen}
        self.known_events = set(known_events) | self.normal_events
        events = sorted(seen, key=lambda e: (-seen[e], e))
        self.invariants = mine_invariants(counts, events, self.support, self.min_sessions)
        self._fit_domains(counts, events)
        return self

    def _fit_domains(self, counts: Sequence[Counter], events: Sequence[str]) -> None:
        self.domain_index = {e: i for i, e in enumerate(events)}
        self.domains = []
        if not counts:
            return
        m = np.array([[c[e] for e in events] for c in counts], np.int64)
        present = (m > 0).astype(np.int64)
        together = present.T @ present  # normal sessions holding both events of a pair
        for inv in self.invariants:
            kept = np.array([inv.residual(c) == 0 for c in counts])
            kept_together = present[kept].T @ present[kept]
            vouched = (together >= self.domain_sessions) & (kept_together >= DOMAIN_SUPPORT * together)
            most = m[kept].max(axis=0) if kept.any() else np.zeros(len(events), np.int64)
            self.domains.append((vouched, most))

    def checked(self, k: int, counts: Counter) -> bool:
        """Was invariant k checked on normal sessions like this one (every pair of its events, every count)?"""
        if not getattr(self, "domains", None) or not getattr(self, "domain_sessions", 0):
            return True  # no domains (an artifact trained before them, or domain_sessions=0): every invariant applies
        idx = [self.domain_index.get(e) for e in counts]
        if any(i is None for i in idx):
            return False  # an event no normal session held: nothing was checked with it
        vouched, most = self.domains[k]
        if any(counts[e] > most[i] for e, i in zip(counts, idx)):
            return False
        return bool(vouched[np.ix_(idx, idx)].all())

    def evidence(self, events: Sequence[str], closed: bool) -> Evidence:
        normal = self.normal_events
        odd = list(dict.fromkeys(e for e in events if e not in normal))
        broken: list[tuple[Invariant, int]] = []
        unchecked: list[tuple[Invariant, int]] = []
        if closed:
            counts = Counter(events)
            for k, inv in enumerate(self.invariants):
                r = inv.residual(counts)
                if r:
                    (broken if self.checked(k, counts) else unchecked).append((inv, r))
        return Evidence(odd, broken, unchecked)

    def unfinished(self, events: Sequence[str]) -> bool:
        """Would this session break an invariant if it ended now? (A write still in progress does.)"""
        counts = Counter(events)
        return any(inv.residual(counts) for inv in self.invariants)

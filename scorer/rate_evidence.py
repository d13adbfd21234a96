"""Rate evidence: a flagged session that does an ordinary thing more often than any normal session did.

This names the *kind* of a verdict the session model (scorer/session_model.py) has already reached; it never
decides one, so no verdict or score depends on it. A verdict becomes "frequency" (IncidentKind FREQUENCY) when
- the gate's evidence lies in how events combine, not in an event itself: a failure pattern (two events
  together) or a missing step. A new template or an event no normal session holds (an exception) stays what it
  is: those name the failure, a count beside them only says it repeated;
- and some event that normal sessions hold occurs more often than any complete normal session held it
  (`NormalProfile.max_count`, kept at training time).

Why the most and not a high percentile: the 99th percentile of the counts over all normal sessions is a plain
write's (3 addStoredBlock), and normal re-replications reach 4-10, so on the shared data that percentile would
call 615 failing re-replications a rate problem that normal re-replications share. Above everything normal
traffic showed is a count no normal session explains (the real data: addStoredBlock 11-13 times against at most
10, a verification repeated 4 times against 3). Artifacts trained before `max_count` have none: no verdict of
theirs is called "frequency" (their kinds stay as they were). Why HDFS needs no rate test beside the most: a count
above the most of N normal sessions has, by the data alone, a chance of at most about 3 / N (95%), 6e-4 for HDFS's
4,956 complete normal sessions, as small as BGL's per-template bound below (0.01 / 14 events = 7e-4); BGL's 381
normal windows give 8e-3, too thin. Of the 8 blocks so named on the shared data 6 also pass BGL's test; the other 2
(a verification E2 4 times against at most 3, mean 0.28) get 0.009 from its model, where the most of 4,956
sessions bounds the chance at 6e-4 without one; so HDFS keeps the most.

BGL (scorer/bgl_serving.py) has no session model: a node's or a window's session is flagged when the line
ensemble flags a line of it, and its kind was "anomalous_lines" (no IncidentKind). It is named "frequency" when a
template occurs in `window` consecutive lines of it more often than any training window without an alert line held
it AND a count that high is improbable at the normal rate (`burst`; what training saw per template in its normal
windows is `window_normal`, scorer/bgl.py). Above the maximum alone says little there: 28 of the shared data's 105
normal templates were seen at most once per window, so twice would have been a burst. A longer session (a node's
lines over hours) is read through a sliding window of that many lines, so a count is always set against as many
lines as training counted in.

The rate test. BGL lines come in runs (on the shared data 90% of normal lines are followed by the same template), so
lines are not independent draws: the variance of a template's count per normal window is a median 8.6 times its mean
(1.2 to 69 over the 50 templates 10 or more normal windows held), where a Poisson count's is once. The count in a
window is modelled as negative binomial with the template's mean and that spread (variance / mean, its own when at
least `OWN_SPREAD_WINDOWS` normal windows held it, else the median of those that have one: one sighting says nothing
of its runs' length). The rate's uncertainty from few windows: the mean is taken at its upper `CONFIDENCE` bound, an
exact Poisson bound on the template's runs (its lines over the spread) over the normal windows, so a template seen
once in 381 windows is not taken to be rarer than the data can show. A burst's count has a tail probability under
`FAMILY_P` / (templates normal windows hold): at the normal rates a window is then named a burst with a chance of at
most `FAMILY_P` (Bonferroni over the templates tested), and at least `MIN_LINES` lines: two lines of a template are
one short run, a repetition and not a rate.
"""
from __future__ import annotations

from collections import Counter, deque
from collections.abc import Mapping, Sequence
from statistics import median

from scipy.stats import chi2, nbinom, poisson

#: Verdict kinds whose evidence is how events combine; only these may be called "frequency".
COMBINATION_KINDS = frozenset({"failure_pattern", "missing_step"})
#: Events cited in the reason, most excessive first.
CITED = 3

# BGL's burst test (the module's docstring says why each is what it is; chosen from the method, not tuned).
#: The chance a window at the normal rates is named a burst, shared among the templates tested (Bonferroni).
FAMILY_P = 0.01
#: The one-sided confidence of the upper bound the normal mean is taken at.
CONFIDENCE = 0.95
#: A template's own spread is used when this many normal windows held it; fewer say little of its runs.
OWN_SPREAD_WINDOWS = 10
#: The fewest lines of a template that make a burst: two are one short run.
MIN_LINES = 3


def beyond_normal(events: Sequence[str], max_count: Mapping[str, int] | None) -> list[tuple[str, int, int]]:
    """(event, count, most any normal session held) for each event normal sessions hold that this session holds
    more often, most excessive (count / most) first; [] without `max_count` (an artifact from before it)."""
    if not max_count:
        return []
    over = [(e, n, max_count[e]) for e, n in Counter(events).items() if e in max_count and n > max_count[e]]
    return sorted(over, key=lambda t: (-t[1] / t[2], t[0]))


def frequency_reason(over: Sequence[tuple[str, int, int]], what: str = "session", span: str = "") -> str:
    shown = ", ".join(f"{e} x{n} (normal {what}s at most {most})" for e, n, most in over[:CITED])
    return f"more often than any normal {what}{span}: {shown}"


def window_counts(events: Sequence[str], window: int) -> Counter:
    """event -> the most of it in any `window` consecutive events (all of them when there are fewer)."""
    best, now, held = Counter(), Counter(), deque()
    for e in events:
        held.append(e)
        now[e] += 1
        if len(held) > window:
            now[held.popleft()] -= 1
        best[e] = max(best[e], now[e])
    return best


def window_normal(windows: Sequence[Sequence[str]]) -> dict:
    """What a burst is tested against, from the events of the training windows without an alert line: how many
    there were, and per event the most any held, how many held it, its lines and the sum of its squared counts."""
    most: dict[str, int] = {}
    held: Counter = Counter()
    lines: Counter = Counter()
    squares: Counter = Counter()
    for w in windows:
        for e, n in Counter(w).items():
            most[e] = max(most.get(e, 0), n)
            held[e] += 1
            lines[e] += n
            squares[e] += n * n
    return {"windows": len(windows), "max": most, "held": dict(held), "lines": dict(lines),
            "squares": dict(squares)}


def spreads(normal: Mapping) -> dict[str, float]:
    """event -> variance / mean of its count per normal window (at least 1, a Poisson count's): its own when
    `OWN_SPREAD_WINDOWS` windows held it, else the median of those."""
    n = normal["windows"]
    own = {}
    for e, lines in normal["lines"].items():
        if normal["held"][e] >= OWN_SPREAD_WINDOWS:
            mean = lines / n
            own[e] = max(1.0, (normal["squares"][e] / n - mean * mean) / mean)
    pooled = median(own.values()) if own else 1.0
    return {e: own.get(e, pooled) for e in normal["lines"]}


def tail(count: int, lines: int, windows: int, spread: float) -> float:
    """P(a normal window holds `count` or more lines of an event seen `lines` times in `windows` normal windows):
    negative binomial of variance `spread` x mean, the mean at its upper CONFIDENCE bound (exact Poisson bound on
    lines / spread runs)."""
    runs = lines / spread
    mean = spread * chi2.ppf(CONFIDENCE, 2 * (runs + 1)) / 2 / windows
    if spread <= 1.0:
        return float(poisson.sf(count - 1, mean))
    return float(nbinom.sf(count - 1, mean / (spread - 1.0), 1.0 / spread))


def burst(events: Sequence[str], normal: Mapping | None, window: int,
          spread: Mapping[str, float] | None = None) -> list[tuple[str, int, int, float]]:
    """BGL: (event, most of it in `window` consecutive events, most any normal training window held, its mean per
    normal window) for each event normal windows hold that this session holds beyond that most, at least MIN_LINES
    times, and improbably often at the normal rate (the module's docstring); most improbable first. [] without
    `normal` (an artifact from before it). `spread` is `spreads(normal)`, which a server computes once at load."""
    if not normal or not normal.get("windows") or window < 1:
        return []
    most, lines, n = normal["max"], normal["lines"], normal["windows"]
    spread = spreads(normal) if spread is None else spread
    p_max = FAMILY_P / len(lines)
    found = []
    for e, c in window_counts(events, window).items():
        if e in most and c > most[e] and c >= MIN_LINES:
            p = tail(c, lines[e], n, spread[e])
            if p < p_max:
                found.append((p, e, c))
    return [(e, c, most[e], lines[e] / n) for _, e, c in sorted(found)]


def burst_reason(over: Sequence[tuple[str, int, int, float]], window: int) -> str:
    shown = ", ".join(f"{e} x{c} (normal windows at most {m}, {mean:.2g} on average)" for e, c, m, mean in over[:CITED])
    return f"more often than any normal window of {window} lines, and improbably at the normal rate: {shown}"


def relabel(kind: str, anomalous: bool, events: Sequence[str], max_count: Mapping[str, int] | None,
            reasons: list[str]) -> str:
    """The verdict's kind: "frequency" (with its reason put first in `reasons`) for a flagged combination verdict
    whose session holds an event beyond every normal session's count; else `kind` unchanged."""
    if not anomalous or kind not in COMBINATION_KINDS:
        return kind
    over = beyond_normal(events, max_count)
    if not over:
        return kind
    reasons.insert(0, frequency_reason(over))
    return "frequency"

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
theirs is called "frequency" (their kinds stay as they were).

BGL (scorer/bgl_serving.py) has no session model: a node's or a window's session is flagged when the line
ensemble flags a line of it, and its kind was "anomalous_lines" (no IncidentKind). It is named "frequency" when an
event occurs more often in `window` consecutive lines of it than in any training window without an alert line
(`window_max`, kept at training time, scorer/bgl.py); a longer session (a node's lines over hours) is read through
a sliding window of that many lines, so a count is always set against as many lines as training counted in.
"""
from __future__ import annotations

from collections import Counter, deque
from collections.abc import Mapping, Sequence

#: Verdict kinds whose evidence is how events combine; only these may be called "frequency".
COMBINATION_KINDS = frozenset({"failure_pattern", "missing_step"})
#: Events cited in the reason, most excessive first.
CITED = 3


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


def burst(events: Sequence[str], window_max: Mapping[str, int] | None, window: int) -> list[tuple[str, int, int]]:
    """BGL: (event, most of it in `window` consecutive events, most any normal training window held) for each
    event normal windows hold that this session holds more of, most excessive first; [] without `window_max`."""
    if not window_max or window < 1:
        return []
    over = [(e, n, window_max[e]) for e, n in window_counts(events, window).items()
            if e in window_max and n > window_max[e]]
    return sorted(over, key=lambda t: (-t[1] / t[2], t[0]))


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

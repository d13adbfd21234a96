"""When an LLM summary may start: only while scoring is quiet, and at the latest after a maximum deferral.

On a machine where the model shares the scorer's CPU (llama.cpp on the same box), every second the model
computes is a second of a core scoring does not get (docs/benchmarks.md: lines/s halved on 2 cores). So
before each LLM call the summary worker waits for scoring to go quiet: fewer than `busy_rate` scoring
messages per second over the last `window_s` (Score and ScoreBlock requests, ScoreStream and
ScoreBlockStream messages, as the gRPC metrics interceptor counts them when a handler takes one). It never
waits past `max_wait_s`: a scorer that is never quiet still gets its summaries, each at most that much later.
The wait starts when the worker is free for the request (the previous call's end, or the submission), so
under constant load the LLM runs at most T / (max_wait_s + T) of the time, T being one call.

The worker waits, not scoring: nothing on the scoring path reads or takes anything here.
"""
from __future__ import annotations

import collections
import ipaddress
import threading
import time
from dataclasses import dataclass
from typing import Callable
from urllib.parse import urlsplit

from logmesh.runtime.metrics import RECEIVED

SCORER_SERVICE = "logmesh.v1.ScorerService"
SCORING_METHODS = frozenset({"Score", "ScoreStream", "ScoreBlock", "ScoreBlockStream"})

QUIET = "quiet"  # scoring was quiet: the call started at once (after one window's look)
AFTER_BUSY = "after_busy"  # scoring was busy, then went quiet before the maximum
AT_MAX = "at_max"  # scoring was still busy at the maximum deferral: the call started anyway
STOPPED = "stopped"  # the summarizer closed while waiting

# --summary-defer-max-s when not given and the LLM is on this machine (a loopback --llm-url): long enough that a
# constantly busy scorer lends the model a core a fraction of the time, short of --notify-wait's 30 s default
LOCAL_DEFER_MAX_S = 20.0


def scoring_messages() -> float:
    """Scoring requests and stream messages this process's servers have taken so far (all scorers in it)."""
    total = 0.0
    for family in RECEIVED.collect():
        for sample in family.samples:
            if (sample.name.endswith("_total") and sample.labels.get("grpc_service") == SCORER_SERVICE
                    and sample.labels.get("grpc_method") in SCORING_METHODS):
                total += sample.value
    return total


@dataclass(frozen=True)
class Deferral:
    """How one wait ended (QUIET, AFTER_BUSY, AT_MAX, STOPPED) and how long it took."""
    ended: str
    seconds: float


class ScoringQuiet:
    """Waits until scoring is quiet (see the module docstring). `work` returns a count that grows with scoring
    work (default: scoring_messages); `clock` is monotonic seconds."""

    def __init__(self, max_wait_s: float, busy_rate: float = 1.0, window_s: float = 1.0, poll_s: float = 0.1,
                 work: Callable[[], float] = scoring_messages, clock: Callable[[], float] = time.monotonic) -> None:
        if max_wait_s <= 0 or busy_rate <= 0 or window_s <= 0 or poll_s <= 0:
            raise ValueError("max_wait_s, busy_rate, window_s and poll_s must be positive")
        self.max_wait_s, self.busy_rate, self.window_s, self.poll_s = max_wait_s, busy_rate, window_s, poll_s
        self._work, self._clock = work, clock

    def wait(self, stop: threading.Event) -> Deferral:
        """Returns once the last `window_s` held fewer than busy_rate * window_s scoring messages, or at
        `max_wait_s`, or when `stop` is set. Looks for one window first: a wait lasts at least `window_s`."""
        started = self._clock()
        samples: collections.deque[tuple[float, float]] = collections.deque([(started, self._work())])
        was_busy = False
        while not stop.wait(self.poll_s):
            now, count = self._clock(), self._work()
            samples.append((now, count))
            while len(samples) > 1 and samples[1][0] <= now - self.window_s:
                samples.popleft()  # keep the newest sample at or before the window's start
            if samples[0][0] <= now - self.window_s:  # one whole window seen
                if count - samples[0][1] < self.busy_rate * self.window_s:
                    return Deferral(AFTER_BUSY if was_busy else QUIET, now - started)
                was_busy = True
            if now - started >= self.max_wait_s:
                return Deferral(AT_MAX, now - started)
        return Deferral(STOPPED, self._clock() - started)


def llm_is_local(url: str) -> bool:
    """True when `url`'s host is this machine by name or address (localhost, 127.0.0.0/8, ::1)."""
    host = urlsplit(url).hostname or ""
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def for_llm(llm_url: str | None, max_wait_s: float | None, busy_rate: float) -> ScoringQuiet | None:
    """serve scorer's deferral: `max_wait_s` None picks LOCAL_DEFER_MAX_S for a loopback `llm_url` and none for
    another host (its own machine: deferring would only delay); 0 or no LLM: none."""
    if not llm_url:
        return None
    if max_wait_s is None:
        max_wait_s = LOCAL_DEFER_MAX_S if llm_is_local(llm_url) else 0.0
    return ScoringQuiet(max_wait_s, busy_rate) if max_wait_s > 0 else None

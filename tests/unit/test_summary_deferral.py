"""The summary deferral policy (scorer/analyst/summary_deferral.py) on the real clock.

Here "busy" is a fake, named as such: a thread that counts scoring messages at a given rate while it runs,
standing in for a scorer under load, which a unit test has no model to serve. The real busy scorer and the
real LLM are in tests/integration/test_summaries_under_load.py."""
from __future__ import annotations

import threading
import time

import pytest

from incident_samples import hdfs_incidents
from logmesh.scorer.analyst import summary_deferral as sd
from logmesh.scorer.analyst.summaries import NO_LLM, Summarizer


class FakeBusy:
    """A fake of scoring load: `rate` messages a second while running, none before start or after stop."""

    def __init__(self, rate: float) -> None:
        self.count = 0.0
        self._gap = 1.0 / rate
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(self._gap):
            self.count += 1

    def start(self) -> "FakeBusy":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)

    def __call__(self) -> float:
        return self.count


def timed(gate: sd.ScoringQuiet, stop: threading.Event | None = None) -> tuple[sd.Deferral, float]:
    started = time.monotonic()
    got = gate.wait(stop or threading.Event())
    return got, time.monotonic() - started


def test_quiet_scoring_lets_the_call_start_after_one_window():
    idle = FakeBusy(20)  # never started: no messages
    got, took = timed(sd.ScoringQuiet(max_wait_s=10, window_s=0.5, work=idle))
    assert got.ended == sd.QUIET
    assert 0.5 <= took < 2.0


def test_constant_load_defers_to_the_maximum_then_the_call_goes_anyway():
    busy = FakeBusy(20).start()
    try:
        got, took = timed(sd.ScoringQuiet(max_wait_s=2.0, window_s=0.5, work=busy))
    finally:
        busy.stop()
    assert got.ended == sd.AT_MAX
    assert 2.0 <= took < 3.5 and got.seconds >= 2.0


def test_the_call_starts_once_load_stops_before_the_maximum():
    busy = FakeBusy(20).start()
    threading.Timer(1.5, busy.stop).start()
    got, took = timed(sd.ScoringQuiet(max_wait_s=20, window_s=0.5, work=busy))
    assert got.ended == sd.AFTER_BUSY
    assert 1.5 + 0.5 <= took < 5.0  # quiet for one whole window after the load stopped


def test_a_rate_under_the_threshold_is_quiet():
    slow = FakeBusy(2).start()  # 2 messages a second against a threshold of 5
    try:
        got, _ = timed(sd.ScoringQuiet(max_wait_s=10, busy_rate=5, window_s=1.0, work=slow))
    finally:
        slow.stop()
    assert got.ended == sd.QUIET


def test_close_ends_a_wait_at_once():
    busy = FakeBusy(20).start()
    stop = threading.Event()
    threading.Timer(0.5, stop.set).start()
    try:
        got, took = timed(sd.ScoringQuiet(max_wait_s=30, window_s=0.5, work=busy), stop)
    finally:
        busy.stop()
    assert got.ended == sd.STOPPED and took < 2.0


def test_bad_settings_are_refused():
    with pytest.raises(ValueError):
        sd.ScoringQuiet(max_wait_s=0)


@pytest.mark.parametrize(("url", "max_wait_s", "expected"), [
    ("http://127.0.0.1:8000/v1", None, sd.LOCAL_DEFER_MAX_S),  # the model shares this machine: defer
    ("http://localhost:8000/v1", None, sd.LOCAL_DEFER_MAX_S),
    ("http://[::1]:8000/v1", None, sd.LOCAL_DEFER_MAX_S),
    ("http://logmesh-llm:8000/v1", None, None),  # its own machine: deferring would only delay
    ("http://10.0.0.7:8000/v1", None, None),
    ("http://127.0.0.1:8000/v1", 0.0, None),  # asked for none
    ("http://logmesh-llm:8000/v1", 5.0, 5.0),  # asked for, wherever the model is
    (None, 5.0, None),  # no LLM: fallbacks only, which never wait
])
def test_the_default_deferral_follows_where_the_llm_is(url, max_wait_s, expected):
    gate = sd.for_llm(url, max_wait_s, busy_rate=1.0)
    assert (gate.max_wait_s if gate else None) == expected


def test_the_real_counter_counts_scoring_messages_only():
    """scoring_messages reads the gRPC interceptor's counter: a scoring method's message counts, another
    method's does not (the counter incremented as the interceptor does for a message it hands a handler)."""
    from logmesh.runtime.metrics import RECEIVED
    before = sd.scoring_messages()
    RECEIVED.labels("bidi_stream", sd.SCORER_SERVICE, "ScoreStream").inc(3)
    RECEIVED.labels("unary", sd.SCORER_SERVICE, "GetStats").inc()
    RECEIVED.labels("unary", "logmesh.v1.EmbedderService", "Embed").inc()
    assert sd.scoring_messages() - before == 3


def test_fallbacks_never_wait_for_the_deferral(data_dir):
    """Without an LLM every summary is the fallback: built at once even while scoring stays busy and the
    deferral would hold an LLM call for 30 s."""
    incidents = hdfs_incidents(data_dir)
    got: list[str] = []
    busy = FakeBusy(20).start()
    s = Summarizer(lambda incident_id, summary: got.append(summary.fallback_reason),
                   deferral=sd.ScoringQuiet(max_wait_s=30, window_s=0.5, work=busy))
    try:
        started = time.monotonic()
        for incident in incidents:
            s.submit(incident)
        assert s.wait_idle(10)
        assert time.monotonic() - started < 5
        assert got == [NO_LLM] * len(incidents)
        counts = s.counts()
        assert counts.deferred == 0 and counts.oldest_waiting_seconds == 0.0
        assert 0.0 <= counts.delay_p50_seconds <= counts.delay_p95_seconds < 5
    finally:
        busy.stop()
        s.close()

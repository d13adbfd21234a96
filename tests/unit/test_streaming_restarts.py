"""The job's query restarts (streaming/job.py, _restart_episode): tenacity's backoff over failures in a row, a
failed fence counting as one, a failure after new batches starting a new episode, a signal ending the wait.
Spark's query and the Kafka fence are replaced by stand-ins that fail on cue (the faults these tests need); the
real ones are exercised by tests/e2e/test_faults.py."""
from __future__ import annotations

import logging
from types import SimpleNamespace

import pytest

from logmesh.streaming import job


class _Waits:
    """stop.requested: records each backoff wait instead of sleeping; `stop_at` returns True (a signal) then."""

    def __init__(self, stop_at: int | None = None) -> None:
        self.seconds: list[float] = []
        self.stop_at = stop_at

    def wait(self, seconds: float) -> bool:
        self.seconds.append(seconds)
        return self.stop_at is not None and len(self.seconds) >= self.stop_at


def _episode(monkeypatch, outcomes, max_restarts=5, stop_at=None, fence_fails=0):  # type: ignore[no-untyped-def]
    """Runs _restart_episode with queries whose outcomes are `outcomes` (an error string, None: finished, or
    ("progress", error): a batch done, then the error); returns (result, waits, fences)."""
    progress = {"batches": 0}
    queue, fences = list(outcomes), []

    def run_query(*args, **kwargs):  # type: ignore[no-untyped-def]
        outcome = queue.pop(0)
        if isinstance(outcome, tuple):
            progress["batches"] += 1
            outcome = outcome[1]
        return outcome

    def fence(config, sink, job_id):  # type: ignore[no-untyped-def]
        fences.append(job_id)
        if len(fences) <= fence_fails:
            raise OSError("broker down")
        return "ledger"

    monkeypatch.setattr(job, "_run_query", run_query)
    monkeypatch.setattr(job, "_fence_and_read_ledger", fence)
    waits = _Waits(stop_at)
    sink = SimpleNamespace(settings=SimpleNamespace(job="j1"), ledger=None)
    config = SimpleNamespace(max_query_restarts=max_restarts)
    result = job._restart_episode(None, config, sink, "single-pass", None, SimpleNamespace(requested=waits), progress,
                                  "first failure")
    return result, waits.seconds, fences


def test_restarts_back_off_doubling_and_return_once_the_query_finishes(monkeypatch, caplog):
    with caplog.at_level(logging.WARNING, logger="logmesh.stream"):
        result, waits, fences = _episode(monkeypatch, ["e2", "e3", None])
    assert result is None
    assert waits == [2.0, 4.0, 8.0]  # before each of the three restarts
    assert fences == ["j1"] * 3  # fenced before every restart
    restarts = [r for r in caplog.records if r.getMessage() == "stream query failed; restarting it from its checkpoint"]
    assert [r.restart for r in restarts] == [1, 2, 3] and [r.sleep_s for r in restarts] == waits


def test_the_waits_stop_growing_at_60_s(monkeypatch):
    _, waits, _ = _episode(monkeypatch, ["e"] * 7 + [None], max_restarts=10)
    assert waits == [2.0, 4.0, 8.0, 16.0, 32.0, 60.0, 60.0, 60.0]


def test_too_many_failures_in_a_row_raise_with_the_last_one(monkeypatch):
    with pytest.raises(RuntimeError, match=r"stream failed 3 times in a row; last: e3"):
        _episode(monkeypatch, ["e2", "e3"], max_restarts=2)


def test_no_restart_allowed_raises_the_first_failure(monkeypatch):
    with pytest.raises(RuntimeError, match=r"stream failed 1 times in a row; last: first failure"):
        _episode(monkeypatch, [], max_restarts=0)


def test_a_failed_fence_counts_as_a_failure_and_is_retried(monkeypatch, caplog):
    with caplog.at_level(logging.WARNING, logger="logmesh.stream"):
        result, waits, fences = _episode(monkeypatch, [None], fence_fails=2)
    assert result is None and waits == [2.0, 4.0, 8.0] and len(fences) == 3
    assert len([r for r in caplog.records if r.getMessage().startswith("cannot fence")]) == 2


def test_a_failure_after_new_batches_ends_the_episode(monkeypatch):
    """The caller then starts a new episode (its count and wait from the start again)."""
    result, waits, _ = _episode(monkeypatch, ["e2", ("progress", "after progress")], max_restarts=2)
    assert result == "after progress" and waits == [2.0, 4.0]


def test_a_signal_during_the_wait_stops(monkeypatch):
    with pytest.raises(job._Stopped):
        _episode(monkeypatch, ["e2", None], stop_at=2)

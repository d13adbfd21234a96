"""A signal stops the stream after a micro-batch (streaming/stopping.py): the gate knows a batch from the sink's
own call and holds that call's end until the query has been told to stop, so the stop neither cuts a batch short,
nor waits for a moment with no trigger (with a batch on every trigger it may never come), nor lets Spark plan the
next batch. Spark's query is a stand-in that records when it was stopped; the real one is stopped by
tests/integration/test_stream_hygiene.py."""
from __future__ import annotations

import threading
import time

from logmesh.streaming.stopping import BatchGate, stop_between_batches


class _Batch:
    """A sink whose call runs until `release` is set."""

    def __init__(self) -> None:
        self.entered, self.release, self.work_done_at = threading.Event(), threading.Event(), None

    def __call__(self, df, batch_id: int) -> None:  # type: ignore[no-untyped-def]
        self.entered.set()
        self.release.wait(10)
        self.work_done_at = time.monotonic()


class _Query:
    """Stand-in for a StreamingQuery: stop() marks it inactive, as Spark's does first, and records the moment."""

    def __init__(self) -> None:
        self.isActive, self.stopped_at = True, None

    def stop(self) -> None:
        self.isActive, self.stopped_at = False, time.monotonic()


def _run_batch(gate: BatchGate, returned: list) -> threading.Thread:  # type: ignore[type-arg]
    def call() -> None:
        gate(None, 7)
        returned.append(time.monotonic())

    thread = threading.Thread(target=call)
    thread.start()
    return thread


def test_an_idle_gate_stops_after_its_idle_wait():
    query = _Query()
    stop_between_batches(query, BatchGate(lambda df, batch_id: None), limit_s=30, idle_s=0.2)
    assert query.stopped_at is not None


def test_the_stop_comes_after_the_batch_and_before_its_call_returns():
    batch, returned = _Batch(), []
    gate = BatchGate(batch)
    running = _run_batch(gate, returned)
    assert batch.entered.wait(5) and gate.running
    query = _Query()
    stopper = threading.Thread(target=stop_between_batches, args=(query, gate, 30))
    stopper.start()
    time.sleep(0.3)
    assert query.stopped_at is None, "stopped in the middle of the batch"
    batch.release.set()
    stopper.join(5)
    running.join(5)
    assert not stopper.is_alive() and not running.is_alive()
    assert batch.work_done_at <= query.stopped_at <= returned[0], "stop() must come between the work and the return"
    assert query.stopped_at - batch.work_done_at < 2.0, "waited on after the batch ended"
    assert not gate.running


def test_without_a_stop_a_call_is_not_held():
    gate = BatchGate(lambda df, batch_id: None)
    gate(None, 1)  # returns: nothing asked it to hold
    assert not gate.held.is_set() and not gate.running


def test_a_batch_that_fails_is_not_held_and_ends_for_the_gate():
    def failing(df, batch_id):  # type: ignore[no-untyped-def]
        raise RuntimeError("batch failed")

    gate = BatchGate(failing)
    gate.hold()
    try:
        gate(None, 1)
    except RuntimeError:
        pass
    assert not gate.held.is_set() and not gate.running


def test_a_batch_that_never_ends_is_stopped_at_the_limit(caplog):
    batch, returned = _Batch(), []
    gate = BatchGate(batch)
    running = _run_batch(gate, returned)
    assert batch.entered.wait(5)
    query = _Query()
    stop_between_batches(query, gate, limit_s=0.2)
    assert query.stopped_at is not None and batch.work_done_at is None
    assert any("mid-batch" in r.getMessage() for r in caplog.records)
    batch.release.set()
    running.join(5)
    assert returned, "a batch that ends after the stop is not held"

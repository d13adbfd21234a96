"""Stopping the stream on a signal, between micro-batches.

pyspark's SIGINT handler cancels every running Spark job at once, and `query.stop()` in the middle of a batch
cancels the batch's Spark job under the Python sink and state function: the job then logged a
StackOverflowError (Spark matching the long Python error) and "Python worker exited unexpectedly". The batch
was replayed on the next start anyway (the sink is exactly-once), so stopping after it loses nothing and
keeps the log clean.

When a batch has ended is told by the sink's own call (`BatchGate`), not by polling the query's
`isTriggerActive`: the block timers (ProcessingTimeTimeout) make Spark run a micro-batch on every trigger,
data or not, and when one takes longer than the trigger the next begins as it ends, so a poll for a moment
with no batch running found one only by luck (2-24 s here, up to its 120 s limit). And the end of that call
is held until the stop has begun: stopped just after it, Spark had already begun planning the next batch.
"""
from __future__ import annotations

import logging
import signal
import threading
import time

log = logging.getLogger(__name__)


class StopRequest:
    """SIGINT/SIGTERM -> a flag the run loop checks, instead of pyspark's SIGINT handler. A second signal
    raises KeyboardInterrupt: stop at once."""

    def __init__(self) -> None:
        self.requested = threading.Event()
        self.previous: dict[int, object] = {}

    def __enter__(self) -> "StopRequest":
        if threading.current_thread() is threading.main_thread():  # signal handlers live in the main thread
            for sig in (signal.SIGINT, signal.SIGTERM):
                self.previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame) -> None:  # type: ignore[no-untyped-def]
        if self.requested.is_set():
            raise KeyboardInterrupt
        self.requested.set()

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)  # type: ignore[arg-type]


class BatchGate:
    """Wraps the foreachBatch function: knows whether one of its calls (a micro-batch's whole Spark work: the
    state function and the sink's writes run under it) is running, and on request holds the end of the next
    call that succeeds, so the query can be told to stop before Spark plans another batch."""

    def __init__(self, sink) -> None:  # type: ignore[no-untyped-def]
        self.sink = sink
        self._running = 0
        self._lock = threading.Lock()
        self._hold = threading.Event()
        self.held = threading.Event()
        self._released = threading.Event()

    def __call__(self, df, batch_id: int) -> None:  # type: ignore[no-untyped-def]
        with self._lock:
            self._running += 1
        try:
            self.sink(df, batch_id)
            if self._hold.is_set():  # the batch's work is done; its commit waits until the stop has begun
                self.held.set()
                self._released.wait()
        finally:
            with self._lock:
                self._running -= 1

    @property
    def running(self) -> bool:
        with self._lock:
            return self._running > 0

    def hold(self) -> None:
        self._hold.set()

    def release(self) -> None:
        self._released.set()


def stop_between_batches(query, gate: BatchGate, limit_s: float = 120.0,  # type: ignore[no-untyped-def]
                         idle_s: float = 2.0) -> None:
    """Stops the query after a micro-batch: the running one, else the next one that begins within `idle_s`
    (else at once, nothing running). The batch's end is held until `query.stop()` has marked the query
    terminated, so Spark ends its loop instead of planning a batch that the stop would then cut short (that
    logged "Store broadcast ... fail" at ERROR). After `limit_s` with the batch still running: stopped anyway."""
    started = time.monotonic()
    gate.hold()
    idle_since: float | None = None
    while not gate.held.wait(0.02):
        now = time.monotonic()
        idle_since = None if gate.running else (idle_since or now)
        if idle_since is not None and now - idle_since > idle_s:
            break
        if now - started > limit_s:
            log.warning("stopping stream mid-batch: the running micro-batch did not end in time",
                        extra={"waited_s": limit_s})
            break
    failed: list[BaseException] = []

    def stop() -> None:
        try:
            query.stop()
        except BaseException as exc:  # noqa: BLE001 - raised below, in the caller's thread
            failed.append(exc)

    stopper = threading.Thread(target=stop, name="logmesh-stream-stop", daemon=True)
    stopper.start()
    marked = time.monotonic() + 10.0
    while gate.held.is_set() and query.isActive and time.monotonic() < marked:
        time.sleep(0.005)
    gate.release()
    stopper.join()
    if failed:
        raise failed[0]
    log.info("stream stopped", extra={"stop_s": round(time.monotonic() - started, 2)})

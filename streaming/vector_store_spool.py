"""Write-behind for the embedded vector store: the driver makes a micro-batch's points durable in a spool file
(milliseconds), and one background thread upserts them into the store while Spark runs the next micro-batch.

Why: the embedded store lives in the driver (one process may open it), and the driver's foreachBatch used to
upsert every point before returning, so the next micro-batch waited for it. BGL's session key is the node id
(11,546 sessions in BGL_16k's 16,000 lines, against 1,782 blocks in HDFS_20000's 20,000): every session a batch
changes gets a point, and the warm BGL replay spent 1.59 s of its 5.8 s in that upsert (13,325 points; HDFS 0.26 s
for 1,785). docs/benchmarks.md, "BGL beside HDFS", has the figures before and after.

Exactly once is kept because points are keyed by data (vector_store.py: uuid5 of topic/partition/offset for a
line, of the block id for a block): writing a point twice leaves one point, and the only thing to avoid is an
older write of a key landing after a newer one. So:

- `add` writes the batch's points to `<folder>/<seq>-b<batch>.points` (a temporary name, then os.replace) before
  it returns, i.e. before Spark commits the batch; the file is deleted only after its upsert returned.
- one thread applies the spools in the order they were written; `add` waits while MAX_PENDING batches are
  still queued (memory stays bounded, and the store never falls more than that behind).
- opening the spool (the job's start) first upserts, in order and before the first batch, what the last run
  left: a process killed after a spool was written (tests/e2e/test_faults.py: after-store, after-commit) loses
  no point. A batch Spark then replays writes the same keys again, later: the same points.
- the store drains the queue before it closes (EdgeVectorStore.on_close: the job closes the store when its
  query ends), so `logmesh similar` after a run, or a test reading the store, sees every point.

A failed upsert stops the thread with the spools left; the next `add` (the query's next batch, or its restart)
writes them again in the caller's thread first, and raises if that fails too, which fails the query as a
failed synchronous upsert did. The spool is not fsynced: it survives the process dying, as the engine's
acknowledged writes did; a power loss may lose the newest spools.
"""
from __future__ import annotations

import itertools
import json
import logging
import os
import pickle
import threading
import time
from collections import deque
from pathlib import Path
from typing import Sequence

import numpy as np

from logmesh.streaming.vector_store import Point

__all__ = ["MAX_PENDING", "PointSpool", "SpoolWriteFailed", "points_of"]
log = logging.getLogger("logmesh.stream.store")
SUFFIX = ".points"
MAX_PENDING = 2  # batches queued behind the running one: one overlaps the next batch, one more of slack

#: a point as it comes back from the write tasks: key, float32 vector bytes, payload JSON
PointRow = tuple[str, bytes, str]


class SpoolWriteFailed(RuntimeError):
    """The store refused a spooled batch's points twice (in the background, then in the caller's thread)."""


def points_of(rows: Sequence[PointRow]) -> list[Point]:
    return [Point(key, np.frombuffer(vector, np.float32), json.loads(payload)) for key, vector, payload in rows]


class PointSpool:
    """The write-behind of one store (see the module doc). `add` from one thread (the driver's foreachBatch)."""

    def __init__(self, store, folder: str | os.PathLike[str], max_pending: int = MAX_PENDING) -> None:  # type: ignore[no-untyped-def]
        self.store, self.folder, self.max_pending = store, Path(folder), max_pending
        self.folder.mkdir(parents=True, exist_ok=True)
        self._pending: deque[tuple[Path, int]] = deque()  # (spool, batch id), oldest first
        self._cond = threading.Condition()
        self._error: tuple[int, BaseException] | None = None
        self._thread: threading.Thread | None = None
        self._running = False  # set and cleared under the lock: a thread that stopped says so before it returns
        self._closed = False
        # names sort in write order across runs: wall-clock nanoseconds, never below the last one used
        self._seq = itertools.count(max([time.time_ns(), *(self._seq_of(p) + 1 for p in self._leftovers())]))
        self.recovered = self._write_leftovers()

    # -- the caller's side --------------------------------------------------------------------

    def add(self, batch_id: int, rows: Sequence[PointRow]) -> None:
        """Makes `rows` durable in a spool and queues their upsert; returns once the spool is written."""
        if not rows:
            return
        self._retry_failed()
        path = self.folder / f"{next(self._seq):020d}-b{batch_id}{SUFFIX}"
        temporary = path.with_suffix(".tmp")
        with open(temporary, "wb") as f:
            pickle.dump((batch_id, list(rows)), f, protocol=pickle.HIGHEST_PROTOCOL)
        os.replace(temporary, path)
        with self._cond:
            while len(self._pending) >= self.max_pending and self._error is None:
                self._cond.wait()
            self._pending.append((path, batch_id))
            failed = self._error is not None  # the thread stopped while this call waited
            if not failed and not self._running:
                self._running = True
                self._thread = threading.Thread(target=self._run, name="logmesh-store-writer", daemon=True)
                self._thread.start()
            self._cond.notify_all()
        if failed:
            self._retry_failed()

    def drain(self) -> None:
        """Waits until every queued batch is in the store; writes a failed one again here (raises if it fails)."""
        with self._cond:
            while self._pending and self._error is None:
                self._cond.wait()
        self._retry_failed()

    def close(self) -> None:
        """Drains, then stops the thread; what cannot be written stays in the spool for the next start."""
        if self._closed:
            return
        try:
            self.drain()
        except SpoolWriteFailed as exc:
            log.error("points left in the store's spool; the job's next start writes them",
                      extra={"folder": str(self.folder), "batches": len(self._pending), "error": str(exc)[:300]})
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(60)

    # -- the writer ---------------------------------------------------------------------------

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._pending and not self._closed:
                    self._cond.wait()
                if not self._pending:
                    self._running = False
                    return
                path, batch_id = self._pending[0]
            try:
                self._write(path)
            except BaseException as exc:  # noqa: BLE001 - kept for the caller, who writes it again or fails
                log.warning("background upsert of a batch's points failed; the next batch writes them again",
                            extra={"batch_id": batch_id, "error": str(exc)[:300]})
                with self._cond:
                    self._error, self._running = (batch_id, exc), False
                    self._cond.notify_all()
                return
            with self._cond:
                self._pending.popleft()
                self._cond.notify_all()

    def _write(self, path: Path) -> None:
        with open(path, "rb") as f:
            _, rows = pickle.load(f)
        self.store.upsert(points_of(rows))
        path.unlink()

    def _retry_failed(self) -> None:
        """After a background failure (the thread has stopped): the queued spools, in order, in this thread."""
        with self._cond:
            if self._error is None:
                return
            failed_batch, _ = self._error
        while self._pending:
            path, batch_id = self._pending[0]
            try:
                self._write(path)
            except Exception as exc:
                raise SpoolWriteFailed(f"storing the points of micro-batch {batch_id} failed twice: {exc}") from exc
            self._pending.popleft()
        with self._cond:
            self._error = None
        log.info("points of a failed background upsert written", extra={"batch_id": failed_batch})

    # -- recovery -----------------------------------------------------------------------------

    def _leftovers(self) -> list[Path]:
        for stale in self.folder.glob("*.tmp"):  # a spool the process died writing: its batch never committed
            stale.unlink(missing_ok=True)
        return sorted(self.folder.glob(f"*{SUFFIX}"), key=self._seq_of)

    @staticmethod
    def _seq_of(path: Path) -> int:
        return int(path.name.split("-", 1)[0])

    def _write_leftovers(self) -> int:
        """Upserts, oldest first, the spools a run that died left behind; returns how many."""
        leftovers = self._leftovers()
        for path in leftovers:
            self._write(path)
        if leftovers:
            log.info("points the last run left in the store's spool written",
                     extra={"folder": str(self.folder), "batches": len(leftovers)})
        return len(leftovers)

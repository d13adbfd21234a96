"""The stream's write-behind for the embedded store (streaming/vector_store_spool.py) on Qdrant's real engine
(qdrant-edge in a folder): a batch's points are on disk when `add` returns and in the store after the store
closes; the spools a killed run left are written at the next start, oldest first; a failed background upsert is
written again by the next batch, and a second failure is an error. Failures are injected by a store wrapper."""
from __future__ import annotations

import json
import threading

import numpy as np
import pytest

from logmesh.streaming.vector_store import open_store
from logmesh.streaming.vector_store_spool import PointSpool, SpoolWriteFailed

DIM = 8


def rows(batch: int, keys: list[str]) -> list[tuple[str, bytes, str]]:
    rng = np.random.default_rng(batch)
    return [(k, rng.normal(size=DIM).astype(np.float32).tobytes(), json.dumps({"kind": "block", "batch": batch}))
            for k in keys]


class Faulty:
    """The real store, whose next `fail` upserts raise, and whose upserts wait for `go` when it is given."""

    def __init__(self, store, fail: int = 0, go: threading.Event | None = None) -> None:  # type: ignore[no-untyped-def]
        self.store, self.fail, self.go, self.calls = store, fail, go, 0
        self.started = threading.Event()

    def upsert(self, points) -> None:  # type: ignore[no-untyped-def]
        self.calls += 1
        self.started.set()
        if self.go is not None:
            self.go.wait(60)
        if self.fail:
            self.fail -= 1
            raise RuntimeError("disk full (injected)")
        self.store.upsert(points)


def test_points_are_spooled_then_upserted_behind_the_caller_and_drained_when_the_store_closes(tmp_path):
    store = open_store(path=str(tmp_path / "qdrant"), dim=DIM)
    go = threading.Event()
    slow = Faulty(store, go=go)
    spool = PointSpool(slow, tmp_path / "spool")
    store.on_close(spool.close)
    spool.add(0, rows(0, ["a", "b"]))  # returns while its upsert waits
    assert slow.started.wait(30) and store.count() == 0 and len(list((tmp_path / "spool").iterdir())) == 1
    go.set()
    spool.add(1, rows(1, ["b", "c"]))
    store.close()  # drains first
    with open_store(path=str(tmp_path / "qdrant"), dim=DIM) as again:
        got = again.retrieve(["a", "b", "c"])
        assert len(got) == 3 and again.count() == 3
        assert got["a"].payload["batch"] == 0 and got["b"].payload["batch"] == 1  # the newer write of b won
    assert not list((tmp_path / "spool").iterdir())


def test_the_caller_waits_when_max_pending_batches_are_queued(tmp_path):
    with open_store(path=str(tmp_path / "qdrant"), dim=DIM) as store:
        go = threading.Event()
        slow = Faulty(store, go=go)
        spool = PointSpool(slow, tmp_path / "spool", max_pending=1)
        spool.add(0, rows(0, ["a"]))
        assert slow.started.wait(30)
        second = threading.Thread(target=spool.add, args=(1, rows(1, ["b"])))
        second.start()
        second.join(1.0)
        assert second.is_alive()  # batch 0 is still being written: batch 1 waits for it
        go.set()
        second.join(30)
        assert not second.is_alive()
        spool.close()
        assert store.count() == 2


def leave_spool(folder, batch: int, keys: list[str]) -> None:  # type: ignore[no-untyped-def]
    """A run whose store refused its batch's points (as if it died before the upsert): the spool stays."""
    spool = PointSpool(Faulty(None, fail=10), folder)
    spool.add(batch, rows(batch, keys))
    with pytest.raises(SpoolWriteFailed):  # the background write failed, and the one drain makes again
        spool.drain()
    spool.close()  # logs what it leaves


def test_a_killed_runs_spools_are_written_at_the_next_start_oldest_first(tmp_path):
    folder = tmp_path / "spool"
    leave_spool(folder, 3, ["a", "b"])
    leave_spool(tmp_path / "other", 4, ["b"])  # a later write of b, moved beside the first
    for left in (tmp_path / "other").iterdir():
        left.rename(folder / left.name)
    (folder / "1-b5.tmp").write_bytes(b"half written")  # a spool the process died writing: never committed
    assert sorted(p.name.split("-")[1] for p in folder.iterdir()) == ["b3.points", "b4.points", "b5.tmp"]
    with open_store(path=str(tmp_path / "qdrant"), dim=DIM) as store:
        restarted = PointSpool(store, folder)  # the next start
        assert restarted.recovered == 2 and not list(folder.iterdir())
        got = store.retrieve(["a", "b"])
        assert store.count() == 2 and got["a"].payload["batch"] == 3 and got["b"].payload["batch"] == 4


def test_a_failed_background_upsert_is_written_again_by_the_next_batch(tmp_path):
    with open_store(path=str(tmp_path / "qdrant"), dim=DIM) as store:
        flaky = Faulty(store, fail=1)
        spool = PointSpool(flaky, tmp_path / "spool")
        spool.add(0, rows(0, ["a"]))
        spool.add(1, rows(1, ["b"]))  # finds batch 0 failed: writes it here first, then queues its own
        spool.close()
        assert store.count() == 2 and flaky.calls == 3 and not list((tmp_path / "spool").iterdir())

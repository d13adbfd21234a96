"""Two scorer replicas of one incident book (`--incidents-book`), as two real `logmesh serve scorer` processes
on the real broker (shared anomalies, incidents and feedback topics; each its own state dir), notifying a real
HTTP receiver: exactly one owns the book (groups, numbers, notifies), the other serves the owner's incidents;
the owner is killed (SIGKILL: no goodbye to the broker), the other takes the book over within the lease
timeout, numbers its incidents after every id the topic holds, groups every alert once, and notifies no
incident a second time."""
from __future__ import annotations

import signal
import time
import uuid

import grpc
import pytest

from anomaly_topic import line
from incident_replicas_setup import LEASE_S, replica_scene
from waiting import wait_for


def _sessions(incidents) -> set[str]:  # type: ignore[no-untyped-def]
    return {s for i in incidents for s in i.session_keys}


def test_one_replica_owns_the_book_and_the_other_takes_over_when_it_dies(
        admin, trained_models, embedder_server, tmp_path) -> None:
    with replica_scene(admin, trained_models, embedder_server.address, tmp_path, "t-replicas") as scene:
        replicas, writer = scene.replicas, scene.writer
        wait_for(lambda: sum(r.owns() for r in replicas) == 1, 30, "one replica to own the book")
        owner, other = sorted(replicas, key=lambda r: not r.owns())
        first = [f"blk_{uuid.uuid4().int % 10**12}" for _ in range(3)]
        writer.write([line(f"{b}-1", block_id=b) for b in first])
        # the owner groups and notifies; the follower serves the same incidents from the topic
        wait_for(lambda: _sessions(other.incidents()) >= set(first), 30, "the follower to serve the incidents")
        wait_for(lambda: len(scene.notified()) == 3, 30, "three notifications")
        # each incident records the webhook that had it, and the follower serves that too
        wait_for(lambda: all(i.notified_targets for i in other.incidents()), 30, "the follower to see them notified")
        before = {i.incident_id: i for i in owner.incidents()}
        assert set(before) == {i.incident_id for i in other.incidents()} and len(before) == 3
        assert not other.owns()
        # labels: the owner numbers them, the follower refuses (retryable) and serves the owner's
        some = sorted(before)[0]
        with pytest.raises(grpc.RpcError) as refused:
            other.label(some)
        assert refused.value.code() == grpc.StatusCode.UNAVAILABLE and "owns" in refused.value.details()
        first_label = owner.label(some)
        wait_for(lambda: other.labels() == [first_label.feedback_id], 10, "the follower to serve the label")

        owner.process.send_signal(signal.SIGKILL)
        owner.process.wait(10)
        killed = time.monotonic()
        later = [f"blk_{uuid.uuid4().int % 10**12}" for _ in range(2)]
        writer.write([line(f"{b}-1", block_id=b) for b in later] + [line(f"{first[0]}-2", block_id=first[0])])
        wait_for(other.owns, LEASE_S * 6, "the follower to take the book over")
        took = time.monotonic() - killed
        wait_for(lambda: _sessions(other.incidents()) >= set(first + later) and len(scene.notified()) == 5,
                 30, "the new owner to group and notify the new alerts")
        time.sleep(2)  # room for a wrong second notification of the old incidents to arrive
        after = other.incidents()
        notified = scene.notified()
        assert all(n == 1 for n in notified.values()), f"notified twice: {notified}"
        assert set(notified) == {i.incident_id for i in after}
        numbers = sorted(int(i.incident_id.removeprefix("inc-")) for i in after)
        assert len(numbers) == len(set(numbers)) == 5
        fresh = [i for i in after if i.incident_id not in before]
        assert len(fresh) == 2 and min(int(i.incident_id[4:]) for i in fresh) > max(
            int(i[4:]) for i in before), "a new owner numbers after every id the topic holds"
        grown = [i for i in after if first[0] in i.session_keys]
        assert len(grown) == 1 and grown[0].incident_id in before and len(grown[0].anomaly_ids) == 2
        ids = [a for i in after for a in i.anomaly_ids]
        assert len(ids) == len(set(ids)) == 6, "every alert grouped once across the takeover"
        second_label = other.label(fresh[0].incident_id)
        assert int(second_label.feedback_id[3:]) > int(first_label.feedback_id[3:])
        assert other.labels() == sorted([first_label.feedback_id, second_label.feedback_id])
        print(f"takeover after SIGKILL: {took:.1f} s (lease timeout {LEASE_S:g} s)")

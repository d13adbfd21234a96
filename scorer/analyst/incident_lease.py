"""Which scorer replica owns an incident book: the one the broker assigns the incidents topic's partition in
the consumer group `logmesh-incidents-lease-<book>` (the topic has one partition, so one member holds it).

The owner groups alerts into incidents, numbers them, summarises and notifies them; the other replicas follow
the topic and serve reads. When the owner dies the broker notices within the session timeout and assigns the
partition to another member; a clean stop leaves the group at once. A replica that joins while another owns
the book takes nothing from it (cooperative-sticky assignment). The lease alone cannot stop a stalled owner
that has not noticed its loss yet from writing: fencing does (the book's producer shares one transactional id
per book, so the new owner's init_transactions aborts the old one's open transaction and makes its later
commits fail; TopicIncidentStore.fence; the labels' writer likewise, FeedbackTopic.fence).

A fence is only as good as the view of the lease behind it: a stalled owner whose write was refused (fenced)
while its lease has not yet noticed the loss would, by fencing again, take the book back from the real owner
for a moment. So the lease counts its assignments (`assignments`: how many times the broker gave this member
the partition; each one follows a revoke or a loss, or is the first), and a replica whose write was refused
owns again only under a later assignment than the one it took the book under (IncidentBook._own). It asks the
lease to `rejoin` the group: the partition is given up here and any assignment after that is a fresh one,
made by the broker's current view (the real owner keeps it; where no one else holds it, this member is given
it again, so a refused write with no other owner, e.g. a transaction the coordinator timed out, leaves the
book owned).

The consumer is paused on its partition (it only holds the lease, it reads nothing); a thread polls it, which
is what keeps the membership alive and runs the assignment callbacks.
"""
from __future__ import annotations

import logging
import threading
import time
import uuid
from typing import Any, Callable, Mapping

from confluent_kafka import Consumer, KafkaException
from prometheus_client import Gauge

from logmesh.runtime.metrics import REGISTRY

log = logging.getLogger("logmesh.scorer.incidents.lease")
_rdkafka_log = logging.getLogger("logmesh.scorer.rdkafka")
OWNER = Gauge("logmesh_incident_book_owner", "1 while this scorer owns its incident book (groups, numbers, "
              "summarises and notifies incidents), 0 while it follows the owner's topic.", registry=REGISTRY)


class IncidentLease:
    """The lease on `book`'s incidents in `topic`. `owner` is set while this process holds it."""

    def __init__(self, bootstrap: str, topic: str, book: str, kafka_options: Mapping[str, str] | None = None,
                 session_timeout_s: float = 10.0, member: str = "") -> None:
        self.topic, self.book = topic, book
        self.group = f"logmesh-incidents-lease-{book}"
        self.owner = threading.Event()
        self.assignments = 0  # times the broker gave this member the partition (set before `owner` is)
        self.on_change: Callable[[], None] = lambda: None  # called on every gain or loss (the book wakes)
        self._stop = threading.Event()
        session_ms = max(3000, int(session_timeout_s * 1000))
        conf: dict[str, Any] = {"bootstrap.servers": bootstrap, "group.id": self.group, "logger": _rdkafka_log,
                                "log_level": 0, "enable.auto.commit": False, "session.timeout.ms": session_ms,
                                "heartbeat.interval.ms": max(500, session_ms // 4),
                                # sticky, incremental: a replica that joins takes nothing from the owner (the
                                # eager range assignor hands the partition to the lowest member id on every
                                # join, so starting a second replica could move the book: a takeover for nothing)
                                "partition.assignment.strategy": "cooperative-sticky",
                                "client.id": f"logmesh-lease-{uuid.uuid4().hex[:8]}"}
        if member:  # static membership: the same member rejoining takes its lease back without a rebalance
            conf["group.instance.id"] = member
        conf.update({k: v for k, v in (kafka_options or {}).items() if k.startswith(("security.", "sasl.", "ssl."))})
        self._consumer = Consumer(conf)
        self._pause = False
        self._rejoin = threading.Event()
        self._thread = threading.Thread(target=self._run, name="incident-lease", daemon=True)

    def start(self) -> "IncidentLease":
        self._subscribe()
        self._thread.start()
        return self

    def _subscribe(self) -> None:
        self._consumer.subscribe([self.topic], on_assign=self._assigned, on_revoke=self._revoked,
                                 on_lost=self._revoked)

    def rejoin(self) -> None:
        """Gives the partition up and joins the group again (on the lease's thread): what this member holds
        after it is a new assignment (`assignments` moves), or nothing."""
        self._rejoin.set()

    def _assigned(self, consumer: Consumer, partitions: list) -> None:  # type: ignore[type-arg]
        if partitions:  # incremental: non-empty only when the partition is newly given to this member
            self._pause = True
            self.assignments += 1
            self._set(True)

    def _revoked(self, consumer: Consumer, partitions: list) -> None:  # type: ignore[type-arg]
        self._set(False)

    def _set(self, owning: bool) -> None:
        if owning == self.owner.is_set():
            return
        (self.owner.set if owning else self.owner.clear)()
        OWNER.set(1 if owning else 0)
        log.info("incident book %s", "owned here (this replica groups, summarises and notifies)" if owning
                 else "followed here (another replica owns it)", extra={"book": self.book, "topic": self.topic})
        self.on_change()

    def _run(self) -> None:
        problem = ""
        while not self._stop.is_set():
            try:
                msg = self._consumer.poll(0.5)  # heartbeats run on librdkafka's thread; poll runs the callbacks
                error = msg.error() if msg is not None else None
                if error is not None and error.str() != problem:  # e.g. a session timeout the broker refuses
                    problem = error.str()
                    log.warning("incident lease: %s (this replica cannot own the book until it joins the group)",
                                problem, extra={"group": self.group})
                if self._pause:
                    self._pause = False
                    self._consumer.pause(self._consumer.assignment())
                if self._rejoin.is_set():
                    self._rejoin.clear()
                    self._leave_and_join()
            except KafkaException as exc:
                log.warning("incident lease: %s", exc, extra={"group": self.group})
                self._stop.wait(1.0)
            except RuntimeError:  # closed under us at shutdown
                return

    def _leave_and_join(self) -> None:
        log.info("incident lease: rejoining the group (whatever it assigns next is a new assignment)",
                 extra={"group": self.group, "book": self.book})
        self._consumer.unsubscribe()  # the revoke runs in the polls below (or at once): owner goes
        deadline = time.monotonic() + 10.0
        while self._consumer.assignment() and time.monotonic() < deadline and not self._stop.is_set():
            self._consumer.poll(0.1)
        self._set(False)
        self._subscribe()

    def close(self) -> None:
        """Leaves the group (another replica takes over at once) and stops owning."""
        self._stop.set()
        self._thread.join(5)
        try:
            self._consumer.close()
        except (KafkaException, RuntimeError):
            pass
        self._set(False)

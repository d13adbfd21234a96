"""What a crash leaves pending is handed on at start: a book reading back its incidents gives its listeners (the
summarizer, the notifier) every open incident and every one whose summary is missing or older than its version,
and nothing else; the notifier sends nothing to a target an incident records as having handled it (another
replica sent it before taking over)."""
from __future__ import annotations

import threading

from logmesh.scorer.analyst.incident_store import MemoryIncidentStore
from logmesh.scorer.analyst.incidents import IncidentBook
from logmesh.scorer.analyst.notify import Notifier, Target
from logmesh.v1 import incident_pb2 as K


def _incident(n: int, state: int, version: int, summary_version: int | None) -> K.Incident:
    i = K.Incident(incident_id=f"inc-{n:06d}", version=version, update_id=n, state=state, family="hdfs",
                   session_keys=[f"blk_{n}"], anomaly_ids=[n])
    if summary_version is not None:
        i.summary.CopyFrom(K.IncidentSummary(title="t", incident_version=summary_version))
    return i


def test_a_restarted_book_hands_on_what_was_pending() -> None:
    store = MemoryIncidentStore()
    store.put([_incident(1, K.INCIDENT_STATE_CLOSED, 1, 1),  # done: summarised for its version, closed
               _incident(2, K.INCIDENT_STATE_CLOSED, 3, 2),  # its summary is of an older version
               _incident(3, K.INCIDENT_STATE_CLOSED, 1, None),  # never summarised (crash while the LLM wrote)
               _incident(4, K.INCIDENT_STATE_OPEN, 2, 2)])  # open: the notifier may still owe it
    book = IncidentBook(store=store, window_s=3600)
    got: list[str] = []
    handed = threading.Event()

    def listener(incident: K.Incident) -> None:
        got.append(incident.incident_id)
        if len(got) == 3:
            handed.set()
    book.subscribe(listener)
    book.start()
    try:
        assert book.ready.wait(10) and handed.wait(10)
        assert sorted(got) == ["inc-000002", "inc-000003", "inc-000004"]
    finally:
        book.stop()


def test_the_notifier_skips_a_target_the_incident_records() -> None:
    target = Target.parse("http://127.0.0.1:9/hook")  # nothing listens: an attempt would dead-letter
    handled: list[tuple[str, str]] = []
    notifier = Notifier([target], wait_for_summary=0, attempts=1, backoff=0.01, timeout=1,
                        on_handled=lambda i, t: handled.append((i, t)))
    try:
        done = _incident(1, K.INCIDENT_STATE_OPEN, 1, 1)
        done.notified_targets.append(target.key)
        notifier.on_incident(done)
        assert notifier.wait_idle(5) and handled == [] and notifier.counts["dead_letter"] == 0
        notifier.on_incident(_incident(2, K.INCIDENT_STATE_OPEN, 1, 1))
        assert notifier.wait_idle(10)
        assert handled == [("inc-000002", target.key)] and notifier.counts["dead_letter"] == 1
    finally:
        notifier.close()

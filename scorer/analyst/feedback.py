"""The analyst's labels (FeedbackService, `logmesh feedback`): validated, their scope resolved, kept durably in
the compacted Kafka topic logmesh.feedback, and applied as suppressions at once.

Topic format (what `logmesh train --feedback` and any other reader reads): key = the feedback id as UTF-8
(b"fb-000007"), value = the binary logmesh.v1.Feedback as stored: feedback_id, exactly one subject
(record_id | session_key | incident_id), label, scope, scope_value (TEMPLATE: a template id such as "E7";
NODE: a node such as "10.251.43.21" or "R02-M1-N0-C:J12-U11"; SEQUENCE: `feedback_scope.sequence_key` of a
block's events; ITEM: ""), action, expire_time (absent: never), comment, author, created_time, client_key.
One message per label, never rewritten; a reader that meets one id twice keeps the last.

On start the book reads the topic to its end (on a thread, retried while the broker is away; until then
SubmitFeedback / ListFeedback answer UNAVAILABLE), so labels, ids and client keys survive a restart:
a repeat of a client key returns the stored label, also after one. Ids are fb-<n>, one scorer writing the
topic. Replicas of one incident book (--incidents-book): only the replica owning the book takes labels (`owner`:
IncidentBook.owning_assignment, so a replica the book barred after a fenced write takes none either; the others
answer UNAVAILABLE, which a client retries through the Service to another replica), and every
replica follows the topic, so each serves and applies every label within a second. The replicas write through
one transactional id (FeedbackTopic.fence): a new owner fences it, then reads the topic to its end, and only then
numbers a label, so a stalled former owner that wakes (SIGSTOP, a long GC, a partition) cannot store a label
under an id the new owner already gave: its write fails (UNAVAILABLE, nothing stored). A write refused as fenced
tells the incident book (`on_fenced`: IncidentBook.write_refused), which stops owning under that lease assignment,
so the next label is refused here rather than fencing the real owner back; a writer whose lease was assigned
anew since it fenced fences and reads again first.

Suppression: `suppressing_anomaly` is asked when the history serves an entry (ListAnomalies, WatchAnomalies)
and `suppressing_incident` by the IncidentBook; both see a new label the moment SubmitFeedback returns, and
stop seeing it at its expire_time (on_change listeners are called then too, so the IncidentBook refreshes).
What a scope covers: scorer/analyst/feedback_scope.py and feedback_match.py.
"""
from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

from tenacity import Retrying, retry_if_exception_type, wait_exponential

from logmesh.scorer.analyst import feedback_check, feedback_scope
from logmesh.scorer.analyst.feedback_match import Suppressions, expiry, incident_members, suppresses
from logmesh.scorer.analyst.feedback_topic import FeedbackStoreError, FeedbackTopic, FeedbackWriteFenced
from logmesh.v1 import feedback_pb2 as fpb, incident_pb2, score_pb2

if TYPE_CHECKING:
    from logmesh.scorer.analyst.incidents import IncidentBook

log = logging.getLogger("logmesh.scorer.analyst.feedback")


class FeedbackRejected(ValueError):
    """A label that cannot be stored as given (INVALID_ARGUMENT), with the reason."""


class FeedbackUnavailable(RuntimeError):
    """The labels cannot be stored or read now (UNAVAILABLE): the topic is not loaded or not writable."""


@dataclass
class Listing:
    labels: list[fpb.Feedback]
    next_index: int | None  # index into the stored order to continue below, None when no older one matches


class FeedbackBook:
    def __init__(self, topic: FeedbackTopic | None, find: Callable[..., list[score_pb2.Anomaly]],
                 incident: Callable[[str], incident_pb2.Incident | None] | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        """`topic` None keeps labels in memory only (tests of the matching); `find` is the anomaly history's
        AnomalyHistory.find, `incident` the IncidentBook's get (None: no incidents here)."""
        self.topic, self.find, self.incident, self.clock = topic, find, incident, clock
        self._labels: list[fpb.Feedback] = []  # stored order, oldest first
        self._by_id: dict[str, int] = {}
        self._by_key: dict[str, int] = {}
        self._next = 1
        self._lock = threading.RLock()
        self._write = threading.Lock()  # one submission at a time: a client key is checked and stored atomically
        self._suppressions = Suppressions()
        self._listeners: list[Callable[[], None]] = []
        self._incident_ids: dict[str, tuple[float, frozenset[str | int]]] = {}  # incident id -> (when asked, its members)
        self._loaded = threading.Event()
        self._problem = "loading"
        self._stop = threading.Event()
        self._timer: threading.Timer | None = None
        # replicas (set by serve): the lease assignment under which this replica may own the book, 0 when it may
        # not (IncidentBook.owning_assignment: the book's one rule), and what a fenced label write tells it
        # (IncidentBook.write_refused: no owning again under that assignment)
        self.owner: Callable[[], int] | None = None
        self.on_fenced: Callable[[int], None] | None = None
        self._owned_under = 0  # the assignment this writer fenced and read the topic under (0: it must first)
        self.counts: dict[tuple[int, int], int] = {}  # (label, action) -> stored since start (metrics)
        self.suppressed_new = 0  # alerts that arrived already covered by a suppression (metrics)
        if topic is None:
            self._loaded.set()
            self._problem = ""

    # -- lifecycle --------------------------------------------------------------------------------------------
    def start(self) -> "FeedbackBook":
        """Loads the topic on a thread (retried with doubling waits up to 10 s until it can be read)."""
        if self.topic is not None:
            threading.Thread(target=self._load, name="feedback-load", daemon=True).start()
        return self

    def _load(self) -> None:
        assert self.topic is not None
        retrying = Retrying(retry=retry_if_exception_type(FeedbackStoreError), sleep=self._stop.wait,
                            wait=wait_exponential(multiplier=0.5, max=10.0), stop=lambda _: self._stop.is_set(),
                            before_sleep=lambda state: self._set_problem(str(state.outcome.exception())),
                            reraise=True)
        try:
            labels = retrying(self.topic.read_all)
        except FeedbackStoreError:
            return  # stopped
        with self._lock:
            for fb in labels:
                self._hold(fb)
            self._problem = ""
        self._changed()
        self._loaded.set()
        log.info("feedback loaded", extra={"topic": self.topic.topic, "labels": len(self._labels),
                                           "next_id": self.next_id, "suppressing": bool(self._suppressions)})
        if self.owner is not None:
            self._follow()

    def _follow(self) -> None:
        """Replicas: applies the labels other replicas store, as they land."""
        assert self.topic is not None
        warned = False
        while not self._stop.is_set():
            try:
                labels = self.topic.follow(1.0)
                warned = False
            except FeedbackStoreError as exc:
                if not warned:
                    log.warning("cannot follow the feedback topic; retrying", extra={"error": str(exc)})
                    warned = True
                self._stop.wait(1.0)
                continue
            if labels:
                with self._lock:
                    for fb in labels:
                        self._hold(fb)
                self._changed()

    def _set_problem(self, problem: str) -> None:
        if self._problem != problem:
            log.warning("feedback topic not readable yet; retrying (submissions wait for it)",
                        extra={"error": problem})
        self._problem = problem

    def wait_loaded(self, timeout: float) -> bool:
        return self._loaded.wait(timeout)

    @property
    def status(self) -> str:
        """"ready", or why labels cannot be taken now."""
        return "ready" if self._loaded.is_set() else (self._problem or "loading")

    def close(self) -> None:
        self._stop.set()
        if self._timer is not None:
            self._timer.cancel()
        if self.topic is not None:
            self.topic.close()

    # -- the interface the scorer wires (scorer/analyst/incidents.py asks these) ------------------------------
    def attach(self, book: "IncidentBook", replicas: bool) -> None:
        """Wires this book to the scorer's IncidentBook (before start): labels on its incidents, its refresh on
        every change; with `replicas` (one book shared by name), labels numbered only where the book may be
        owned (its owning_assignment), written through the book's fenced id, a fenced write reported to it."""
        self.incident = book.get
        if replicas and book.lease is not None:
            self.owner = book.owning_assignment  # the book's own rule (a fenced replica is barred), not the lease's
            self.on_fenced = book.write_refused  # a fenced label write demotes the book as a fenced round does
            if self.topic is not None:  # and writes them through the book's fenced id (feedback_topic.py)
                self.topic.transactional_id = f"{book.store.transactional_id}-feedback"
        self.on_change(book.refresh_suppressions)

    def on_change(self, callback: Callable[[], None]) -> None:
        """Calls `callback` after a label is stored and when a suppression expires (from the book's thread)."""
        self._listeners.append(callback)

    def suppressing_anomaly(self, anomaly: score_pb2.Anomaly) -> str:
        with self._lock:
            index = self._suppressions
        return index.anomaly(anomaly, self._incident_anomalies) if index else ""

    def _incident_anomalies(self, incident_id: str) -> frozenset[str | int]:
        """The anomalies an incident holds, asked of the IncidentBook at most every 0.2 s per incident (a page
        of entries asks once per entry): see incident_members."""
        now = time.monotonic()
        cached = self._incident_ids.get(incident_id)
        if cached is not None and now - cached[0] < 0.2:
            return cached[1]
        found = self.incident(incident_id) if self.incident is not None else None
        members = incident_members(found) if found is not None else frozenset()
        self._incident_ids[incident_id] = (now, members)
        return members

    def suppressing_incident(self, incident: incident_pb2.Incident) -> str:
        with self._lock:
            index = self._suppressions
        return index.incident(incident) if index else ""

    def label_for_incident(self, incident_id: str) -> fpb.FeedbackLabel:
        """The newest label given on the incident (expired ones too: it describes the past incident)."""
        with self._lock:
            for fb in reversed(self._labels):
                if fb.WhichOneof("subject") == "incident_id" and fb.incident_id == incident_id:
                    return fb.label
        return fpb.FEEDBACK_LABEL_UNSPECIFIED

    def count_recorded(self, entries: list[score_pb2.Anomaly]) -> None:
        """AnomalyHistory.on_recorded: counts new alerts that arrive covered by a suppression."""
        with self._lock:
            index = self._suppressions
        if index:
            self.suppressed_new += sum(1 for e in entries if index.anomaly(e, self._incident_anomalies))

    # -- submitting and listing -------------------------------------------------------------------------------
    def submit(self, given: fpb.Feedback, author: str) -> tuple[fpb.Feedback, bool]:
        """Stores a label (author as the server decided it) and returns it with True when its client_key was
        seen before (then nothing is stored). Raises FeedbackRejected or FeedbackUnavailable."""
        if not self._loaded.is_set():
            raise FeedbackUnavailable(f"feedback is not loaded from its topic yet ({self.status}); retry shortly")
        problem = feedback_check.problem(given, self.clock())
        if problem:
            raise FeedbackRejected(problem)
        with self._write:
            self._check_owner()
            if given.client_key:
                with self._lock:
                    at = self._by_key.get(given.client_key)
                if at is not None:
                    return self._copy(at), True
            incident = self._subject_exists(given)
            try:
                value = feedback_scope.resolve(given, self.find, incident)
            except feedback_scope.ScopeError as exc:
                raise FeedbackRejected(str(exc)) from None
            fb = fpb.Feedback()
            fb.CopyFrom(given)
            fb.feedback_id = f"fb-{self._next:06d}"
            fb.scope_value = value
            fb.author = author
            fb.created_time.FromNanoseconds(int(self.clock() * 1e9))
            if self.topic is not None:
                try:
                    self.topic.append(fb)  # durable before it is answered (and before it applies)
                except FeedbackStoreError as exc:
                    # fence and read again before the next id: a former owner may be back
                    refused_under, self._owned_under = self._owned_under, 0
                    if isinstance(exc, FeedbackWriteFenced) and self.on_fenced is not None:
                        self.on_fenced(refused_under)  # another replica took the book: follow it, as the book does
                    raise FeedbackUnavailable(f"{exc}; nothing was stored, send it again") from None
            with self._lock:
                self._hold(fb)
                self.counts[(fb.label, fb.action)] = self.counts.get((fb.label, fb.action), 0) + 1
        self._changed()
        log.info("feedback stored", extra={"feedback_id": fb.feedback_id, "subject": fb.WhichOneof("subject"),
                                           "label": fpb.FeedbackLabel.Name(fb.label),
                                           "scope": fpb.FeedbackScope.Name(fb.scope), "scope_value": fb.scope_value,
                                           "action": fpb.FeedbackAction.Name(fb.action), "author": fb.author})
        return fb, False

    def _check_owner(self) -> None:
        """Replicas: refuses unless this one owns the book. A writer that has not written since it started, holds
        the book under another assignment than it fenced under, or failed a write first takes the writer's
        transactional id (fencing any former owner: its later writes fail) and then reads the topic to its end,
        so it numbers after every stored label."""
        under = int(self.owner()) if self.owner is not None else 1
        if not under:
            if self._owned_under and self.topic is not None:
                self.topic.drop_producer()
            self._owned_under = 0
            raise FeedbackUnavailable("this scorer replica follows the incident book another replica owns, and only "
                                      "the owner numbers labels; send it again (a Service routes the retry to "
                                      "another replica) or to the owner (its /metrics says "
                                      "logmesh_incident_book_owner 1)")
        if self._owned_under == under or self.topic is None or (self.owner is None and not self.topic.transactional_id):
            return
        try:
            if self.topic.transactional_id:
                self.topic.fence()
            labels = self.topic.read_all()
        except FeedbackStoreError as exc:
            raise FeedbackUnavailable(f"{exc}; nothing was stored, send it again") from None
        with self._lock:
            for fb in labels:
                self._hold(fb)
        self._owned_under = under

    def _subject_exists(self, fb: fpb.Feedback) -> incident_pb2.Incident | None:
        subject = fb.WhichOneof("subject")
        if subject == "record_id":
            if not any(e.HasField("line") for e in self.find(record_id=fb.record_id)):
                raise FeedbackRejected(f"record_id {fb.record_id!r}: the anomaly history holds no flagged line with "
                                       "that id (`logmesh anomalies` lists them)")
        elif subject == "session_key":
            if not self.find(block_id=fb.session_key):
                raise FeedbackRejected(f"session_key {fb.session_key!r}: the anomaly history holds no alert, verdict "
                                       "or flagged line of that block (`logmesh anomalies` lists them)")
        else:
            incident = self.incident(fb.incident_id) if self.incident is not None else None
            if incident is None:
                where = "" if self.incident is not None else " (this scorer keeps no incidents)"
                raise FeedbackRejected(f"incident_id {fb.incident_id!r}: no such incident{where}; "
                                       "`logmesh incidents` lists them")
            return incident
        return None

    def _copy(self, at: int) -> fpb.Feedback:
        with self._lock:
            fb = fpb.Feedback()
            fb.CopyFrom(self._labels[at])
            return fb

    def _hold(self, fb: fpb.Feedback) -> None:
        """Enters a stored label (lock held); a label read twice under one id keeps the last."""
        at = self._by_id.get(fb.feedback_id)
        if at is None:
            at = len(self._labels)
            self._labels.append(fb)
            self._by_id[fb.feedback_id] = at
        else:
            self._labels[at] = fb
        if fb.client_key:
            self._by_key.setdefault(fb.client_key, at)
        number = fb.feedback_id.rpartition("-")[2]
        if number.isdigit():
            self._next = max(self._next, int(number) + 1)

    @property
    def next_id(self) -> str:
        return f"fb-{self._next:06d}"

    def list(self, size: int, before: int | None, include_expired: bool) -> Listing:
        """Up to `size` labels stored before index `before` (None: the newest), newest first."""
        now = self.clock()
        with self._lock:
            labels = self._labels[: len(self._labels) if before is None else max(0, before)]
            out: list[fpb.Feedback] = []
            at = len(labels) - 1
            while at >= 0:
                fb = labels[at]
                ends = expiry(fb)
                if include_expired or ends is None or ends > now:
                    if len(out) == size:
                        return Listing(out, at + 1)
                    copy = fpb.Feedback()
                    copy.CopyFrom(fb)
                    out.append(copy)
                at -= 1
        return Listing(out, None)

    def __len__(self) -> int:
        return len(self._labels)

    # -- suppressions now and at their expiry ----------------------------------------------------------------
    def _changed(self) -> None:
        now = self.clock()
        with self._lock:
            self._suppressions = Suppressions.of(self._labels, now)
            ends = [e for e in (expiry(fb) for fb in self._labels if suppresses(fb, now)) if e is not None]
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
            if ends and not self._stop.is_set():
                self._timer = threading.Timer(max(0.0, min(ends) - now) + 0.01, self._changed)
                self._timer.daemon = True
                self._timer.start()
        for callback in self._listeners:
            try:
                callback()
            except Exception:  # noqa: BLE001 - a listener's failure must not lose the label
                log.exception("a feedback listener failed")

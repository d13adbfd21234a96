"""The incident book: the anomaly history's alerts grouped into incidents (scorer/analyst/grouping.py), kept
durably (scorer/analyst/incident_store.py), with similar past incidents from the vector store
(scorer/analyst/incident_vectors.py), summaries and suppressions attached, and a feed of every change.

One thread of the book's own does all the work, in rounds: it reads the history's entries after the last one it
grouped (the history wakes it; the history is the queue, so nothing is copied or lost while the book is busy),
groups them, applies the summaries and suppression refreshes handed to it, closes incidents a window went past,
stores the round's changed incidents in one transaction, and only then publishes them (listeners, watchers).
The round changes incidents in place, so until it is stored readers (ListIncidents, GetIncident, the feed) are
served the version last stored of each incident it changed (`_stored`), and none it opened.
Every change moves the incident's `update_id` to the next position of the feed; a change of its evidence also
moves its `version` (once per round). After a restart the book reads its incidents back, continues their ids
and update ids, and groups the history's entries after the highest history id any incident holds: each anomaly
is grouped once.

Replicas (scorer/analyst/incident_lease.py): with a lease, only the replica holding it runs rounds, calls the
listeners (summaries, notifications) and writes; the others follow the topic and serve what the owner
committed. A replica that gains the lease fences the former owner, reads the topic to its end, continues the
ids after every id it holds, and hands the listeners every open incident and every incident whose summary is
missing or older than its version (what a crashed owner left pending; a lone scorer does the same at start).

Each replica's history numbers the anomalies its own way (with several anomalies partitions the ids interleave
differently), so what the book has grouped is kept as a cursor in the anomalies topic ("topic/partition" ->
the next offset), stored with every round's incidents in the same transaction (incident_store.py). A new
owner resumes each partition after the cursor: it skips every entry of its own history that the cursor
covers, whatever its id. A book stored before the cursor existed resumes after its highest history id, as
before (right with one anomalies partition). Each cursor offset is stored with the id of the anomalies topic it
counts in (the id the book knew when it read there: at a takeover, or asked again once it follows a recreated
topic's rewind), so a takeover tells a recreated topic's cursor from the old topic's by the id (by the
partition's end where the id is missing). An owner whose write fails takes the book over again (fences,
reads back, resumes from the cursor) instead of writing on: a stalled owner that wakes after another replica
took over must not write its stale state (the takeover's fence made its producer fail). An owner whose write
was refused because it was fenced (WriteFenced) does not take over again under the lease assignment it holds:
its lease may not have noticed the loss yet, and a takeover (a fence of its own) would take the book back from
the real owner. It demotes itself at once (its producer dropped, it reads the topic back and follows), asks
its lease to rejoin the group, and owns again only under a later assignment (IncidentLease.assignments).
That rule is `owning_assignment`, which the replica's FeedbackBook numbers labels by too; a label write refused
as fenced bars the assignment the same way (`write_refused`).
"""
from __future__ import annotations

import logging
import math
import threading
import time
from collections import OrderedDict, deque
from typing import TYPE_CHECKING, Callable, Iterable

from google.protobuf.timestamp_pb2 import Timestamp
from tenacity import RetryCallState, Retrying, retry_if_exception_type, wait_exponential

from logmesh.scorer.analyst import grouping
from logmesh.scorer.analyst.grouping import CLOSED, OPEN, DEFAULT_WINDOW_S, Facts, OpenIndex
from logmesh.scorer.analyst.incident_store import IncidentStore, MemoryIncidentStore, WriteFenced
from logmesh.scorer.analyst.incident_vectors import label, title_of
from logmesh.scorer.history import next_offset
from logmesh.v1 import feedback_pb2, incident_pb2, score_pb2

if TYPE_CHECKING:
    from logmesh.scorer.analyst.incident_lease import IncidentLease
    from logmesh.scorer.analyst.incident_vectors import IncidentVectors
    from logmesh.scorer.history import AnomalyHistory

log = logging.getLogger("logmesh.scorer.incidents")
Listener = Callable[[incident_pb2.Incident], None]
MAX_EVIDENCE = 32  # evidence lines an incident cites
PER_TEMPLATE = 3  # lines cited per template (its count covers all its lines)
MAX_IDS = 5000  # anomaly ids kept (the newest; the highest is what a restart resumes after)
MAX_SESSIONS, MAX_NODES, MAX_REASONS = 1000, 256, 20
MESSAGE_BYTES = 1024
MAX_HOMES = 200_000  # sessions whose incident is remembered after it closed (a late FINAL joins it)
ROUND = 500  # history entries grouped per round
IDS_ASKED_EVERY_S = 30.0  # a topic id the broker did not give is asked again after this long, not every round
_BEFORE_REWIND = 2**62  # a cursor past every offset: what a recreated partition held before is grouped


def _cap_text(text: str, limit: int = MESSAGE_BYTES) -> str:
    data = text.encode("utf-8")
    return text if len(data) <= limit else data[:limit].decode("utf-8", "ignore")


def _ts(s: float) -> Timestamp:
    t = Timestamp()
    t.FromNanoseconds(int(s * 1e9))
    return t


def _telling(e: incident_pb2.EvidenceLine) -> tuple:
    """Sort key, most telling first: templates normal sessions rarely hold, then rarer in the incident, then older."""
    fraction = e.normal_session_fraction if math.isfinite(e.normal_session_fraction) else 1.0
    return (fraction, e.count_in_incident, e.event_time.seconds, e.event_time.nanos, e.record_id)


class IncidentBook:
    """Incidents grouped from `history` (a logmesh.scorer.history.AnomalyHistory), kept in `store`.

    `normal_fraction(template_id)` is the share of normal training sessions holding a template (the served
    model's NormalProfile); `family` names the logs (or says it, asked per new incident: the served model's);
    `vectors` finds similar past incidents; `suppression(incident)` names the feedback
    that suppresses an incident ("" for none), `analyst_label(incident_id)` an incident's analyst label."""

    def __init__(self, history: "AnomalyHistory | None" = None, store: IncidentStore | None = None,
                 vectors: "IncidentVectors | None" = None, normal_fraction: Callable[[str], float] | None = None,
                 window_s: float = DEFAULT_WINDOW_S, family: str | Callable[[], str] = "hdfs",
                 max_incidents: int = 50_000, *,
                 suppression: Callable[[incident_pb2.Incident], str] | None = None,
                 analyst_label: Callable[[str], feedback_pb2.FeedbackLabel] | None = None,
                 lease: "IncidentLease | None" = None) -> None:
        self.history, self.store, self.vectors = history, store or MemoryIncidentStore(), vectors
        self.normal_fraction = normal_fraction
        self.window_s, self.family, self.max_incidents = window_s, family, max_incidents
        self.suppression, self.analyst_label = suppression, analyst_label
        self._incidents: OrderedDict[str, incident_pb2.Incident] = OrderedDict()  # oldest change first
        self._index = OpenIndex(window_s)
        self._homes: OrderedDict[str, str] = OrderedDict()  # session -> the incident that holds it
        self._joined: dict[str, float] = {}  # open incident -> monotonic time an alert last joined
        self._lock = threading.Condition()
        self._listeners: list[Listener] = []
        self._commands: deque[Callable[[set[str]], None]] = deque()  # summaries to attach
        self._recheck_all = False  # refresh_suppressions asked
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.ready = threading.Event()  # set once the stored incidents are read back
        self._next_number = 1
        self._last_update = 0  # the feed's latest position
        self._published = 0  # every change up to here is stored and announced
        self._last_grouped = 0  # the highest history id grouped (or passed over as no alert)
        self._cursor: dict[str, int] = {}  # "topic/partition" -> the next anomalies offset to group (stored)
        # "topic/partition" -> the topic id its cursor offset counts in (stored with it); a partition missing here
        # counts in the topic as it is now (asked when the cursor is stored)
        self._cursor_ids: dict[str, str] = {}
        self._ids_missed_at = -math.inf  # when the store last lacked a topic id asked of it (monotonic)
        self._ids_unknown_said = False
        # the history's rewinds (a recreated anomalies topic) the cursor follows: those after this history id,
        # and those of the partitions a takeover found recreated ("topic/partition" -> the cursor after the
        # rewind; None: the rewind's offset)
        self._rewinds_from = 0
        self._restarted: dict[str, int | None] = {}
        self._watermark = 0.0  # the newest event time seen (seconds)
        self._dirty: set[str] = set()  # changed but not stored yet (the store was down)
        # incident id -> its last stored version, for each incident a round changed whose change is not stored
        # yet: what readers are served until it is (the round changes the incident in place)
        self._stored: dict[str, incident_pb2.Incident] = {}
        self._store_failing = False
        self._unstored = False  # this replica's memory holds changes that were not stored (it lost the book)
        self._in_round = False  # a round is between its first step and its publication (wait_idle waits)
        self.opened = 0  # incidents started by this process (metrics)
        self.status = "loading"
        self.lease = lease
        self.role = "follower" if lease is not None else "owner"
        self._took_under = 0  # the lease assignment (IncidentLease.assignments) this replica took the book under
        self._barred_through = 0  # its write was fenced under this assignment: it owns only under a later one
        if lease is not None:
            lease.on_change = self._wake.set
        if history is not None:
            history.on_add(lambda entries: self._wake.set())

    # -- the interface the analyst loop shares (prompts/interfaces.md) -----------------------------
    def get(self, incident_id: str) -> incident_pb2.Incident | None:
        with self._lock:
            found = self._served(self._incidents.get(incident_id))
            return _copy(found) if found is not None and 0 < found.update_id <= self._published else None

    def subscribe(self, listener: Listener) -> None:
        """`listener(incident)` after every change, from the book's thread, once the change is stored."""
        self._listeners.append(listener)

    def attach_summary(self, incident_id: str, summary: incident_pb2.IncidentSummary) -> None:
        """Keeps `summary` when it was written for the incident's current version (moves update_id only)."""
        kept = _copy(summary)

        def apply(changed: set[str]) -> None:
            incident = self._incidents.get(incident_id)
            if incident is not None and kept.incident_version == incident.version:
                self._touch(incident)
                incident.summary.CopyFrom(kept)
                changed.add(incident_id)
        self._command(apply)

    def mark_notified(self, incident_id: str, target_key: str) -> None:
        """Records that `target_key` (notify.Target.key) has handled the incident, in the incident itself, so
        the replica that owns the book next sends it no second time."""
        def apply(changed: set[str]) -> None:
            incident = self._incidents.get(incident_id)
            if incident is not None and target_key not in incident.notified_targets:
                self._touch(incident)
                incident.notified_targets.append(target_key)
                changed.add(incident_id)
        self._command(apply)

    def refresh_suppressions(self) -> None:
        """Asks `suppression` (and `analyst_label`, for the similar incidents) again for every incident."""
        self._recheck_all = True
        self._wake.set()

    # -- reading (the servicer) -------------------------------------------------------------------
    def page(self, size: int, before_update: int | None, state: int = 0, include_suppressed: bool = False,
             max_bytes: int = 4 * 1024 * 1024 - 4096) -> tuple[list[incident_pb2.Incident], int | None]:
        """Up to `size` incidents changed before `before_update`, most recently changed first (at most
        `max_bytes` serialized), and the update id to continue below (None when nothing older matches)."""
        out: list[incident_pb2.Incident] = []
        total = 0
        with self._lock:
            for live in reversed(self._incidents.values()):
                incident = self._served(live)
                if not 0 < incident.update_id <= self._published or (
                        before_update is not None and incident.update_id >= before_update):
                    continue  # update id 0 (or one not published): opened by a round that has not stored it yet
                if (state and incident.state != state) or (incident.suppressed_by_feedback_id and not include_suppressed):
                    continue
                cost = incident.ByteSize() + 8
                if len(out) == size or (out and total + cost > max_bytes):
                    return out, out[-1].update_id
                out.append(_copy(incident))
                total += cost
        return out, None

    def changes_after(self, after_update: int, timeout: float, limit: int = 256) -> tuple[list[incident_pb2.Incident], int]:
        """Incidents whose latest change is after `after_update`, oldest change first (each as it stands now),
        and the position to wait after next; waits up to `timeout` seconds for a change."""
        with self._lock:
            self._lock.wait_for(lambda: self._published > after_update, timeout)
            newer = []
            for live in reversed(self._incidents.values()):
                incident = self._served(live)
                if incident.update_id == 0:  # opened by a round still under way (at the end): not stored yet
                    continue
                if incident.update_id <= after_update:
                    break
                if incident.update_id <= self._published:
                    newer.append(incident)
            chosen = [_copy(i) for i in newer[-limit:][::-1]]
            last = chosen[-1].update_id if len(newer) > limit else max(self._published, after_update)
        return chosen, last

    @property
    def last_update_id(self) -> int:
        with self._lock:
            return self._published

    def __len__(self) -> int:
        with self._lock:
            return len(self._incidents)

    def counts(self) -> dict[str, int]:
        with self._lock:
            open_ = sum(1 for i in self._incidents.values() if i.state == OPEN)
            return {"open": open_, "closed": len(self._incidents) - open_}

    # -- lifecycle --------------------------------------------------------------------------------
    def start(self) -> "IncidentBook":
        self._thread = threading.Thread(target=self._run, name="incident-book", daemon=True)
        self._thread.start()
        if self.lease is not None:
            self.lease.start()
        return self

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)
        if self.lease is not None:
            self.lease.close()
        with self._lock:
            self._lock.notify_all()
        self.store.close()
        if self.vectors is not None:
            self.vectors.close()

    def wait_idle(self, timeout: float = 30.0) -> bool:
        """True once everything the history holds is grouped and stored (tests, and a clean stop)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            last = self.history.last_id if self.history is not None else 0
            with self._lock:
                if (self.ready.is_set() and not self._in_round and self._last_grouped >= last and not self._dirty
                        and not self._commands and not self._recheck_all):
                    return True
            time.sleep(0.05)
        return False

    def _command(self, apply: Callable[[set[str]], None]) -> None:
        self._commands.append(apply)
        self._wake.set()

    # -- the book's thread ------------------------------------------------------------------------
    def _run(self) -> None:
        try:
            self._load(self.store.load(self._stop))
            self._next_number = max(self._next_number, getattr(self.store, "highest_number", 0) + 1)
        except Exception:  # noqa: BLE001 - a book that cannot load must not take the scorer down
            log.exception("incidents could not be read back; the book starts empty")
        self.ready.set()
        self.status = "live" if self.lease is None else "following"
        if self.lease is None:
            self._requeue()
        tick = max(0.05, min(5.0, self.window_s / 4))
        while not self._stop.is_set():
            if self.lease is not None and not self._own(tick):
                continue
            more = False
            try:
                with self._lock:
                    self._in_round = True
                more = self._round()
            except Exception:  # noqa: BLE001 - say it, keep the book alive
                log.exception("incident round failed; retrying")
                self._stop.wait(1.0)
            finally:
                with self._lock:
                    self._in_round = False
            if not more:
                self._wake.wait(tick if not self._store_failing else 2.0)
                self._wake.clear()

    # -- replicas: following the owner, taking over ---------------------------------------------
    def _own(self, tick: float) -> bool:
        """True when this replica owns the book (taking it over first when it just gained the lease); else
        follows the owner's topic for a while and returns False."""
        assert self.lease is not None
        if self._may_own():
            return self.role == "owner" or self._taking_over()
        if self.role == "owner":
            self.role, self.status = "follower", "following"
            with self._lock:
                self._dirty.clear()  # not stored: the new owner groups those alerts again from its history
                self._unstored = True
            self.store.drop_producer()
        if self._unstored and not self._read_back():
            return False
        try:
            followed = self.store.follow(min(1.0, tick))
        except Exception as exc:  # noqa: BLE001 - the broker's trouble: say it once, keep following
            if self.status == "following":
                log.warning("cannot follow the incidents topic; retrying", extra={"error": str(exc)})
            self.status = f"following, topic unreadable: {exc}"
            self._stop.wait(1.0)
            return False
        self.status = "following"
        if followed:
            with self._lock:
                for incident in followed:
                    self._index.remove(incident.incident_id)
                    self._joined.pop(incident.incident_id, None)
                    self._hold(incident)
                self._published = self._last_update
                self._trim()
                self._lock.notify_all()
        return False

    def owning_assignment(self) -> int:
        """The lease assignment (IncidentLease.assignments) under which this replica may own the book, 0 when it
        may not: the lease is elsewhere, or a write of this replica's was refused (fenced) under that
        assignment. The one rule of ownership: the book's thread takes the book by it, and the FeedbackBook
        numbers labels by it (scorer/service.py wires it). A book without a lease owns under assignment 1."""
        if self.lease is None:
            return 1
        assignment = self.lease.assignments  # read before `owner`: the lease sets it first
        return assignment if self.lease.owner.is_set() and assignment > self._barred_through else 0

    def write_refused(self, assignment: int) -> None:
        """A write this replica made under lease `assignment` was refused because another producer fenced it
        (another replica took the book over: the FeedbackBook's label write, or this book's round): this replica
        owns again only under a later assignment. The book's thread demotes it at its next step (_own), and the
        lease rejoins the group (a refusal with no other owner still ends owned)."""
        if self.lease is None:
            return
        with self._lock:
            self._barred_through = max(self._barred_through, assignment)
        self.lease.rejoin()
        self._wake.set()

    def _may_own(self) -> bool:
        """The lease is held here, under a later assignment than one a fenced write was refused under."""
        return self.owning_assignment() > 0

    def _read_back(self) -> bool:
        """A former owner's memory holds its rounds that were not stored (a write the new owner's fence refused,
        a round cut off by the lost lease), with update ids the new owner gives to other changes: it reads the
        topic again and serves only what is stored. False when stopped first."""
        self.store.stop_following()
        incidents = self.store.load(self._stop)
        if self._stop.is_set():
            return False
        with self._lock:
            self._incidents.clear()
            self._stored.clear()
            self._index = OpenIndex(self.window_s)
            self._homes.clear()
            self._joined.clear()
            self._last_update = 0  # the stored changes' positions only: a watcher misses none the new owner makes
            self._load(incidents, fresh_history_check=False)
            self._unstored = False
            self._lock.notify_all()
        log.info("incidents read back after losing the book (its unstored changes dropped)",
                 extra={"incidents": len(incidents), "last_update_id": self._last_update})
        return True

    def _taking_over(self) -> bool:
        """Takes the book over, retried after waits doubling from 0.5 s to 5 s while this replica holds the
        lease; False when it lost the lease (or stopped) first."""
        assert self.lease is not None
        lease = self.lease

        def failed(state: RetryCallState) -> None:
            if state.attempt_number == 1:
                log.warning("taking over the incident book failed; retrying",
                            extra={"error": str(state.outcome.exception()) if state.outcome else "?"})
        retrying = Retrying(retry=retry_if_exception_type(Exception), sleep=self._stop.wait,
                            wait=wait_exponential(multiplier=0.5, max=5.0),
                            stop=lambda _: self._stop.is_set() or not self._may_own(),
                            before_sleep=failed, retry_error_callback=lambda _: False)
        return bool(retrying(self._take_over))

    def _take_over(self) -> bool:
        """Fences the former owner, reads the topic to its end and resumes after the book's cursor (raises when
        the broker cannot; nothing was written then)."""
        assert self.lease is not None
        under = self.lease.assignments  # read before the fence: a later assignment is a later one
        self.store.fence()
        self.store.stop_following()
        incidents = self.store.load(self._stop)
        cursor = self.store.committed()
        # what telling an old topic's cursor from a recreated one's takes, asked before the lock (the broker)
        asked = (sorted(set(cursor) | {r.where for r in self.history.rewinds()})
                 if cursor and self.history is not None else [])
        ends = self.store.anomaly_ends(asked) if asked else {}
        stored_ids = self.store.cursor_topic_ids() if asked else {}
        ids_now = self.store.anomaly_topic_ids({w.rpartition("/")[0] for w in asked}) if asked else {}
        with self._lock:
            self._incidents.clear()
            self._stored.clear()
            self._index = OpenIndex(self.window_s)
            self._homes.clear()
            self._joined.clear()
            self._dirty.clear()
            self._load(incidents, fresh_history_check=False)
            self._resume(cursor, ends, stored_ids, ids_now)
            self._unstored = False
        self._next_number = max(self._next_number, getattr(self.store, "highest_number", 0) + 1)
        self._took_under = under
        self.role, self.status = "owner", "live"
        log.info("incident book taken over", extra={"incidents": len(incidents), "next_id": self._next_number,
                                                     "grouped_to": self._last_grouped, "cursor": cursor})
        self._requeue()
        return True

    def _resume(self, cursor: dict[str, int], ends: dict[str, int], stored_ids: dict[str, str],
                ids_now: dict[str, str]) -> None:
        """Where this replica's history is grouped to, from the book's stored cursor (lock held)."""
        self._cursor = dict(cursor)
        self._cursor_ids = {}
        self._restarted = {}
        if self.history is not None:
            self._rewinds_from = self.history.last_id
            if cursor:
                self._restart_recreated(self._cursor, ends, stored_ids, ids_now)
                self._last_grouped = self.history.grouped_prefix(self._cursor, self._restarted)
                self._follow_rewinds(0, self._last_grouped)  # the rewinds the prefix passed
        # no cursor (a book older than it, or one whose entries had no topic coordinates): after the highest
        # history id its incidents hold, which _load set

    def _restart_recreated(self, cursor: dict[str, int], ends: dict[str, int], stored_ids: dict[str, str],
                           ids_now: dict[str, str]) -> None:
        """The partitions of a recreated anomalies topic (deleted and created again: its offsets restart at 0),
        found at a takeover. A stored cursor is the old topic's (stored by an owner that had not noticed) when
        it carries another topic id than the topic has now, the new topic's when it carries the same. Without
        both ids, the partition's end decides: the broker drops a deleted topic's committed offsets, so a cursor
        there was stored after the recreation; beyond the end it is the old topic's, within it the new topic's
        (an old cursor not past the new end is taken for the new topic's: the gap the ids close). Where this
        history read the partition again from its start (its rewind), its entries before the rewind are grouped
        by the old cursor or, when there is none, count as grouped; those after it by the new cursor or, when
        there is none, from the new topic's start."""
        assert self.history is not None
        rewound = {r.where for r in self.history.rewinds()}
        for where in sorted(set(cursor) | rewound):
            end, stored, now = ends.get(where), stored_ids.get(where), ids_now.get(where.rpartition("/")[0])
            if where in cursor and stored and now:
                old = stored != now
                why = "the topic id stored with the book's cursor is not the anomalies topic's"
            else:
                old = where in cursor and end is not None and cursor[where] > end
                why = "the book's cursor is beyond the end of its anomalies partition"
            if old:
                log.warning("%s: the topic was recreated; grouping the partition from its start", why,
                            extra={"partition": where, "cursor": cursor[where], "end": end, "stored_topic_id": stored,
                                   "topic_id": now})
            elif stored:
                self._cursor_ids[where] = stored
            if where not in rewound:
                if old:  # this history read only the new topic there
                    cursor[where] = 0
                continue
            if old:
                self._restarted[where] = None
                if stored:  # the entries before the rewind go on counting in the old topic
                    self._cursor_ids[where] = stored
            else:
                self._restarted[where] = cursor.get(where)  # None when the broker dropped it with the old topic
                cursor[where] = _BEFORE_REWIND

    def _follow_rewinds(self, after_id: int, upto_id: int) -> None:
        """Moves the cursor back where the history read a partition again from its start between two of its
        entries (a recreated topic): else every entry of the new topic, its offsets below the old ones, would
        count as grouped."""
        if self.history is None:
            return
        for r in self.history.rewinds():
            if not after_id <= r.after_id < upto_id:
                continue
            if r.after_id < self._rewinds_from:  # before this replica took over: as _restart_recreated found
                if r.where not in self._restarted:
                    continue
                value = self._restarted[r.where]
                self._cursor[r.where] = r.offset if value is None else value
                self._cursor_ids.pop(r.where, None)  # the new topic's from here
                continue
            if self._cursor.get(r.where, 0) > r.offset:
                log.warning("the anomalies topic was recreated: its partition is grouped from its start again",
                            extra={"partition": r.where, "cursor": self._cursor[r.where], "from": r.offset})
            self._cursor[r.where] = r.offset
            self._cursor_ids.pop(r.where, None)  # the new topic's: its id is asked when the cursor is stored

    def _requeue(self) -> None:
        """Hands the listeners what a former owner (or this scorer before a crash) left pending: every open
        incident and every one whose summary is missing or older than its version (the notifier skips what
        notified_targets or its own record says was sent)."""
        with self._lock:
            pending = [_copy(i) for i in self._incidents.values()
                       if i.state == OPEN or i.summary.incident_version != i.version]
        for incident in pending:
            for listener in self._listeners:
                try:
                    listener(incident)
                except Exception:  # noqa: BLE001 - one listener's bug must not stop the others
                    log.exception("incident listener failed", extra={"incident_id": incident.incident_id})
        if pending:
            log.info("incidents handed to summaries and notifications again", extra={"incidents": len(pending)})

    def _load(self, incidents: list[incident_pb2.Incident], fresh_history_check: bool = True) -> None:
        with self._lock:
            for incident in incidents:
                self._hold(incident)
            last_history = self.history.last_id if self.history is not None else 0
            if fresh_history_check and self._last_grouped > last_history:
                log.warning("the incidents topic holds anomalies newer than the anomaly history (a history without "
                            "its state dir?): grouping the history's entries as new",
                            extra={"grouped_to": self._last_grouped, "history_last": last_history})
                self._last_grouped = 0
            self._published = self._last_update
            self._trim()
        log.info("incidents reloaded", extra={"incidents": len(incidents), "open": len(self._index),
                                              "last_update_id": self._last_update, "grouped_to": self._last_grouped})

    def _hold(self, incident: incident_pb2.Incident) -> None:
        self._incidents.pop(incident.incident_id, None)
        self._incidents[incident.incident_id] = incident
        number = incident.incident_id.removeprefix("inc-")
        if number.isdigit():
            self._next_number = max(self._next_number, int(number) + 1)
        self._last_update = max(self._last_update, incident.update_id)
        if incident.anomaly_ids:
            self._last_grouped = max(self._last_grouped, max(incident.anomaly_ids))
        event_s = grouping.event_last_seen(incident)  # a recording time is no event time: it moves no watermark
        if event_s is not None:
            self._watermark = max(self._watermark, event_s)
        for s in incident.session_keys:
            self._home(s, incident.incident_id)
        if incident.state == OPEN:
            self._index.hold(incident)
            self._joined[incident.incident_id] = time.monotonic()

    def _round(self) -> bool:
        """One round; True when the history has more entries waiting."""
        entries: list[score_pb2.Anomaly] = []
        if self.history is not None and not self._dirty:  # while the store is down, nothing new is grouped
            entries, _ = self.history.wait_after(self._last_grouped, timeout=0, limit=ROUND)
        changed: set[str] = set()
        evidence: set[str] = set()
        recheck, self._recheck_all = self._recheck_all, False
        with self._lock:
            for entry in entries:
                self._group(entry, changed, evidence)
            while self._commands:
                self._commands.popleft()(changed)
            self._close_stale(changed)
            asked = set(self._incidents) if recheck else set()
            snapshots = {i: _copy(self._incidents[i]) for i in changed | asked if i in self._incidents}
        # the callbacks run outside the lock: feedback and the vector store may take locks of their own
        similar = {}
        if self.vectors is not None and evidence:
            similar = self.vectors.update([snapshots[i] for i in sorted(evidence) if i in snapshots], self.analyst_label)
        suppressed = {i: self._suppression_of(s) for i, s in snapshots.items()}
        labels = {i: [label(self.analyst_label, s.incident_id) for s in snapshots[i].similar] for i in asked}
        with self._lock:
            for incident_id, found in similar.items():
                incident = self._incidents.get(incident_id)
                if incident is None:
                    continue
                for s in found:
                    other = self._served(self._incidents.get(s.incident_id))
                    if other is not None:
                        s.title = title_of(other)
                self._touch(incident)
                del incident.similar[:]
                incident.similar.extend(found)
            for incident_id, feedback_id in suppressed.items():
                incident = self._incidents.get(incident_id)
                if incident is not None and feedback_id is not None and feedback_id != incident.suppressed_by_feedback_id:
                    self._touch(incident)
                    incident.suppressed_by_feedback_id = feedback_id
                    changed.add(incident_id)
            for incident_id, new in labels.items():
                incident = self._incidents.get(incident_id)
                if incident is not None and incident_id not in similar and len(new) == len(incident.similar) and \
                        new != [s.analyst_label for s in incident.similar]:
                    self._touch(incident)
                    for s, value in zip(incident.similar, new):
                        s.analyst_label = value
                    changed.add(incident_id)
            for incident_id in sorted(changed, key=lambda i: (self._incidents[i].update_id if i in self._incidents else 0, i)):
                incident = self._incidents.get(incident_id)
                if incident is None:
                    continue
                self._touch(incident)
                if incident_id in evidence:
                    incident.version += 1
                self._last_update += 1
                incident.update_id = self._last_update  # kept in its place until stored (readers: _served)
            self._dirty |= changed
            pending = [self._incidents[i] for i in self._dirty if i in self._incidents]
            pending.sort(key=lambda i: i.update_id)
            batch = [_copy(i) for i in pending]
        if batch and not self._put(batch):
            return False
        with self._lock:
            for incident in batch:  # stored: served as it is now, in the feed's order (latest change last)
                if incident.incident_id in self._incidents:
                    self._incidents.move_to_end(incident.incident_id)
            self._stored.clear()
            self._dirty.clear()
            self._published = self._last_update
            self._trim()
            self._lock.notify_all()
        for incident in batch:
            for listener in self._listeners:
                try:
                    listener(_copy(incident))
                except Exception:  # noqa: BLE001 - one listener's bug must not stop the feed
                    log.exception("incident listener failed", extra={"incident_id": incident.incident_id})
        return len(entries) == ROUND

    def _put(self, batch: list[incident_pb2.Incident]) -> bool:
        with self._lock:  # a partition's old topic still to pass (_BEFORE_REWIND) has no offset to store yet
            cursor = {w: o for w, o in self._cursor.items() if o < _BEFORE_REWIND}
        ids = self._topic_ids_of(cursor)
        try:
            self.store.put(batch, cursor, ids)
        except Exception as exc:  # noqa: BLE001 - the store's trouble: retried next round, nothing published
            if not self._store_failing:
                log.warning("incidents not stored; retrying (nothing new is grouped meanwhile; the anomaly "
                            "history keeps the alerts)", extra={"error": str(exc), "incidents": len(batch)})
            self._store_failing = True
            self.status = f"store failing: {exc}"
            if self.lease is not None:  # a replica takes the book over again before it writes (see above)
                self.role = "follower"
                with self._lock:
                    self._dirty.clear()  # the takeover reads back what was stored and regroups the rest
                    self._unstored = True  # or, if the lease is gone, the follower reads back (_read_back)
                if isinstance(exc, WriteFenced):  # another replica owns it: no takeover under this assignment
                    self._store_failing, self.status = False, "following"  # not a store down: a demotion
                    log.warning("incident write refused (fenced: another replica owns the book); following it "
                                "until the lease is assigned here again", extra={"error": str(exc),
                                                                                 "assignment": self._took_under})
                    self.write_refused(self._took_under)
            return False
        if self._store_failing:
            log.info("incidents stored again", extra={"incidents": len(batch)})
        self._store_failing = False
        self.status = "live"
        return True

    def _topic_ids_of(self, cursor: dict[str, int]) -> dict[str, str]:
        """The topic id each cursor offset counts in: the one the book holds for it, else the topic's id now (a
        partition first grouped, or one whose rewind the book followed: it reads the new topic), asked of the
        store once and then held. Where the broker gives none, the offset is stored without (today's cursor)."""
        missing = sorted({w.rpartition("/")[0] for w in cursor if w not in self._cursor_ids})
        if missing and time.monotonic() - self._ids_missed_at > IDS_ASKED_EVERY_S:
            found = self.store.anomaly_topic_ids(missing)
            for where in cursor:
                if where not in self._cursor_ids and found.get(where.rpartition("/")[0]):
                    self._cursor_ids[where] = found[where.rpartition("/")[0]]
            if len(found) < len(missing):
                self._ids_missed_at = time.monotonic()
            if len(found) < len(missing) and not self._ids_unknown_said and self.lease is not None:
                self._ids_unknown_said = True
                log.info("no topic id for some anomalies topics: their cursor is stored without one (a takeover "
                         "tells a recreated topic by the partition's end only)",
                         extra={"topics": [t for t in missing if t not in found]})
        return {w: self._cursor_ids[w] for w in cursor if w in self._cursor_ids}

    def _suppression_of(self, incident: incident_pb2.Incident) -> str | None:
        """The feedback id that suppresses `incident` ("" for none), None when it could not be asked."""
        if self.suppression is None:
            return None
        try:
            return self.suppression(incident) or ""
        except Exception:  # noqa: BLE001 - feedback's own trouble must not stop grouping
            log.exception("suppression failed", extra={"incident_id": incident.incident_id})
            return None

    # -- grouping ---------------------------------------------------------------------------------
    def _group(self, entry: score_pb2.Anomaly, changed: set[str], evidence: set[str]) -> None:
        if entry.id <= self._last_grouped:
            return
        self._follow_rewinds(self._last_grouped, entry.id)
        self._last_grouped = entry.id
        where = next_offset(entry.source)
        if where is not None:
            if where[1] <= self._cursor.get(where[0], 0):
                return  # grouped before (by a former owner, whose history numbered it otherwise)
            self._cursor[where[0]] = where[1]
        if not grouping.groupable(entry):
            return
        f = grouping.facts(entry)
        if f.event_s is not None:
            self._watermark = max(self._watermark, f.event_s)
        incident_id = self._index.match(f) or self._reopen(f, changed)
        if incident_id is None:
            incident_id = self._open(f)
        incident = self._incidents[incident_id]
        self._touch(incident)
        self._apply(incident, entry, f)
        self._index.add(incident_id, f)
        for s in f.sessions:
            self._home(s, incident_id)
        self._joined[incident_id] = time.monotonic()
        changed.add(incident_id)
        evidence.add(incident_id)

    def _reopen(self, f: Facts, changed: set[str]) -> str | None:
        """A closed incident that holds one of the entry's sessions and whose latest line is within a window of
        it (a block's FINAL verdict, a late line of the same story): it opens again."""
        for s in f.sessions:
            incident = self._incidents.get(self._homes.get(s, ""))
            if incident is not None and incident.state == CLOSED and (
                    f.event_s is None or f.event_s - grouping.seconds(incident.last_seen_time) <= self.window_s):
                self._touch(incident)
                incident.state = OPEN
                self._index.hold(incident)
                changed.add(incident.incident_id)
                return incident.incident_id
        return None

    def _open(self, f: Facts) -> str:
        incident_id = f"inc-{self._next_number:06d}"
        self._next_number += 1
        family = self.family() if callable(self.family) else self.family
        incident = incident_pb2.Incident(incident_id=incident_id, state=OPEN, family=family)
        when = f.event_s if f.event_s is not None else f.recorded_s
        incident.first_seen_time.CopyFrom(_ts(when))
        incident.last_seen_time.CopyFrom(_ts(when))
        self._incidents[incident_id] = incident
        self.opened += 1
        return incident_id

    def _apply(self, incident: incident_pb2.Incident, entry: score_pb2.Anomaly, f: Facts) -> None:
        incident.anomaly_ids.append(entry.id)
        incident.anomaly_sources.append(entry.source)  # beside its id, so the two stay aligned from the end
        for kept in (incident.anomaly_ids, incident.anomaly_sources):
            if len(kept) > MAX_IDS:
                del kept[:len(kept) - MAX_IDS]
        _add_unique(incident.session_keys, f.sessions, MAX_SESSIONS)
        _add_unique(incident.nodes, f.nodes, MAX_NODES)
        if f.event_s is not None:
            if f.event_s < grouping.seconds(incident.first_seen_time):
                incident.first_seen_time.CopyFrom(_ts(f.event_s))
            if f.event_s > grouping.seconds(incident.last_seen_time):
                incident.last_seen_time.CopyFrom(_ts(f.event_s))
        if entry.HasField("line"):
            r = entry.line
            incident.max_score = max(incident.max_score, r.score)
            incident.kind = grouping.stronger(incident.kind, grouping.line_kind(r))
            _add_unique(incident.reasons, [r.reason] if r.reason else [], MAX_REASONS)
            self._cite(incident, r)
        else:
            b = entry.block
            incident.max_score = max(incident.max_score, b.score)
            incident.kind = grouping.stronger(incident.kind, grouping.block_kind(b))
            if b.HasField("first_time") and grouping.seconds(b.first_time) < grouping.seconds(incident.first_seen_time):
                incident.first_seen_time.CopyFrom(b.first_time)
            _add_unique(incident.reasons, [f"{b.block_id}: {r}" for r in b.reasons], MAX_REASONS)

    def _fraction(self, line: score_pb2.ScoreResult) -> float:
        if line.new_template or self.normal_fraction is None:
            return 0.0 if line.new_template else float("nan")
        try:
            return float(self.normal_fraction(line.template_id))
        except Exception:  # noqa: BLE001 - no model loaded yet, an old artifact: unknown, not zero
            return float("nan")

    def _cite(self, incident: incident_pb2.Incident, r: score_pb2.ScoreResult) -> None:
        """Counts the line under its template and cites it while its template has fewer than PER_TEMPLATE lines
        cited; keeps at most MAX_EVIDENCE lines, most telling first, every template cited at least once while
        they fit."""
        template = r.template_id or "unknown"
        same = [e for e in incident.evidence if e.template_id == template]
        count = (same[0].count_in_incident if same else 0) + 1
        if len(same) < PER_TEMPLATE:
            e = incident.evidence.add(record_id=r.record_id, template_id=template, message=_cap_text(r.message),
                                      component=r.component, normal_session_fraction=self._fraction(r),
                                      session_key=r.block_ids[0] if r.block_ids else "")
            if r.HasField("event_time"):
                e.event_time.CopyFrom(r.event_time)
        for e in incident.evidence:
            if e.template_id == template:
                e.count_in_incident = count
        lines = sorted(incident.evidence, key=_telling)
        if len(lines) > MAX_EVIDENCE:
            firsts, rest, seen = [], [], set()
            for e in lines:
                (rest if e.template_id in seen else firsts).append(e)
                seen.add(e.template_id)
            keep = {id(e) for e in (firsts + rest)[:MAX_EVIDENCE]}
            lines = [e for e in lines if id(e) in keep]
        kept = [_copy(e) for e in lines]
        del incident.evidence[:]
        incident.evidence.extend(kept)

    def _close_stale(self, changed: set[str]) -> None:
        now = time.monotonic()
        idle = [i for i in self._index.ids() if now - self._joined.get(i, now) > self.window_s]
        for incident_id in dict.fromkeys(self._index.stale(self._watermark) + idle):
            self._index.remove(incident_id)
            self._joined.pop(incident_id, None)
            incident = self._incidents.get(incident_id)
            if incident is not None and incident.state == OPEN:
                self._touch(incident)
                incident.state = CLOSED
                changed.add(incident_id)

    def _touch(self, incident: incident_pb2.Incident) -> None:
        """Before a round changes `incident` in place (lock held): keeps the version readers are served until
        the change is stored (the first touch of a change keeps the stored one; an incident never stored has
        none: it is not served)."""
        if incident.incident_id not in self._stored and 0 < incident.update_id <= self._published:
            self._stored[incident.incident_id] = _copy(incident)

    def _served(self, incident: incident_pb2.Incident | None) -> incident_pb2.Incident | None:
        """What readers are served of `incident` (lock held): its last stored version while a change is not."""
        return None if incident is None else self._stored.get(incident.incident_id, incident)

    def _home(self, session: str, incident_id: str) -> None:
        self._homes.pop(session, None)
        self._homes[session] = incident_id
        while len(self._homes) > MAX_HOMES:
            self._homes.popitem(last=False)

    def _trim(self) -> None:
        """Past max_incidents, the least recently changed closed incidents leave memory (the topic keeps them)."""
        excess = len(self._incidents) - self.max_incidents
        if excess <= 0:
            return
        gone = [i for i, inc in self._incidents.items() if inc.state == CLOSED][:excess]
        for incident_id in gone:
            del self._incidents[incident_id]
        log.info("oldest closed incidents left memory", extra={"incidents": len(gone)})


def _add_unique(field, values: Iterable[str], limit: int) -> None:  # type: ignore[no-untyped-def]
    have = set(field)
    for v in values:
        if v and v not in have and len(field) < limit:
            field.append(v)
            have.add(v)


def _copy(message):  # type: ignore[no-untyped-def]
    out = type(message)()
    out.CopyFrom(message)
    return out

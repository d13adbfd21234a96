"""Incident summaries, written off the scoring path: `Summarizer.submit(incident)` queues the incident and
returns at once; one worker thread asks the LLM (llm_client.py) with the prompt of summary_prompt.py, checks
the answer (summary_check.py), retries once, and otherwise builds the deterministic summary
(fallback_summary.py). The result goes to `deliver(incident_id, summary)` (the scorer passes
IncidentBook.attach_summary), from the worker thread.

- Bounded queue, one entry per incident (a newer version replaces the waiting one). When it is full the
  oldest waiting request leaves the LLM queue and gets the fallback summary instead (reason "summary queue
  full"), counted; the fallbacks owed are bounded too (past that the oldest is dropped, counted).
- Cached per (incident_id, version): an incident whose summary exists for its version is not asked again.
- With `deferral` (summary_deferral.ScoringQuiet: serve scorer --summary-defer-max-s) an LLM call starts only
  while scoring is quiet, or once the maximum deferral has passed; the request taken after the wait is the
  newest version waiting. Fallbacks never wait.
- Metrics on the process registry (runtime/metrics.py): logmesh_summaries_total{source},
  logmesh_summary_fallbacks_total{reason}, logmesh_summary_seconds (LLM call latency, successful or not),
  logmesh_summary_tokens_total, logmesh_summary_requests_dropped_total{where},
  logmesh_summary_deferrals_total{ended}, logmesh_summary_delay_seconds (an incident queued to its summary
  written); `stats()` the same as numbers, `counts()` as GetStats' SummaryCounts.
"""
from __future__ import annotations

import collections
import logging
import threading
import time
from typing import Callable

from cachetools import LRUCache
from prometheus_client import Counter, Histogram

from logmesh.runtime.metrics import REGISTRY
from logmesh.scorer.analyst import fallback_summary, summary_check, summary_prompt
from logmesh.scorer.analyst.llm_client import ChatClient, LLMError
from logmesh.scorer.analyst.summary_deferral import AFTER_BUSY, AT_MAX, ScoringQuiet
from logmesh.v1 import incident_pb2, scorer_service_pb2

log = logging.getLogger(__name__)

NO_LLM = "no --llm-url"
QUEUE_FULL = "summary queue full"

SUMMARIES = Counter("logmesh_summaries_total", "Incident summaries delivered, by source (llm, fallback).",
                    ("source",), registry=REGISTRY)
FALLBACKS = Counter("logmesh_summary_fallbacks_total",
                    "Fallback summaries, by why (no_llm_url, queue_full, timeout, unreachable, http_error, "
                    "bad_response, not_json, missing_field, bad_severity, unknown_citation).",
                    ("reason",), registry=REGISTRY)
LATENCY = Histogram("logmesh_summary_seconds", "Seconds per LLM summary call, answered or failed.",
                    buckets=(0.1, 0.25, 0.5, 1, 2, 3, 5, 8, 13, 20, 30, 60, 120), registry=REGISTRY)
TOKENS = Counter("logmesh_summary_tokens_total", "Completion tokens the LLM wrote for summaries.",
                 registry=REGISTRY)
DROPPED = Counter("logmesh_summary_requests_dropped_total",
                  "Summary requests that left a full queue: 'llm' moved to the fallback, 'fallback' dropped.",
                  ("where",), registry=REGISTRY)
DEFERRALS = Counter("logmesh_summary_deferrals_total",
                    "LLM summary calls that waited because scoring was busy, by how the wait ended: after_busy "
                    "(scoring went quiet), at_max (the maximum deferral passed; the call went anyway).",
                    ("ended",), registry=REGISTRY)
DELAY = Histogram("logmesh_summary_delay_seconds",
                  "Seconds from an incident queued for a summary (the first of its versions still waiting) to "
                  "its summary written, LLM or fallback.",
                  buckets=(0.1, 0.5, 1, 2, 5, 10, 20, 30, 60, 120, 300, 600), registry=REGISTRY)

Deliver = Callable[[str, incident_pb2.IncidentSummary], None]


class Summarizer:
    """Summaries of incidents, delivered to `deliver`. `llm_url` None: every summary is the fallback, reason
    "no --llm-url". `llm_timeout`: seconds per LLM call (each of the two attempts). `deferral`: each LLM
    summary waits for it first (None: none waits)."""

    def __init__(self, deliver: Deliver, *, llm_url: str | None = None, llm_model: str | None = None,
                 llm_token: str | None = None, llm_timeout: float = 30.0, max_tokens: int = 512,
                 queue_size: int = 64, cache_size: int = 4096, deferral: ScoringQuiet | None = None) -> None:
        self._deliver = deliver
        self._client = ChatClient(llm_url, llm_model, llm_token, llm_timeout, max_tokens) if llm_url else None
        self._deferral = deferral
        self._stopping = threading.Event()  # ends a deferral at close()
        self._queue_size = queue_size
        self._waiting: collections.OrderedDict[str, incident_pb2.Incident] = collections.OrderedDict()
        self._owed: collections.OrderedDict[str, incident_pb2.Incident] = collections.OrderedDict()
        self._queued_at: dict[str, float] = {}  # incident id -> when its first still-waiting version was queued
        self._cache: LRUCache = LRUCache(cache_size)
        self._cond = threading.Condition()
        self._closed = False
        self._busy = False
        self._counts: collections.Counter[str] = collections.Counter()
        self._latencies: collections.deque[float] = collections.deque(maxlen=1024)
        self._delays: collections.deque[float] = collections.deque(maxlen=1024)
        self._thread = threading.Thread(target=self._run, name="logmesh-summaries", daemon=True)
        self._thread.start()

    # --- the book's side: never blocks -------------------------------------------------------------------

    def submit(self, incident: incident_pb2.Incident) -> None:
        """Queues `incident` for a summary of its version (nothing when one exists or is cached)."""
        if incident.HasField("summary") and incident.summary.incident_version == incident.version:
            return
        copy = incident_pb2.Incident()
        copy.CopyFrom(incident)
        with self._cond:
            if self._closed:
                return
            key = incident.incident_id
            self._queued_at.setdefault(key, time.monotonic())  # a replaced version keeps the first's time
            self._owed.pop(key, None)
            self._waiting.pop(key, None)  # a newer version replaces the waiting one, at the back
            self._waiting[key] = copy
            while len(self._waiting) > self._queue_size:
                _, oldest = self._waiting.popitem(last=False)
                DROPPED.labels("llm").inc()
                self._counts["dropped_llm"] += 1
                self._owed[oldest.incident_id] = oldest
                while len(self._owed) > self._queue_size * 16:
                    dropped, _ = self._owed.popitem(last=False)
                    self._queued_at.pop(dropped, None)
                    DROPPED.labels("fallback").inc()
                    self._counts["dropped_fallback"] += 1
            self._cond.notify()

    # --- the worker ----------------------------------------------------------------------------------

    def _next(self) -> tuple[incident_pb2.Incident, bool, float] | None:
        """The next request: (incident, owed a fallback, when it was queued). An LLM request waits for the
        deferral first (outside the lock, so submit never waits), then the oldest waiting one is taken: a
        newer version that arrived meanwhile is the one summarised."""
        deferred = False
        with self._cond:
            while True:
                while not self._closed and not self._owed and not self._waiting:
                    self._busy = False
                    self._cond.notify_all()
                    self._cond.wait()
                if self._closed:
                    return None
                self._busy = True
                if self._owed:  # owed fallbacks are cheap: settle them before the next LLM call
                    key, incident = self._owed.popitem(last=False)
                    return incident, True, self._queued_at.pop(key, time.monotonic())
                key, head = next(iter(self._waiting.items()))
                if deferred or not self._wants_llm(head):
                    del self._waiting[key]
                    return head, False, self._queued_at.pop(key, time.monotonic())
                self._cond.release()
                try:
                    self._defer()
                finally:
                    self._cond.acquire()
                deferred = True

    def _wants_llm(self, incident: incident_pb2.Incident) -> bool:
        """Would this request call the LLM (and so wait for the deferral)? Not without one, nor when cached."""
        return (self._client is not None and self._deferral is not None
                and (incident.incident_id, incident.version) not in self._cache)

    def _defer(self) -> None:
        assert self._deferral is not None
        waited = self._deferral.wait(self._stopping)
        if waited.ended in (AFTER_BUSY, AT_MAX):
            DEFERRALS.labels(waited.ended).inc()
            with self._cond:
                self._counts[f"deferred_{waited.ended}"] += 1
                self._counts["deferred_seconds"] += waited.seconds

    def _run(self) -> None:
        while (item := self._next()) is not None:
            incident, owed, queued_at = item
            try:
                summary = self._summary(incident, owed)
                summary.generated_time.GetCurrentTime()
                source = "llm" if summary.source == incident_pb2.SUMMARY_SOURCE_LLM else "fallback"
                SUMMARIES.labels(source).inc()
                delay = time.monotonic() - queued_at
                DELAY.observe(delay)
                with self._cond:
                    self._counts[f"written_{source}"] += 1
                    self._delays.append(delay)
                self._deliver(incident.incident_id, summary)
            except Exception:  # one bad incident or a failing deliver must not stop the summaries
                log.exception("summary of incident %s v%d failed", incident.incident_id, incident.version)

    def _fallback(self, incident: incident_pb2.Incident, kind: str, reason: str) -> incident_pb2.IncidentSummary:
        FALLBACKS.labels(kind).inc()
        with self._cond:
            self._counts[f"fallback_{kind}"] += 1
        return fallback_summary.build(incident, reason)

    def _summary(self, incident: incident_pb2.Incident, owed: bool) -> incident_pb2.IncidentSummary:
        key = (incident.incident_id, incident.version)
        cached = self._cache.get(key)
        if cached is not None:
            return cached
        if owed:
            return self._fallback(incident, "queue_full", QUEUE_FULL)  # not cached: a later submit may ask the LLM
        if self._client is None:
            summary = self._fallback(incident, "no_llm_url", NO_LLM)
        else:
            summary = self._ask(incident)
        self._cache[key] = summary
        return summary

    def _ask(self, incident: incident_pb2.Incident) -> incident_pb2.IncidentSummary:
        """Two attempts at an LLM summary that passes the checks; else the fallback with the last reason."""
        assert self._client is not None
        messages = summary_prompt.messages(incident)
        citable = summary_prompt.citable_ids(incident)
        schema = summary_prompt.answer_schema(incident)
        kind, reason = "", ""
        for attempt in (1, 2):
            started = time.monotonic()
            try:
                answer = self._client.chat_json(messages, schema)
                TOKENS.inc(answer.completion_tokens)
                with self._cond:
                    self._counts["tokens"] += answer.completion_tokens
                summary = summary_check.parse(answer.content, incident, citable)
            except (LLMError, summary_check.InvalidSummary) as exc:
                kind, reason = exc.kind, str(exc)
                log.info("summary of incident %s v%d, attempt %d: %s", incident.incident_id, incident.version,
                         attempt, reason)
                continue
            finally:
                elapsed = time.monotonic() - started
                LATENCY.observe(elapsed)
                with self._cond:
                    self._latencies.append(elapsed)
            summary.source = incident_pb2.SUMMARY_SOURCE_LLM
            summary.model = answer.model
            log.info("summary of incident %s v%d written by %s in %.1f s (%d tokens)", incident.incident_id,
                     incident.version, answer.model, answer.seconds, answer.completion_tokens)
            return summary
        return self._fallback(incident, kind, f"{reason} (after a retry)")

    # --- control and figures -------------------------------------------------------------------------

    def wait_idle(self, timeout: float) -> bool:
        """True once nothing waits and the worker is idle (tests and shutdown), False after `timeout` s."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while self._busy or self._waiting or self._owed:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(left)
        return True

    def stats(self) -> dict[str, float]:
        """Counts since start: written_llm, written_fallback, fallback_<reason>, dropped_llm,
        dropped_fallback, tokens, deferred_after_busy, deferred_at_max, deferred_seconds; now: waiting,
        oldest_waiting_s; latency_p50_s and latency_p95_s over the last 1,024 LLM calls, delay_p50_s,
        delay_p95_s and delay_max_s (queued to written) over the last 1,024 summaries written."""
        now = time.monotonic()
        with self._cond:
            out: dict[str, float] = dict(self._counts)
            out["waiting"] = len(self._waiting) + len(self._owed)
            out["oldest_waiting_s"] = now - min(self._queued_at.values()) if self._queued_at else 0.0
            latencies = sorted(self._latencies)
            delays = sorted(self._delays)
        for name, values in (("latency", latencies), ("delay", delays)):
            if values:
                out[f"{name}_p50_s"] = values[len(values) // 2]
                out[f"{name}_p95_s"] = values[min(len(values) - 1, int(len(values) * 0.95))]
        if delays:
            out["delay_max_s"] = delays[-1]
        return out

    def counts(self) -> scorer_service_pb2.SummaryCounts:
        """stats() as GetStats' SummaryCounts."""
        st = self.stats()
        return scorer_service_pb2.SummaryCounts(
            llm=int(st.get("written_llm", 0)), fallback=int(st.get("written_fallback", 0)),
            fallback_reasons={k.removeprefix("fallback_"): int(v) for k, v in st.items() if k.startswith("fallback_")},
            waiting=int(st["waiting"]), latency_p50_seconds=st.get("latency_p50_s", 0.0),
            latency_p95_seconds=st.get("latency_p95_s", 0.0), completion_tokens=int(st.get("tokens", 0)),
            deferred=int(st.get(f"deferred_{AFTER_BUSY}", 0) + st.get(f"deferred_{AT_MAX}", 0)),
            deferred_at_max=int(st.get(f"deferred_{AT_MAX}", 0)),
            delay_p50_seconds=st.get("delay_p50_s", 0.0), delay_p95_seconds=st.get("delay_p95_s", 0.0),
            oldest_waiting_seconds=st["oldest_waiting_s"])

    def close(self, timeout: float = 5.0) -> None:
        """Stops the worker (what still waits is not summarised) and closes the HTTP client."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        self._stopping.set()
        self._thread.join(timeout)
        if self._client is not None:
            self._client.close()

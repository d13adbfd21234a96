"""The scorer's Prometheus metrics, read at scrape time from the same counters GetStats reports (one source,
scorer/stats.py), for every scorer servicer alive in the process, on the process registry (runtime/metrics.py).

    logmesh_scorer_lines_scored_total, logmesh_scorer_line_anomalies_total, logmesh_scorer_items_rejected_total
    logmesh_scorer_block_verdicts_total{verdict, evidence_kind}   (evidence_kind: scorer/session_model.py's seven)
    logmesh_scorer_model_info{version}, logmesh_scorer_model_loaded_timestamp_seconds, logmesh_scorer_model_reloads_total
    logmesh_scorer_history_entries, logmesh_scorer_history_live, logmesh_scorer_dead_letters
    logmesh_scorer_feedback_total{label, action}, logmesh_scorer_suppressed_alerts_total   (with --feedback-topic)
    logmesh_scorer_incidents{state}, logmesh_scorer_incidents_opened_total   (with --incidents-topic)
"""
from __future__ import annotations

import threading
import weakref
from typing import Any, Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from logmesh.runtime.metrics import REGISTRY
from logmesh.v1 import feedback_pb2 as fpb

_LIVE: "weakref.WeakSet[Any]" = weakref.WeakSet()
_LOCK = threading.Lock()


class _ScorerCollector(Collector):
    def collect(self) -> Iterator[Any]:
        with _LOCK:
            servicers = list(_LIVE)
        lines = CounterMetricFamily("logmesh_scorer_lines_scored", "Lines scored (Score, ScoreStream).")
        flagged = CounterMetricFamily("logmesh_scorer_line_anomalies", "Lines scored ANOMALY.")
        rejected = CounterMetricFamily("logmesh_scorer_items_rejected",
                                       "Lines and blocks answered with a per-item error instead of a verdict.")
        blocks = CounterMetricFamily("logmesh_scorer_block_verdicts", "Block verdicts, by verdict and evidence kind.",
                                     labels=("verdict", "evidence_kind"))
        reloads = CounterMetricFamily("logmesh_scorer_model_reloads", "Model artifacts loaded (the first and hot swaps).")
        model = GaugeMetricFamily("logmesh_scorer_model_info", "1 for the model version being served.", labels=("version",))
        loaded = GaugeMetricFamily("logmesh_scorer_model_loaded_timestamp_seconds", "When the served model was loaded.")
        entries = GaugeMetricFamily("logmesh_scorer_history_entries", "Entries the anomaly history holds.")
        live = GaugeMetricFamily("logmesh_scorer_history_live",
                                 "1 while the history has read the anomalies topic up to its end, 0 otherwise.")
        dead = GaugeMetricFamily("logmesh_scorer_dead_letters", "Messages in the job's dead-letter topic, as last read.")
        feedback = CounterMetricFamily("logmesh_scorer_feedback", "Analyst labels stored since start, by label and "
                                       "action.", labels=("label", "action"))
        suppressed = CounterMetricFamily("logmesh_scorer_suppressed_alerts", "New alerts and flagged lines that "
                                         "arrived covered by an analyst's suppression (served marked).")
        incidents = GaugeMetricFamily("logmesh_scorer_incidents", "Incidents the incident book holds, by state.",
                                      labels=("state",))
        opened = CounterMetricFamily("logmesh_scorer_incidents_opened", "Incidents this process started.")
        # one sample per label set, summed over the servicers (tests run several in one process); duplicate
        # samples would be an invalid exposition
        totals = dict.fromkeys(("lines", "flagged", "rejected", "reloads", "entries"), 0)
        kinds: dict[tuple[str, str], int] = {}
        versions: dict[str, float] = {}
        feeds, live_feeds, dead_total, dead_known = 0, 0, 0, False
        labelled: dict[tuple[str, str], int] = {}
        suppressed_total, books = 0, 0
        held, opened_total, incident_books = {"open": 0, "closed": 0}, 0, 0
        for s in servicers:
            incident_book = getattr(s, "incidents", None)
            if incident_book is not None:
                incident_books += 1
                opened_total += incident_book.opened
                for state, n in incident_book.counts().items():
                    held[state] += n
            book = getattr(s, "feedback", None)
            if book is not None:
                books += 1
                suppressed_total += book.suppressed_new
                for (label, action), n in list(book.counts.items()):
                    key = (fpb.FeedbackLabel.Name(label), fpb.FeedbackAction.Name(action))
                    labelled[key] = labelled.get(key, 0) + n
            stats = s.stats
            with stats._lock:
                totals["lines"] += stats.lines_scored
                totals["flagged"] += stats.line_anomalies
                totals["rejected"] += stats.items_rejected
                for key, n in stats.block_kinds.items():
                    kinds[key] = kinds.get(key, 0) + n
            totals["reloads"] += s.models.loads
            totals["entries"] += len(s.history)
            scorer = s.models.scorer
            if scorer is not None:
                versions[scorer.artifact.version] = max(versions.get(scorer.artifact.version, 0),
                                                        s.models.loaded_at or 0)
            if s.feed is not None:
                feeds += 1
                live_feeds += s.feed.status == "live"
            dead_letters = stats.dead_letter_count()
            if dead_letters is not None:
                dead_total, dead_known = dead_total + dead_letters, True
        lines.add_metric((), totals["lines"])
        flagged.add_metric((), totals["flagged"])
        rejected.add_metric((), totals["rejected"])
        reloads.add_metric((), totals["reloads"])
        entries.add_metric((), totals["entries"])
        for (verdict, kind), n in sorted(kinds.items()):
            blocks.add_metric((verdict, kind), n)
        for version in sorted(versions):
            model.add_metric((version,), 1)
        if versions:
            loaded.add_metric((), max(versions.values()))
        if feeds:
            live.add_metric((), 1 if live_feeds == feeds else 0)
        if dead_known:
            dead.add_metric((), dead_total)
        for key, n in sorted(labelled.items()):
            feedback.add_metric(key, n)
        if books:
            suppressed.add_metric((), suppressed_total)
        if incident_books:
            for state, n in sorted(held.items()):
                incidents.add_metric((state,), n)
            opened.add_metric((), opened_total)
        yield from (lines, flagged, rejected, blocks, reloads, model, loaded, entries, live, dead, feedback, suppressed,
                    incidents, opened)


REGISTRY.register(_ScorerCollector())


def track(servicer: Any) -> None:
    """Counts `servicer` (a ScorerServicer) in /metrics while it is alive."""
    with _LOCK:
        _LIVE.add(servicer)

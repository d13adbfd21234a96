"""The scorer's Prometheus metrics, read at scrape time from the same counters GetStats reports (one source,
scorer/stats.py), for every scorer servicer alive in the process, on the process registry (runtime/metrics.py).

    logmesh_scorer_lines_scored_total, logmesh_scorer_line_anomalies_total, logmesh_scorer_items_rejected_total
    logmesh_scorer_block_verdicts_total{verdict, evidence_kind}   (evidence_kind: scorer/session_model.py's six)
    logmesh_scorer_model_info{version}, logmesh_scorer_model_loaded_timestamp_seconds, logmesh_scorer_model_reloads_total
    logmesh_scorer_history_entries, logmesh_scorer_history_live, logmesh_scorer_dead_letters
"""
from __future__ import annotations

import threading
import weakref
from typing import Any, Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from logmesh.runtime.metrics import REGISTRY

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
        kinds: dict[tuple[str, str], int] = {}
        for s in servicers:
            stats = s.stats
            with stats._lock:
                counts = (stats.lines_scored, stats.line_anomalies, stats.items_rejected, dict(stats.block_kinds),
                          s.models.loads)
            lines.add_metric((), counts[0])
            flagged.add_metric((), counts[1])
            rejected.add_metric((), counts[2])
            for key, n in counts[3].items():
                kinds[key] = kinds.get(key, 0) + n
            reloads.add_metric((), counts[4])
            scorer = s.models.scorer
            if scorer is not None:
                model.add_metric((scorer.artifact.version,), 1)
                loaded.add_metric((), s.models.loaded_at or 0)
            entries.add_metric((), len(s.history))
            if s.feed is not None:
                live.add_metric((), 1 if s.feed.status == "live" else 0)
            dead_letters = stats.dead_letter_count()
            if dead_letters is not None:
                dead.add_metric((), dead_letters)
        for (verdict, kind), n in sorted(kinds.items()):
            blocks.add_metric((verdict, kind), n)
        yield from (lines, flagged, rejected, blocks, reloads, model, loaded, entries, live, dead)


REGISTRY.register(_ScorerCollector())


def track(servicer: Any) -> None:
    """Counts `servicer` (a ScorerServicer) in /metrics while it is alive."""
    with _LOCK:
        _LIVE.add(servicer)

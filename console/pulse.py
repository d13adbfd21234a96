"""What the chart and the template counts are drawn from, gathered in two background threads:
GetStats every `interval` seconds (lines per second, counters), and one followed WatchAnomalies that keeps a
small record (time, kind, templates) of each anomaly recorded within the chart's window, backfilled from
ListAnomalies at start. Both are bounded: samples by the window, anomalies by `max_kept`."""
from __future__ import annotations

import logging
import threading
import time
from collections import Counter, deque
from dataclasses import dataclass
from typing import Any

from logmesh.client import ScorerClient
from logmesh.console import views
from logmesh.v1 import score_pb2

log = logging.getLogger("logmesh.console.pulse")


@dataclass(frozen=True)
class _Seen:
    at: float  # recorded_time, epoch seconds
    block: bool
    templates: tuple[str, ...]  # a line's template id; a block's events


class Pulse:
    def __init__(self, client: ScorerClient, interval: float = 5.0, window: float = 1800.0,
                 max_kept: int = 20_000, backfill: int = 2000) -> None:
        self.client, self.interval, self.window, self.backfill = client, interval, window, backfill
        self.samples: deque[tuple[float, dict[str, Any]]] = deque(maxlen=max(2, int(window / interval) + 1))
        self.seen: deque[_Seen] = deque(maxlen=max_kept)
        self.feed_status = "starting"
        self.stats_error = ""
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._poll, name="console-stats", daemon=True),
                         threading.Thread(target=self._follow, name="console-pulse", daemon=True)]

    def start(self) -> "Pulse":
        for t in self._threads:
            t.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self.client.close()  # ends the followed call
        for t in self._threads:
            t.join(5)

    # --- the threads ---

    def _poll(self) -> None:
        while not self._stop.is_set():
            try:
                stats = views.stats(self.client.stats())
                with self._lock:
                    self.samples.append((time.time(), stats))
                self.stats_error = ""
            except Exception as exc:  # noqa: BLE001 - shown on the page; the next poll tries again
                if self._stop.is_set():
                    return
                self.stats_error = _why(exc)
            self._stop.wait(self.interval)

    def _follow(self) -> None:
        while not self._stop.is_set():
            try:
                entries, _ = self.client.list_anomalies(self.backfill)
                with self._lock:
                    self.seen.extend(_seen(e) for e in reversed(entries))
                after = entries[0].id if entries else 0
                for entry in self.client.follow(after_id=after, on_reconnect=self._heard):
                    with self._lock:
                        self.seen.append(_seen(entry))
            except Exception as exc:  # noqa: BLE001 - the first call failed (follow retries later ones)
                if self._stop.is_set():
                    return
                self.feed_status = f"cannot watch the history: {_why(exc)}; retrying"
                with self._lock:
                    self.seen.clear()  # refilled by the backfill of the next try
                self._stop.wait(max(self.interval, 2.0))

    def _heard(self, status: str) -> None:
        self.feed_status = status
        log.info("history feed", extra={"status": status})

    # --- what the pages read ---

    def series(self, now: float | None = None) -> dict[str, Any]:
        """Lines per second (GetStats samples) and anomalies per bucket (by recorded time) over the window."""
        now = time.time() if now is None else now
        start = now - self.window
        bucket = max(self.interval, self.window / 60)
        counts = [0] * int(self.window // bucket + 1)
        with self._lock:
            samples = [(t, s) for t, s in self.samples if t >= start]
            seen = [s for s in self.seen if s.at >= start]
        for s in seen:
            counts[min(len(counts) - 1, int((s.at - start) // bucket))] += 1
        return {"now": now, "window_seconds": self.window, "bucket_seconds": bucket,
                "lines_per_second": [[round(t, 3), float(s.get("lines_per_second", 0.0))] for t, s in samples],
                "anomalies_per_minute": [[round(start + i * bucket, 3), c * 60.0 / bucket]
                                         for i, c in enumerate(counts)],
                "anomalies_in_window": len(seen), "feed_status": self.feed_status, "stats_error": self.stats_error}

    def template_counts(self, now: float | None = None) -> dict[str, list[tuple[str, int]]]:
        """Templates among the anomalies of the window: flagged lines by template id, anomalous blocks by the
        events they hold (each event counted once per block verdict), most frequent first."""
        start = (time.time() if now is None else now) - self.window
        lines: Counter[str] = Counter()
        blocks: Counter[str] = Counter()
        with self._lock:
            seen = [s for s in self.seen if s.at >= start]
        for s in seen:
            (blocks if s.block else lines).update(s.templates)
        return {"lines": lines.most_common(), "blocks": blocks.most_common()}

    def latest_stats(self) -> dict[str, Any] | None:
        with self._lock:
            return self.samples[-1][1] if self.samples else None


def _seen(entry: score_pb2.Anomaly) -> _Seen:
    at = views.seconds(entry.recorded_time) or time.time()
    if entry.HasField("line"):
        return _Seen(at, False, (entry.line.template_id or "unknown",))
    return _Seen(at, True, tuple(sorted(set(entry.block.events))))


def _why(exc: Exception) -> str:
    code = getattr(exc, "code", None)
    if callable(code):
        return f"{code().name}: {exc.details()}"  # type: ignore[attr-defined]
    return str(exc)

"""Incidents to webhooks: `Notifier.on_incident` is the IncidentBook listener (it only queues); one worker
thread per target posts the payload of notify_formats.py with retries (tenacity), at most once per incident.

- When: once the incident has a summary (any source), or `wait_for_summary` seconds after it was first seen
  without one, so the one notification carries the summary. No update is sent when a summary, a new version
  or a close lands later: the notification links the incident, the console and `logmesh incident ID` follow it.
- Suppressed (by analyst feedback) when due: not sent, logged, and counted as done.
- Dedup: the incident ids a target has handled (sent or dead-lettered) are appended to
  STATE_DIR/notify/<target>.sent, so a restart (the book replaying its topic) sends nothing twice, and the
  incident records the target's key (Incident.notified_targets, via `on_handled`), so another replica that
  takes the book over sends nothing twice either. (A crash between the POST and that record being stored
  sends that one incident again: webhooks have no transactions; Alertmanager dedups by its labels.)
- Dead letter: after the last attempt, or at once on a 4xx other than 408/429, the payload, the target and the
  error go to STATE_DIR/notify-dead-letters.jsonl: a file beside the scorer's other state rather than a Kafka
  topic, because a webhook outage often comes with a network problem that a broker would share, and a line of
  JSON per failure is what an operator replays with curl. Without a state dir it is logged at ERROR, whole.
- Logs one line per notification sent or dead-lettered; nothing when idle. URLs are logged by host only
  (a Slack webhook's path is its secret).
"""
from __future__ import annotations

import hashlib
import json
import logging
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable
from urllib.parse import urlsplit

import httpx
from prometheus_client import Counter
from tenacity import Retrying, retry_if_exception_type, stop_after_attempt, wait_exponential

from logmesh.runtime.metrics import REGISTRY
from logmesh.scorer.analyst.notify_formats import FORMATS
from logmesh.v1 import incident_pb2

log = logging.getLogger(__name__)

SENT = Counter("logmesh_notifications_total",
               "Incident notifications by outcome (sent, dead_letter, suppressed) and format.",
               ("format", "outcome"), registry=REGISTRY)
DEAD_LETTERS = "notify-dead-letters.jsonl"


@dataclass(frozen=True)
class Target:
    """A webhook: `url` and the payload `format` (a key of notify_formats.FORMATS)."""
    url: str
    format: str = "alertmanager"

    @classmethod
    def parse(cls, spec: str) -> "Target":
        """'[FORMAT=]URL', e.g. 'slack=https://hooks.example/T/B/x' or 'http://am:9093/hook' (alertmanager)."""
        fmt, sep, rest = spec.partition("=")
        if sep and fmt in FORMATS and "://" in rest:
            fmt, url = fmt, rest
        else:
            fmt, url = "alertmanager", spec
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ValueError(f"--notify-url {spec!r}: want [FORMAT=]http(s)://HOST/PATH with FORMAT one of "
                             f"{', '.join(FORMATS)} (default alertmanager)")
        return cls(url=url, format=fmt)

    @property
    def shown(self) -> str:
        """The URL without its path (which may be a secret), for logs."""
        parts = urlsplit(self.url)
        return f"{self.format}={parts.scheme}://{parts.netloc}"

    @property
    def key(self) -> str:
        return f"{self.format}-{hashlib.sha256(self.url.encode()).hexdigest()[:12]}"


class _Retry(Exception):
    """A failure worth another attempt (connection, timeout, 408, 429, 5xx)."""


class _Permanent(Exception):
    """A refusal another attempt will not change (other 4xx)."""


class _TargetWorker:
    def __init__(self, notifier: "Notifier", target: Target) -> None:
        self.n, self.target = notifier, target
        self.sent_file = notifier.state_dir / "notify" / f"{target.key}.sent" if notifier.state_dir else None
        self.handled: set[str] = set()
        self.sending: set[str] = set()  # taken for a POST, not done yet: a newer offer meanwhile is not a second one
        if self.sent_file is not None:
            self.sent_file.parent.mkdir(parents=True, exist_ok=True)
            if self.sent_file.exists():
                self.handled = set(self.sent_file.read_text().split())
        self.pending: dict[str, tuple[float, incident_pb2.Incident]] = {}  # id -> (first seen, latest)
        self.cond = threading.Condition()
        self.closed = False
        self.busy = False
        self.thread = threading.Thread(target=self.run, name=f"logmesh-notify-{target.format}", daemon=True)
        self.thread.start()

    def offer(self, incident: incident_pb2.Incident) -> None:
        with self.cond:
            key = incident.incident_id
            if (key in self.handled or key in self.sending or self.target.key in incident.notified_targets
                    or self.closed):
                return
            first = self.pending[key][0] if key in self.pending else time.monotonic()
            self.pending[key] = (first, incident)
            self.cond.notify()

    def _due(self) -> list[incident_pb2.Incident]:
        """Waits until some incident is due (or close); returns those due, removed from pending."""
        with self.cond:
            while True:
                if self.closed:
                    return []
                now, soonest, due = time.monotonic(), None, []
                for key, (first, incident) in list(self.pending.items()):
                    at = now if incident.HasField("summary") else first + self.n.wait_for_summary
                    if at <= now:
                        due.append(incident)
                        del self.pending[key]
                        self.sending.add(key)
                    else:
                        soonest = at if soonest is None else min(soonest, at)
                if due:
                    self.busy = True
                    return due
                self.busy = False
                self.cond.notify_all()
                self.cond.wait(None if soonest is None else soonest - now)

    def run(self) -> None:
        while due := self._due():
            for incident in due:
                try:
                    self.handle(incident)
                except Exception:  # a bug in one payload must not stop the others
                    log.exception("notification of incident %s to %s failed", incident.incident_id,
                                  self.target.shown)
                finally:
                    with self.cond:
                        self.sending.discard(incident.incident_id)

    def handle(self, incident: incident_pb2.Incident) -> None:
        if incident.suppressed_by_feedback_id:
            log.info("incident %s not sent to %s: suppressed by feedback %s", incident.incident_id,
                     self.target.shown, incident.suppressed_by_feedback_id)
            self.done(incident, "suppressed")
            return
        payload = FORMATS[self.target.format](incident, self.n.console_url)
        try:
            for attempt in Retrying(stop=stop_after_attempt(self.n.attempts), reraise=True,
                                    wait=wait_exponential(multiplier=self.n.backoff, max=self.n.backoff * 16),
                                    retry=retry_if_exception_type(_Retry)):
                with attempt:
                    self.post(payload)
        except (_Retry, _Permanent) as exc:
            self.n.dead_letter(self.target, incident, payload, str(exc))
            self.done(incident, "dead_letter")
            return
        log.info("incident %s sent to %s (%s)", incident.incident_id, self.target.shown,
                 "with summary" if incident.HasField("summary") else "no summary yet")
        self.done(incident, "sent")

    def post(self, payload: dict[str, Any]) -> None:
        try:
            response = self.n.http.post(self.target.url, json=payload)
        except httpx.HTTPError as exc:
            raise _Retry(f"{type(exc).__name__}: {exc}") from None
        if response.status_code in (408, 429) or response.status_code >= 500:
            raise _Retry(f"HTTP {response.status_code}")
        if response.status_code >= 400:
            raise _Permanent(f"HTTP {response.status_code}: {response.text[:200]}")

    def done(self, incident: incident_pb2.Incident, outcome: str) -> None:
        SENT.labels(self.target.format, outcome).inc()
        with self.cond:
            self.handled.add(incident.incident_id)
            self.n.counts[outcome] += 1
            if self.sent_file is not None:
                with self.sent_file.open("a") as f:
                    f.write(incident.incident_id + "\n")
        self.n.on_handled(incident.incident_id, self.target.key)

    def idle(self) -> bool:
        return not self.busy and not self.pending


class Notifier:
    """Notifications of incidents to `targets`. `state_dir` None: dedup in memory only, dead letters logged."""

    def __init__(self, targets: list[Target], *, state_dir: Path | None = None, wait_for_summary: float = 30.0,
                 attempts: int = 4, backoff: float = 0.5, timeout: float = 10.0, console_url: str = "",
                 on_handled: Callable[[str, str], None] = lambda incident_id, target_key: None) -> None:
        """`on_handled(incident_id, target_key)` after each incident a target sent or dead-lettered (the
        scorer passes IncidentBook.mark_notified: the incident records it, for the next owner of the book)."""
        self.on_handled = on_handled
        self.state_dir = Path(state_dir) if state_dir else None
        self.wait_for_summary, self.attempts, self.backoff = wait_for_summary, attempts, backoff
        self.console_url = console_url
        self.http = httpx.Client(timeout=timeout)
        self.counts: dict[str, int] = dict.fromkeys(("sent", "dead_letter", "suppressed"), 0)
        self._dead_lock = threading.Lock()
        self.workers = [_TargetWorker(self, t) for t in targets]
        if self.workers:
            log.info("notifications to %s", ", ".join(t.shown for t in targets))

    def on_incident(self, incident: incident_pb2.Incident) -> None:
        """The book's listener: queues the incident for every target that has not handled it; never blocks."""
        copy = incident_pb2.Incident()
        copy.CopyFrom(incident)
        for worker in self.workers:
            worker.offer(copy)

    def dead_letter(self, target: Target, incident: incident_pb2.Incident, payload: dict[str, Any],
                    error: str) -> None:
        record = {"time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "incident_id": incident.incident_id,
                  "format": target.format, "url": target.url, "error": error, "payload": payload}
        if self.state_dir is None:
            log.error("incident %s NOT delivered to %s after %d attempts (%s), and no state dir to keep it: %s",
                      incident.incident_id, target.shown, self.attempts, error, json.dumps(record))
            return
        path = self.state_dir / DEAD_LETTERS
        with self._dead_lock, path.open("a") as f:
            f.write(json.dumps(record) + "\n")
        log.error("incident %s NOT delivered to %s (%s); kept in %s", incident.incident_id, target.shown,
                  error, path)

    def wait_idle(self, timeout: float) -> bool:
        """True once no target has an incident waiting or in flight (tests), False after `timeout` s."""
        deadline = time.monotonic() + timeout
        for w in self.workers:
            with w.cond:
                while not w.idle():
                    left = deadline - time.monotonic()
                    if left <= 0:
                        return False
                    w.cond.wait(left)
        return True

    def close(self, timeout: float = 5.0) -> None:
        for w in self.workers:
            with w.cond:
                w.closed = True
                w.cond.notify_all()
        for w in self.workers:
            w.thread.join(timeout)
        self.http.close()

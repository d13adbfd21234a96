"""Counts of the calls a server refused or that ended before it answered, each kind also logged at most
once per `log_every` seconds (with how many were not logged), so abuse shows in the logs without flooding them.

One small interface (`record`, `counts`) on purpose: a Prometheus-backed version can replace the counter
dict later without touching the callers.
"""
from __future__ import annotations

import logging
import threading
import time

KINDS = ("refused", "cancelled", "deadline_exceeded", "idle_streams_ended", "oversized")
_MESSAGES = {"refused": "call refused", "cancelled": "call cancelled by the client",
             "deadline_exceeded": "call deadline passed", "idle_streams_ended": "idle stream ended",
             "oversized": "request over a size limit"}

log = logging.getLogger("logmesh.calls")


class CallEvents:
    def __init__(self, server: str = "", log_every: float = 10.0) -> None:
        self.server = server
        self.log_every = log_every
        self._counts = dict.fromkeys(KINDS, 0)
        self._last_logged: dict[str, float] = {}
        self._unlogged = dict.fromkeys(KINDS, 0)
        self._lock = threading.Lock()

    def record(self, kind: str, method: str, peer: str = "", detail: str = "") -> None:
        """Counts one event of `kind` (one of KINDS) and logs it unless one of its kind was logged lately."""
        now = time.monotonic()
        with self._lock:
            self._counts[kind] += 1
            if now - self._last_logged.get(kind, -self.log_every) < self.log_every:
                self._unlogged[kind] += 1
                return
            self._last_logged[kind] = now
            unlogged, self._unlogged[kind] = self._unlogged[kind], 0
        # a cancel is often a client's normal end (grpcurl closes its reflection stream so): info, not warning
        level = logging.INFO if kind == "cancelled" else logging.WARNING
        log.log(level, _MESSAGES[kind], extra={"server": self.server, "kind": kind, "method": method, "peer": peer,
                                               "detail": detail, "total": self._counts[kind],
                                               "not_logged_since_last": unlogged})

    def counts(self) -> dict[str, int]:
        with self._lock:
            return dict(self._counts)

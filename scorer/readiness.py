"""Whether the scorer can reach a SERVING embedder: without one it cannot score a line shape it has not seen,
so its health must say NOT_SERVING (and GetStats why) instead of failing every new line.

A background thread health-checks the embedder: every `interval` seconds while it answers SERVING, and
while it does not, again after waits that double from `retry_min` to `retry_max` (a restarted embedder is
noticed within a few seconds, an absent one is not hammered). A failed embed call asks for a check at once.
Logs only the changes.
"""
from __future__ import annotations

import logging
import threading
from typing import Callable

import grpc
from tenacity import Retrying, retry_if_result, wait_exponential

from logmesh.client import EmbedderClient

log = logging.getLogger("logmesh.scorer.readiness")


class EmbedderUnreachable(grpc.RpcError):
    """An embedder call's failure, naming the embedder and saying what to do (the scorer's line errors
    show it)."""

    def __init__(self, address: str, error: grpc.RpcError) -> None:
        super().__init__(str(error))
        self._code = error.code() if hasattr(error, "code") else grpc.StatusCode.UNAVAILABLE
        self._details = (f"the scorer's embedder at {address} did not answer ({_details(error)}); start the "
                         f"embedder there, or restart the scorer with --embedder pointing at a running one")

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return self._details


def _details(error: grpc.RpcError) -> str:
    code = error.code().name if hasattr(error, "code") else "UNAVAILABLE"
    return f"{code}: {error.details()}" if hasattr(error, "details") else f"{code}: {error}"


class EmbedderProbe:
    def __init__(self, client: EmbedderClient, on_change: Callable[[], None], interval: float = 2.0,
                 retry_min: float = 0.25, retry_max: float = 5.0, check_timeout: float = 2.0) -> None:
        self.client = client
        self.address = client.address
        self._on_change = on_change
        self.interval, self.retry_min, self.retry_max, self.check_timeout = interval, retry_min, retry_max, check_timeout
        self.status = f"not checked yet whether the embedder at {self.address} answers"  # "" when it is SERVING
        self._stop = threading.Event()
        self._poke = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def reachable(self) -> bool:
        return self.status == ""

    def check(self) -> bool:
        """Health-checks the embedder once; updates `status` (and calls on_change when it changed)."""
        try:
            state = self.client.health(timeout=self.check_timeout)
            status = "" if state == "SERVING" else (
                f"the embedder at {self.address} answers {state} (its model is loading or failed to load: see its "
                "log); lines with a shape the scorer has not seen cannot be scored")
        except grpc.RpcError as exc:
            status = (f"cannot reach the embedder at {self.address} ({_details(exc)}); start it there, or restart "
                      "the scorer with --embedder pointing at a running one")
        if status != self.status:
            was_reachable = self.reachable
            self.status = status
            if status:
                log.warning("embedder not available: scorer NOT_SERVING", extra={"embedder": self.address,
                                                                                  "reason": status})
            elif not was_reachable:
                log.info("embedder available", extra={"embedder": self.address})
            self._on_change()
        return self.reachable

    def poke(self) -> None:
        """Asks for a check now (an embed call just failed)."""
        self._poke.set()

    def _check_once(self) -> bool:
        try:
            return self.check()
        except Exception:  # a failing probe must not end readiness checks
            log.exception("embedder probe failed")
            return False

    def _pause(self, seconds: float) -> None:
        self._poke.wait(seconds)  # a poke (or stop) ends the pause early
        self._poke.clear()

    def start(self) -> "EmbedderProbe":
        # while it fails: checks again after waits doubling from retry_min to retry_max, until one succeeds
        until_reachable = Retrying(retry=retry_if_result(lambda ok: not ok), sleep=self._pause,
                                   wait=wait_exponential(multiplier=self.retry_min, max=self.retry_max),
                                   stop=lambda _: self._stop.is_set(), retry_error_callback=lambda _: False)

        def loop() -> None:
            while not self._stop.is_set():
                until_reachable(self._check_once)
                self._pause(self.interval)
        self._thread = threading.Thread(target=loop, name="embedder-probe", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._poke.set()

"""Bounded retries with exponential backoff for calls to services that may be down for a while."""
from __future__ import annotations

import logging
import time
from typing import Callable, TypeVar

import grpc

log = logging.getLogger("logmesh.stream.retry")
T = TypeVar("T")
RETRYABLE = {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.RESOURCE_EXHAUSTED}


class GaveUp(RuntimeError):
    """A dependency stayed down past the retry budget; the batch fails and Spark replays it on restart."""


def with_retry(call: Callable[[], T], what: str, budget_s: float = 300.0, first_delay_s: float = 0.5,
               max_delay_s: float = 15.0) -> T:
    deadline = time.monotonic() + budget_s
    delay = first_delay_s
    attempt = 1
    while True:
        try:
            return call()
        except grpc.RpcError as exc:
            code = exc.code()
            if code not in RETRYABLE:
                raise
            if time.monotonic() + delay > deadline:
                raise GaveUp(f"{what}: still {code.name} after {attempt} attempts over {budget_s:.0f}s "
                             f"({exc.details()})") from exc
            log.warning("retrying", extra={"call": what, "attempt": attempt, "code": code.name,
                                           "detail": exc.details(), "sleep_s": delay})
        except RetryItems as exc:
            if time.monotonic() + delay > deadline:
                raise GaveUp(f"{what}: {exc} after {attempt} attempts over {budget_s:.0f}s") from exc
            log.warning("retrying", extra={"call": what, "attempt": attempt, "reason": str(exc), "sleep_s": delay})
        time.sleep(delay)
        delay = min(delay * 2, max_delay_s)
        attempt += 1


class RetryItems(Exception):
    """Raised by a call whose reply had retryable per-item errors (e.g. the embedder behind the scorer was down)."""

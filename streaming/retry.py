"""Bounded retries with exponential backoff (tenacity) for calls to services that may be down for a while.

A call is retried when it fails with a gRPC code that a restart or a busy server explains (RETRYABLE), or
raises RetryItems (its reply had per-item errors of that kind), after waits doubling from `first_delay_s` up
to `max_delay_s`; a wait that would end past `budget_s` from the first attempt is not taken: GaveUp instead.
Each retry logs "retrying" (call, attempt, code/detail or reason, sleep_s) on logmesh.stream.retry.
"""
from __future__ import annotations

import logging
from typing import Callable, TypeVar

import grpc
from tenacity import RetryCallState, Retrying, retry_if_exception, stop_before_delay, wait_exponential

log = logging.getLogger("logmesh.stream.retry")
T = TypeVar("T")
RETRYABLE = {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.RESOURCE_EXHAUSTED}


class GaveUp(RuntimeError):
    """A dependency stayed down past the retry budget; the batch fails and Spark replays it on restart."""


class RetryItems(Exception):
    """Raised by a call whose reply had retryable per-item errors (e.g. the embedder behind the scorer was down)."""


def _retryable(exc: BaseException) -> bool:
    if isinstance(exc, RetryItems):
        return True
    return isinstance(exc, grpc.RpcError) and hasattr(exc, "code") and exc.code() in RETRYABLE


def with_retry(call: Callable[[], T], what: str, budget_s: float = 300.0, first_delay_s: float = 0.5,
               max_delay_s: float = 15.0) -> T:
    """`call()`'s result, retried as the module says; other errors pass through at once."""

    def log_retry(state: RetryCallState) -> None:
        exc = state.outcome.exception() if state.outcome else None
        sleep_s = state.upcoming_sleep
        if isinstance(exc, grpc.RpcError):
            log.warning("retrying", extra={"call": what, "attempt": state.attempt_number, "code": exc.code().name,
                                           "detail": exc.details(), "sleep_s": sleep_s})
        else:
            log.warning("retrying", extra={"call": what, "attempt": state.attempt_number, "reason": str(exc),
                                           "sleep_s": sleep_s})

    def give_up(state: RetryCallState) -> T:
        exc = state.outcome.exception() if state.outcome else None
        attempts = state.attempt_number
        if isinstance(exc, grpc.RpcError):
            raise GaveUp(f"{what}: still {exc.code().name} after {attempts} attempts over {budget_s:.0f}s "
                         f"({exc.details()})") from exc
        raise GaveUp(f"{what}: {exc} after {attempts} attempts over {budget_s:.0f}s") from exc

    retrying = Retrying(retry=retry_if_exception(_retryable),
                        wait=wait_exponential(multiplier=first_delay_s, max=max_delay_s),
                        stop=stop_before_delay(budget_s), before_sleep=log_retry, retry_error_callback=give_up)
    return retrying(call)

"""The job's and the client's retry loops are tenacity's (issue 18, item 4: one backoff): streaming/retry.py's
with_retry keeps its budget, its doubling waits, its log lines and GaveUp; the client's follow (one helper for
anomalies and incidents) fails fast on a first call nobody answers; wait_until_serving gives up with the last
status. The calls go to real gRPC clients at a port where nothing listens (no server: UNAVAILABLE)."""
from __future__ import annotations

import logging
import re
import socket
import time

import grpc
import pytest

from logmesh.client import EmbedderClient, IncidentClient, ScorerClient
from logmesh.streaming.retry import GaveUp, RetryItems, with_retry


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _retries(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "logmesh.stream.retry" and r.getMessage() == "retrying"]


def test_an_unavailable_call_is_retried_with_doubling_waits_within_its_budget_then_gives_up(caplog):
    caplog.set_level(logging.WARNING, "logmesh.stream.retry")
    with EmbedderClient(f"127.0.0.1:{_closed_port()}") as client:
        with pytest.raises(GaveUp) as raised:
            with_retry(lambda: client.health(timeout=0.3), "health", budget_s=3.0, first_delay_s=0.1, max_delay_s=0.4)
    retried = _retries(caplog)
    sleeps = [r.sleep_s for r in retried]
    # how many attempts fit depends on how long each failing call takes (gRPC's own reconnect backoff)
    assert sleeps and sleeps == [min(0.1 * 2 ** i, 0.4) for i in range(len(sleeps))], sleeps
    assert sum(sleeps) < 3.0  # no wait is taken that would end past the budget
    assert [r.attempt for r in retried] == list(range(1, len(retried) + 1))
    assert all(r.call == "health" and r.code in ("UNAVAILABLE", "DEADLINE_EXCEEDED") and r.detail for r in retried)
    assert re.match(rf"health: still (UNAVAILABLE|DEADLINE_EXCEEDED) after {len(retried) + 1} attempts over 3s \(",
                    str(raised.value)), str(raised.value)
    assert isinstance(raised.value.__cause__, grpc.RpcError)


def test_retry_items_are_retried_and_the_result_comes_back(caplog):
    caplog.set_level(logging.WARNING, "logmesh.stream.retry")
    outcomes = iter([RetryItems("3 lines unavailable"), RetryItems("1 lines unavailable"), "scored"])

    def call() -> str:
        outcome = next(outcomes)
        if isinstance(outcome, Exception):
            raise outcome
        return outcome
    assert with_retry(call, "score x", budget_s=5, first_delay_s=0.01, max_delay_s=0.02) == "scored"
    assert [(r.attempt, r.reason, r.sleep_s) for r in _retries(caplog)] == [
        (1, "3 lines unavailable", 0.01), (2, "1 lines unavailable", 0.02)]


def test_retry_items_past_the_budget_give_up_with_the_reason():
    def call() -> None:
        raise RetryItems("2 blocks unavailable: the embedder is down")
    with pytest.raises(GaveUp, match=r"^score y: 2 blocks unavailable: the embedder is down after \d+ attempts over 0s"):
        with_retry(call, "score y", budget_s=0.2, first_delay_s=0.01, max_delay_s=0.05)


def test_other_errors_pass_through_at_once(caplog):
    calls = []

    def call() -> None:
        calls.append(1)
        raise ValueError("a bad line")
    with pytest.raises(ValueError, match="a bad line"):
        with_retry(call, "z", budget_s=5, first_delay_s=0.01)
    assert calls == [1] and not _retries(caplog)


@pytest.mark.parametrize("follow", [
    lambda address, heard: ScorerClient(address).follow(on_reconnect=heard.append, retry_seconds=0.05),
    lambda address, heard: IncidentClient(address).follow(on_reconnect=heard.append, retry_seconds=0.05),
], ids=["anomalies", "incidents"])
def test_follow_fails_fast_when_the_first_subscription_is_not_answered(follow):
    heard: list[str] = []
    started = time.monotonic()
    with pytest.raises(grpc.RpcError) as raised:
        next(follow(f"127.0.0.1:{_closed_port()}", heard))
    assert raised.value.code() == grpc.StatusCode.UNAVAILABLE, raised.value
    assert heard == []  # neither "subscribed" nor "lost ...; reconnecting" for a scorer it never reached
    assert time.monotonic() - started < 30


def test_wait_until_serving_gives_up_with_the_last_status():
    with ScorerClient(f"127.0.0.1:{_closed_port()}") as client:
        with pytest.raises(TimeoutError, match=r"logmesh.v1.ScorerService at 127.0.0.1:\d+ not SERVING after 1s "
                                               r"\(last: (UNAVAILABLE|DEADLINE_EXCEEDED): "):
            client.wait_until_serving(timeout=1.0)

"""Polling for a condition instead of sleeping: the one wait the integration tests share."""
from __future__ import annotations

import time
from typing import Callable, TypeVar

T = TypeVar("T")


def wait_for(condition: Callable[[], T], timeout: float = 20.0, what: str = "the condition",
             every: float = 0.5) -> T:
    """Calls `condition` every `every` seconds until it returns something truthy, and returns that;
    fails the test after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not (value := condition()):
        assert time.monotonic() < deadline, f"timed out after {timeout:.0f}s waiting for {what}"
        time.sleep(every)
    return value

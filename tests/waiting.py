"""Polling for a condition instead of sleeping, and stopping a process the tests started: the waits they share."""
from __future__ import annotations

import subprocess
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


def stop_process(process: subprocess.Popen, grace: float = 15.0) -> None:
    """SIGTERM, `grace` seconds to exit, then SIGKILL (and reaped): a test's server stops either way."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(grace)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)

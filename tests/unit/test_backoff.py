"""The backoffs outside the job and the client are tenacity's (issue 18, item 4: one backoff, a library):
the scorer's embedder probe waits 0.25, 0.5, 1, 2, 4 s, then 5 s, between failed checks, and starts again from
the shortest wait after a success. Checks go to a real EmbedderClient at a port where nothing listens; only
the waits are recorded instead of slept."""
from __future__ import annotations

import socket
import threading

from logmesh.client import EmbedderClient
from logmesh.scorer.readiness import EmbedderProbe


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class _RecordingProbe(EmbedderProbe):
    """Records each pause instead of waiting it, and stops after `pauses` of them."""

    def __init__(self, *args, pauses: int, **kwargs) -> None:  # type: ignore[no-untyped-def]
        super().__init__(*args, **kwargs)
        self.pauses: list[float] = []
        self.limit, self.done = pauses, threading.Event()

    def _pause(self, seconds: float) -> None:
        if len(self.pauses) < self.limit:  # the loop pauses once more on its way out: not recorded
            self.pauses.append(round(seconds, 3))
        if len(self.pauses) >= self.limit:
            self._stop.set()
            self.done.set()


def test_an_unreachable_embedder_is_checked_again_after_doubling_waits():
    with EmbedderClient(f"127.0.0.1:{_closed_port()}") as client:
        probe = _RecordingProbe(client, on_change=lambda: None, interval=2.0, retry_min=0.25, retry_max=5.0,
                                check_timeout=0.2, pauses=6).start()
        assert probe.done.wait(60), probe.pauses
        probe.stop()
        probe._thread.join(10)
    assert probe.pauses == [0.25, 0.5, 1.0, 2.0, 4.0, 5.0]
    assert probe.status.startswith("cannot reach the embedder")


def test_after_a_success_the_probe_waits_the_interval_and_the_backoff_starts_again():
    with EmbedderClient(f"127.0.0.1:{_closed_port()}") as client:
        probe = _RecordingProbe(client, on_change=lambda: None, interval=2.0, retry_min=0.25, retry_max=5.0,
                                check_timeout=1.0, pauses=6)
        # a stand-in for the checks' outcomes (an embedder that comes and goes would need a real server)
        answers = iter([False, False, True, False, False, False])
        probe.check = lambda: next(answers)  # type: ignore[method-assign]
        probe.start()
        assert probe.done.wait(30), probe.pauses
        probe.stop()
        probe._thread.join(10)
    assert probe.pauses == [0.25, 0.5, 2.0, 0.25, 0.5, 1.0]

"""Pacing a producer to a rate of lines per second."""
from __future__ import annotations

import time
from collections.abc import Callable


class TokenBucket:
    """Paces calls to `rate` per second with bursts of up to `burst` (default a tenth of a second's
    worth). Debt is kept, so the long-run rate is exact even when `sleep` wakes early."""

    def __init__(self, rate: float, burst: float | None = None,
                 clock: Callable[[], float] = time.monotonic, sleep: Callable[[float], None] = time.sleep) -> None:
        if rate <= 0:
            raise ValueError(f"rate must be positive, got {rate}")
        self.rate = rate
        self.capacity = burst if burst is not None else max(1.0, rate / 10)
        self.tokens = self.capacity
        self._clock, self._sleep = clock, sleep
        self._last = clock()

    def take(self, n: float = 1.0) -> float:
        """Takes `n` tokens, sleeping while in debt; returns the seconds it asked to sleep."""
        now = self._clock()
        self.tokens = min(self.capacity, self.tokens + (now - self._last) * self.rate) - n
        self._last = now
        if self.tokens >= 0:
            return 0.0
        wait = -self.tokens / self.rate
        self._sleep(wait)
        return wait

"""A token bucket: how long the next write must wait so that writes stay within a rate.

Pure (the caller passes the time): ``rate`` tokens per second accrue up to ``burst``; each write
takes one, and a write that finds none waits until its token has accrued. So over any window of
``T`` seconds at most ``burst + rate * T`` writes start, whatever asks for them: the bound the
extender's background writes (pod labels) keep on a first start over tens of thousands of pods.
"""

from __future__ import annotations


class TokenBucket:
    """Mutable limiter state for one writer; not thread-safe (one event loop)."""

    def __init__(self, *, rate: float, burst: int, now: float) -> None:
        if rate <= 0:
            raise ValueError("the rate must be positive")
        if burst < 1:
            raise ValueError("the burst must be at least 1")
        self.rate = rate
        self.burst = burst
        self._tokens = float(burst)
        self._last = now

    def reserve(self, now: float) -> float:
        """Take the next token: seconds from ``now`` until the write may start (0 when one is there).

        A reservation takes its token even when it must wait (the balance goes negative), so
        callers that reserve in turn are spaced ``1 / rate`` apart once the burst is spent.
        """
        elapsed = max(0.0, now - self._last)
        self._last = max(self._last, now)
        self._tokens = min(float(self.burst), self._tokens + elapsed * self.rate) - 1.0
        return 0.0 if self._tokens >= 0 else -self._tokens / self.rate

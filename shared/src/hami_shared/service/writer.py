"""One queued, coalescing, retrying writer of API objects (needs the ``kube`` extra).

A service hands it desired writes, by object key, and never waits for the API server: ``submit`` queues and
returns; ``run`` (a background task) sends them with the caller's ``write`` function, oldest key first.

- Coalescing: one entry per key. A newer write of a queued key is merged into it (``merge``; by default the newer
  wins) and keeps its place. A write of a key in flight is queued behind it, never lost and never sent at the same
  time (its order stays), unless it equals the one in flight (nothing to add).
- Bounded: with ``limit``, a new key that does not fit is refused (False, counted in ``refused``).
- Paced: with ``rate``, writes start within a token bucket (``rate`` per second after a ``burst``); at most
  ``concurrency`` writes are in flight.
- Retrying: ``classify`` turns a failure into a :class:`Verdict`. RETRY (by default: no answer, 429, 5xx) queues
  the write again, merged with anything newer, after an exponential backoff with jitter; REAPPLY (a conflict,
  where the caller's ``write`` re-reads) at once the first time, then backing off; DROP (by default every other
  4xx) logs and counts it. None (not a failed API call) logs it with its traceback and drops it; a ``classify``
  that raises stops the writer (its TaskGroup decides).
- ``pending()`` (queued and in flight) feeds a gauge; ``flush(within)`` gives the queue time at shutdown.

The decisions (:class:`Coalescer`, :class:`TokenBucket`, :class:`Backoff`, :func:`verdict`) do no I/O.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import enum
import random
import time
from collections.abc import Awaitable, Callable, Collection, Hashable
from typing import Generic, TypeVar

from kubernetes_asyncio.client.exceptions import ApiException

from hami_shared.logging import get_logger

log = get_logger(__name__)

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class Verdict(enum.Enum):
    """What becomes of a write that failed."""

    RETRY = "retry"
    REAPPLY = "reapply"
    DROP = "drop"


def verdict(
    exc: BaseException,
    *,
    errors: tuple[type[BaseException], ...] = (),
    drop: Collection[int] | None = None,
    conflict: Verdict = Verdict.DROP,
) -> Verdict | None:
    """The usual classification by HTTP status (``errors``: the caller's error types, read by their ``status``;
    no status is 0, no answer): ``drop`` statuses (None: every 4xx but 409 and 429) are dropped, 409 gets
    ``conflict``, any other is retried; None when ``exc`` is no failed API call."""
    if isinstance(exc, ApiException | TimeoutError | OSError) or (errors and isinstance(exc, errors)):
        status = int(getattr(exc, "status", 0) or 0)
    else:
        return None
    if status == 409:
        return conflict
    if (status in drop) if drop is not None else (400 <= status < 500 and status != 429):
        return Verdict.DROP
    return Verdict.RETRY


@dataclasses.dataclass(frozen=True, slots=True)
class Backoff:
    """Seconds before a retry: ``initial * factor ** failures`` up to ``cap``, less up to ``jitter`` of it."""

    initial: float = 0.2
    factor: float = 2.0
    cap: float = 10.0
    jitter: float = 0.2

    def delay(self, failures: int, draw: float) -> float:
        """``failures``: consecutive failures before this one; ``draw``: a random number in [0, 1)."""
        return min(self.cap, self.initial * self.factor ** min(failures, 64)) * (1.0 - self.jitter * draw)


class TokenBucket:
    """How long the next write must wait so that writes stay within a rate (the caller passes the time).

    ``rate`` tokens per second accrue up to ``burst``; each write takes one, and a write that finds none waits
    until its token has accrued: over any window of ``T`` seconds at most ``burst + rate * T`` writes start.
    """

    def __init__(self, *, rate: float, burst: int, now: float) -> None:
        if rate <= 0 or burst < 1:
            raise ValueError(f"the rate must be positive and the burst at least 1 (rate {rate}, burst {burst})")
        self.rate, self.burst, self._tokens, self._last = rate, burst, float(burst), now

    def reserve(self, now: float) -> float:
        """Take the next token: seconds from ``now`` until the write may start (0 when one is there). A
        reservation takes its token even when it must wait, so callers in turn are spaced ``1 / rate`` apart."""
        elapsed = max(0.0, now - self._last)
        self._last = max(self._last, now)
        self._tokens = min(float(self.burst), self._tokens + elapsed * self.rate) - 1.0
        return 0.0 if self._tokens >= 0 else -self._tokens / self.rate


class Coalescer(Generic[K, V]):
    """The queue of desired writes, one per key, oldest first, and the keys in flight (module docstring)."""

    def __init__(self, merge: Callable[[V, V], V], limit: int | None = None) -> None:
        self._merge = merge
        self._limit = limit
        self._queued: collections.OrderedDict[K, V] = collections.OrderedDict()
        self._in_flight: dict[K, V] = {}

    def offer(self, key: K, value: V) -> bool:
        """Queue ``value`` for ``key``; False when it is a new entry over the limit (nothing queued)."""
        if key in self._queued:
            self._queued[key] = self._merge(self._queued[key], value)
        elif key not in self._in_flight or self._in_flight[key] != value:
            if self._limit is not None and len(self._queued) >= self._limit:
                return False
            self._queued[key] = value
        return True

    def ready(self) -> bool:
        """Whether :meth:`take` has a write to give (a queued key not in flight)."""
        return any(key not in self._in_flight for key in self._queued)

    def take(self) -> tuple[K, V]:
        """The oldest queued write whose key is not in flight, now in flight."""
        key = next(key for key in self._queued if key not in self._in_flight)
        value = self._in_flight[key] = self._queued.pop(key)
        return key, value

    def finish(self, key: K, *, again: V | None = None) -> None:
        """The write of ``key`` is over; ``again``: it failed and is queued again, merged with anything newer,
        behind every other key."""
        self._in_flight.pop(key, None)
        if again is not None:
            newer = self._queued.pop(key, None)
            self._queued[key] = again if newer is None else self._merge(again, newer)

    def queued(self) -> int:
        return len(self._queued)

    def pending(self) -> int:
        """Queued and in flight (a key may be both)."""
        return len(self._queued) + len(self._in_flight)


class ApiWriter(Generic[K, V]):
    """Queued writes of one kind of object (module docstring). Lives on one event loop."""

    def __init__(
        self,
        write: Callable[[K, V], Awaitable[object]],
        *,
        what: str,
        classify: Callable[[Exception], Verdict | None] = verdict,
        merge: Callable[[V, V], V] = lambda _older, newer: newer,
        limit: int | None = None,
        rate: float | None = None,
        burst: int = 1,
        concurrency: int = 1,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        draw: Callable[[], float] = random.random,
    ) -> None:
        self._write, self._what, self._classify = write, what, classify
        self._queue: Coalescer[K, V] = Coalescer(merge, limit)
        self._bucket = None if rate is None else TokenBucket(rate=rate, burst=burst, now=clock())
        self._concurrency, self._backoff = concurrency, Backoff()
        self._clock, self._sleep, self._draw = clock, sleep, draw
        self._failures = 0
        self._wakeup = asyncio.Event()
        self._finished = asyncio.Event()
        self.written = self.dropped = self.refused = 0

    def submit(self, key: K, value: V) -> bool:
        """Queue a write (never blocks); False when it was refused, over the limit."""
        if not self._queue.offer(key, value):
            self.refused += 1
            return False
        self._wakeup.set()
        return True

    def queued(self) -> int:
        """Writes queued, not yet started."""
        return self._queue.queued()

    def pending(self) -> int:
        """Writes queued or in flight."""
        return self._queue.pending()

    async def flush(self, within: float) -> None:
        """Give the pending writes up to ``within`` seconds (at shutdown; ``run`` must be running)."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(within):
                while self.pending():
                    self._finished.clear()
                    await self._finished.wait()

    async def run(self) -> None:
        """Send the queued writes until cancelled."""
        slots = asyncio.Semaphore(self._concurrency)
        async with asyncio.TaskGroup() as group:
            while True:
                while not self._queue.ready():
                    self._wakeup.clear()
                    await self._wakeup.wait()
                # A free sender first, then the token: a stall of the API server banks no tokens for a burst.
                await slots.acquire()
                if self._bucket is not None and (delay := self._bucket.reserve(self._clock())) > 0:
                    await self._sleep(delay)
                key, value = self._queue.take()
                group.create_task(self._send(key, value, slots))

    async def _send(self, key: K, value: V, slots: asyncio.Semaphore) -> None:
        again: V | None = None
        fields = {"what": self._what, "key": str(key)}
        try:
            await self._write(key, value)
            self._failures = 0
            self.written += 1
        except Exception as exc:
            decided = self._classify(exc)
            if decided is None or decided is Verdict.DROP:
                self.dropped += 1
                if decided is None:
                    log.exception("write_failed", **fields)
                else:
                    log.info("write_dropped", **fields, error=str(exc))
            else:
                first = decided is Verdict.REAPPLY and self._failures == 0
                delay = 0.0 if first else self._backoff.delay(self._failures, self._draw())
                self._failures += 1
                log.warning("write_retrying", **fields, error=str(exc), retry_in=round(delay, 3))
                await self._sleep(delay)
                again = value
        finally:
            self._queue.finish(key, again=again)
            slots.release()
            self._wakeup.set()
            self._finished.set()

"""The queued API writer: its pure decisions (classification, backoff, coalescing, pacing) without I/O, then the
writer itself on a virtual clock with a scripted ``write``."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import pytest
from hami_shared.service.writer import (
    ApiWriter,
    Backoff,
    Coalescer,
    TokenBucket,
    Verdict,
    verdict,
)
from hypothesis import given
from hypothesis import strategies as st
from kubernetes_asyncio.client.exceptions import ApiException


class ServiceError(RuntimeError):
    def __init__(self, status: int) -> None:
        super().__init__(f"HTTP {status}")
        self.status = status


# --- classification ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("exc", "expected"),
    [
        (ApiException(status=503), Verdict.RETRY),
        (ApiException(status=500), Verdict.RETRY),
        (ApiException(status=429), Verdict.RETRY),
        (TimeoutError(), Verdict.RETRY),
        (ConnectionResetError(), Verdict.RETRY),
        (ApiException(status=404), Verdict.DROP),
        (ApiException(status=422), Verdict.DROP),
        (ApiException(status=409), Verdict.DROP),
        (ServiceError(503), None),  # not one of the errors the caller named
        (ValueError("a bug"), None),
    ],
    ids=["503", "500", "429", "timeout", "connection", "404", "422", "409", "unnamed-error", "bug"],
)
def test_the_default_verdict_retries_transient_failures_and_drops_permanent_ones(
    exc: Exception, expected: Verdict | None
) -> None:
    assert verdict(exc) is expected


def test_the_caller_names_its_error_types_permanent_statuses_and_what_a_conflict_is() -> None:
    assert verdict(ServiceError(404), errors=(ServiceError,)) is Verdict.DROP
    assert verdict(ServiceError(503), errors=(ServiceError,)) is Verdict.RETRY
    only_gone = {"errors": (ServiceError,), "drop": {404}, "conflict": Verdict.RETRY}
    assert verdict(ServiceError(404), **only_gone) is Verdict.DROP  # type: ignore[arg-type]
    assert verdict(ServiceError(422), **only_gone) is Verdict.RETRY  # type: ignore[arg-type]
    assert verdict(ServiceError(409), **only_gone) is Verdict.RETRY  # type: ignore[arg-type]
    assert verdict(ApiException(status=409), conflict=Verdict.REAPPLY) is Verdict.REAPPLY


# --- backoff -------------------------------------------------------------------------------------------------


def test_the_backoff_doubles_up_to_its_cap() -> None:
    schedule = [Backoff(jitter=0.0).delay(n, 0.5) for n in range(9)]
    assert schedule == pytest.approx([0.2, 0.4, 0.8, 1.6, 3.2, 6.4, 10.0, 10.0, 10.0])


@given(failures=st.integers(min_value=0, max_value=10_000), draw=st.floats(min_value=0.0, max_value=0.999999))
def test_the_jittered_backoff_stays_within_its_share_below_the_schedule(failures: int, draw: float) -> None:
    backoff = Backoff()
    full = Backoff(jitter=0.0).delay(failures, 0.0)
    assert full * (1 - backoff.jitter) - 1e-9 <= backoff.delay(failures, draw) <= full


# --- the token bucket ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("rate", "burst", "starts"),
    [(1.0, 2, [0.0, 0.0, 1.0, 2.0, 3.0]), (10.0, 1, [0.0, 0.1, 0.2, 0.3, 0.4])],
)
def test_token_bucket_spacing(rate: float, burst: int, starts: list[float]) -> None:
    bucket = TokenBucket(rate=rate, burst=burst, now=0.0)
    now, seen = 0.0, []
    for _ in starts:
        now += bucket.reserve(now)  # the caller waits, then asks for the next one
        seen.append(now)
    assert seen == pytest.approx(starts)


def test_token_bucket_refills_up_to_its_burst_only() -> None:
    bucket = TokenBucket(rate=5.0, burst=3, now=0.0)
    assert [bucket.reserve(100.0) for _ in range(4)] == pytest.approx([0.0, 0.0, 0.0, 0.2])
    with pytest.raises(ValueError, match="rate"):
        TokenBucket(rate=0, burst=1, now=0.0)
    with pytest.raises(ValueError, match="burst"):
        TokenBucket(rate=1, burst=0, now=0.0)


# --- coalescing ----------------------------------------------------------------------------------------------


def merged(older: tuple[int, ...], newer: tuple[int, ...]) -> tuple[int, ...]:
    return older + newer


Op = tuple[str, int]
ops = st.lists(st.tuples(st.sampled_from(["offer", "take", "done", "failed"]), st.integers(0, 4)), max_size=80)


@given(ops)
def test_every_offered_write_is_taken_once_in_order_per_key_and_never_twice_at_a_time(script: list[Op]) -> None:
    queue: Coalescer[int, tuple[int, ...]] = Coalescer(merged)
    offered: dict[int, list[int]] = {}
    taken: dict[int, list[int]] = {}  # what was written, per key (a failed write is taken back)
    in_flight: dict[int, tuple[int, ...]] = {}
    for serial, (op, key) in enumerate(script):
        if op == "offer":  # each value unique: none equals the write in flight
            assert queue.offer(key, (serial,))
            offered.setdefault(key, []).append(serial)
        elif op == "take" and queue.ready():
            key, values = queue.take()
            assert key not in in_flight  # one write of a key at a time
            in_flight[key] = values
            taken.setdefault(key, []).extend(values)
        elif op in ("done", "failed") and key in in_flight:
            values = in_flight.pop(key)
            if op == "failed":  # retried: what it carried goes out again, before anything newer
                del taken[key][len(taken[key]) - len(values) :]
                queue.finish(key, again=values)
            else:
                queue.finish(key)
        assert queue.pending() == queue.queued() + len(in_flight)
    for key in list(in_flight):
        queue.finish(key)
    while queue.ready():
        key, values = queue.take()
        taken.setdefault(key, []).extend(values)
        queue.finish(key)
    # Merging concatenates here: each key's writes carry every offered value once, oldest first.
    assert taken == offered
    assert queue.pending() == 0


def test_a_newer_write_of_a_queued_key_is_merged_in_place_and_one_in_flight_is_followed_not_lost() -> None:
    queue: Coalescer[str, tuple[int, ...]] = Coalescer(merged)
    queue.offer("a", (1,))
    queue.offer("b", (1,))
    queue.offer("a", (2,))
    assert queue.take() == ("a", (1, 2))  # merged, kept its place
    queue.offer("a", (3,))  # "a" in flight: queued behind it
    assert queue.take() == ("b", (1,))
    assert not queue.ready()  # the only queued key is in flight
    queue.finish("a")
    assert queue.take() == ("a", (3,))
    queue.offer("a", (3,))  # the very write in flight: nothing to add
    assert queue.queued() == 0


def test_a_failed_write_goes_behind_the_others_merged_with_anything_newer() -> None:
    queue: Coalescer[str, tuple[int, ...]] = Coalescer(merged)
    for key in "abc":
        queue.offer(key, (1,))
    assert queue.take() == ("a", (1,))
    queue.offer("a", (2,))
    queue.finish("a", again=(1,))
    assert [queue.take()[0] for _ in range(2)] == ["b", "c"]
    assert queue.take() == ("a", (1, 2))


def test_a_new_key_over_the_limit_is_refused_a_queued_one_still_merges() -> None:
    queue: Coalescer[str, int] = Coalescer(lambda _old, new: new, limit=2)
    assert queue.offer("a", 1)
    assert queue.offer("b", 1)
    assert not queue.offer("c", 1)
    assert queue.offer("a", 2)
    assert queue.pending() == 2


# --- the writer ------------------------------------------------------------------------------------------------


class VirtualTime:
    def __init__(self) -> None:
        self.now = 0.0
        self.sleeps: list[float] = []

    def clock(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        await asyncio.sleep(0)  # what was started before the sleep starts now
        self.now += seconds
        await asyncio.sleep(0)


class Api:
    """A scripted API: each write is recorded; ``failures`` are raised first, in order."""

    def __init__(self, time: VirtualTime, failures: list[Exception] | None = None) -> None:
        self.time = time
        self.failures = failures or []
        self.writes: list[tuple[float, str, object]] = []
        self.gate: asyncio.Event | None = None

    async def write(self, key: str, value: object) -> None:
        if self.gate is not None:
            await self.gate.wait()
        if self.failures:
            raise self.failures.pop(0)
        self.writes.append((self.time.now, key, value))


@contextlib.asynccontextmanager
async def running(writer: ApiWriter[str, object]) -> AsyncIterator[None]:
    task = asyncio.create_task(writer.run())
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def settle(writer: ApiWriter[str, object]) -> None:
    for _ in range(10_000):
        if not writer.pending():
            return
        await asyncio.sleep(0)
    raise AssertionError(f"{writer.pending()} writes still pending")


def writer_for(api: Api, time: VirtualTime, **options: object) -> ApiWriter[str, object]:
    return ApiWriter(api.write, what="test", clock=time.clock, sleep=time.sleep, draw=lambda: 0.0, **options)  # type: ignore[arg-type]


async def test_transient_failures_are_retried_with_a_growing_backoff_then_written_once() -> None:
    time = VirtualTime()
    api = Api(time, [ApiException(status=503), TimeoutError(), ApiException(status=429)])
    writer = writer_for(api, time)
    async with running(writer):
        writer.submit("ns/a", "v1")
        await settle(writer)
    assert [key for _, key, _ in api.writes] == ["ns/a"]
    assert time.sleeps == pytest.approx([0.2, 0.4, 0.8])
    assert (writer.written, writer.dropped) == (1, 0)


async def test_a_permanent_failure_is_dropped_and_counted_and_the_next_key_goes_on() -> None:
    time = VirtualTime()
    api = Api(time, [ApiException(status=404)])
    writer = writer_for(api, time)
    async with running(writer):
        writer.submit("gone", 1)
        writer.submit("here", 2)
        await settle(writer)
    assert [key for _, key, _ in api.writes] == ["here"]
    assert (writer.written, writer.dropped, time.sleeps) == (1, 1, [])


async def test_a_conflict_the_caller_reapplies_is_written_again_at_once() -> None:
    time = VirtualTime()
    api = Api(time, [ApiException(status=409)])
    writer = writer_for(api, time, classify=lambda exc: verdict(exc, conflict=Verdict.REAPPLY))
    async with running(writer):
        writer.submit("a", 1)
        await settle(writer)
    assert [key for _, key, _ in api.writes] == ["a"]
    assert time.sleeps == [0.0]


async def test_an_unexpected_error_is_logged_and_dropped_and_a_classifier_that_raises_stops_the_writer() -> None:
    time = VirtualTime()
    api = Api(time, [ValueError("a bug")])
    writer = writer_for(api, time)
    async with running(writer):
        writer.submit("a", 1)
        writer.submit("b", 2)
        await settle(writer)
    assert ([key for _, key, _ in api.writes], writer.dropped) == (["b"], 1)

    def stop(exc: Exception) -> Verdict | None:
        raise exc

    stopping = writer_for(Api(time, [ValueError("fatal")]), time, classify=stop)
    stopping.submit("a", 1)
    with pytest.raises(ExceptionGroup) as excinfo:
        await asyncio.wait_for(stopping.run(), 5)
    assert excinfo.group_contains(ValueError, match="fatal")


async def test_a_write_submitted_while_its_key_is_in_flight_follows_it() -> None:
    time = VirtualTime()
    api = Api(time)
    api.gate = asyncio.Event()
    writer = writer_for(api, time, merge=lambda old, new: f"{old}+{new}")
    async with running(writer):
        writer.submit("a", "1")
        for _ in range(5):
            await asyncio.sleep(0)
        writer.submit("a", "2")
        writer.submit("a", "3")
        assert (writer.queued(), writer.pending()) == (1, 2)
        api.gate.set()
        await settle(writer)
    assert [value for _, _, value in api.writes] == ["1", "2+3"]


async def test_writes_are_paced_by_rate_and_burst_and_bounded_by_the_limit() -> None:
    time = VirtualTime()
    api = Api(time)
    writer = writer_for(api, time, rate=10.0, burst=3, limit=20, concurrency=4)
    accepted = [writer.submit(f"k{i}", i) for i in range(25)]
    assert accepted.count(False) == writer.refused == 5
    async with running(writer):
        await settle(writer)
    starts = [at for at, _, _ in api.writes]
    assert [key for _, key, _ in api.writes] == [f"k{i}" for i in range(20)]
    for first in range(len(starts)):  # over any window of T seconds at most burst + rate * T writes start
        for last in range(first, len(starts)):
            assert last - first + 1 <= 3 + 10.0 * (starts[last] - starts[first]) + 1e-6
    assert starts[-1] == pytest.approx((20 - 3) / 10.0)


async def test_flush_waits_for_the_pending_writes_within_its_time() -> None:
    time = VirtualTime()
    api = Api(time)
    api.gate = asyncio.Event()
    writer = writer_for(api, time)
    async with running(writer):
        writer.submit("a", 1)
        await writer.flush(within=0.05)  # the API does not answer: flush gives up
        assert writer.pending() == 1
        asyncio.get_running_loop().call_later(0.01, api.gate.set)
        await writer.flush(within=5.0)
        assert writer.pending() == 0
    assert writer.written == 1

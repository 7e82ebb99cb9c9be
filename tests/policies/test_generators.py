"""Policies on async generators: retry before the first item only, time_limit over the whole
iteration, bulkhead held for the iteration, breaker recording the outcome; the rest refuse."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import aclosing
from typing import Any

import anyio
import anyio.lowlevel
import pytest

from asgi_resilience import CircuitOpenError, ConfigurationError, Overloaded, TimeLimitExceeded, remaining_time
from asgi_resilience.policies import (
    bulkhead,
    circuit_breaker,
    fail_closed,
    fail_open,
    fallback,
    hedge,
    last_good,
    pipeline,
    retry,
    time_limit,
)
from asgi_resilience.testing import ManualClock

pytestmark = pytest.mark.anyio


class Flaky(Exception):
    pass


async def collect(stream: AsyncIterator[Any]) -> list[Any]:
    return [item async for item in stream]


# -- retry ---------------------------------------------------------------------------------------


async def test_retry_restarts_the_stream_until_its_first_item() -> None:
    starts = 0

    @retry(on=Flaky, attempts=3, wait_initial=0, wait_max=0, budget=None)
    async def rows(n: int) -> AsyncIterator[int]:
        nonlocal starts
        starts += 1
        if starts < 3:
            raise Flaky
        for i in range(n):
            yield i

    assert await collect(rows(3)) == [0, 1, 2] and starts == 3
    assert rows.__name__ == "rows"


async def test_retry_never_repeats_items_already_handed_out() -> None:
    starts = 0

    @retry(on=Flaky, attempts=5, wait_initial=0, wait_max=0, budget=None)
    async def rows() -> AsyncIterator[int]:
        nonlocal starts
        starts += 1
        yield 1
        raise Flaky

    seen: list[int] = []
    with pytest.raises(Flaky):
        async for item in rows():
            seen.append(item)
    assert seen == [1] and starts == 1


async def test_retry_of_an_empty_stream_and_early_close() -> None:
    closed = False

    @retry(on=Flaky, budget=None)
    async def empty() -> AsyncIterator[int]:
        return
        yield  # pragma: no cover

    @retry(on=Flaky, budget=None)
    async def endless() -> AsyncIterator[int]:
        nonlocal closed
        try:
            while True:
                yield 1
        finally:
            closed = True

    assert await collect(empty()) == []
    async with aclosing(endless()) as stream:
        async for _ in stream:
            break
    assert closed  # closing the wrapper closes the wrapped generator


# -- time_limit ----------------------------------------------------------------------------------


async def test_time_limit_covers_the_whole_iteration_and_cancels_a_slow_step() -> None:
    cleaned = False
    deadlines: list[float | None] = []

    @time_limit(0.2)
    async def ticks() -> AsyncIterator[int]:
        nonlocal cleaned
        try:
            for i in range(100):
                deadlines.append(remaining_time())
                await anyio.sleep(0.05 if i < 2 else 10)  # the third step hangs
                yield i
        finally:
            cleaned = True

    seen: list[int] = []
    with anyio.fail_after(5), pytest.raises(TimeLimitExceeded):
        async for item in ticks():
            seen.append(item)
    assert seen == [0, 1] and cleaned
    assert all(d is not None and 0 < d <= 0.2 for d in deadlines)  # published to the generator's steps
    assert remaining_time() is None  # and never leaked into the consumer


async def test_time_limit_counts_the_consumers_time_without_cancelling_it() -> None:
    @time_limit(0.1)
    async def items() -> AsyncIterator[int]:
        for i in range(3):
            yield i

    finished_sleep = False
    seen: list[int] = []
    with pytest.raises(TimeLimitExceeded):
        async for item in items():
            seen.append(item)
            await anyio.sleep(0.15)  # past the limit: the consumer is not cancelled...
            finished_sleep = True
    assert seen == [0] and finished_sleep  # ...the next step raises


async def test_a_quick_stream_finishes_within_its_time_limit() -> None:
    @time_limit(5)
    async def items() -> AsyncIterator[int]:
        for i in range(3):
            await anyio.lowlevel.checkpoint()
            yield i

    assert await collect(items()) == [0, 1, 2]


# -- bulkhead ------------------------------------------------------------------------------------


async def test_the_bulkhead_slot_is_held_for_the_whole_iteration() -> None:
    @bulkhead("stream", 1)
    async def rows() -> AsyncIterator[int]:
        for i in range(3):
            yield i

    first = rows()
    assert await first.__anext__() == 0
    assert bulkhead("stream").active == 1
    with pytest.raises(Overloaded):
        await collect(rows())  # the first stream still holds the only slot
    assert await collect(first) == [1, 2]
    assert bulkhead("stream").active == 0
    assert await collect(rows()) == [0, 1, 2]

    early = rows()
    assert await early.__anext__() == 0
    await early.aclose()  # stopping early frees the slot
    assert bulkhead("stream").active == 0


async def test_cancelling_a_stream_frees_its_bulkhead_slot() -> None:
    @bulkhead("stream-cancel", 1)
    async def hangs() -> AsyncIterator[int]:
        yield 0
        await anyio.sleep(10)
        yield 1  # pragma: no cover

    with anyio.move_on_after(0.05):
        async with aclosing(hangs()) as stream:
            async for _ in stream:
                pass
    assert bulkhead("stream-cancel").active == 0


# -- circuit_breaker -----------------------------------------------------------------------------


async def test_the_breaker_records_a_failing_stream_and_then_refuses() -> None:
    @circuit_breaker("feed", on=Flaky, consecutive_failures=1, minimum_calls=1, window=10)
    async def feed(fail: bool) -> AsyncIterator[int]:
        yield 1
        if fail:
            raise Flaky

    assert await collect(feed(False)) == [1]
    assert circuit_breaker("feed").state == "closed"
    with pytest.raises(Flaky):
        await collect(feed(True))  # a failure after an item counts too
    assert circuit_breaker("feed").state == "open"
    with pytest.raises(CircuitOpenError):
        await collect(feed(False))


async def test_the_breaker_ignores_cancellation_and_counts_an_early_stop_as_success() -> None:
    @circuit_breaker("feed2", on=Exception, consecutive_failures=1, minimum_calls=1, window=10)
    async def feed() -> AsyncIterator[int]:
        yield 1
        await anyio.sleep(10)
        yield 2  # pragma: no cover

    with anyio.move_on_after(0.05):
        async with aclosing(feed()) as stream:
            async for _ in stream:
                pass
    async with aclosing(feed()) as stream:
        async for _ in stream:
            break
    assert circuit_breaker("feed2").state == "closed"


async def test_a_slow_stream_is_measured_to_its_first_item() -> None:
    clock = ManualClock()

    @circuit_breaker("slow-feed", clock=clock, slow_call_duration=1, slow_call_rate=0.5, minimum_calls=2, window=10.0)
    async def feed(delay_first: float) -> AsyncIterator[int]:
        clock.advance(delay_first)
        yield 1
        yield 2

    async for _ in feed(0):
        clock.advance(5)  # the consumer is slow: not the dependency's fault
    assert circuit_breaker("slow-feed").state == "closed"
    await collect(feed(5))  # the dependency took 5 s to the first item
    assert circuit_breaker("slow-feed").state == "open"


# -- pipeline and refusals -----------------------------------------------------------------------


async def test_a_pipeline_protects_a_stream() -> None:
    starts = 0

    @pipeline(
        time_limit(5), retry(on=Flaky, wait_initial=0, wait_max=0, budget=None), circuit_breaker("p"), bulkhead("p", 2)
    )
    async def rows() -> AsyncIterator[int]:
        nonlocal starts
        starts += 1
        if starts == 1:
            raise Flaky
        yield 1
        yield 2

    with anyio.fail_after(5):
        assert await collect(rows()) == [1, 2]
    assert starts == 2 and bulkhead("p").active == 0 and circuit_breaker("p").state == "closed"


def test_policies_that_cannot_protect_a_stream_refuse_it_clearly() -> None:
    async def stream() -> AsyncIterator[int]:
        yield 1

    refusing: list[Any] = [
        (hedge(idempotent=True), "hedging races whole calls"),
        (fallback(0), "catch the error where the stream is iterated"),
        (fail_open(True), "catch the error"),
        (fail_closed(), "catch the error"),
        (last_good(), "catch the error"),
        (circuit_breaker("with-fallback", fallback=lambda: 0), "catch the error"),
        (pipeline(retry(), hedge(idempotent=True)), "hedging"),
    ]
    for policy, match in refusing:
        with pytest.raises(ConfigurationError, match=match):
            policy(stream)


def test_sync_generators_are_still_refused() -> None:
    with pytest.raises(ConfigurationError, match="async generators are supported"):

        @retry()
        def rows() -> Any:
            yield 1

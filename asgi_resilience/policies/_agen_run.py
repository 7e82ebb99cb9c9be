"""How the policies run an async generator (``async def`` with ``yield``): a stream of items.

A generator's work happens while it is iterated, after the call returned, so each policy says
what it means over a stream:

* ``retry``: only until the first item arrives; after an item was handed out, a retry would
  repeat it, so a later error is raised.
* ``time_limit``: over the whole iteration, from the first step. Each step of the generator is
  cancelled at the deadline; the time the consumer spends between items counts too, but the
  consumer's own code is never cancelled (no cancel scope stays open across a ``yield``):
  the limit is enforced at the next step.
* ``bulkhead``: the slot is taken at the first step and held until the generator ends or is
  closed.
* ``circuit_breaker``: admitted at the first step; the outcome is recorded when the iteration
  ends (an error from the generator is a failure by ``on=``, the end or the consumer stopping
  early a success, cancellation nothing); a slow call is measured to the first item.

``hedge`` and the fallbacks refuse generators (see :data:`REFUSALS`). Values sent with
``asend()`` are not forwarded; the wrapped generator is closed when the wrapper is closed.
"""

from __future__ import annotations

import time
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from typing import TYPE_CHECKING, Any

import anyio

from asgi_resilience._deadline import deadline_scope
from asgi_resilience.policies._breaker import Result

if TYPE_CHECKING:
    from asgi_resilience.policies._breaking import Breaker
    from asgi_resilience.policies._bulkhead import Bulkhead
    from asgi_resilience.policies._retrying import Retrying
    from asgi_resilience.policies._time_limit import TimeLimit

__all__ = ["AsyncGenFn", "REFUSALS", "bind_breaker", "bind_bulkhead", "bind_retry", "bind_time_limit"]

AsyncGenFn = Callable[..., AsyncIterator[Any]]

REFUSALS = {
    "hedge": "hedging races whole calls, and the items of two streams cannot be raced or merged",
    "fallback": (
        "a fallback answers a call with a value, and a stream may fail after it handed out items; "
        "catch the error where the stream is iterated"
    ),
}


async def _close(stream: AsyncIterator[Any]) -> None:
    close = getattr(stream, "aclose", None)
    if close is not None:
        await close()


def bind_retry(policy: Retrying, inner: AsyncGenFn) -> AsyncGenFn:
    async def gen(*args: Any, **kwargs: Any) -> AsyncGenerator[Any, None]:
        started = policy.begin()
        attempt = 0
        while True:
            attempt += 1
            stream = inner(*args, **kwargs)
            try:
                first = await stream.__anext__()
            except StopAsyncIteration:
                return
            except Exception as exc:
                await _close(stream)
                delay = policy.delay_after(exc, attempt, started)
                if delay is None:
                    raise
                if delay > 0:
                    await anyio.sleep(delay)
                continue
            break
        try:
            yield first
            async for item in stream:
                yield item
        finally:
            await _close(stream)

    return gen


def bind_time_limit(policy: TimeLimit, inner: AsyncGenFn) -> AsyncGenFn:
    limit = policy.seconds

    async def gen(*args: Any, **kwargs: Any) -> AsyncGenerator[Any, None]:
        deadline = time.monotonic() + limit
        stream = inner(*args, **kwargs)
        try:
            while True:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise policy._expired()
                with deadline_scope(deadline), anyio.move_on_after(left) as scope:
                    try:
                        item = await stream.__anext__()
                    except StopAsyncIteration:
                        return
                if scope.cancelled_caught:
                    raise policy._expired()
                yield item
        finally:
            await _close(stream)

    return gen


def bind_bulkhead(policy: Bulkhead, inner: AsyncGenFn) -> AsyncGenFn:
    async def gen(*args: Any, **kwargs: Any) -> AsyncGenerator[Any, None]:
        await policy.acquire()
        try:
            stream = inner(*args, **kwargs)
            try:
                async for item in stream:
                    yield item
            finally:
                await _close(stream)
        finally:
            policy.release()

    return gen


def bind_breaker(policy: Breaker, inner: AsyncGenFn) -> AsyncGenFn:
    breaker = policy.breaker
    clock = policy.clock

    shared = policy.shared_state

    async def gen(*args: Any, **kwargs: Any) -> AsyncGenerator[Any, None]:
        if shared is not None:
            await policy.async_shared_check()
        admission = breaker.admit(clock())
        if admission.transitions:
            policy.report(admission.transitions)
            if shared is not None:
                await policy.async_publish(admission.transitions, clock())
        if not admission.allowed:
            raise policy.refusal(admission)
        started = clock()
        first: float | None = None  # seconds to the first item: what "slow" is measured on
        error: BaseException | None = None
        stream = inner(*args, **kwargs)
        try:
            while True:
                try:
                    item = await stream.__anext__()
                except StopAsyncIteration:
                    break
                except BaseException as exc:
                    error = exc
                    raise
                if first is None:
                    first = clock() - started
                yield item
        finally:
            duration = first if first is not None else clock() - started
            # an error from the generator counts by on=; the end, or the consumer stopping early, is a success
            outcome = policy.classify(error) if error is not None else Result.SUCCESS
            transitions = policy.record(admission, outcome, started, duration=duration)
            try:
                await _close(stream)
            finally:
                if transitions and shared is not None:
                    await policy.async_publish(transitions, started)

    return gen

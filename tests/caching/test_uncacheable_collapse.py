"""Request collapsing never serialises an uncacheable URL (hit-for-miss), in one process or across several."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import anyio
import pytest

from asgi_resilience import Cache, CacheMiddleware
from asgi_resilience.testing import ManualClock
from asgi_resilience.types import Receive, Scope, Send

from .conftest import OFF, T0, get, status_of


class GatedApp:
    """Sends its start at once, then holds its body until ``release`` is set; counts concurrent calls."""

    def __init__(self, cache_control: str = "no-store", expected: int = 1) -> None:
        self.cache_control = cache_control
        self.expected = expected
        self.all_in = anyio.Event()
        self.release = anyio.Event()
        self.calls = 0
        self.active = 0
        self.max_active = 0
        self.started = anyio.Event()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        self.calls += 1
        if self.calls >= self.expected:
            self.all_in.set()
        self.active += 1
        self.max_active = max(self.max_active, self.active)
        try:
            headers = [(b"cache-control", self.cache_control.encode())] if self.cache_control else []
            await send({"type": "http.response.start", "status": 200, "headers": headers})
            self.started.set()
            await self.release.wait()
            await send({"type": "http.response.body", "body": b"body"})
        finally:
            self.active -= 1


@pytest.mark.parametrize("cache_control", ["no-store", "private", ""])
async def test_waiters_are_released_when_the_leader_response_cannot_be_stored(cache_control: str) -> None:
    app = GatedApp(cache_control, expected=10)
    mw = CacheMiddleware(app, telemetry=OFF, lock_timeout=30)
    results: list[Any] = []

    async def one() -> None:
        results.append(await get(mw))

    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            for _ in range(10):
                tg.start_soon(one)
            # every request reaches the app while the first one is still sending its body
            await app.all_in.wait()
            app.release.set()
    assert app.max_active == 10
    assert [h.status for h in results] == [200] * 10
    assert all("stored" not in status_of(h) for h in results)


async def test_a_key_that_was_not_storable_is_not_collapsed_then_stored_again() -> None:
    app = GatedApp("no-store")
    clock = ManualClock(T0)
    mw = CacheMiddleware(app, telemetry=OFF, clock=clock)
    app.release.set()
    await get(mw)
    assert mw._is_passing(next(iter(mw._passing)))  # hit-for-miss remembered
    app.cache_control = "max-age=60"
    h = await get(mw)
    assert "stored" in status_of(h)
    assert mw._passing == {}  # a stored response ends the hit-for-miss period
    assert status_of(await get(mw)).startswith("asgi-resilience; hit")


@pytest.fixture
async def caches() -> AsyncIterator[list[Cache]]:
    made: list[Cache] = []
    yield made
    for cache in made:
        await cache.aclose()


@pytest.mark.redis
async def test_other_processes_stop_waiting_when_the_lease_holder_cannot_store(
    redis_url: str, caches: list[Cache]
) -> None:
    """Two middlewares on one Redis stand for two workers: B must not wait lock_timeout behind A."""
    app_a, app_b = GatedApp("no-store"), GatedApp("no-store")
    app_b.release.set()
    cache_a = Cache(redis_url, telemetry=OFF, backend_timeout=2.0)
    cache_b = Cache(redis_url, telemetry=OFF, backend_timeout=2.0)
    caches += [cache_a, cache_b]
    mw_a = CacheMiddleware(app_a, cache=cache_a, telemetry=OFF, lock_timeout=30)
    mw_b = CacheMiddleware(app_b, cache=cache_b, telemetry=OFF, lock_timeout=30)
    done: list[Any] = []

    async def first() -> None:
        done.append(await get(mw_a))

    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            tg.start_soon(first)
            await app_a.started.wait()  # A holds the lease and has sent its (unstorable) start
            h = await get(mw_b)  # B reaches its own app while A's body is still pending
            assert h.status == 200 and app_b.calls == 1
            app_a.release.set()
    assert done[0].status == 200


@pytest.mark.redis
async def test_hit_for_pass_skips_the_backend_until_it_expires(redis_url: str, caches: list[Cache]) -> None:
    from .test_redis import commands

    app = GatedApp("no-store")
    app.release.set()
    clock = ManualClock(T0)
    cache = Cache(redis_url, telemetry=OFF, backend_timeout=2.0, clock=clock)
    caches.append(cache)
    mw = CacheMiddleware(app, cache=cache, telemetry=OFF)
    await get(mw)
    before = commands(redis_url)
    for _ in range(5):
        assert (await get(mw)).status == 200
    assert commands(redis_url) == before  # no lookup, no lease while the URL is known uncacheable
    assert app.calls == 6
    clock.advance(11)
    await get(mw)
    assert commands(redis_url) > before  # looked up again once the hit-for-pass period ended

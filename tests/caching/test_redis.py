"""The cache on a real redis-server: round trips, L1 + pub/sub, purges across processes, leases, outages."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import anyio
import pytest
import redis

from asgi_resilience import Cache, CacheMiddleware, Telemetry
from asgi_resilience.testing import ASGIHarness, ManualClock, RedisServer, redis_command_counts

from .conftest import OFF, T0, Origin, get, status_of

pytestmark = pytest.mark.redis


def commands(url: str) -> int:
    """Commands the server executed so far, not counting this reader's own connection set-up and INFO."""
    return sum(redis_command_counts(url).values())


@pytest.fixture
async def caches() -> AsyncIterator[list[Cache]]:
    made: list[Cache] = []
    yield made
    for cache in made:
        await cache.aclose()


def new_cache(made: list[Cache], url: str, **kwargs: Any) -> Cache:
    kwargs.setdefault("clock", ManualClock(T0))
    kwargs.setdefault("telemetry", OFF)
    kwargs.setdefault("backend_timeout", 2.0)  # a loaded CI machine must not turn these tests into outage tests
    cache = Cache(url, **kwargs)
    made.append(cache)
    return cache


async def test_hit_is_one_round_trip_and_l1_hit_is_zero(redis_url: str, caches: list[Cache]) -> None:
    origin = Origin()
    mw = CacheMiddleware(origin, cache=new_cache(caches, redis_url), telemetry=OFF)
    await get(mw)
    before = commands(redis_url)
    for _ in range(10):
        assert status_of(await get(mw)).startswith("asgi-resilience; hit")
    assert commands(redis_url) - before == 10
    assert origin.calls == 1

    l1 = CacheMiddleware(origin, cache=new_cache(caches, redis_url, l1_entries=100), telemetry=OFF)
    await get(l1)  # fills the L1 from Redis
    before = commands(redis_url)
    for _ in range(10):
        assert status_of(await get(l1)).startswith("asgi-resilience; hit")
    assert commands(redis_url) == before
    assert origin.calls == 1


async def test_entries_are_msgpack_with_ttl_and_indexes(redis_url: str, caches: list[Cache]) -> None:
    origin = Origin(headers=[("cache-control", "max-age=60"), ("surrogate-key", "a")])
    mw = CacheMiddleware(origin, cache=new_cache(caches, redis_url), telemetry=OFF)
    await get(mw, "/x?b=1&a=2")
    client = redis.Redis.from_url(redis_url)
    try:
        keys = sorted(k.decode() for k in client.keys("*"))
        assert keys == [
            "asgi-resilience:cache:e:{http://testserver/x?a=2&b=1}",  # {...}: the Redis Cluster hash tag
            "asgi-resilience:cache:i:{/x?a=2&b=1}",
            "asgi-resilience:cache:t:{a}",
            "asgi-resilience:cache:t:{uri testserver/x?a=2&b=1}",  # this host's copies, for invalidation
        ]
        assert client.smembers(keys[1]) == {b"http://testserver/x?a=2&b=1"}  # index sets hold cache keys
        ttl = client.pttl(keys[0])
        assert 0 < ttl <= 120_000
        assert not client.get(keys[0]).startswith(b"\x80")  # not a pickle
        client.set(keys[0], b"\x80\x04garbage")  # a foreign value is a miss, never a 500
    finally:
        client.close()
    h = await get(mw, "/x?a=2&b=1")
    assert h.status == 200 and origin.calls == 2


async def test_vary_soft_purge_and_clear_on_redis(redis_url: str, caches: list[Cache]) -> None:
    def respond(scope: Any) -> tuple[int, list[tuple[str, str]], list[bytes]]:
        lang = dict(scope["headers"]).get(b"accept-language", b"-")
        headers = [("cache-control", "max-age=60, stale-if-error=60"), ("vary", "accept-language"), ("cache-tag", "t")]
        return 200, headers, [lang]

    origin = Origin(respond=respond)
    mw = CacheMiddleware(origin, cache=new_cache(caches, redis_url), telemetry=OFF)
    assert (await get(mw, headers=[("accept-language", "en")])).body == b"en"
    assert (await get(mw, headers=[("accept-language", "fr")])).body == b"fr"
    assert (await get(mw, headers=[("accept-language", "en")])).body == b"en"
    assert origin.calls == 2
    assert await mw.purge_tags("t", soft=True) == 2
    origin.respond = None
    origin.status = 500
    stale = await get(mw, headers=[("accept-language", "fr")])
    assert stale.body == b"fr" and "fwd-status=500" in status_of(stale)
    await mw.clear()
    client = redis.Redis.from_url(redis_url)
    try:
        assert client.dbsize() == 0
    finally:
        client.close()


async def wait_until(predicate: Callable[[], bool], within: float = 1.0) -> float:
    start = time.monotonic()
    while not predicate():
        if time.monotonic() - start > within:
            raise AssertionError(f"condition not met within {within} s")
        await anyio.sleep(0.01)
    return time.monotonic() - start


async def test_purge_reaches_the_other_instance_l1_within_one_second(redis_url: str, caches: list[Cache]) -> None:
    origin = Origin(headers=[("cache-control", "max-age=600"), ("surrogate-key", "p")])
    a = CacheMiddleware(origin, cache=new_cache(caches, redis_url, l1_entries=100), telemetry=OFF)
    b = CacheMiddleware(origin, cache=new_cache(caches, redis_url, l1_entries=100), telemetry=OFF)
    await get(a, "/p")
    await get(b, "/p")
    await get(a, "/q")
    await get(b, "/q")
    assert origin.calls == 2
    l1_b = b.cache.l1
    assert l1_b is not None and l1_b.peek("http://testserver/p") is not None
    await anyio.sleep(0.05)  # let b's listener subscribe
    assert await a.purge("/p") == 1
    await wait_until(lambda: l1_b.peek("http://testserver/p") is None)
    await get(b, "/p")
    assert origin.calls == 3
    await a.purge_tags("p")
    await wait_until(lambda: l1_b.peek("http://testserver/q") is None)
    await get(b, "/q")
    assert origin.calls == 4


async def test_purge_from_another_process(redis_url: str, caches: list[Cache]) -> None:
    """A real second process purges a tag; this process' L1 drops the entry within one second."""
    origin = Origin(headers=[("cache-control", "max-age=600"), ("cache-tag", "shared")])
    mw = CacheMiddleware(origin, cache=new_cache(caches, redis_url, l1_entries=100, clock=time.time), telemetry=OFF)
    await get(mw)
    await get(mw)
    l1 = mw.cache.l1
    assert l1 is not None and l1.peek("http://testserver/") is not None and origin.calls == 1
    await anyio.sleep(0.05)
    code = textwrap.dedent(
        f"""
        import asyncio
        from asgi_resilience import Cache

        async def main():
            cache = Cache({redis_url!r}, telemetry=False)
            print(await cache.purge_tags("shared"))
            await cache.aclose()

        asyncio.run(main())
        """
    )
    result = await anyio.to_thread.run_sync(
        lambda: subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30)
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "1"
    await wait_until(lambda: l1.peek("http://testserver/") is None)
    await get(mw)
    assert origin.calls == 2


async def test_lease_collapses_misses_across_instances(redis_url: str, caches: list[Cache]) -> None:
    """Two middlewares with their own Cache objects (as two workers would have) make one app call."""
    origin = Origin(delay=0.1)
    workers = [CacheMiddleware(origin, cache=new_cache(caches, redis_url), telemetry=OFF) for _ in range(2)]
    results: list[ASGIHarness] = []

    async def one(mw: CacheMiddleware) -> None:
        results.append(await get(mw))

    async with anyio.create_task_group() as tg:
        for i in range(40):
            tg.start_soon(one, workers[i % 2])
    assert origin.calls == 1
    assert len(results) == 40 and all(r.body == b"hello" for r in results)
    client = redis.Redis.from_url(redis_url)
    try:
        assert client.keys("*:l:*") == []  # the lease was released
    finally:
        client.close()


async def test_redis_killed_mid_run_serves_from_the_app(redis_factory: Callable[..., RedisServer]) -> None:
    server = redis_factory()
    clock = ManualClock(T0)
    tel = Telemetry()
    cache = Cache(server.url, clock=clock, telemetry=tel, backend_timeout=0.2)
    origin = Origin()
    mw = CacheMiddleware(origin, cache=cache, telemetry=tel)
    try:
        await get(mw)
        assert status_of(await get(mw)).startswith("asgi-resilience; hit")
        server.kill()
        for _ in range(5):
            h = await get(mw)
            assert (h.status, h.body) == (200, b"hello")
            assert "fwd=miss" in status_of(h)
        assert origin.calls == 6
        errors = tel.instrument("asgi_resilience.cache.errors").totals
        assert sum(errors.values()) >= 5
        assert tel.snapshot()["components"]["cache"]["backend_down"] is True
        server.start()
        clock.advance(2)  # past the backoff
        await get(mw)
        assert status_of(await get(mw)).startswith("asgi-resilience; hit")
        assert origin.calls == 7
        # purges during an outage do not raise either
        server.kill()
        clock.advance(2)
        assert await cache.purge("/") == 0
        assert await cache.purge_tags("x") == 0
        await cache.clear()
    finally:
        await cache.aclose()


async def test_slow_redis_times_out_as_a_miss(redis_factory: Callable[..., RedisServer]) -> None:
    server = redis_factory("--enable-debug-command", "yes")
    clock = ManualClock(T0)
    cache = Cache(server.url, clock=clock, telemetry=OFF, backend_timeout=0.1)
    origin = Origin()
    mw = CacheMiddleware(origin, cache=cache, telemetry=OFF)
    blocker = redis.Redis.from_url(server.url)
    try:
        await get(mw)

        async def block() -> None:
            await anyio.to_thread.run_sync(lambda: blocker.execute_command("DEBUG", "SLEEP", "0.6"))

        async with anyio.create_task_group() as tg:
            tg.start_soon(block)
            await anyio.sleep(0.1)
            start = time.monotonic()
            h = await get(mw)
            elapsed = time.monotonic() - start
        assert h.status == 200 and origin.calls == 2
        assert elapsed < 0.45  # one backend timeout, then the app; the write is skipped (backoff)
    finally:
        blocker.close()
        await cache.aclose()


async def test_redis_client_instance_and_aclose_keep_it_open(redis_url: str) -> None:
    import redis.asyncio as aredis

    client = aredis.Redis.from_url(redis_url)
    cache = Cache(client, telemetry=OFF)
    mw = CacheMiddleware(Origin(), cache=cache, telemetry=OFF)
    await get(mw)
    await cache.aclose()
    assert await client.ping()
    await client.aclose()


async def test_l1_entry_never_outlives_its_freshness(redis_url: str, caches: list[Cache]) -> None:
    clock = ManualClock(T0)
    origin = Origin(headers=[("cache-control", "max-age=10, stale-while-revalidate=60"), ("cache-tag", "t")])
    cache = new_cache(caches, redis_url, l1_entries=10, clock=clock)
    mw = CacheMiddleware(origin, cache=cache, telemetry=OFF)
    await get(mw)
    assert cache.l1 is not None and cache.l1.peek("http://testserver/") is not None
    clock.advance(10)
    assert cache.l1.peek("http://testserver/") is None  # stale: only Redis still has it
    stale = await get(mw)
    assert "fwd=stale" in status_of(stale) and origin.calls == 2  # served stale, refreshed once
    assert cache.l1.peek("http://testserver/") is not None
    # purges and clear go through the L1 as well
    assert await cache.purge_tags("t", soft=True) == 1
    assert cache.l1.peek("http://testserver/") is None
    await get(mw)
    await cache.clear()
    assert len(cache.l1) == 0
    await get(mw)
    assert origin.calls == 4


async def test_l1_is_dropped_when_the_invalidation_channel_was_lost(redis_factory: Callable[..., RedisServer]) -> None:
    server = redis_factory()
    clock = ManualClock(T0)
    cache = Cache(server.url, l1_entries=10, telemetry=OFF, backend_timeout=0.5, clock=clock)
    origin = Origin(headers=[("cache-control", "max-age=600")])
    mw = CacheMiddleware(origin, cache=cache, telemetry=OFF)
    try:
        await get(mw)
        l1 = cache.l1
        assert l1 is not None and len(l1) == 1
        await anyio.sleep(0.05)
        server.kill()  # purges published meanwhile would be lost: the L1 must not keep serving
        await wait_until(lambda: len(l1) == 0, within=3.0)
        server.start()
        await get(mw)  # a dead pooled connection may fail once: a miss, and the backend is skipped for 1 s
        clock.advance(2)
        await get(mw)
        assert status_of(await get(mw)).startswith("asgi-resilience; hit")
        assert origin.calls <= 3
    finally:
        await cache.aclose()


async def test_stale_while_revalidate_refreshes_once_across_instances(redis_url: str, caches: list[Cache]) -> None:
    clock = ManualClock(T0)
    origin = Origin(headers=[("cache-control", "max-age=10, stale-while-revalidate=60")])
    workers = [
        CacheMiddleware(origin, cache=new_cache(caches, redis_url, clock=clock), telemetry=OFF) for _ in range(2)
    ]
    await get(workers[0])
    clock.advance(20)
    origin.delay = 0.1
    results: list[ASGIHarness] = []

    async def one(mw: CacheMiddleware) -> None:
        results.append(await get(mw))

    async with anyio.create_task_group() as tg:
        for i in range(10):
            tg.start_soon(one, workers[i % 2])
    assert origin.calls == 2  # the first miss and one refresh for both workers
    assert all("fwd=stale" in status_of(r) for r in results)

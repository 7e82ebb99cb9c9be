"""Redis cost of the cache storage: a hit from Redis is one command, a miss that stores is two round
trips (the lookup takes the stampede lease; one script stores the value, its URL and tag indexes and
gives the lease back). Counted on a spawned redis-server: commands sent by the client and INFO commandstats."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest

from asgi_resilience import Cache, CacheMiddleware
from asgi_resilience.caching._policy import Entry
from asgi_resilience.testing import ManualClock, redis_command_counts

from .conftest import OFF, T0, Origin, get

pytestmark = pytest.mark.redis


@pytest.fixture
async def cache(redis_url: str) -> AsyncIterator[Cache]:
    made = Cache(redis_url, clock=ManualClock(T0), telemetry=OFF, backend_timeout=2.0)
    yield made
    await made.aclose()


def record_sent(cache: Cache) -> list[str]:
    """Every command the cache's client sends from now on (one entry per round trip: no pipelines here)."""
    store: Any = cache.l1.l2 if cache.l1 is not None else cache.store
    client: Any = store._r
    sent: list[str] = []
    original = client.execute_command

    async def counting(*args: Any, **kwargs: Any) -> Any:
        if str(args[0]).upper() != "COMMAND":  # the L1 listener asking once whether SSUBSCRIBE exists
            sent.append(str(args[0]).lower())
        return await original(*args, **kwargs)

    client.execute_command = counting
    return sent


def entry(body: bytes) -> Entry:
    return Entry(
        status=200,
        headers=((b"cache-control", b"max-age=60"),),
        body=body,
        request_time=T0,
        response_time=T0,
        initial_age=0.0,
        lifetime=60.0,
        swr=0.0,
        sie=0.0,
        must_revalidate=False,
        shared_auth=False,
        etag=None,
        etag_generated=False,
        last_modified=None,
    )


async def test_miss_that_stores_is_two_round_trips_and_a_hit_one_command(redis_url: str, cache: Cache) -> None:
    """The storage API: lookup (SET NX GET) takes the lease on a miss; set(release=) gives it back."""
    await cache.set("warm-up", entry(b"w"), 60, index="/w", tags=("t",))  # loads the store script once
    sent = record_sent(cache)
    before = redis_command_counts(redis_url)
    for i in range(10):
        found = await cache.lookup(f"k{i}", lease=5.0)
        assert found.value is None and found.token is not None and not found.leased
        other = await cache.lookup(f"k{i}", lease=5.0)  # another process: the fill is in progress
        assert other.value is None and other.token is None and other.leased
        await cache.set(f"k{i}", entry(b"v%d" % i), 60, index=f"/k{i}", tags=("products", "list"), release=found.token)
    assert sent == ["set", "set", "evalsha"] * 10  # per miss: lookup + lease, one script (value, indexes, lease)
    after = redis_command_counts(redis_url)
    assert after["evalsha"] - before.get("evalsha", 0) == 10
    assert set(k for k in after if after[k] != before.get(k, 0)) <= {"set", "evalsha", "get", "sadd", "pttl", "pexpire"}
    client: Any = cache.store._r  # type: ignore[attr-defined]
    assert await client.keys("*:l:*") == []

    sent.clear()
    before = redis_command_counts(redis_url)
    for i in range(10):
        found = await cache.lookup(f"k{i}", lease=5.0)
        assert isinstance(found.value, Entry) and found.value.body == b"v%d" % i and found.token is None
    assert sent == ["set"] * 10  # the value comes back from SET NX GET: one command, no lease left behind
    assert sum(redis_command_counts(redis_url).values()) - sum(before.values()) == 10


async def test_not_storable_response_gives_the_lease_back(redis_url: str, cache: Cache) -> None:
    origin = Origin(headers=[("cache-control", "no-store")])
    other = Cache(redis_url, clock=ManualClock(T0), telemetry=OFF, backend_timeout=2.0)
    try:
        a = CacheMiddleware(origin, cache=cache, telemetry=OFF)
        b = CacheMiddleware(origin, cache=other, telemetry=OFF)
        await get(a, "/private")
        client: Any = cache.store._r  # type: ignore[attr-defined]
        assert await client.keys("*") == []  # the placeholder lease was deleted, nothing stored
        h = await get(b, "/private")  # another process is not kept waiting for a lease
        assert h.status == 200 and origin.calls == 2
    finally:
        await other.aclose()


async def test_servers_without_set_nx_get_fall_back_to_get_then_lease(redis_url: str, cache: Cache) -> None:
    store: Any = cache.store
    store._set_get = False  # as after Redis < 7.0 refused NX with GET
    origin = Origin(delay=0.05)
    other = Cache(redis_url, clock=ManualClock(T0), telemetry=OFF, backend_timeout=2.0)
    other.store._set_get = False  # type: ignore[attr-defined]
    try:
        import anyio

        workers = [CacheMiddleware(origin, cache=c, telemetry=OFF) for c in (cache, other)]
        async with anyio.create_task_group() as tg:
            for i in range(10):
                tg.start_soon(get, workers[i % 2], "/slow")
        assert origin.calls == 1  # still one app call across both
        sent = record_sent(cache)
        assert (await cache.lookup("/other", lease=5.0)).token is None  # no lease taken by the lookup
        assert sent == ["get"]
    finally:
        await other.aclose()

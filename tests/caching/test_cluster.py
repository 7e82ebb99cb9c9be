"""The cache on the 3-node Redis Cluster the tests start: hash-tagged keys, purges across slots,
leases across instances, and L1 invalidation through sharded pub/sub in under a second."""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

import anyio
import pytest
import redis

from asgi_resilience import Cache, CacheMiddleware
from asgi_resilience.testing import ASGIHarness, ManualClock

from .conftest import OFF, T0, Origin, get, status_of

pytestmark = pytest.mark.redis


@pytest.fixture
async def caches() -> AsyncIterator[list[Cache]]:
    made: list[Cache] = []
    yield made
    for cache in made:
        await cache.aclose()


@pytest.fixture
def new_cache(redis_cluster: str, caches: list[Cache]) -> Callable[..., Cache]:
    namespace = f"c-{uuid.uuid4().hex[:8]}"  # one session-wide cluster: every test has its own keys

    def make(**kwargs: Any) -> Cache:
        kwargs.setdefault("clock", ManualClock(T0))
        kwargs.setdefault("telemetry", OFF)
        kwargs.setdefault("backend_timeout", 5.0)
        cache = Cache(redis_cluster, namespace=namespace, **kwargs)
        caches.append(cache)
        return cache

    return make


def cluster_nodes(url: str) -> list[redis.Redis]:
    port = int(url.rsplit(":", 1)[1].split("/")[0])
    seed = redis.Redis(port=port)
    try:
        ports = [int(p) for p in (n.split(":")[1].split("@")[0] for n in seed.cluster("nodes"))]
    finally:
        seed.close()
    return [redis.Redis(port=p) for p in ports]


def keys_on(nodes: list[redis.Redis], pattern: str) -> dict[int, list[bytes]]:
    return {i: node.keys(pattern) for i, node in enumerate(nodes)}


async def test_store_hit_and_purges_across_slots(redis_cluster: str, new_cache: Callable[..., Cache]) -> None:
    cache = new_cache()
    ns = cache.store._ns  # type: ignore[attr-defined]

    def respond(scope: Any) -> tuple[int, list[tuple[str, str]], list[bytes]]:
        n = int(scope["query_string"].decode().split("=")[1])
        tags = [("cache-tag", "all"), ("cache-tag", f"group-{n % 3}")]
        return 200, [("cache-control", "max-age=60, stale-if-error=60"), *tags], [b"item %d" % n]

    origin = Origin(respond=respond)
    mw = CacheMiddleware(origin, cache=cache, telemetry=OFF)
    for n in range(30):
        assert "stored" in status_of(await get(mw, f"/items?n={n}"))
    for n in range(30):
        h = await get(mw, f"/items?n={n}")
        assert status_of(h).startswith("asgi-resilience; hit") and h.body == b"item %d" % n
    assert origin.calls == 30
    nodes = cluster_nodes(redis_cluster)
    try:
        spread = keys_on(nodes, f"{ns}:e:*")
        assert sum(len(v) for v in spread.values()) == 30
        assert sum(1 for v in spread.values() if v) >= 2  # the entries are sharded, not in one slot
        # one URL purged; a soft tag purge keeps values for stale-if-error; a hard one deletes them
        assert await cache.purge("/items?n=4") == 1
        assert await cache.purge_tags("group-1", soft=True) == 10
        origin.respond = None
        origin.status = 500
        stale = await get(mw, "/items?n=7")  # group 1, soft-purged: revalidated, the 500 answered from stale
        assert stale.body == b"item 7" and "fwd-status=500" in status_of(stale)
        assert await cache.purge_tags("all") == 30  # the keys indexed under the tag (one already purged by URL)
        assert sum(len(v) for v in keys_on(nodes, f"{ns}:e:*").values()) == 0
        origin.status = 200
        await cache.clear()
        assert sum(len(v) for v in keys_on(nodes, f"{ns}:*").values()) == 0
    finally:
        for node in nodes:
            node.close()


async def test_lease_collapses_misses_across_instances(new_cache: Callable[..., Cache]) -> None:
    origin = Origin(delay=0.2)
    workers = [CacheMiddleware(origin, cache=new_cache(), telemetry=OFF) for _ in range(2)]
    results: list[ASGIHarness] = []

    async def one(mw: CacheMiddleware) -> None:
        results.append(await get(mw, "/stampede"))

    async with anyio.create_task_group() as tg:
        for i in range(20):
            tg.start_soon(one, workers[i % 2])
    assert origin.calls == 1
    assert len(results) == 20 and all(r.body == b"hello" for r in results)


async def wait_until(predicate: Callable[[], bool], within: float = 1.0) -> float:
    start = time.monotonic()
    while not predicate():
        if time.monotonic() - start > within:
            raise AssertionError(f"condition not met within {within} s")
        await anyio.sleep(0.01)
    return time.monotonic() - start


@pytest.mark.parametrize("sharded", [True, False], ids=["spublish", "classic-publish"])
async def test_l1_invalidation_across_instances_within_one_second(
    redis_cluster: str, new_cache: Callable[..., Cache], sharded: bool
) -> None:
    origin = Origin(headers=[("cache-control", "max-age=600"), ("cache-tag", "p")])
    a = new_cache(l1_entries=100)
    b = new_cache(l1_entries=100)
    if not sharded:  # as on a server older than Redis 7.0
        a.l1.l2._sharded = False  # type: ignore[union-attr]
        b.l1.l2._sharded = False  # type: ignore[union-attr]
    mw_a = CacheMiddleware(origin, cache=a, telemetry=OFF)
    mw_b = CacheMiddleware(origin, cache=b, telemetry=OFF)
    await get(mw_a, "/p")
    await get(mw_b, "/p")
    l1_b = b.l1
    assert l1_b is not None and l1_b.peek("http://testserver/p") is not None and origin.calls == 1
    assert b.l1.l2._sharded is sharded  # type: ignore[union-attr]
    await anyio.sleep(0.1)  # let b's listener subscribe
    nodes = cluster_nodes(redis_cluster)
    try:
        before = sum(int(n.info("commandstats").get("cmdstat_spublish", {}).get("calls", 0)) for n in nodes)
        assert await a.purge_tags("p") == 1
        took = await wait_until(lambda: l1_b.peek("http://testserver/p") is None)
        assert took < 1.0
        after = sum(int(n.info("commandstats").get("cmdstat_spublish", {}).get("calls", 0)) for n in nodes)
        assert (after - before == 1) is sharded
    finally:
        for node in nodes:
            node.close()
    await get(mw_b, "/p")
    assert origin.calls == 2


async def test_long_and_unusual_keys_are_hashed_into_a_tag(new_cache: Callable[..., Cache]) -> None:
    origin = Origin(headers=[("cache-control", "max-age=60"), ("cache-tag", "ünïcode {tag}")])
    cache = new_cache()
    mw = CacheMiddleware(origin, cache=cache, telemetry=OFF)
    long_path = "/" + "x" * 300 + "/{braces}"
    await get(mw, long_path)
    assert status_of(await get(mw, long_path)).startswith("asgi-resilience; hit")
    assert await cache.purge_tags("ünïcode {tag}") == 1
    assert "fwd=miss" in status_of(await get(mw, long_path))
    assert await cache.purge(long_path) == 1


def test_the_cache_on_a_cluster_refuses_a_redis_py_that_cannot_subscribe(
    redis_cluster: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Older redis-py asyncio cluster clients cannot use the invalidation channel: said at construction."""
    import importlib.metadata

    from asgi_resilience import ConfigurationError

    monkeypatch.setattr(importlib.metadata, "version", lambda name: "7.4.0")
    with pytest.raises(ConfigurationError, match=r"redis-py >= 8\.0 \(installed: 7\.4\.0\)"):
        Cache(redis_cluster, namespace="old-client")

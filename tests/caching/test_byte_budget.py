"""In-process stores (the memory backend, the L1) are bounded by bytes as well as entries.

Bytes are counted from what is stored (``footprint``), never from the process RSS.
"""

from __future__ import annotations

import gc
import tracemalloc
from typing import Any

import pytest

from asgi_resilience import Cache, CacheMiddleware, ConfigurationError, Telemetry
from asgi_resilience.caching._policy import Entry, VaryMarker
from asgi_resilience.caching._storage import BoundedLRU, footprint
from asgi_resilience.testing import ManualClock

from .conftest import OFF, T0, Origin, get, status_of

KIB = 1024
MIB = 1024 * KIB


def entry(body: bytes, *, index: str = "/", headers: int = 3) -> Entry:
    return Entry(
        status=200,
        headers=tuple((f"x-h{i}".encode(), b"v" * 20) for i in range(headers)),
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
        index=index,
    )


async def test_junk_query_strings_keep_the_memory_backend_under_its_byte_budget() -> None:
    """600 distinct URLs of 200 KiB each (117 MiB of bodies) against a 4 MiB budget."""
    origin = Origin(chunks=(b"x" * (200 * KIB),))
    tel = Telemetry()
    mw = CacheMiddleware(origin, max_bytes=4 * MIB, clock=ManualClock(T0), telemetry=tel)
    memory = mw.cache.memory
    assert memory is not None
    for i in range(600):
        h = await get(mw, f"/search?junk={i}")
        assert h.status == 200 and "stored" in status_of(h)
        assert memory.bytes <= 4 * MIB
    assert origin.calls == 600
    assert 10 <= len(memory) <= 20  # about 4 MiB / 200 KiB: the budget, not the 10,000 entries, bounds it
    # the count is the sum of what is stored, and telemetry and the dashboard snapshot report it
    assert memory.bytes == sum(footprint(k, v) for k, (v, _, _) in memory.lru._data.items())
    usage = tel.instrument("asgi_resilience.cache.memory.usage").totals
    assert usage == {(("tier", "memory"),): memory.bytes}
    snap = tel.snapshot()["components"]["cache"]
    assert snap["memory_bytes"] == memory.bytes and snap["memory_max_bytes"] == 4 * MIB
    # least recently used went first: the newest URLs are still hits, the first ones are not
    assert status_of(await get(mw, "/search?junk=599")).startswith("asgi-resilience; hit")
    assert "fwd=miss" in status_of(await get(mw, "/search?junk=0"))
    # evicted keys left the purge index too
    assert await mw.purge("/search?junk=1") == 0
    assert await mw.purge("/search?junk=599") == 1
    await mw.clear()
    assert memory.bytes == 0 and tel.instrument("asgi_resilience.cache.memory.usage").totals == {
        (("tier", "memory"),): 0
    }


async def test_default_byte_budget_is_small_container_safe() -> None:
    cache = Cache(telemetry=OFF)
    assert cache.memory is not None and cache.memory.lru.max_bytes == 32 * MIB
    origin = Origin(chunks=(b"y" * MIB,))  # the largest body stored by default (max_body_size)
    mw = CacheMiddleware(origin, cache=cache, telemetry=OFF)
    for i in range(60):
        await get(mw, f"/?q={i}")
    assert cache.memory.bytes <= 32 * MIB and len(cache.memory) < 32


def test_lru_keeps_recently_used_values_and_refuses_a_value_bigger_than_the_budget() -> None:
    clock = ManualClock(T0)
    evicted: list[str] = []
    lru = BoundedLRU(max_entries=100, max_bytes=12 * KIB, clock=clock, on_evict=evicted.append)
    for name in "abcd":
        assert lru.put(name, entry(b"." * 2000), T0 + 60)
    assert lru.get("a") is not None  # a is now the most recently used
    assert lru.put("e", entry(b"." * 2000), T0 + 60)
    assert evicted == ["b"] and "a" in lru and lru.bytes <= 12 * KIB
    before = lru.bytes
    assert not lru.put("huge", entry(b"." * 20 * KIB), T0 + 60)  # alone larger than the budget
    assert "huge" not in lru and lru.bytes == before and len(lru) == 4  # nothing else was evicted for it
    # replacing a value re-counts its size; an expired value leaves on read
    lru.put("a", entry(b"." * 10), T0 + 1)
    assert lru.bytes == before - 1990
    clock.advance(2)
    assert lru.get("a") is None and "a" not in lru
    lru.clear()
    assert lru.bytes == 0 and len(lru) == 0


def test_entry_count_still_bounds() -> None:
    lru = BoundedLRU(max_entries=3, max_bytes=MIB, clock=ManualClock(T0))
    for i in range(10):
        lru.put(str(i), VaryMarker(names=(b"accept",), nonce="n"), T0 + 60)
    assert len(lru) == 3 and lru.bytes == 3 * footprint("0", VaryMarker(names=(b"accept",), nonce="n"))


def test_footprint_tracks_the_memory_python_really_allocates() -> None:
    """The estimate is neither far below nor far above what the stored objects take (tracemalloc)."""
    lru = BoundedLRU(max_entries=10_000, max_bytes=1 << 40, clock=ManualClock(T0))
    for size in (0, 100, 5000):
        gc.collect()
        tracemalloc.start()
        start = tracemalloc.get_traced_memory()[0]
        for i in range(500):
            key = f"http://example.com/items?id={size}-{i}"
            # built fresh, as the middleware builds them from the response
            lru.put(key, entry(bytes([i % 256]) * size, index=f"/items?id={size}-{i}", headers=6), T0 + 60)
        allocated = tracemalloc.get_traced_memory()[0] - start
        tracemalloc.stop()
        counted = sum(footprint(k, v) for k, (v, _, _) in list(lru._data.items())[-500:])
        assert 0.5 * allocated <= counted <= 2.0 * allocated, (size, allocated, counted)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"max_bytes": 0}, "max_bytes"),
        ({"max_bytes": 1.5}, "max_bytes"),
        ({"l1_max_bytes": -1}, "l1_max_bytes"),
        ({"max_bytes": True}, "max_bytes"),
    ],
)
def test_byte_budget_configuration_errors(kwargs: dict[str, Any], match: str) -> None:
    with pytest.raises(ConfigurationError, match=match):
        Cache(telemetry=OFF, **kwargs)
    with pytest.raises(ConfigurationError, match=match):
        CacheMiddleware(Origin(), telemetry=OFF, **kwargs)


def test_cache_and_budget_options_are_exclusive() -> None:
    with pytest.raises(ConfigurationError, match="not both"):
        CacheMiddleware(Origin(), cache=Cache(telemetry=OFF), max_bytes=MIB, telemetry=OFF)


@pytest.mark.redis
async def test_l1_in_front_of_redis_stays_under_its_byte_budget(redis_url: str) -> None:
    origin = Origin(chunks=(b"z" * (50 * KIB),))
    tel = Telemetry()
    cache = Cache(redis_url, l1_entries=10_000, l1_max_bytes=MIB, clock=ManualClock(T0), telemetry=tel)
    mw = CacheMiddleware(origin, cache=cache, telemetry=tel)
    l1 = cache.l1
    assert l1 is not None
    try:
        for i in range(100):
            await get(mw, f"/junk?{i}")
            assert l1.bytes <= MIB
        assert 10 <= len(l1) <= 20
        assert tel.instrument("asgi_resilience.cache.memory.usage").totals == {(("tier", "l1"),): l1.bytes}
        snap = tel.snapshot()["components"]["cache"]
        assert snap["l1_bytes"] == l1.bytes and snap["l1_max_bytes"] == MIB and snap["memory_bytes"] is None
        # what the L1 evicted is still in Redis: a hit from L2, no app call
        assert status_of(await get(mw, "/junk?0")).startswith("asgi-resilience; hit") and origin.calls == 100
    finally:
        await cache.aclose()

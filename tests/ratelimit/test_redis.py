"""Redis storage: the Lua script against the Python core, one round trip, NOSCRIPT, exactness
(one process, 4 processes, a 3-node cluster), and Redis dying under each on_store_error mode."""

from __future__ import annotations

import asyncio
import os
import random
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from typing import Any

import pytest
import redis
import redis.asyncio

from asgi_resilience import RateLimitMiddleware, Rule
from asgi_resilience.ratelimit import MemoryStorage, RedisStorage
from asgi_resilience.ratelimit._storage import Check, storage_from
from asgi_resilience.testing import ASGIHarness, ManualClock, RedisServer, http_scope, redis_command_counts

from .conftest import ok_app, parse_headers

pytestmark = pytest.mark.redis

STRATEGIES = ["sliding-window", "fixed-window", "moving-window", "gcra"]


def reset_stats(url: str) -> None:
    client = redis.Redis.from_url(url)
    try:
        client.config_resetstat()
    finally:
        client.close()


async def run(mw: Any, **kw: Any) -> ASGIHarness:
    return await ASGIHarness().run(mw, http_scope(**kw))


@pytest.mark.parametrize("strategy", STRATEGIES)
async def test_lua_script_matches_the_python_core(redis_url: str, strategy: str) -> None:
    clock = ManualClock(1_700_000_000.123)
    remote = RedisStorage(redis_url, clock=clock)
    local = MemoryStorage(clock=clock)
    rnd = random.Random(strategy)
    try:
        for _ in range(250):
            checks = [
                Check("a", 0, "ip:1", 5, 1000, rnd.choice([1, 1, 1, 2, 7]), True),
                Check("a", 1, "ip:1", 20, 60_000, 1, True),
                Check("g", 0, "global", 7, 2000, 1, rnd.random() < 0.5),
            ]
            assert await remote.hit(strategy, checks) == local.hit_now(strategy, checks)
            clock.advance(rnd.choice([0, 0, 0.001, 0.05, 0.2, 0.7, 1.3, 3.0]))
    finally:
        await remote.aclose()


@pytest.mark.parametrize("strategy", STRATEGIES)
async def test_concurrent_requests_admit_exactly_the_limit(redis_url: str, strategy: str) -> None:
    mw = RateLimitMiddleware(ok_app, rules=[Rule("50/hour")], storage=redis_url, strategy=strategy, store_timeout=5.0)
    results = await asyncio.gather(*(run(mw) for _ in range(120)))
    statuses = [h.status for h in results]
    assert statuses.count(200) == 50 and statuses.count(429) == 70
    remaining = sorted(parse_headers(h)[1]["50/hour"]["r"] for h in results if h.status == 200)
    assert remaining == list(range(50))  # every admitted request saw its own count: time from one clock
    await mw.storage.aclose()


async def test_one_round_trip_per_request_for_all_rules(redis_url: str) -> None:
    mw = RateLimitMiddleware(
        ok_app,
        rules=[
            Rule("100/minute", name="site"),
            Rule("50/second;500/minute", name="burst"),
            Rule("1000/hour", key="global"),
        ],
        storage=redis_url,
    )
    await run(mw)  # loads the script
    client: Any = mw.storage.client  # type: ignore[attr-defined]
    sent: list[str] = []
    original = client.execute_command

    async def counting(*args: Any, **kwargs: Any) -> Any:
        sent.append(str(args[0]).lower())
        return await original(*args, **kwargs)

    client.execute_command = counting
    reset_stats(redis_url)
    for _ in range(20):
        h = await run(mw)
        assert h.status == 200
        assert len(parse_headers(h)[0]) == 4  # 4 policies, all answered by the one call
    assert sent == ["evalsha"] * 20  # one round trip per request
    stats = redis_command_counts(redis_url)
    assert stats["evalsha"] == 20
    # everything else ran inside the script
    inside = {"time", "hmget", "hset", "pexpire"}
    assert set(stats) - inside == {"evalsha"}
    await mw.storage.aclose()


async def test_noscript_after_script_flush_and_restart(redis_factory: Callable[..., RedisServer]) -> None:
    server = redis_factory()
    mw = RateLimitMiddleware(ok_app, rules=[Rule("3/minute")], storage=server.url, store_timeout=2.0)
    assert (await run(mw)).status == 200
    client = redis.Redis.from_url(server.url)
    client.script_flush()
    client.close()
    assert (await run(mw)).status == 200  # NOSCRIPT -> reloaded transparently
    server.restart()  # state and scripts gone
    for _ in range(3):
        assert (await run(mw)).status == 200
    assert (await run(mw)).status == 429
    await mw.storage.aclose()


async def test_time_comes_from_redis_not_the_app(redis_url: str) -> None:
    """Workers share Redis's clock: the fixed window ends on a minute boundary of Redis TIME."""
    one, two = storage_from(redis_url), storage_from(redis_url)
    check = Check("r", 0, "k", 2, 60_000, 1, True)
    outcomes = [(await one.hit("fixed-window", [check]))[0], (await two.hit("fixed-window", [check]))[0]]
    outcomes.append((await one.hit("fixed-window", [check]))[0])
    assert [d.allowed for d in outcomes] == [True, True, False]
    client = redis.Redis.from_url(redis_url)
    seconds, micros = client.time()
    client.close()
    server_now = seconds + micros / 1e6
    window_end = server_now + outcomes[2].reset_after
    assert abs(window_end - round(window_end / 60) * 60) < 0.5
    await one.reset()
    assert (await two.hit("fixed-window", [check]))[0].allowed
    await one.aclose()
    await two.aclose()


async def test_redis_client_object_and_hash_tagged_keys(redis_url: str) -> None:
    client = redis.asyncio.Redis.from_url(redis_url)
    mw = RateLimitMiddleware(
        ok_app,
        rules=[Rule("5/minute", key="header:X-Key"), Rule("5/minute", key=lambda scope: "odd{" + "y" * 90, name="cb")],
        storage=client,
        key_prefix="t",
    )
    await run(mw, headers=[("x-key", "secret-api-key-123")])
    await run(mw, client=("2001:db8::1", 1))
    keys = sorted(k.decode() for k in await client.keys("t:*"))
    assert len(keys) == 3  # header bucket, no-header bucket by address, one callable bucket
    for key in keys:
        tag = key[key.index("{") + 1 : key.index("}")]
        assert "{" not in tag and tag
        assert "secret-api-key" not in key  # header values are hashed: API keys never reach Redis
    assert any(k.startswith("t:{anon:ip:2001:db8::/56}:") for k in keys)  # no header: by address (/56)
    assert any(k.startswith("t:{hdr:x-key:") for k in keys)
    assert any(k.startswith("t:{h:") for k in keys)  # a long or braced partition is hashed into a tag
    await client.aclose()


WORKER = textwrap.dedent(
    """
    import asyncio, sys
    from asgi_resilience import RateLimitMiddleware, Rule
    from asgi_resilience.testing import ASGIHarness, http_scope

    async def app(scope, receive, send):
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    async def main():
        limiters = [
            RateLimitMiddleware(app, rules=[Rule("150/hour", key="global")], storage=sys.argv[1],
                                strategy=strategy, key_prefix=strategy, store_timeout=10.0)
            for strategy in ("sliding-window", "gcra")
        ]
        for mw in limiters:  # connect and load the script before the start signal
            await ASGIHarness().run(mw, http_scope(path="/warm", client=("127.0.0.9", 1)))
        print("ready", flush=True)
        sys.stdin.readline()
        out = []
        for mw in limiters:
            hs = await asyncio.gather(*(ASGIHarness().run(mw, http_scope()) for _ in range(100)))
            out.append(sum(h.status == 200 for h in hs))
        print(*out, flush=True)

    asyncio.run(main())
    """
)


def test_four_processes_share_one_redis_exactly(redis_url: str) -> None:
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", WORKER, redis_url],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, "PYTHONWARNINGS": "ignore"},
        )
        for _ in range(4)
    ]
    try:
        for proc in procs:
            assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
        for proc in procs:  # start all four at once
            assert proc.stdin is not None
            proc.stdin.write("go\n")
            proc.stdin.flush()
        totals = [0, 0]
        for proc in procs:
            out, err = proc.communicate(timeout=30)
            assert proc.returncode == 0, err
            for i, value in enumerate(map(int, out.split())):
                totals[i] += value
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    # 400 concurrent requests from 4 processes on a global limit of 150, of which each worker's
    # warm-up request used one: exactly 146 more are admitted, whatever the interleaving
    assert totals == [146, 146]


# ----------------------------------------------------------------------------------------------
# Redis Cluster: three masters started by the test


# (the redis_cluster fixture is in tests/conftest.py, shared with the cache's cluster tests)


@pytest.mark.parametrize("strategy", STRATEGIES)
async def test_cluster_exactness(redis_cluster: str, strategy: str) -> None:
    mw = RateLimitMiddleware(
        ok_app,
        rules=[Rule("20/hour", name="per-ip"), Rule("5/hour;40/day", name="burst")],
        storage=redis_cluster,
        strategy=strategy,
        key_prefix=f"c-{strategy}",
        store_timeout=5.0,
    )
    results = await asyncio.gather(*(run(mw, client=("192.0.2.1", 1)) for _ in range(30)))
    assert [h.status for h in results].count(200) == 5  # both rules share the client's slot: one atomic call
    assert all(h.json()["violated_policies"] == ["burst"] for h in results if h.status == 429)
    results = await asyncio.gather(*(run(mw, client=(f"192.0.2.{i}", 1)) for i in range(2, 40) for _ in range(3)))
    assert [h.status for h in results].count(200) == 38 * 3  # other clients, other slots, all admitted
    await mw.storage.aclose()


async def test_cluster_rules_in_different_slots(redis_cluster: str) -> None:
    mw = RateLimitMiddleware(
        ok_app,
        rules=[Rule("40/hour", name="per-ip"), Rule("60/hour", key="global", name="everyone")],
        storage=redis_cluster,
        strategy="gcra",
        key_prefix=f"slots-{random.random()}",
        store_timeout=5.0,
    )
    try:
        first = await asyncio.gather(*(run(mw, client=("192.0.2.1", 1)) for _ in range(70)))
        assert [h.status for h in first].count(200) == 40
        # per-IP and global keys live in different slots: one call per slot, in parallel; a slot that
        # admitted a request another slot rejected gives the quota back (before the 429 is sent), so
        # the global rule counted exactly 40 of the first 70. One at a time now, so that no give-back is
        # in flight: exactly the remaining 20 of the global quota are admitted.
        second = [await run(mw, client=("198.51.100.7", 1)) for _ in range(50)]
        admitted = [h.status for h in second].count(200)
        assert admitted == 20
        violated = [set(h.json()["violated_policies"]) for h in second if h.status == 429]
        assert all(v <= {"per-ip", "everyone"} for v in violated) and any("everyone" in v for v in violated)
        policy, _ = parse_headers(next(h for h in second if h.status == 200))
        assert set(policy) == {"per-ip", "everyone"}
        assert all(h.status in (200, 429) for h in first + second)
    finally:
        await mw.storage.aclose()


# ----------------------------------------------------------------------------------------------
# the store fails: open, closed, local; a breaker; recovery


@pytest.mark.parametrize("mode", ["open", "closed", "local"])
async def test_redis_killed_mid_run(redis_factory: Callable[..., RedisServer], mode: str) -> None:
    server = redis_factory()
    clock = ManualClock(1000.0)
    mw = RateLimitMiddleware(
        ok_app, rules=[Rule("2/minute")], storage=server.url, on_store_error=mode, clock=clock, store_cooldown=1.0
    )
    assert (await run(mw)).status == 200
    server.kill()
    statuses = [(await run(mw)).status for _ in range(4)]
    assert 500 not in statuses
    if mode == "open":
        assert statuses == [200] * 4
    elif mode == "closed":
        assert statuses == [503] * 4
        h = await run(mw)
        assert h.header("content-type") == "application/problem+json"
        assert h.json()["type"].endswith("storage-unavailable") and int(h.header("retry-after") or 0) >= 1
    else:
        assert statuses == [200, 200, 429, 429]  # an in-process limiter takes over
        assert mw.snapshot()["store_available"] is False
    server.start()
    clock.advance(1.5)  # past the cooldown: the next request probes Redis and recovers
    h = await run(mw)
    assert h.status == 200 and mw.snapshot()["store_failures"] == 0
    assert h.header("ratelimit") is not None
    await mw.storage.aclose()


class CountingStorage(RedisStorage):
    calls = 0

    async def hit(self, strategy: str, checks: Any) -> Any:
        CountingStorage.calls += 1
        return await super().hit(strategy, checks)


async def test_slow_redis_costs_one_timeout_then_the_breaker_opens() -> None:
    accepted: list[asyncio.StreamWriter] = []

    async def blackhole(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted.append(writer)  # read nothing, answer nothing

    server = await asyncio.start_server(blackhole, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    clock = ManualClock(0.0)
    CountingStorage.calls = 0
    storage = CountingStorage(f"redis://127.0.0.1:{port}/0")
    mw = RateLimitMiddleware(
        ok_app, rules=[Rule("1/minute")], storage=storage, store_timeout=0.05, store_cooldown=2.0, clock=clock
    )
    try:
        started = time.perf_counter()
        first = await run(mw)
        first_took = time.perf_counter() - started
        assert first.status == 200 and 0.04 <= first_took < 1.0
        started = time.perf_counter()
        for _ in range(50):
            assert (await run(mw)).status == 200
        assert time.perf_counter() - started < 0.5  # no timeout per request
        assert CountingStorage.calls == 1
        clock.advance(2.5)
        await run(mw)  # one probe, fails again: another cooldown of the same length
        assert CountingStorage.calls == 2
        clock.advance(1.0)
        await run(mw)
        assert CountingStorage.calls == 2
        clock.advance(1.5)
        await run(mw)  # the storage is tried again within store_cooldown, however long it was down
        assert CountingStorage.calls == 3
    finally:
        for writer in accepted:
            writer.close()
        server.close()
        await server.wait_closed()
        await storage.aclose()

"""Storage URLs of the limits package (memcached, MongoDB, async+...) through limits' own strategies."""

from __future__ import annotations

import os
import socket
import subprocess
import time
from collections.abc import Iterator
from typing import Any

import pytest

from asgi_resilience import ConfigurationError, Rule
from asgi_resilience.ratelimit import MemoryStorage, RateLimitMiddleware
from asgi_resilience.ratelimit._limits_storage import LimitsStorage
from asgi_resilience.ratelimit._storage import Check, RedisStorage, storage_from
from asgi_resilience.testing import ASGIHarness, free_port, http_scope, stop_process
from asgi_resilience.types import Receive, Scope, Send
from tests.conftest import require_memcached_binary


async def ok(scope: Scope, receive: Receive, send: Send) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"ok"})


async def statuses(app: Any, n: int, client: str = "192.0.2.1") -> list[int]:
    return [(await ASGIHarness().run(app, http_scope(path="/", client=(client, 1)))).status for _ in range(n)]


def test_urls_pick_our_fast_paths_or_limits() -> None:
    assert isinstance(storage_from("memory://"), MemoryStorage)  # ours: synchronous, atomic
    assert isinstance(storage_from("redis://127.0.0.1:1/0"), RedisStorage)  # ours: one Lua call
    through = storage_from("async+memory://")
    assert isinstance(through, LimitsStorage) and through.name == "limits:memory"
    memcached = storage_from("memcached://127.0.0.1:1")  # the sync spelling maps to limits' async storage
    assert isinstance(memcached, LimitsStorage) and memcached.name == "limits:memcached"
    with pytest.raises(ConfigurationError, match="memcached://, mongodb://"):
        storage_from("http://127.0.0.1:1")


def test_unsupported_strategies_are_refused_when_the_middleware_is_built() -> None:
    with pytest.raises(ConfigurationError, match="gcra.*memory:// or a Redis storage"):
        RateLimitMiddleware(ok, rules=[Rule("2/minute")], storage="async+memory://", strategy="gcra")
    with pytest.raises(ConfigurationError, match="does not support strategy 'moving-window'"):
        RateLimitMiddleware(ok, rules=[Rule("2/minute")], storage="memcached://127.0.0.1:1", strategy="moving-window")


@pytest.mark.parametrize("strategy", ["fixed-window", "sliding-window", "moving-window"])
async def test_the_middleware_limits_through_limits_with_headers(strategy: str) -> None:
    app = RateLimitMiddleware(ok, rules=[Rule("3/minute")], storage="async+memory://", strategy=strategy)
    assert app.storage.name == "limits:memory"
    assert await statuses(app, 5) == [200, 200, 200, 429, 429]
    assert await statuses(app, 1, client="192.0.2.2") == [200]  # another client has its own quota
    limited = await ASGIHarness().run(app, http_scope(path="/", client=("192.0.2.1", 1)))
    assert limited.status == 429
    assert 1 <= int(limited.header("retry-after") or 0) <= 60
    allowed = await ASGIHarness().run(app, http_scope(path="/", client=("192.0.2.3", 1)))
    assert allowed.header("ratelimit") is not None and "r=2" in (allowed.header("ratelimit") or "")


async def test_several_limits_consume_only_when_every_one_has_room() -> None:
    storage = LimitsStorage("async+memory://")
    checks = [
        Check("burst", 0, "ip:a", 2, 1000, 1, True),
        Check("hourly", 0, "ip:a", 3, 3_600_000, 1, True),
    ]
    first = await storage.hit("fixed-window", checks)
    second = await storage.hit("fixed-window", checks)
    assert [d.allowed for d in first] == [True, True] and [d.remaining for d in second] == [0, 1]
    third = await storage.hit("fixed-window", checks)  # the burst limit is out: nothing is consumed
    assert [d.allowed for d in third] == [False, True]
    assert third[0].retry_after is not None and 0 < third[0].retry_after <= 1.0
    assert third[1].remaining == 1  # the hourly limit kept its room
    await storage.reset()
    assert [d.allowed for d in await storage.hit("fixed-window", checks)] == [True, True]


async def test_backend_failures_are_storage_errors_and_follow_on_store_error() -> None:
    port = free_port()  # nothing listens there
    app = RateLimitMiddleware(
        ok, rules=[Rule("1/minute")], storage=f"memcached://127.0.0.1:{port}", on_store_error="closed"
    )
    harness = await ASGIHarness().run(app, http_scope(path="/"))
    assert harness.status == 503 and harness.header("content-type") == "application/problem+json"
    open_app = RateLimitMiddleware(ok, rules=[Rule("1/minute")], storage=f"memcached://127.0.0.1:{port}")
    assert await statuses(open_app, 2) == [200, 200]  # fail open (the default): admitted, counted


# --- a real memcached, started and stopped by this test ----------------------------------------------------------


@pytest.fixture
def memcached_url() -> Iterator[str]:
    memcached = require_memcached_binary()  # skipped without it, but never under CI=true
    port = free_port()
    root = ["-u", "nobody"] if os.geteuid() == 0 else []  # memcached refuses to run as root otherwise
    process = subprocess.Popen(
        [memcached, "-l", "127.0.0.1", "-p", str(port), "-U", "0", "-m", "16", *root],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                if time.monotonic() > deadline or process.poll() is not None:
                    raise RuntimeError("memcached did not start") from None
                time.sleep(0.02)
        yield f"memcached://127.0.0.1:{port}"
    finally:
        stop_process(process)


@pytest.mark.parametrize("strategy", ["fixed-window", "sliding-window"])
async def test_memcached_through_limits(memcached_url: str, strategy: str) -> None:
    app = RateLimitMiddleware(ok, rules=[Rule("3/minute")], storage=memcached_url, strategy=strategy)
    try:
        assert app.storage.name == "limits:memcached"
        assert await statuses(app, 5) == [200, 200, 200, 429, 429]
        assert await statuses(app, 1, client="192.0.2.9") == [200]
    finally:
        await app.aclose()

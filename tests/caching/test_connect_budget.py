"""A backend call that also has to connect gets a connection budget; later calls get backend_timeout."""

from __future__ import annotations

import anyio

from asgi_resilience import Cache

from .conftest import OFF


async def test_connecting_is_not_a_backend_failure_but_a_slow_live_backend_is() -> None:
    cache = Cache("memory://", backend_timeout=0.05, telemetry=OFF)

    async def slow(seconds: float, value: str) -> str:
        await anyio.sleep(seconds)
        return value

    try:
        assert await cache.call("get", lambda: slow(0.15, "connected"), "miss") == "connected"
        assert cache.available
        assert await cache.call("get", lambda: slow(0.15, "late"), "miss") == "miss"  # now 50 ms is the budget
        assert not cache.available  # skipped for a while, as after any failure
    finally:
        await cache.aclose()

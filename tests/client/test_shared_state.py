"""Opt-in breaker state shared through Redis, and the fallback to local state when Redis fails."""

from __future__ import annotations

import time
from collections.abc import Callable

import anyio
import httpx
import pytest
import respx

from asgi_resilience import (
    AsyncCircuitBreakerTransport,
    BreakerPolicy,
    CircuitBreakerTransport,
    CircuitOpenError,
)
from asgi_resilience.client import _shared
from asgi_resilience.testing import RedisServer

from .conftest import RawServer

URL = "http://shared.test/x"
POLICY = BreakerPolicy(minimum_calls=2, break_duration=0.3, max_break_duration=1.0)

pytestmark = pytest.mark.redis


@pytest.fixture(autouse=True)
def instant_refresh(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_shared, "REFRESH", 0.0)


@respx.mock
async def test_open_is_shared_between_processes_and_probe_success_clears_it(redis_url: str) -> None:
    route = respx.get(URL).mock(return_value=httpx.Response(500))
    # shared=False: two independent breakers, as in two processes; only Redis connects them
    first = AsyncCircuitBreakerTransport(policy=POLICY, state=redis_url, shared=False)
    second = AsyncCircuitBreakerTransport(policy=POLICY, state=redis_url, shared=False)
    async with httpx.AsyncClient(transport=first) as a, httpx.AsyncClient(transport=second) as b:
        await a.get(URL)
        await a.get(URL)
        with pytest.raises(CircuitOpenError):
            await a.get(URL)
        with pytest.raises(CircuitOpenError) as info:
            await b.get(URL)  # never failed itself: refused through the shared state
        assert info.value.retry_after is not None and 0 < info.value.retry_after <= 0.3
        assert route.call_count == 2
        await anyio.sleep(0.35)
        route.mock(return_value=httpx.Response(200))
        assert (await b.get(URL)).status_code == 200  # b probes on its own and closes
        assert (await a.get(URL)).status_code == 200
    import redis

    client = redis.Redis.from_url(redis_url)
    try:
        assert client.keys("asgi_resilience:breaker:*") == []
    finally:
        client.close()


@respx.mock
def test_sync_shared_state(redis_url: str) -> None:
    respx.get(URL).mock(return_value=httpx.Response(503))
    first = CircuitBreakerTransport(policy=POLICY, state=redis_url, shared=False)
    second = CircuitBreakerTransport(policy=POLICY, state=redis_url, shared=False)
    with httpx.Client(transport=first) as a, httpx.Client(transport=second) as b:
        a.get(URL)
        a.get(URL)
        with pytest.raises(CircuitOpenError):
            b.get(URL)


@respx.mock
async def test_redis_down_falls_back_to_local_state(redis_factory: Callable[..., RedisServer]) -> None:
    server = redis_factory()
    url = server.url
    server.kill()
    route = respx.get(URL).mock(return_value=httpx.Response(500))
    transport = AsyncCircuitBreakerTransport(policy=POLICY, state=url, shared=False)
    async with httpx.AsyncClient(transport=transport) as client:
        started = time.monotonic()
        assert (await client.get(URL)).status_code == 500
        assert (await client.get(URL)).status_code == 500
        with pytest.raises(CircuitOpenError):
            await client.get(URL)  # the local breaker still works
        assert time.monotonic() - started < 3.0
    assert route.call_count == 2
    assert transport._core.shared_state is not None and transport._core.shared_state.errors >= 1


@respx.mock
def test_sync_redis_down_falls_back(redis_factory: Callable[..., RedisServer]) -> None:
    server = redis_factory()
    url = server.url
    server.kill()
    respx.get(URL).mock(return_value=httpx.Response(500))
    with httpx.Client(transport=CircuitBreakerTransport(policy=POLICY, state=url, shared=False)) as client:
        client.get(URL)
        client.get(URL)
        with pytest.raises(CircuitOpenError):
            client.get(URL)


@respx.mock
async def test_slow_redis_falls_back_quickly(raw_server: RawServer) -> None:
    """A 'Redis' that accepts and never answers: the socket timeout trips, then Redis is skipped."""
    respx.get(URL).mock(return_value=httpx.Response(200))
    transport = AsyncCircuitBreakerTransport(
        policy=POLICY, state=f"redis://127.0.0.1:{raw_server.port}/0", shared=False
    )
    async with httpx.AsyncClient(transport=transport) as client:
        started = time.monotonic()
        assert (await client.get(URL)).status_code == 200
        first = time.monotonic() - started
        started = time.monotonic()
        for _ in range(20):
            assert (await client.get(URL)).status_code == 200
        rest = time.monotonic() - started
    assert first < 1.5
    assert rest < 0.5  # Redis is skipped during the back-off after a failure
    assert transport._core.shared_state is not None and transport._core.shared_state.errors == 1


@respx.mock
async def test_shared_state_with_a_client_object(redis_url: str) -> None:
    import redis.asyncio

    respx.get(URL).mock(return_value=httpx.Response(500))
    redis_client = redis.asyncio.Redis.from_url(redis_url)
    try:
        first = AsyncCircuitBreakerTransport(policy=POLICY, state=redis_client, shared=False)
        second = AsyncCircuitBreakerTransport(policy=POLICY, state=redis_client, shared=False)
        async with httpx.AsyncClient(transport=first) as a, httpx.AsyncClient(transport=second) as b:
            await a.get(URL)
            await a.get(URL)
            with pytest.raises(CircuitOpenError):
                await b.get(URL)
        assert await redis_client.ping()  # a client we were given stays open
    finally:
        await redis_client.aclose()

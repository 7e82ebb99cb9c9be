"""Named breakers with ``state=``: open state shared through Redis with other processes (played
here by a raw Redis client, as another process's breaker would write it), local fallback."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import anyio
import pytest
import redis

from asgi_resilience import CircuitOpenError, ConfigurationError
from asgi_resilience.policies import _shared, circuit_breaker, configure_policies, reset_policies
from asgi_resilience.testing import free_port

pytestmark = [pytest.mark.redis, pytest.mark.anyio]

KEY = "asgi_resilience:breaker:named:"


class Down(Exception):
    pass


@pytest.fixture(params=["asyncio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)  # redis-py's asyncio client: shared state for async functions is asyncio's


@pytest.fixture(autouse=True)
def instant_refresh(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_shared, "REFRESH", 0.0)


@pytest.fixture
def other_process(redis_url: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_url)
    yield client
    client.close()


def options(redis_url: str) -> dict[str, Any]:
    return {"state": redis_url, "consecutive_failures": 1, "minimum_calls": 1, "window": 10, "break_duration": 30}


async def test_opening_publishes_and_another_processes_open_state_is_obeyed(
    redis_url: str, other_process: redis.Redis
) -> None:
    breaker = circuit_breaker("llm-shared", on=Down, **options(redis_url))
    fail = True

    @breaker
    async def call() -> str:
        if fail:
            raise Down
        return "ok"

    with pytest.raises(Down):
        await call()
    assert breaker.state == "open"
    ttl = other_process.pttl(KEY + "llm-shared")
    assert 25_000 < ttl <= 30_000  # published "open for 30 s" for the other processes

    reset_policies()  # a fresh process: its own breaker of the same name, closed, same Redis
    fresh = circuit_breaker("llm-shared", on=Down, **options(redis_url))
    fail = False

    @fresh
    async def call_again() -> str:
        return "ok"

    with pytest.raises(CircuitOpenError) as info:
        await call_again()  # never failed itself: refused through the shared state
    assert info.value.retry_after is not None and 25 < info.value.retry_after <= 30
    await breaker.aclose()
    await fresh.aclose()


def test_sync_functions_and_context_managers_share_state(redis_url: str, other_process: redis.Redis) -> None:
    breaker = circuit_breaker("db-shared", on=Down, **options(redis_url))
    with pytest.raises(Down), breaker:
        raise Down
    assert other_process.pttl(KEY + "db-shared") > 25_000

    reset_policies()
    fresh = circuit_breaker("db-shared", on=Down, **options(redis_url))

    @fresh
    def read() -> int:
        return 1

    with pytest.raises(CircuitOpenError):
        read()
    with pytest.raises(CircuitOpenError), fresh:
        pass
    fresh.close()


async def test_state_from_configuration_and_a_close_after_the_probe(redis_url: str, other_process: redis.Redis) -> None:
    configure_policies({"circuit_breaker": {"cfg": {**options(redis_url), "break_duration": 0.05}}})
    breaker = circuit_breaker("cfg", on=Down)
    assert breaker.shared_state is not None
    fail = True

    @breaker
    async def call() -> str:
        if fail:
            raise Down
        return "ok"

    with pytest.raises(Down):
        await call()
    assert other_process.exists(KEY + "cfg")
    await anyio.sleep(0.1)  # the key expired by itself (PX), our break elapsed
    fail = False
    assert await call() == "ok" and breaker.state == "closed"  # probed on its own, closed
    assert not other_process.exists(KEY + "cfg")  # nothing left behind
    await breaker.aclose()


async def test_redis_down_falls_back_to_the_local_breaker(caplog: pytest.LogCaptureFixture) -> None:
    breaker = circuit_breaker("nowhere", on=Down, **options(f"redis://127.0.0.1:{free_port()}/0"))
    calls = 0

    @breaker
    async def call() -> str:
        nonlocal calls
        calls += 1
        return "ok"

    assert await call() == "ok" and await call() == "ok" and calls == 2  # never failed because Redis is
    assert sum("unavailable" in r.getMessage() for r in caplog.records) == 1
    await breaker.aclose()


def test_bad_state_and_a_second_definition_are_refused(redis_url: str) -> None:
    with pytest.raises(ConfigurationError, match="state="):
        circuit_breaker("bad-state", state="http://example.com")
    circuit_breaker("twice", state=redis_url)
    with pytest.raises(ConfigurationError, match="already exists"):
        circuit_breaker("twice", state=None)
    assert circuit_breaker("twice").shared_state is not None

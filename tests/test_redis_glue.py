"""Redis connection glue."""

from __future__ import annotations

import pytest

from asgi_resilience import ConfigurationError
from asgi_resilience._redis import is_redis_url, redis_client


def test_is_redis_url() -> None:
    assert is_redis_url("redis://localhost:6379/0") and is_redis_url("rediss://h") and is_redis_url("unix:///s")
    assert not is_redis_url("memory://") and not is_redis_url(None)


def test_bad_url_is_a_configuration_error() -> None:
    with pytest.raises(ConfigurationError, match="redis://"):
        redis_client("memcached://x")


@pytest.mark.redis
async def test_client_from_url_talks_to_redis_and_clients_pass_through(redis_url: str) -> None:
    client = redis_client(redis_url, socket_timeout=1.0)
    try:
        assert await client.ping()
        assert redis_client(client) is client
    finally:
        await client.aclose()


@pytest.mark.redis
async def test_a_burst_larger_than_the_pool_waits_instead_of_failing(redis_url: str) -> None:
    import anyio

    client = redis_client(redis_url, socket_timeout=5.0, max_connections=5)
    results: list[object] = []
    try:

        async def one(i: int) -> None:
            results.append(await client.incr("burst"))

        async with anyio.create_task_group() as tg:
            for i in range(300):
                tg.start_soon(one, i)
        assert sorted(results) == list(range(1, 301))  # redis-py's default pool raises "Too many connections"
        assert len(client.connection_pool._in_use_connections) == 0
    finally:
        await client.aclose()

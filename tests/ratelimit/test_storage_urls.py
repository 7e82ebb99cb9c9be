"""Storage selection by URL or object (no server needed: clients connect lazily)."""

from __future__ import annotations

import pytest
import redis.asyncio

from asgi_resilience.errors import ConfigurationError
from asgi_resilience.ratelimit import MemoryStorage, RedisStorage
from asgi_resilience.ratelimit._storage import storage_from


async def test_urls_pick_the_storage() -> None:
    assert isinstance(storage_from("memory://"), MemoryStorage)
    plain = storage_from("redis://127.0.0.1:1/0")
    assert isinstance(plain, RedisStorage) and not plain._cluster
    sentinel = storage_from("redis+sentinel://127.0.0.1:26379,127.0.0.2/mymaster/2", prefix="p")
    assert isinstance(sentinel, RedisStorage) and sentinel.prefix == "p"
    assert sentinel.client.connection_pool.service_name == "mymaster"
    assert sentinel.client.connection_pool.connection_kwargs["db"] == 2
    client = redis.asyncio.Redis(port=1)
    assert storage_from(client).client is client  # type: ignore[attr-defined]
    existing = MemoryStorage()
    assert storage_from(existing) is existing
    for storage in (plain, sentinel):
        await storage.aclose()
    await client.aclose()


@pytest.mark.parametrize("url", ["redis+sentinel://127.0.0.1:26379", "redis+sentinel:///mymaster"])
def test_bad_sentinel_urls(url: str) -> None:
    with pytest.raises(ConfigurationError, match="redis\\+sentinel://host:port"):
        storage_from(url)

"""Redis connection glue shared by every concern (limiter, cache, breaker state).

redis-py is an optional extra (``asgi-resilience[redis]``): it is imported on first use and a
missing install raises an ImportError naming the ``pip install``. Pass one client to every layer to
share one connection pool (the stack builder does); a URL builds a new client.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from asgi_resilience._optional import import_optional
from asgi_resilience.errors import ConfigurationError

if TYPE_CHECKING:
    from redis.asyncio import Redis

__all__ = ["is_redis_url", "redis_client"]

_SCHEMES = ("redis://", "rediss://", "unix://")


def is_redis_url(value: object) -> bool:
    return isinstance(value, str) and value.startswith(_SCHEMES)


def redis_client(target: str | Any, *, socket_timeout: float | None = None) -> Redis:
    """A ``redis.asyncio.Redis`` for ``target``: a URL builds a client, a client is returned as is."""
    if not isinstance(target, str):
        return target  # type: ignore[no-any-return]
    if not is_redis_url(target):
        raise ConfigurationError(f"expected a redis://, rediss:// or unix:// URL, got {target!r}")
    redis_asyncio = import_optional("redis.asyncio", extra="redis", feature="The Redis backend")
    client: Redis = redis_asyncio.Redis.from_url(
        target, socket_timeout=socket_timeout, socket_connect_timeout=socket_timeout
    )
    return client

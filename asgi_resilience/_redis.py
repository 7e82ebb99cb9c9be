"""Redis connection glue shared by every concern (limiter, cache, breaker state).

redis-py is an optional extra (``asgi-resilience[redis]``): it is imported on first use and a
missing install raises an ImportError naming the ``pip install``. Pass one client to every layer to
share one connection pool (the stack builder does); a URL builds a new client.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, cast

from asgi_resilience._optional import import_optional
from asgi_resilience.errors import ConfigurationError

if TYPE_CHECKING:
    from redis.asyncio import Redis

__all__ = ["is_redis_url", "redis_client"]

_CLUSTER = "redis+cluster://"
_SENTINEL = "redis+sentinel://"
_SCHEMES = ("redis://", "rediss://", "unix://", _CLUSTER, _SENTINEL)


def is_redis_url(value: object) -> bool:
    return isinstance(value, str) and value.startswith(_SCHEMES)


DEFAULT_MAX_CONNECTIONS = 100
CONNECT_BUDGET = 0.5
"""Seconds a storage call may take when it also has to connect (at start-up, or the first call after a
failure): connecting, HELLO and loading a script are not a slow store. Layers give their first call on a
new connection ``max(own timeout, CONNECT_BUDGET)``, then their own timeout."""


def redis_client(
    target: str | Any, *, socket_timeout: float | None = None, max_connections: int = DEFAULT_MAX_CONNECTIONS
) -> Redis:
    """A ``redis.asyncio.Redis`` for ``target``: a URL builds a client, a client is returned as is.

    A client built from a ``redis://``/``rediss://``/``unix://`` URL uses a *blocking* pool of
    ``max_connections``: a burst of requests waits for a free connection (each layer bounds the wait
    with its own timeout) instead of failing with redis-py's "Too many connections" (its default pool
    refuses the 101st concurrent command), which would read as an outage.
    """
    if not isinstance(target, str):
        return cast("Redis", target)
    if not is_redis_url(target):
        raise ConfigurationError(
            f"expected a redis://, rediss://, unix://, redis+cluster:// or redis+sentinel:// URL, got {target!r}"
        )
    redis_asyncio = import_optional("redis.asyncio", extra="redis", feature="The Redis backend")
    if target.startswith(_CLUSTER):
        from redis.asyncio.cluster import RedisCluster

        cluster: Any = RedisCluster.from_url(
            "redis://" + target[len(_CLUSTER) :], socket_timeout=socket_timeout, socket_connect_timeout=socket_timeout
        )
        return cast("Redis", cluster)
    if target.startswith(_SENTINEL):
        return _sentinel_master(target, socket_timeout)
    pool = redis_asyncio.BlockingConnectionPool.from_url(
        target,
        max_connections=max_connections,
        timeout=None,
        socket_timeout=socket_timeout,
        socket_connect_timeout=socket_timeout,
    )
    client: Redis = redis_asyncio.Redis.from_pool(pool)  # the client owns (and closes) its pool
    return client


def _sentinel_master(target: str, socket_timeout: float | None) -> Redis:
    """``redis+sentinel://host:26379,host2:26379/<service>[/<db>]`` -> a client for the current master."""
    from redis.asyncio.sentinel import Sentinel

    hosts, _, rest = target[len(_SENTINEL) :].partition("/")
    service, _, db = rest.partition("/")
    if not hosts or not service:
        raise ConfigurationError(f"expected redis+sentinel://host:port[,host:port]/<service>[/<db>], got {target!r}")
    nodes = []
    for node in hosts.split(","):
        host, sep, port = node.rpartition(":")
        if not sep:  # no port given
            host, port = node, ""
        nodes.append((host, _number(port, 26379, target)))
    # Typed through ``Any``: redis-py < 8.2 leaves ``Sentinel.__init__`` untyped, 8.2 types it, and a
    # ``type: ignore`` that one version needs is an error ("unused ignore") on the other.
    sentinel_cls: Any = Sentinel
    sentinel = sentinel_cls(nodes, socket_timeout=socket_timeout, socket_connect_timeout=socket_timeout)
    return cast("Redis", sentinel.master_for(service, db=_number(db, 0, target)))


def _number(text: str, default: int, target: str) -> int:
    """A port or database number of a URL: ASCII digits only (``"²".isdigit()`` is True in Python)."""
    if not text:
        return default
    if not (text.isascii() and text.isdigit()):
        raise ConfigurationError(f"expected a port or database number of ASCII digits in {target!r}, got {text!r}")
    return int(text)

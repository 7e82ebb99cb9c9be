"""Shared fixtures: anyio on asyncio, throw-away redis-server processes, and the ASGI harness.

Redis tests start their own ``redis-server`` on free loopback ports. Outside CI they skip with an
install hint when the binary is missing; with ``CI=true`` a missing binary fails the run.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Iterator

import pytest

from asgi_resilience.testing import RedisServer

IN_CI = os.environ.get("CI", "").lower() in {"1", "true", "yes"}
REDIS_HINT = "redis-server is not on PATH: install it (apt-get install redis-server / brew install redis)"


@pytest.fixture(scope="session")
def anyio_backend() -> str:
    return "asyncio"


def require_redis_binary() -> None:
    if shutil.which("redis-server") is None:
        if IN_CI:
            pytest.fail(f"CI=true but {REDIS_HINT}")
        pytest.skip(REDIS_HINT)


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    """One redis-server for the session; use ``redis_url`` for a flushed database per test."""
    require_redis_binary()
    with RedisServer() as server:
        yield server


@pytest.fixture
def redis_url(redis_server: RedisServer) -> str:
    """URL of a running redis-server whose data was flushed before this test."""
    redis_server.start()  # a previous test may have killed it
    import redis

    client = redis.Redis.from_url(redis_server.url)
    try:
        client.flushall()
    finally:
        client.close()
    return redis_server.url


@pytest.fixture
def redis_factory() -> Iterator[Callable[..., RedisServer]]:
    """Start extra redis-servers (to kill and restart); all are stopped after the test."""
    require_redis_binary()
    started: list[RedisServer] = []

    def make(*args: str) -> RedisServer:
        server = RedisServer(args=args)
        server.start()
        started.append(server)
        return server

    yield make
    for server in started:
        server.__exit__(None, None, None)

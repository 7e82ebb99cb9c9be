"""Shared fixtures: anyio on asyncio, throw-away redis-server processes, and the ASGI harness.

Redis tests start their own ``redis-server`` on free loopback ports. Outside CI they skip with an
install hint when the binary is missing; with ``CI=true`` a missing binary fails the run.
"""

from __future__ import annotations

import asyncio
import inspect
import os
import shutil
import subprocess
import time
from collections.abc import AsyncIterator, Callable, Iterator

import pytest

from asgi_resilience.policies import reset_policies
from asgi_resilience.testing import RedisServer, free_port

IN_CI = os.environ.get("CI", "").lower() in {"1", "true", "yes"}
REDIS_HINT = "redis-server is not on PATH: install it (apt-get install redis-server / brew install redis)"


@pytest.fixture(scope="session")
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(autouse=True)
def fresh_policy_registries() -> Iterator[None]:
    """Named policies and per-origin breaker state are process-wide by design: every test starts clean,
    whichever test (an example, a docs block) created a name before it."""
    reset_policies()
    yield
    reset_policies()


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if isinstance(item, pytest.Function) and inspect.iscoroutinefunction(item.obj):
            item.fixturenames.insert(0, "_no_task_outlives_its_test")


def _is_runner(task: asyncio.Task[object]) -> bool:
    """The anyio pytest runner's own tasks (one of them runs this fixture's teardown)."""
    return getattr(task.get_coro(), "__qualname__", "").startswith("TestRunner.")


def _describe(task: asyncio.Task[object]) -> str:
    frames = task.get_stack(limit=3)
    where = " <- ".join(f"{f.f_code.co_filename.rsplit('/', 2)[-1]}:{f.f_lineno} {f.f_code.co_name}" for f in frames)
    return f"{task.get_coro()!r} at {where or '?'}"


@pytest.fixture
async def _no_task_outlives_its_test() -> AsyncIterator[None]:
    """Every asyncio task an async test starts must be finished, or finish when cancelled, by its end.

    The anyio runner cancels left-over tasks when it closes and then waits for them with no limit: a task
    that ignores its cancellation used to hang the whole run there, far from the test that started it.
    Here, a task still running 1 s after its test is cancelled, and one that is still running 2 s after
    that fails the test that leaked it, with where it is stuck.
    """
    try:
        before = asyncio.all_tasks()
    except RuntimeError:  # not on asyncio (a trio test): trio's nurseries already forbid orphans
        yield
        return
    yield
    me = asyncio.current_task()
    leftover = [t for t in asyncio.all_tasks() - before if t is not me and not t.done() and not _is_runner(t)]
    if leftover:
        await asyncio.wait(leftover, timeout=1.0)
        leftover = [t for t in leftover if not t.done()]
    if leftover and os.environ.get("STRICT_TASKS"):
        pytest.fail("tasks outlive the test: " + "; ".join(map(_describe, leftover)))
    for task in leftover:
        task.cancel()
    if leftover:
        await asyncio.wait(leftover, timeout=2.0)
    stuck = [t for t in leftover if not t.done()]
    if stuck:
        pytest.fail("tasks ignore their cancellation and outlive the test: " + "; ".join(map(_describe, stuck)))


def require_redis_binary() -> None:
    if shutil.which("redis-server") is None:
        if IN_CI:
            pytest.fail(f"CI=true but {REDIS_HINT}")
        pytest.skip(REDIS_HINT)


MEMCACHED_HINT = "memcached is not on PATH: install it (apt-get install memcached / brew install memcached)"


def require_memcached_binary() -> str:
    """The memcached binary and the memcachio client: skipped without them, a failure under CI=true."""
    found = shutil.which("memcached")
    hint = MEMCACHED_HINT
    if found is not None:
        try:
            import memcachio  # noqa: F401
        except ImportError:
            found, hint = None, "the memcachio package is missing (pip install -e '.[test]')"
    if found is None:
        if IN_CI:
            pytest.fail(f"CI=true but {hint}")
        pytest.skip(hint)
    return found


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


@pytest.fixture(scope="session")
def redis_cluster() -> Iterator[str]:
    """A 3-master Redis Cluster (no replicas) for the session: ``redis+cluster://`` URL of one node."""
    require_redis_binary()
    import redis

    nodes = [
        # an explicit bus port: the default (port + 10000) may be taken or above 65535
        RedisServer(
            args=("--cluster-enabled", "yes", "--cluster-port", str(free_port()), "--cluster-node-timeout", "2000")
        )
        for _ in range(3)
    ]
    try:
        for node in nodes:
            node.start()
        subprocess.run(
            ["redis-cli", "--cluster", "create", *(f"127.0.0.1:{n.port}" for n in nodes)]
            + ["--cluster-replicas", "0", "--cluster-yes"],
            check=True,
            capture_output=True,
            timeout=30,
        )
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            states = []
            for node in nodes:
                client = redis.Redis(port=node.port)
                try:
                    states.append(client.cluster("info")["cluster_state"] == "ok")
                finally:
                    client.close()
            if all(states):
                break
            time.sleep(0.05)
        else:
            pytest.fail("the test Redis Cluster did not reach cluster_state:ok")
        yield f"redis+cluster://127.0.0.1:{nodes[0].port}/0"
    finally:
        for node in nodes:
            node.__exit__(None, None, None)

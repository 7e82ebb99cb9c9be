"""One storage-outage guard for the limiter, the cache and the breaker's shared state."""

from __future__ import annotations

from typing import Any

import anyio
import pytest

from asgi_resilience import Cache, RateLimitMiddleware, Rule
from asgi_resilience._outage import OutageGuard
from asgi_resilience.client._shared import BACKOFF, SharedState
from asgi_resilience.ratelimit._storage import RateLimitStorage
from asgi_resilience.testing import ASGIHarness, ManualClock, http_scope
from asgi_resilience.types import Receive, Scope, Send


def test_the_guard_skips_for_a_cooldown_then_admits_one_probe_per_cooldown() -> None:
    clock = ManualClock()
    guard = OutageGuard(cooldown=2.0, clock=clock)
    assert guard.admit() and guard.admit() and guard.available  # healthy: every call goes
    assert guard.failed() is True  # the outage starts (log it)
    assert (guard.admit(), guard.available, guard.remaining, guard.connected) == (False, False, 2.0, False)
    clock.advance(2.0)
    assert guard.available and guard.admit()  # this call is the probe...
    assert not guard.admit() and not guard.available  # ...and holds the others back
    assert guard.failed() is False  # a failed probe does not start another outage
    clock.advance(1.9)
    assert not guard.admit()
    clock.advance(0.1)
    assert guard.admit()
    assert guard.succeeded() is True  # the outage ends (log it)
    assert guard.succeeded() is False and guard.connected and guard.failures == 0
    assert guard.admit() and guard.admit()


def test_a_probe_that_never_reports_back_does_not_block_the_backend_for_ever() -> None:
    clock = ManualClock()
    guard = OutageGuard(cooldown=1.0, clock=clock)
    guard.failed()
    clock.advance(1.0)
    assert guard.admit()  # the probe is cancelled and never calls failed() or succeeded()
    clock.advance(1.0)
    assert guard.admit()


async def test_the_cache_sends_one_probe_per_cooldown_to_a_failed_backend() -> None:
    clock = ManualClock(1_000.0)
    cache = Cache(backend="memory://", clock=clock, telemetry=False)
    calls = 0
    release = anyio.Event()

    async def broken() -> None:
        nonlocal calls
        calls += 1
        await release.wait()
        raise ConnectionError("backend down")

    release.set()
    assert await cache.call("get", broken, "default") == "default"
    assert (calls, cache.available) == (1, False)
    assert await cache.call("get", broken, "skipped") == "skipped"
    assert calls == 1  # skipped during the cooldown
    clock.advance(1.0)
    release = anyio.Event()
    results: list[str] = []

    async def call() -> None:
        results.append(await cache.call("get", broken, "default"))

    async with anyio.create_task_group() as tg:
        tg.start_soon(call)  # the probe, still in flight...
        await anyio.wait_all_tasks_blocked()
        assert await cache.call("get", broken, "held back") == "held back"  # ...holds the others back
        release.set()
    assert calls == 2 and results == ["default"]


class FailingStorage(RateLimitStorage):
    name = "failing"

    def __init__(self) -> None:
        self.calls = 0

    async def hit(self, strategy: str, checks: Any) -> Any:
        self.calls += 1
        raise ConnectionError("store down")

    async def reset(self) -> None:  # pragma: no cover
        pass


async def test_the_limiter_sends_one_probe_per_cooldown_to_a_failed_store() -> None:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    clock = ManualClock(1_000.0)
    storage = FailingStorage()
    mw = RateLimitMiddleware(
        app, rules=[Rule("5/minute")], storage=storage, store_cooldown=2.0, clock=clock, telemetry=False
    )
    for _ in range(3):
        assert (await ASGIHarness().run(mw, http_scope())).status == 200  # fails open
    assert storage.calls == 1 and mw.snapshot()["store_available"] is False
    clock.advance(2.0)
    for _ in range(3):
        await ASGIHarness().run(mw, http_scope())
    assert storage.calls == 2


class FakeRedis:
    """A synchronous redis-py stand-in whose every command fails, counting the attempts."""

    def __init__(self) -> None:
        self.calls = 0

    def register_script(self, source: str) -> Any:
        def script(**kwargs: Any) -> None:
            self.calls += 1
            raise ConnectionError("redis down")

        return script

    def pttl(self, key: str) -> int:
        self.calls += 1
        raise ConnectionError("redis down")


def test_the_breaker_shared_state_skips_reads_and_writes_during_the_cooldown(caplog: pytest.LogCaptureFixture) -> None:
    clock = ManualClock(1_000.0)
    redis = FakeRedis()
    state = SharedState(redis, asynchronous=False, clock=clock)
    assert state.due("https://a", clock())
    assert state.check("https://a") is None
    assert redis.calls == 1
    state.opened("https://a", 5.0)  # skipped: the backend is cooling down
    state.closed("https://a", 0.0)
    assert not state.due("https://b", clock())
    assert redis.calls == 1 and state.errors == 1
    clock.advance(BACKOFF)
    state.opened("https://a", 5.0)  # the probe
    state.closed("https://a", 0.0)  # held back by the failed probe's cooldown
    assert redis.calls == 2
    assert sum("unavailable" in r.getMessage() for r in caplog.records) == 1  # once per outage

"""The first store call on a new connection gets a connection budget, not the 50 ms store timeout."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import anyio

from asgi_resilience import RateLimitMiddleware, Rule
from asgi_resilience.ratelimit import MemoryStorage
from asgi_resilience.testing import ASGIHarness, http_scope
from asgi_resilience.types import Receive, Scope, Send


async def ok_app(scope: Scope, receive: Receive, send: Send) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"ok"})


class ConnectingStorage(MemoryStorage):
    """Like a remote store whose calls take ``connect`` seconds each time a connection is made."""

    def __init__(self, connect: float) -> None:
        super().__init__()
        self.connect = connect
        self.connected = False
        self.calls = 0

    async def hit(self, strategy: str, checks: Sequence[Any]) -> Any:
        self.calls += 1
        if not self.connected:
            await anyio.sleep(self.connect)
            self.connected = True
        await anyio.sleep(0.001)
        return await super().hit(strategy, checks)


async def test_a_slow_connect_is_not_a_store_failure() -> None:
    storage = ConnectingStorage(connect=0.15)
    mw = RateLimitMiddleware(ok_app, rules=[Rule("2/minute")], storage=storage, store_timeout=0.05, telemetry=False)
    statuses = [(await ASGIHarness().run(mw, http_scope())).status for _ in range(3)]
    assert statuses == [200, 200, 429]  # the first call connected within its budget and counted
    assert mw.snapshot()["store_failures"] == 0


async def test_a_store_slower_than_the_timeout_on_a_live_connection_fails_open() -> None:
    storage = ConnectingStorage(connect=0.0)
    mw = RateLimitMiddleware(ok_app, rules=[Rule("1/minute")], storage=storage, store_timeout=0.05, telemetry=False)
    assert (await ASGIHarness().run(mw, http_scope())).status == 200  # connected
    storage.connect, storage.connected = 0.3, False  # the next call is slow (a reconnect that hangs)
    original = ConnectingStorage.hit

    async def slow(self: ConnectingStorage, strategy: str, checks: Sequence[Any]) -> Any:
        await anyio.sleep(0.2)
        return await original(self, strategy, checks)

    storage.hit = slow.__get__(storage)  # type: ignore[method-assign]
    with anyio.fail_after(1):
        h = await ASGIHarness().run(mw, http_scope())
    assert h.status == 200  # on_store_error="open": admitted after the 50 ms timeout, not 1/minute's 429
    assert mw.snapshot()["store_failures"] == 1

"""The Redis client the middleware builds from a URL is closed; one the user passes in is not (#3).

Connections are counted on the Redis server itself (``CLIENT LIST`` by client name), so "closed"
means the server saw the sockets go, not that some flag was set.
"""

from __future__ import annotations

import asyncio
import logging
import subprocess
import sys
import textwrap
import time
from typing import Any

import httpx
import pytest
import redis
import redis.asyncio
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from asgi_resilience import RateLimitMiddleware, Rule
from asgi_resilience.ratelimit._storage import RedisStorage
from asgi_resilience.testing import ASGIHarness, http_scope
from asgi_resilience.types import Message, Receive, Scope, Send

LIFESPAN: Scope = {"type": "lifespan", "asgi": {"version": "3.0"}}


# These tests are about connections, not timeouts: a loaded CI machine may take more than the 50 ms
# default to open the first connection, and the limiter would then (correctly) fail open without one.
STORE_TIMEOUT = 5.0


class LifespanApp:
    """A raw ASGI app speaking the lifespan protocol and answering 200 to HTTP requests."""

    def __init__(self) -> None:
        self.received: list[str] = []

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                self.received.append(message["type"])
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})


async def run_lifespan(app: Any) -> list[str]:
    """Startup then shutdown, as a server does; returns what the app sent back."""
    incoming: list[Message] = [{"type": "lifespan.startup"}, {"type": "lifespan.shutdown"}]
    sent: list[str] = []

    async def receive() -> Message:
        return incoming.pop(0)

    async def send(message: Message) -> None:
        sent.append(message["type"])

    await app(LIFESPAN, receive, send)
    return sent


def connections(url: str, name: str, *, expect: int | None = None) -> int:
    """Connections the server lists under ``name``; waits up to 2 s for ``expect`` (closes are async)."""
    admin = redis.Redis.from_url(url)
    try:
        deadline = time.monotonic() + 2.0
        while True:
            count = sum(1 for c in admin.client_list() if c.get("name") == name)
            if expect is None or count == expect or time.monotonic() > deadline:
                return count
            time.sleep(0.01)
    finally:
        admin.close()


async def request(mw: Any) -> int:
    h = await ASGIHarness().run(mw, http_scope("GET", "/", client=("192.0.2.1", 1234)))
    assert h.status is not None
    return h.status


@pytest.mark.redis
async def test_aclose_closes_the_client_built_from_a_url(redis_url: str) -> None:
    mw = RateLimitMiddleware(
        LifespanApp(),
        rules=[Rule("10/minute")],
        storage=f"{redis_url}?client_name=rl-owned",
        store_timeout=STORE_TIMEOUT,
    )
    assert await request(mw) == 200
    assert connections(redis_url, "rl-owned") == 1
    await mw.aclose()
    assert connections(redis_url, "rl-owned", expect=0) == 0
    await mw.aclose()  # idempotent


@pytest.mark.redis
async def test_lifespan_shutdown_closes_the_client_built_from_a_url(redis_url: str) -> None:
    app = LifespanApp()
    mw = RateLimitMiddleware(
        app, rules=[Rule("2/minute")], storage=f"{redis_url}?client_name=rl-lifespan", store_timeout=STORE_TIMEOUT
    )
    assert [await request(mw) for _ in range(2)] == [200, 200]
    assert connections(redis_url, "rl-lifespan") == 1
    assert await run_lifespan(mw) == ["lifespan.startup.complete", "lifespan.shutdown.complete"]
    assert app.received == ["lifespan.startup", "lifespan.shutdown"]  # the app still sees both messages
    assert connections(redis_url, "rl-lifespan", expect=0) == 0
    # started again (a second TestClient, a reloader): it reconnects and the counters are still there
    assert await request(mw) == 429
    await mw.aclose()


@pytest.mark.redis
async def test_a_client_passed_in_stays_open(redis_url: str) -> None:
    client = redis.asyncio.Redis.from_url(redis_url, client_name="rl-user")
    storage = RedisStorage(redis.asyncio.Redis.from_url(redis_url, client_name="rl-user-storage"))
    try:
        by_client = RateLimitMiddleware(
            LifespanApp(), rules=[Rule("10/minute")], storage=client, store_timeout=STORE_TIMEOUT
        )
        by_storage = RateLimitMiddleware(
            LifespanApp(), rules=[Rule("10/minute")], storage=storage, store_timeout=STORE_TIMEOUT
        )
        for mw in (by_client, by_storage):
            assert await request(mw) == 200
            assert await run_lifespan(mw) == ["lifespan.startup.complete", "lifespan.shutdown.complete"]
            await mw.aclose()
        assert connections(redis_url, "rl-user") == 1  # never disconnected under the user
        assert connections(redis_url, "rl-user-storage") == 1
        assert await client.ping() is True
    finally:
        await client.aclose()
        await storage.aclose()
    assert connections(redis_url, "rl-user", expect=0) == 0


@pytest.mark.redis
def test_starlette_app_served_twice_in_new_event_loops(redis_url: str) -> None:
    """As ``TestClient`` used twice or a reloader does: each run has its own loop and lifespan."""

    async def home(request: Request) -> PlainTextResponse:
        return PlainTextResponse("home")

    app = RateLimitMiddleware(
        Starlette(routes=[Route("/", home)]),
        rules=[Rule("3/minute")],
        storage=f"{redis_url}?client_name=rl-twice",
        store_timeout=STORE_TIMEOUT,
    )

    async def serve(calls: int) -> list[int]:
        incoming: list[Message] = [{"type": "lifespan.startup"}]
        sent: list[str] = []
        stopping = asyncio.Event()

        async def receive() -> Message:
            if incoming:
                return incoming.pop(0)
            await stopping.wait()
            return {"type": "lifespan.shutdown"}

        async def send(message: Message) -> None:
            sent.append(message["type"])

        lifespan = asyncio.create_task(app(LIFESPAN, receive, send))
        transport = httpx.ASGITransport(app=app, client=("192.0.2.7", 1234))
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            codes = [(await client.get("/")).status_code for _ in range(calls)]
        stopping.set()
        await lifespan
        assert sent == ["lifespan.startup.complete", "lifespan.shutdown.complete"]
        return codes

    assert asyncio.run(serve(2)) == [200, 200]
    assert connections(redis_url, "rl-twice", expect=0) == 0
    assert asyncio.run(serve(2)) == [200, 429]  # a new loop: the closed client reconnected in it
    assert connections(redis_url, "rl-twice", expect=0) == 0


@pytest.mark.redis
def test_no_unclosed_connection_warnings_at_exit(redis_url: str) -> None:
    """The symptom of the issue: ResourceWarnings for redis-py connections when the process ends."""
    script = textwrap.dedent(
        f"""
        import asyncio
        from asgi_resilience import RateLimitMiddleware, Rule
        from asgi_resilience.testing import ASGIHarness, http_scope

        async def app(scope, receive, send):
            if scope["type"] == "lifespan":
                while (await receive())["type"] != "lifespan.shutdown":
                    await send({{"type": "lifespan.startup.complete"}})
                await send({{"type": "lifespan.shutdown.complete"}})
                return
            await send({{"type": "http.response.start", "status": 200, "headers": []}})
            await send({{"type": "http.response.body", "body": b"ok"}})

        async def main():
            mw = RateLimitMiddleware(app, rules=[Rule("10/minute")], storage={redis_url!r}, store_timeout=5.0)
            h = await ASGIHarness().run(mw, http_scope("GET", "/"))
            assert h.status == 200, h.status
            incoming = [{{"type": "lifespan.startup"}}, {{"type": "lifespan.shutdown"}}]

            async def receive():
                return incoming.pop(0)

            async def send(message):
                pass

            await mw({{"type": "lifespan", "asgi": {{"version": "3.0"}}}}, receive, send)

        asyncio.run(main())
        print("done")
        """
    )
    result = subprocess.run(
        [sys.executable, "-W", "always::ResourceWarning", "-c", script],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.stdout.strip() == "done", result.stderr
    assert "ResourceWarning" not in result.stderr, result.stderr


async def test_memory_storage_lifespan_passes_through_untouched() -> None:
    app = LifespanApp()
    mw = RateLimitMiddleware(app, rules=[Rule("1/minute")])
    assert await request(mw) == 200
    assert await run_lifespan(mw) == ["lifespan.startup.complete", "lifespan.shutdown.complete"]
    await mw.aclose()
    assert await request(mw) == 429  # nothing was reset or closed
    assert app.received == ["lifespan.startup", "lifespan.shutdown"]


@pytest.mark.redis
async def test_a_failing_close_does_not_stop_the_app_shutdown(redis_url: str, caplog: pytest.LogCaptureFixture) -> None:
    app = LifespanApp()
    mw = RateLimitMiddleware(app, rules=[Rule("10/minute")], storage=redis_url)
    real_close = mw.storage.aclose

    async def broken() -> None:
        raise ConnectionError("socket already gone")

    mw.storage.aclose = broken  # type: ignore[method-assign]
    with caplog.at_level(logging.ERROR, logger="asgi_resilience.ratelimit"):
        assert await run_lifespan(mw) == ["lifespan.startup.complete", "lifespan.shutdown.complete"]
    assert app.received == ["lifespan.startup", "lifespan.shutdown"]
    assert "closing the rate-limit storage redis on shutdown failed" in caplog.text
    await real_close()

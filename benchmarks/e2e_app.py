"""The API under test in the end-to-end suite: a demo-like app, bare or wrapped by the full stack.

Configured by environment variables so that ``uvicorn benchmarks.e2e_app:app --workers 4`` can load
it in every worker:

E2E_MODE     "stack" (default) or "bare"
REDIS_URL    the Redis shared by limiter, cache and the stampede counter (required for "stack")
ORIGIN_URL   the controllable upstream (benchmarks/e2e_origin.py)

Routes: /hello (plain), /keyed (100/minute per X-API-Key), /cached (cached 30 s, counts its app
calls in Redis), /upstream (origin through the resilient transport), /slow (origin through the
transport, route timeout 0.5 s), /work (50 ms of awaiting under the concurrency limit), /work-free
(the same 50 ms, exempt from the concurrency limit: the control of the overload scenario),
/_debug/state (tasks and pid, exempt from every layer), /healthz.

Every response carries ``x-server-ms`` (time from entering the outermost layer to the response start),
``x-stack-ms`` (time from entering the outermost layer to entering the routes: what our layers made the
request wait; absent when the layers answered themselves) and ``x-worker`` (the worker's pid).
"""

from __future__ import annotations

import asyncio
import os
import time
from typing import Any

import httpx
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from asgi_resilience import (
    AsyncResilientTransport,
    BreakerPolicy,
    CacheRule,
    RetryBudget,
    RetryPolicy,
    Rule,
    resilient,
)

MODE = os.environ.get("E2E_MODE", "stack")
REDIS_URL = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")
ORIGIN_URL = os.environ.get("ORIGIN_URL", "http://127.0.0.1:9")
WORK_LIMIT = int(os.environ.get("E2E_WORK_LIMIT", "4"))
EXEMPT = ["/healthz", "/_debug/*"]

_state: dict[str, Any] = {}


def _client() -> httpx.AsyncClient:
    client = _state.get("client")
    if client is None:
        if MODE == "bare":
            transport: httpx.AsyncBaseTransport = httpx.AsyncHTTPTransport()
        else:
            transport = AsyncResilientTransport(
                retry=RetryPolicy(
                    attempts=3, backoff_initial=0.05, backoff_max=0.2, budget=RetryBudget(ratio=0.2, min_per_second=1)
                ),
                breaker=BreakerPolicy(
                    window=10.0, minimum_calls=20, failure_rate=0.5, break_duration=2.0, max_break_duration=4.0
                ),
                total_timeout=5.0,
                attempt_timeout=2.0,
            )
        client = _state["client"] = httpx.AsyncClient(transport=transport, base_url=ORIGIN_URL)
    return client  # type: ignore[no-any-return]


def _redis() -> Any:
    client = _state.get("redis")
    if client is None:
        import redis.asyncio as redis

        client = _state["redis"] = redis.Redis.from_url(REDIS_URL, socket_timeout=0.5, socket_connect_timeout=0.5)
    return client


async def hello(request: Request) -> Response:
    return JSONResponse({"hello": "world"})


async def keyed(request: Request) -> Response:
    return JSONResponse({"key": request.headers.get("x-api-key")})


async def cached(request: Request) -> Response:
    try:
        await _redis().incr("e2e:cached_calls")
    except Exception:  # the counter is best effort while Redis is down (scenario 2)
        pass
    await asyncio.sleep(0.2)  # a slow computation: the stampede window
    return JSONResponse({"expensive": True}, headers={"cache-control": "public, max-age=30"})


async def upstream(request: Request) -> Response:
    response = await _client().get("/data")
    return JSONResponse({"origin": response.status_code}, status_code=200 if response.status_code == 200 else 502)


async def slow(request: Request) -> Response:
    response = await _client().get("/data")
    return JSONResponse({"origin": response.status_code})


async def work(request: Request) -> Response:
    await asyncio.sleep(0.05)
    return JSONResponse({"done": True})


async def debug_state(request: Request) -> Response:
    return JSONResponse({"pid": os.getpid(), "tasks": len(asyncio.all_tasks())})


async def healthz(request: Request) -> Response:
    return JSONResponse({"ok": True})


routes = Starlette(
    routes=[
        Route("/hello", hello),
        Route("/keyed", keyed),
        Route("/cached", cached),
        Route("/upstream", upstream),
        Route("/slow", slow),
        Route("/work", work),
        Route("/work-free", work),
        Route("/_debug/state", debug_state),
        Route("/healthz", healthz),
    ]
)


APP_ENTERED = "e2e.app_entered"
_PID = str(os.getpid()).encode()


class AppEntry:
    """Directly around the routes: records in the scope when our layers let the request in."""

    def __init__(self, app: Any) -> None:
        self.app = app  # an ``app`` attribute: the layers find the routing table through it

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            scope[APP_ENTERED] = time.monotonic()
        await self.app(scope, receive, send)


inner = AppEntry(routes)


def server_timed(app: Any) -> Any:
    """Outermost: adds ``x-server-ms`` (entering the app to the response start), ``x-stack-ms``, ``x-worker``.

    The load generator is one Python process on the same 2 cores as the workers; with 160 connections
    its own queueing dominates what it measures, so latency goals are checked on this server-side time.
    """

    async def timed(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await app(scope, receive, send)
            return
        started = time.monotonic()

        async def timed_send(message: Any) -> None:
            if message["type"] == "http.response.start":
                now = time.monotonic()
                added = [(b"x-server-ms", f"{(now - started) * 1000:.2f}".encode()), (b"x-worker", _PID)]
                entered = scope.get(APP_ENTERED)
                if entered is not None:
                    added.append((b"x-stack-ms", f"{(entered - started) * 1000:.2f}".encode()))
                message = {**message, "headers": [*message.get("headers", []), *added]}
            await send(message)

        await app(scope, receive, timed_send)

    return timed


app: Any
if MODE == "bare":
    app = server_timed(inner)
else:
    app = server_timed(
        resilient(
            inner,
            redis=REDIS_URL,
            rate_limit={
                "rules": [Rule("100/minute", key="header:X-API-Key", path="/keyed", name="per-key")],
                # exact in any 60 s window: the default sliding-window counter is an approximation that
                # lets a burst crossing a minute boundary through by up to the previous window's decay
                "strategy": "moving-window",
                "on_store_error": "open",
                "store_cooldown": 0.5,
                # The load generator and 4 workers share 2 cores here: 50 ms (the default) is too tight a
                # budget for a cold connection pool under a 100-connection burst.
                "store_timeout": 0.5,
                "exempt": EXEMPT,
            },
            # the same reasoning as store_timeout above for the cache's Redis budget (default 250 ms)
            cache={"rules": [CacheRule("/cached", ttl=30)], "lock_timeout": 3.0, "backend_timeout": 0.5},
            timeout={"timeout": 5.0, "rules": {"/slow": 0.5}},
            concurrency={
                "max_concurrent": WORK_LIMIT,
                "max_queue": 0,
                "exempt": ["/hello", "/keyed", "/cached", "/upstream", "/slow", "/work-free", *EXEMPT],
            },
        )
    )

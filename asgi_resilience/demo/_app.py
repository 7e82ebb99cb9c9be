"""The demo application: a small API behind the full stack, a flaky upstream, the dashboard."""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any, cast

import httpx
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Mount, Route

from asgi_resilience import (
    CircuitOpenError,
    Problem,
    ResilienceStack,
    ResilientApp,
    RetriesExhausted,
    Telemetry,
    dashboard_app,
)
from asgi_resilience.demo._summary import log_summaries
from asgi_resilience.observability import DashboardApp
from asgi_resilience.types import Receive, Scope, Send

__all__ = ["Demo", "FlakyUpstream", "build_demo"]

UPSTREAM = "http://flaky-upstream.internal"
QUOTES = (
    "Everything fails, all the time.",
    "Hope is not a strategy.",
    "The network is reliable (fallacy #1).",
    "Slow is the new down.",
)


@dataclass
class FlakyUpstream:
    """A simulated upstream service (raw ASGI): fails with ``failure_rate`` and adds ``latency``."""

    failure_rate: float = 0.2
    latency: float = 0.02
    calls: int = 0
    rng: random.Random = field(default_factory=lambda: random.Random(7))

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        self.calls += 1
        await asyncio.sleep(self.latency)
        if self.rng.random() < self.failure_rate:
            status, body = 503, b'{"error": "upstream overloaded"}'
        else:
            status, body = 200, json.dumps({"quote": self.rng.choice(QUOTES)}).encode()
        await send(
            {"type": "http.response.start", "status": status, "headers": [(b"content-type", b"application/json")]}
        )
        await send({"type": "http.response.body", "body": body})


@dataclass
class Demo:
    """Everything the demo built; ``app`` is what the server runs."""

    app: Starlette
    api: ResilientApp
    stack: ResilienceStack
    dashboard: DashboardApp
    upstream: FlakyUpstream
    client: httpx.AsyncClient
    telemetry: Telemetry


async def _index(request: Request) -> Response:
    return JSONResponse(
        {
            "endpoints": {
                "/hello": "rate limited: 5 per minute per client, then 429 problem+json with Retry-After",
                "/products/1": "cacheable for 30 s (Cache-Status shows hit/miss); the app takes 200 ms",
                "/slow?seconds=3": "more than the 2 s timeout of /slow: 504 problem+json",
                "/quote": "calls a flaky upstream through the retry + circuit breaker transport",
                "/chaos?failure_rate=1": "make the upstream fail (the breaker opens); failure_rate=0 heals it",
                "/_resilience/": "the live dashboard",
            }
        }
    )


async def _hello(request: Request) -> Response:
    return PlainTextResponse("hello, resilient world\n")


async def _product(request: Request) -> Response:
    product_id = request.path_params["product_id"]
    await asyncio.sleep(0.2)  # an expensive query the cache saves
    return JSONResponse(
        {"id": product_id, "name": f"Product {product_id}", "price": 10 + product_id},
        headers={"Cache-Control": "public, max-age=30, stale-if-error=300"},
    )


async def _slow(request: Request) -> Response:
    try:
        seconds = min(max(float(request.query_params.get("seconds", "3")), 0.0), 30.0)
    except ValueError:
        raise Problem(400, detail="seconds must be a number") from None
    await asyncio.sleep(seconds)
    return PlainTextResponse(f"slept {seconds} s\n")


def build_demo(
    *,
    redis: str | None = None,
    traffic: bool = False,
    telemetry: Telemetry | None = None,
    summary_every: float | None = None,
) -> Demo:
    """Build the demo app (in memory, or sharing ``redis`` between the limiter and the cache).

    With ``summary_every`` (seconds), the app's lifespan logs one summary line per interval of what
    the layers did (``asgi_resilience.demo`` logger, INFO).
    """
    from asgi_resilience import BreakerPolicy, RetryPolicy, Rule

    telemetry = telemetry or Telemetry()
    upstream = FlakyUpstream()
    stack = ResilienceStack(
        rate_limit={"rules": [Rule("120/minute", name="per-client"), Rule("5/minute", path="/hello", name="hello")]},
        cache=True,
        timeout={"timeout": 5.0, "rules": {"/slow": 2.0}},
        concurrency={"max_concurrent": 20, "max_queue": 20, "queue_timeout": 1.0},
        redis=redis,
        telemetry=telemetry,
    )
    transport = stack.transport(
        httpx.ASGITransport(app=cast(Any, upstream)),  # httpx < 0.28 types app= narrower than ASGI
        retry=RetryPolicy(attempts=3),
        breaker=BreakerPolicy(window=10.0, minimum_calls=5, failure_rate=0.5, break_duration=5.0),
    )
    client = httpx.AsyncClient(transport=transport, base_url=UPSTREAM)

    async def quote(request: Request) -> Response:
        try:
            response = await client.get("/quote")
        except CircuitOpenError:
            raise  # 503 circuit-open problem with Retry-After, rendered by the stack
        except RetriesExhausted:
            raise
        except httpx.HTTPError as exc:
            raise Problem(502, type="upstream-error", detail=f"upstream failed: {type(exc).__name__}") from exc
        if response.status_code >= 500:
            raise Problem(502, type="upstream-error", detail=f"upstream answered {response.status_code}")
        return JSONResponse(response.json())

    async def chaos(request: Request) -> Response:
        raw = request.query_params.get("failure_rate")
        if raw is not None:
            try:
                rate = float(raw)
            except ValueError:
                raise Problem(400, detail="failure_rate must be a number between 0 and 1") from None
            if not 0.0 <= rate <= 1.0:
                raise Problem(400, detail="failure_rate must be a number between 0 and 1")
            upstream.failure_rate = rate
        return JSONResponse({"failure_rate": upstream.failure_rate, "upstream_calls": upstream.calls})

    api = stack.wrap(
        Starlette(
            routes=[
                Route("/", _index),
                Route("/hello", _hello),
                Route("/products/{product_id:int}", _product),
                Route("/slow", _slow),
                Route("/quote", quote),
                Route("/chaos", chaos),
            ]
        )
    )

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        tasks = []
        if traffic:
            tasks.append(asyncio.create_task(_traffic(api)))
        if summary_every is not None:
            tasks.append(asyncio.create_task(log_summaries(telemetry, summary_every)))
        try:
            yield
        finally:
            for task in tasks:
                task.cancel()
            for task in tasks:
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            await client.aclose()
            await stack.aclose()

    # The dashboard sits beside the stack, not inside it: watching must not use up rate limits or slots.
    dashboard = dashboard_app(stack, allow_unauthenticated=True)
    app = Starlette(routes=[Mount("/_resilience", dashboard), Mount("", api)], lifespan=lifespan)
    return Demo(
        app=app, api=api, stack=stack, dashboard=dashboard, upstream=upstream, client=client, telemetry=telemetry
    )


async def _traffic(api: Any) -> None:
    """Light background traffic (its own client address) so the dashboard has something to show."""
    transport = httpx.ASGITransport(app=api, client=("192.0.2.10", 4000))
    async with httpx.AsyncClient(transport=transport, base_url="http://demo") as client:
        paths = ["/products/1", "/quote", "/products/2", "/quote", "/hello", "/products/1"]
        while True:
            for path in paths:
                with contextlib.suppress(httpx.HTTPError):
                    await client.get(path)
                await asyncio.sleep(0.3)

"""Exercises every public signature; type-checked with ``mypy --strict`` in .ci/run, never run.

If a public name, parameter or return type changes by accident, this file stops type-checking.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import timedelta

import httpx
from fastapi import APIRouter, FastAPI
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response

import asgi_resilience
from asgi_resilience import (
    AsyncCircuitBreakerTransport,
    AsyncResilientTransport,
    AsyncRetryTransport,
    BreakerPolicy,
    Cache,
    CacheMiddleware,
    CacheRule,
    CircuitBreakerTransport,
    CircuitOpenError,
    ConcurrencyLimitMiddleware,
    ConfigurationError,
    DeadlineExceeded,
    HedgePolicy,
    Overloaded,
    Problem,
    ProblemDetailsMiddleware,
    RateLimitExceeded,
    RateLimitMiddleware,
    ResilienceError,
    ResilienceStack,
    ResilientApp,
    ResilientTransport,
    RetriesExhausted,
    RetryBudget,
    RetryPolicy,
    RetryTransport,
    Rule,
    StorageError,
    Telemetry,
    TimeoutMiddleware,
    TrustedProxies,
    add_problem_openapi,
    async_resilient_client,
    cache,
    current_deadline,
    dashboard_app,
    rate_limit,
    remaining_time,
    resilient,
    resilient_client,
    timeout,
)
from asgi_resilience.testing import ASGIHarness, ManualClock, RedisServer, http_scope, redis_command_counts
from asgi_resilience.types import ASGIApp, Receive, Scope, Send


async def raw_app(scope: Scope, receive: Receive, send: Send) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"ok"})


@rate_limit("5/minute", key="header:X-API-Key", name="writes")
@cache(ttl=60, tags=("products",), statuses={200, 404})
@timeout(5.0)
async def endpoint(request: Request) -> Response:
    deadline: float | None = current_deadline()
    left: float | None = remaining_time()
    return PlainTextResponse(f"{deadline} {left}")


def middlewares() -> list[Middleware]:
    return [
        Middleware(ProblemDetailsMiddleware, type_base="https://example.com/problems/", mapping={KeyError: 404}),
        Middleware(RateLimitMiddleware, rules=[Rule("100/minute"), Rule("5/second;60/minute", path="/api/*")]),
        Middleware(CacheMiddleware, backend="memory://", rules=[CacheRule("/products/*", ttl=60)]),
        Middleware(TimeoutMiddleware, timeout=10.0, rules={"/reports/*": 60.0, "/events": None}),
        Middleware(ConcurrencyLimitMiddleware, max_concurrent=100, max_queue=50, queue_timeout=2.0),
    ]


def wrap_directly() -> ASGIApp:
    app: ASGIApp = ProblemDetailsMiddleware(raw_app, debug=False)
    app = RateLimitMiddleware(app, rules=[Rule("10/minute", shadow=True)], on_store_error="local")
    app = RateLimitMiddleware(app, trusted_proxies=TrustedProxies(["10.0.0.0/8"], header="x-forwarded-for"))
    app = TimeoutMiddleware(app, trusted_proxies=TrustedProxies(2))
    app = CacheMiddleware(app, cache=Cache("memory://"), max_body_size=1_048_576, l1_entries=0)
    app = CacheMiddleware(app, backend="memory://", max_entries=5_000, max_bytes=64 * 1024 * 1024)
    app = CacheMiddleware(
        app,
        rules=[CacheRule("/api/*", ttl=30, statuses=[200])],
        targeted_fields=("Acme-Cache-Control", "CDN-Cache-Control"),
        strip_targeted_fields=True,
    )
    app = CacheMiddleware(app, cache=Cache("redis://localhost", l1_entries=1_000, l1_max_bytes=8 * 1024 * 1024))
    app = TimeoutMiddleware(app, timeout=timedelta(seconds=3), mode="complete", idle_timeout=1.0)
    app = ConcurrencyLimitMiddleware(app, max_concurrent=10, adaptive=True, min_concurrent=2)
    return app


def problem_openapi() -> FastAPI:
    api = FastAPI()
    add_problem_openapi(api)
    add_problem_openapi(api, statuses=[404, 429])
    return api


def stack() -> ResilientApp:
    starlette = Starlette(middleware=middlewares())
    fastapi = FastAPI()
    fastapi.add_middleware(ProblemDetailsMiddleware)
    built: ResilienceStack = ResilienceStack(rate_limit="100/minute", cache=True, timeout=10.0, concurrency=100)
    wrapped: ResilientApp = built.wrap(starlette)
    dashboard_app(wrapped, auth=lambda request: True)
    ResilienceStack(rate_limit="100/minute", tracing=True)  # opentelemetry-instrumentation-asgi outermost
    fastapi = resilient(fastapi, rate_limit=[Rule("100/minute")], cache={"backend": "memory://"}, telemetry=Telemetry())
    fastapi.include_router(APIRouter())  # the app resilient() returns forwards attributes to the wrapped app
    resilient(fastapi, timeout="10s")  # type: ignore[arg-type]  # layer options are typed
    return wrapped


def transports() -> tuple[httpx.Client, httpx.AsyncClient]:
    retry = RetryPolicy(attempts=3, statuses={429, 503}, retry_after_max=60.0, budget=RetryBudget(ratio=0.2))
    breaker = BreakerPolicy(window=30.0, minimum_calls=20, failure_rate=0.5, break_duration=5.0)
    sync_transport: httpx.BaseTransport = ResilientTransport(retry=retry, breaker=breaker, total_timeout=30.0)
    sync_transport = RetryTransport(CircuitBreakerTransport(policy=breaker), policy=retry)
    async_transport: httpx.AsyncBaseTransport = AsyncResilientTransport(attempt_timeout=5.0, max_concurrent=10)
    async_transport = AsyncRetryTransport(AsyncCircuitBreakerTransport(policy=breaker), raise_on_exhaustion=True)
    hedged = HedgePolicy(delay="p95", max_hedges=1, methods={"GET", "HEAD"})
    async_transport = AsyncResilientTransport(hedge=hedged, retry=retry)
    async_transport = AsyncRetryTransport(hedge=HedgePolicy(delay=0.05))
    httpx.Client(transport=sync_transport)
    httpx.AsyncClient(transport=async_transport)
    return resilient_client(), async_resilient_client()


def errors() -> list[ResilienceError]:
    found: list[ResilienceError] = [
        ConfigurationError("bad option"),
        StorageError("redis down"),
        RateLimitExceeded(retry_after=1.5, violated_policies=["writes"]),
        Overloaded(retry_after=1),
        DeadlineExceeded(),
        CircuitOpenError(retry_after=5.0, origin="https://api.example"),
        RetriesExhausted(attempts=3),
        Problem(409, type="out-of-stock", detail="sold out", item=12),
    ]
    status: int = found[0].status
    slug: str | None = found[0].type
    retryable: bool = found[0].retryable
    _ = (status, slug, retryable, found[0].retry_after, dict(found[0].headers))
    return found


async def testing_helpers() -> None:
    clock = ManualClock()
    clock.advance(1.0)
    harness = await ASGIHarness().run(wrap_directly(), http_scope("GET", "/"))
    status: int = harness.status
    with RedisServer() as server:
        counts: dict[str, int] = redis_command_counts(server.url)
    _ = (status, counts, asgi_resilience.__all__)


# -- policies on any function: the decorated call sites keep their types (ParamSpec) ------------


class LLMError(Exception):
    pass


llm_policy = asgi_resilience.pipeline(
    asgi_resilience.time_limit(30),
    asgi_resilience.retry(attempts=3, on=LLMError),
    asgi_resilience.circuit_breaker("llm"),
    asgi_resilience.bulkhead("llm", 10),
)


@llm_policy
async def call_llm(prompt: str, *, temperature: float = 0.0) -> str:
    return prompt


@asgi_resilience.circuit_breaker("authz", fallback=lambda *a, **k: True)
async def can_read(user: str, doc: str) -> bool:
    return False


@asgi_resilience.fail_closed
async def is_admin(user: str) -> bool:
    return False


@asgi_resilience.fallback(None)
async def maybe_price(item: str) -> int:
    return 1


@asgi_resilience.fail_open(True)
def sync_check(user: str) -> bool:
    return False


@asgi_resilience.hedge(idempotent=True, delay="p95")
async def read_replica(key: str) -> bytes:
    return b""


@asgi_resilience.retry(on=(LLMError, ConnectionError), attempts=5, timeout=10.0)
def sync_fetch(url: str) -> int:
    return 200


@llm_policy
async def stream_llm(prompt: str) -> AsyncIterator[str]:  # async generators keep their item type
    yield prompt


async def policy_call_sites() -> None:
    async for token in stream_llm("hi"):
        piece: str = token
        _ = piece
    text: str = await call_llm("hi", temperature=0.2)
    allowed: bool = await can_read("ann", "doc")
    admin: bool = await is_admin("ann")
    price: int | None = await maybe_price("apple")  # the fallback's type joins the result's
    ok: bool = sync_check("ann")
    body: bytes = await read_replica("k")
    status: int = sync_fetch("https://example.com")
    asgi_resilience.configure_policies({"bulkhead": {"db": {"max_concurrent": 20, "max_queue": 50}}})
    async with asgi_resilience.bulkhead("db", max_concurrent=20, max_queue=50):
        pass
    async with asgi_resilience.circuit_breaker("llm"), asgi_resilience.time_limit(5.0):
        pass
    with asgi_resilience.bulkhead("db"), asgi_resilience.time_limit("auth"):
        pass
    state: str = asgi_resilience.circuit_breaker("llm").state
    stale = asgi_resilience.last_good(max_entries=100, max_age=60.0)
    _ = (text, allowed, admin, price, ok, body, status, state, stale)

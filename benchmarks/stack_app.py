"""The app measured by ``benchmarks/stack.py``: one trivial Starlette JSON route, bare or behind our layers.

In-process, ``stack.py`` calls :func:`build` directly. Under uvicorn the module-level ``app`` is built
from environment variables so that every worker builds the same app:

STACK_MODE   "bare" (default) or "stack" (problems + rate limit + cache + timeout + concurrency)
REDIS_URL    the Redis the rate limiter and the cache use in "stack" mode (memory when unset)

Routes: ``/`` answers ``{"hello": "world"}`` with ``Cache-Control: no-store`` (the cache passes it
through); ``/cached`` answers the same with ``Cache-Control: public, max-age=600`` (a cache hit after
the first request); ``/healthz`` answers ``ok``.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from asgi_resilience import (
    CacheMiddleware,
    ConcurrencyLimitMiddleware,
    ProblemDetailsMiddleware,
    RateLimitMiddleware,
    Rule,
    TimeoutMiddleware,
)

LAYERS = ("problems", "rate_limit", "cache", "timeout", "concurrency")
"""Outermost first, the order of ``resilient()``."""
LIMIT = "1000000000/minute"  # one rule that every request counts against and none reaches
CALLS = {"cached": 0}  # how often /cached ran its endpoint (a cache hit does not)

_BODY = {"hello": "world"}
_NO_STORE = {"cache-control": "no-store"}
_CACHEABLE = {"cache-control": "public, max-age=600"}


async def hello(request: Request) -> Response:
    return JSONResponse(_BODY, headers=_NO_STORE)


async def cached(request: Request) -> Response:
    CALLS["cached"] += 1
    return JSONResponse(_BODY, headers=_CACHEABLE)


async def healthz(request: Request) -> Response:
    return PlainTextResponse("ok")


def starlette_app() -> Starlette:
    return Starlette(routes=[Route("/", hello), Route("/cached", cached), Route("/healthz", healthz)])


def add_layer(app: Starlette, layer: str, *, telemetry: bool, redis: str | None = None) -> None:
    """``app.add_middleware`` one of our layers as a user would configure it for this benchmark."""
    if layer == "problems":
        app.add_middleware(ProblemDetailsMiddleware, telemetry=telemetry)
    elif layer == "rate_limit":
        storage = redis or "memory://"
        # a loopback Redis on a loaded 2-core machine: the default 50 ms budget would fail open at times
        app.add_middleware(
            RateLimitMiddleware, rules=[Rule(LIMIT)], storage=storage, store_timeout=1.0, telemetry=telemetry
        )
    elif layer == "cache":
        extra: dict[str, Any] = {"backend": redis, "backend_timeout": 1.0} if redis else {}
        app.add_middleware(CacheMiddleware, telemetry=telemetry, **extra)
    elif layer == "timeout":
        app.add_middleware(TimeoutMiddleware, timeout=10.0, telemetry=telemetry)
    elif layer == "concurrency":
        app.add_middleware(ConcurrencyLimitMiddleware, max_concurrent=1000, telemetry=telemetry)
    else:
        raise ValueError(f"unknown layer {layer!r}; one of {LAYERS}")


def build(layers: Sequence[str] = (), *, telemetry: bool = True, redis: str | None = None) -> Starlette:
    """The app with ``layers`` added through ``app.add_middleware`` (in the stack's order)."""
    app = starlette_app()
    # add_middleware puts each new middleware outside the ones added before: innermost first
    for layer in sorted(layers, key=LAYERS.index, reverse=True):
        add_layer(app, layer, telemetry=telemetry, redis=redis)
    return app


def _from_environment() -> Starlette:
    mode = os.environ.get("STACK_MODE", "bare")
    if mode == "bare":
        return build()
    if mode == "stack":
        return build(LAYERS, redis=os.environ.get("REDIS_URL") or None)
    raise ValueError(f"STACK_MODE must be 'bare' or 'stack', got {mode!r}")


app = _from_environment()

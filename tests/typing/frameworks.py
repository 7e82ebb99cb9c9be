"""Framework call sites as users write them; type-checked with ``mypy --strict`` in .ci/run, never run.

``app = resilient(app, ...)`` must type-check for every framework, every middleware must be a valid
middleware in each framework's own typing, and a wrong layer option must be a type error (the
``type: ignore[...]`` lines below fail the check as "unused" if the error ever disappears).
"""

from __future__ import annotations

from datetime import timedelta

from django.core.asgi import get_asgi_application
from fastapi import FastAPI
from litestar import Litestar, get
from litestar.middleware import DefineMiddleware
from starlette.applications import Starlette
from starlette.middleware import Middleware

from asgi_resilience import (
    CacheMiddleware,
    ConcurrencyLimitMiddleware,
    ProblemDetailsMiddleware,
    RateLimitMiddleware,
    ResilienceStack,
    ResilientApp,
    Rule,
    TimeoutMiddleware,
    cache,
    rate_limit,
    resilient,
    timeout,
)
from asgi_resilience.integrations import django as django_integration
from asgi_resilience.integrations.litestar import ResiliencePlugin
from asgi_resilience.stack import TimeoutOptions
from asgi_resilience.types import ASGIApp, Receive, Scope, Send


@get("/items/{item_id:int}")
@cache(ttl=30)
@timeout(0.5)
@rate_limit("2/minute")
async def item(item_id: int) -> dict[str, int]:
    return {"id": item_id}


def litestar() -> Litestar:
    app = Litestar(
        route_handlers=[item],
        middleware=[
            DefineMiddleware(RateLimitMiddleware, rules=[Rule("100/minute")]),
            DefineMiddleware(CacheMiddleware, backend="memory://"),
            DefineMiddleware(TimeoutMiddleware, timeout=2.0),
            DefineMiddleware(ConcurrencyLimitMiddleware, max_concurrent=10),
            DefineMiddleware(ProblemDetailsMiddleware, debug=False),
        ],
    )
    app = resilient(app, rate_limit=[Rule("100/minute")], cache=True, timeout=2.0, concurrency=50)
    with_plugin = Litestar(route_handlers=[item], plugins=[ResiliencePlugin(debug=False, type_base=None)])
    with_plugin = resilient(with_plugin, timeout=1.0)
    wrapped: ResilientApp = ResilienceStack(timeout=timedelta(seconds=2)).wrap(Litestar(route_handlers=[item]))
    _ = wrapped.layers
    return app


def django() -> object:
    application = get_asgi_application()
    application = resilient(application, rate_limit="100/minute", timeout={"timeout": 5.0, "rules": {"/slow": 30}})
    cancellable = django_integration.get_asgi_application()
    cancellable = resilient(cancellable, timeout=2.0)
    return application, cancellable, django_integration.ProblemDetailsMiddleware


def fastapi() -> FastAPI:
    app = FastAPI()
    app = resilient(app, cache={"backend": "memory://", "rules": []}, concurrency={"max_concurrent": 10})
    app.add_middleware(ProblemDetailsMiddleware)  # attribute access reaches the wrapped FastAPI app
    return app


def starlette() -> Starlette:
    app = Starlette(middleware=[Middleware(RateLimitMiddleware, rules=[Rule("10/second")])])
    return resilient(app, problems={"debug": True})


async def raw(scope: Scope, receive: Receive, send: Send) -> None:
    await send({"type": "http.response.start", "status": 204, "headers": []})
    await send({"type": "http.response.body", "body": b""})


def raw_asgi() -> ASGIApp:
    app: ASGIApp = raw
    app = resilient(app, timeout=1.0)
    return app


def wrong_options() -> None:
    app = FastAPI()
    resilient(app, timeout="10s")  # type: ignore[arg-type]
    resilient(app, concurrency="100")  # type: ignore[arg-type]
    resilient(app, cache={"bakend": "memory://"})  # type: ignore[arg-type]
    resilient(app, rate_limit={"rules": [Rule("1/second")], "strategy": "leaky"})  # type: ignore[arg-type]
    options: TimeoutOptions = {"timeout": 3.0, "mode": "complete"}
    resilient(app, timeout=options)
    ResilienceStack(timeout={"timeout": "3s"})  # type: ignore[arg-type]


def mcp() -> Starlette:
    from mcp.server.mcpserver import MCPServer

    from asgi_resilience.integrations.mcp import MCPMiddleware, resilient_mcp, tool_rules

    server = MCPServer("tools")
    app = server.streamable_http_app()
    app = resilient_mcp(app, tool_rate_limit="30/minute", tool_limits={"search": "5/minute"}, timeout=10.0)
    resilient_mcp(app, timeout="10s")  # type: ignore[arg-type]
    rules: list[Rule] = tool_rules(tool_limits={"search": "5/minute"})
    MCPMiddleware(resilient(app, rate_limit=rules), passthrough=app, tool_timeouts={"report": 60.0})
    return app

"""Endpoint options found before routing: Starlette routes, FastAPI routers, mounted apps."""

from __future__ import annotations

from typing import Any

import pytest
from fastapi import APIRouter, FastAPI
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Mount, Route, Router

from asgi_resilience import ConfigurationError
from asgi_resilience._routing import EndpointOptions, mark_endpoint
from asgi_resilience.testing import ASGIHarness, http_scope


def tagged(value: str) -> Any:
    def decorate(func: Any) -> Any:
        return mark_endpoint(func, "test", value)

    return decorate


@tagged("home")
async def home(request: Request) -> Response:
    return PlainTextResponse("home")


async def plain(request: Request) -> Response:
    return PlainTextResponse("plain")


@tagged("inner")
async def inner(request: Request) -> Response:
    return PlainTextResponse("inner")


async def raw_app(scope: Any, receive: Any, send: Any) -> None:
    pass


mark_endpoint(raw_app, "test", "raw")


def make_starlette() -> Starlette:
    sub = Starlette(routes=[Route("/deep/{id:int}", inner)])
    return Starlette(
        routes=[
            Route("/", home),
            Route("/plain", plain),
            Route("/only-post", home, methods=["POST"]),
            Mount("/sub", app=sub),
            Mount("/routed", app=Router(routes=[Route("/x", inner)])),
            Mount("/raw", app=raw_app),
        ]
    )


@pytest.mark.parametrize(
    ("method", "path", "expected"),
    [
        ("GET", "/", "home"),
        ("GET", "/plain", None),
        ("GET", "/missing", None),
        ("GET", "/sub/deep/3", "inner"),
        ("GET", "/sub/deep/not-int", None),
        ("GET", "/routed/x", "inner"),
        ("GET", "/raw/anything", "raw"),
        ("POST", "/only-post", "home"),
        ("GET", "/only-post", "home"),  # PARTIAL: Starlette answers 405 from that route
    ],
)
def test_starlette_routes_and_mounts(method: str, path: str, expected: str | None) -> None:
    app = make_starlette()
    finder = EndpointOptions("test")
    scope = http_scope(method, path, app=app)
    assert finder.lookup(scope) == expected
    assert finder.lookup(scope) == expected  # cached
    assert EndpointOptions("other").lookup(scope) is None


def test_fastapi_include_router() -> None:
    app = FastAPI()
    router = APIRouter(prefix="/api")

    @router.get("/items/{item_id}")
    @tagged("items")
    async def item(item_id: int) -> dict[str, int]:
        return {"id": item_id}

    @tagged("above")
    @router.post("/orders")
    async def orders() -> dict[str, str]:
        return {}

    app.include_router(router)
    finder = EndpointOptions("test")
    assert finder.lookup(http_scope("GET", "/api/items/3", app=app)) == "items"
    assert finder.lookup(http_scope("POST", "/api/orders", app=app)) == "above"
    assert finder.lookup(http_scope("GET", "/docs", app=app)) is None


def test_non_starlette_app_has_no_options() -> None:
    assert EndpointOptions("test").lookup(http_scope(app=object())) is None
    assert EndpointOptions("test").lookup(http_scope()) is None


def test_marking_something_that_cannot_hold_attributes_fails_clearly() -> None:
    with pytest.raises(ConfigurationError, match="cannot attach"):
        mark_endpoint(len, "test", 1)


def test_fastapi_nested_routers_with_include_prefixes() -> None:
    app = FastAPI()
    outer = APIRouter(prefix="/outer")
    inner_router = APIRouter(prefix="/inner")

    @inner_router.get("/leaf")
    @tagged("leaf")
    async def leaf() -> dict[str, str]:
        return {}

    outer.include_router(inner_router)
    app.include_router(outer, prefix="/v1")
    finder = EndpointOptions("test")
    assert finder.lookup(http_scope("GET", "/v1/outer/inner/leaf", app=app)) == "leaf"
    assert finder.lookup(http_scope("GET", "/outer/inner/leaf", app=app)) is None


async def test_decorators_are_found_when_the_middleware_wraps_the_app_from_outside() -> None:
    """``resilient(app)`` wraps a Starlette app from outside, before Starlette sets scope["app"]."""
    import httpx

    from asgi_resilience import rate_limit, resilient

    @rate_limit("2/minute")
    async def limited(request: Request) -> Response:
        return PlainTextResponse("ok")

    inner = Starlette(routes=[Route("/limited", limited), Route("/plain", plain)])
    app = resilient(inner, rate_limit=True, telemetry=False)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as client:
        limited_statuses = [(await client.get("/limited")).status_code for _ in range(3)]
        plain_statuses = [(await client.get("/plain")).status_code for _ in range(3)]
    assert limited_statuses == [200, 200, 429]
    assert plain_statuses == [200, 200, 200]


def test_find_router_walks_down_wrapping_middlewares() -> None:
    from starlette.middleware.cors import CORSMiddleware

    from asgi_resilience._routing import find_router

    app = make_starlette()
    assert find_router(CORSMiddleware(CORSMiddleware(app, allow_origins=["*"]), allow_origins=["*"])) is app
    assert find_router(raw_app) is None


async def test_options_on_routes_that_cannot_be_read_warn_once() -> None:
    """A Quart/Flask-like app (werkzeug routing in ``view_functions``): the options would be ignored."""
    from asgi_resilience import TimeoutMiddleware, timeout

    @timeout(0.1)
    async def slow_view() -> str:
        return "slow"

    class QuartLike:
        def __init__(self) -> None:
            self.view_functions = {"slow_view": slow_view, "other": plain}

        async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
            await send({"type": "http.response.start", "status": 200, "headers": []})
            await send({"type": "http.response.body", "body": b"ok"})

    app = TimeoutMiddleware(QuartLike(), timeout=5.0)
    with pytest.warns(RuntimeWarning, match="slow_view.*cannot read the routes of QuartLike") as record:
        for _ in range(3):
            harness = await ASGIHarness().run(app, http_scope("GET", "/slow"))
            assert harness.status == 200
    assert len(record) == 1


async def test_the_stack_warns_at_startup_about_options_it_cannot_honour() -> None:
    from asgi_resilience import cache, resilient

    @cache(ttl=30)
    async def cached_view() -> str:
        return "cached"

    class QuartLike:
        def __init__(self) -> None:
            self.view_functions = {"cached_view": cached_view}

        async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
            if scope["type"] == "lifespan":
                await receive()
                await send({"type": "lifespan.startup.complete"})

    messages: list[Any] = []

    async def receive() -> Any:
        return {"type": "lifespan.startup"}

    async def send(message: Any) -> None:
        messages.append(message)

    app = resilient(QuartLike(), cache=True)
    with pytest.warns(RuntimeWarning, match="@cache options on cached_view are ignored"):
        await app({"type": "lifespan", "asgi": {"version": "3.0"}}, receive, send)
    assert messages == [{"type": "lifespan.startup.complete"}]


def test_each_concern_takes_the_outermost_options_on_the_route_chain() -> None:
    async def leaf(request: Request) -> Response:
        return PlainTextResponse("leaf")

    mark_endpoint(leaf, "a", "leaf-a")
    mark_endpoint(leaf, "b", "leaf-b")
    sub = Starlette(routes=[Route("/leaf", leaf)])
    mark_endpoint(sub, "a", "mount-a")
    app = Starlette(routes=[Mount("/sub", app=sub)])
    scope = http_scope("GET", "/sub/leaf", app=app)
    assert EndpointOptions("a").lookup(scope) == "mount-a"
    assert EndpointOptions("b").lookup(scope) == "leaf-b"
    assert EndpointOptions("c").lookup(scope) is None


def test_one_lookup_per_request_serves_every_layer(monkeypatch: pytest.MonkeyPatch) -> None:
    app = make_starlette()
    first, second = EndpointOptions("test"), EndpointOptions("other")
    searches: list[str] = []
    real_search = EndpointOptions._search

    def counting(self: EndpointOptions, routes: Any, scope: Any, depth: int) -> Any:
        if depth == 0:
            searches.append(self.concern)
        return real_search(self, routes, scope, depth)

    monkeypatch.setattr(EndpointOptions, "_search", counting)
    scope = http_scope("GET", "/", app=app)
    assert first.lookup(scope) == "home"
    assert second.lookup(scope) is None
    assert EndpointOptions("test").lookup(scope) == "home"  # a third layer, with an empty cache of its own
    assert searches == ["test"]
    # a middleware between two layers that rewrites the path: the next layer looks the new path up
    scope["path"] = "/plain"
    assert second.lookup(scope) is None
    assert EndpointOptions("test").lookup(scope) is None
    assert searches == ["test", "other"]

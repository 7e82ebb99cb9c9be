"""``@rate_limit`` on Starlette routes, FastAPI APIRouter/include_router routes and mounted sub-apps."""

from __future__ import annotations

from typing import Any

import httpx
from fastapi import APIRouter, FastAPI
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import HTTPConnection, Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Mount, Route

from asgi_resilience import RateLimitMiddleware, Rule, rate_limit
from asgi_resilience.testing import ManualClock


def client(app: Any) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://testserver")


async def statuses(app: Any, path: str, n: int, method: str = "GET") -> list[int]:
    async with client(app) as c:
        return [(await c.request(method, path)).status_code for _ in range(n)]


def fastapi_app() -> FastAPI:
    app = FastAPI()
    router = APIRouter(prefix="/items")

    @router.get("/{item_id}")
    @rate_limit("2/minute")
    async def get_item(item_id: int) -> dict[str, int]:
        return {"id": item_id}

    @rate_limit("1/minute", name="create")
    @router.post("/")
    async def create_item() -> dict[str, bool]:
        return {"created": True}

    @router.get("/")
    async def list_items() -> list[int]:
        return [1, 2]

    outer = APIRouter(prefix="/v1")
    outer.include_router(router)
    app.include_router(outer)

    @app.get("/direct")
    @rate_limit("1/minute")
    @rate_limit("5/hour", key="global")
    async def direct() -> str:
        return "x"

    app.add_middleware(RateLimitMiddleware, clock=ManualClock(100.0))
    return app


async def test_fastapi_router_and_include_router_limits() -> None:
    app = fastapi_app()
    async with client(app) as c:
        first = await c.get("/v1/items/1")
        assert first.status_code == 200 and first.json() == {"id": 1}
        assert first.headers["ratelimit-policy"] == '"get_item";q=2;w=60'
        # path parameters do not split the limit: the endpoint counts as one
        assert (await c.get("/v1/items/2")).status_code == 200
        rejected = await c.get("/v1/items/3")
        assert rejected.status_code == 429
        assert rejected.json()["violated_policies"] == ["get_item"]
        assert rejected.headers["content-type"] == "application/problem+json"
        assert [(await c.post("/v1/items/")).status_code for _ in range(2)] == [200, 429]
        # an undecorated route of the same router is not limited
        assert [(await c.get("/v1/items/")).status_code for _ in range(5)] == [200] * 5
        assert "ratelimit" not in (await c.get("/v1/items/")).headers
        # stacked decorators: two rules on one endpoint
        ok = await c.get("/direct")
        assert set(ok.headers["ratelimit-policy"].split(", ")) == {
            '"direct";q=5;w=3600',  # decorators apply bottom-up
            '"direct#2";q=1;w=60',
        }
        assert (await c.get("/direct")).status_code == 429
        # unknown paths (404) are not limited by endpoint rules
        assert [(await c.get("/nope")).status_code for _ in range(3)] == [404] * 3


async def sub_home(request: Request) -> Response:
    return PlainTextResponse("sub")


async def test_starlette_routes_and_mounted_apps() -> None:
    @rate_limit("1/minute")
    async def home(request: Request) -> Response:
        return PlainTextResponse("home")

    async def free(request: Request) -> Response:
        return PlainTextResponse("free")

    limited_sub_app = rate_limit("2/minute", name="admin")(Starlette(routes=[Route("/", sub_home)]))

    @rate_limit("1/minute", name="deep")
    async def deep(request: Request) -> Response:
        return PlainTextResponse("deep")

    app = Starlette(
        routes=[
            Route("/", home),
            Route("/free", free),
            Mount("/admin", app=limited_sub_app),
            Mount("/api", routes=[Mount("/v2", routes=[Route("/deep", deep)])]),
        ],
        middleware=[Middleware(RateLimitMiddleware, rules=[Rule("10/minute", name="site")], clock=ManualClock(5.0))],
    )
    assert await statuses(app, "/", 2) == [200, 429]
    assert await statuses(app, "/free", 3) == [200, 200, 200]
    assert await statuses(app, "/admin/", 3) == [200, 200, 429]
    assert await statuses(app, "/api/v2/deep", 2) == [200, 429]
    async with client(app) as c:
        response = await c.get("/free")
        assert response.headers["ratelimit-policy"] == '"site";q=10;w=60'
        # the global rule counted the 8 admitted requests, not the 3 rejected ones
        assert response.headers["ratelimit"] == '"site";r=2;t=55'
        assert [(await c.get("/free")).status_code for _ in range(2)] == [200, 200]
        rejected = await c.get("/free")
        assert rejected.status_code == 429 and rejected.json()["violated_policies"] == ["site"]


async def test_callables_receive_the_request() -> None:
    """Callables get a Starlette HTTPConnection: ``request.headers``, ``request.client``, ``request["path"]``."""

    def api_key(request: HTTPConnection) -> str | None:
        assert request["path"] == "/" and request.client is not None
        return request.headers.get("x-api-key")

    async def home(request: Request) -> Response:
        return PlainTextResponse("home")

    app = Starlette(
        routes=[Route("/", home)],
        middleware=[Middleware(RateLimitMiddleware, rules=[Rule("1/minute", key=api_key)])],
    )
    async with client(app) as c:
        assert (await c.get("/", headers={"x-api-key": "a"})).status_code == 200
        assert (await c.get("/", headers={"x-api-key": "a"})).status_code == 429
        assert (await c.get("/", headers={"x-api-key": "b"})).status_code == 200

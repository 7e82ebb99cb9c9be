"""ProblemDetailsMiddleware added to Starlette and FastAPI apps with ``add_middleware``."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from fastapi import APIRouter, FastAPI
from fastapi import HTTPException as FastAPIHTTPException
from pydantic import BaseModel
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response, StreamingResponse
from starlette.routing import Route

from asgi_resilience import Overloaded, Problem, ProblemDetailsMiddleware
from asgi_resilience.testing import ASGIHarness, http_scope
from asgi_resilience.types import Receive, Scope, Send
from tests.errors.conftest import assert_problem_shape


def client(app: Any) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://testserver")


class TagMiddleware:
    """A pure ASGI user middleware that decorates every response (like a request-id middleware)."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def tagged(message: Any) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), (b"x-tag", b"seen")]
            await send(message)

        await self.app(scope, receive, tagged)


async def boom(request: Request) -> Response:
    raise ValueError("database password is hunter2")


async def not_found(request: Request) -> Response:
    raise HTTPException(404, detail="No such order", headers={"X-Order": "12"})


async def plain_404(request: Request) -> Response:
    raise HTTPException(404)


async def server_http_500(request: Request) -> Response:
    raise HTTPException(500, detail="upstream broke")


async def overloaded(request: Request) -> Response:
    raise Overloaded(retry_after=3)


async def problem(request: Request) -> Response:
    raise Problem(402, type="payment-required", detail="Top up your balance", balance=0)


async def stream_then_fail(request: Request) -> Response:
    async def body() -> AsyncIterator[bytes]:
        yield b"first"
        raise ValueError("generator broke")

    return StreamingResponse(body())


def starlette_app(**kwargs: Any) -> Starlette:
    return Starlette(
        routes=[
            Route("/boom", boom),
            Route("/not-found", not_found),
            Route("/plain-404", plain_404),
            Route("/http-500", server_http_500),
            Route("/overloaded", overloaded),
            Route("/problem", problem),
            Route("/stream", stream_then_fail),
        ],
        **kwargs,
    )


async def test_starlette_http_exception_maps_with_detail_and_headers() -> None:
    app = starlette_app()
    app.add_middleware(ProblemDetailsMiddleware)
    async with client(app) as c:
        r = await c.get("/not-found")
        plain = await c.get("/plain-404")
        missing_route = await c.get("/nope")
        http_500 = await c.get("/http-500")
    assert r.status_code == 404
    assert r.headers["content-type"] == "application/problem+json"
    assert r.headers["x-order"] == "12"
    assert r.json() == {"type": "about:blank", "title": "Not Found", "status": 404, "detail": "No such order"}
    assert plain.json() == {"type": "about:blank", "title": "Not Found", "status": 404}
    assert missing_route.status_code == 404 and missing_route.headers["content-type"] == "application/problem+json"
    # Starlette alone renders HTTPException(500) as plain text and skips its 500 handler (starlette#2723)
    assert http_500.status_code == 500 and http_500.json()["detail"] == "upstream broke"
    for resp in (r, plain, missing_route, http_500):
        assert_problem_shape(resp.json(), resp.status_code)


async def test_starlette_unknown_exception_is_a_redacted_500() -> None:
    app = starlette_app()
    app.add_middleware(ProblemDetailsMiddleware)
    async with client(app) as c:
        r = await c.get("/boom")
    assert r.status_code == 500
    assert "hunter2" not in r.text and "Traceback" not in r.text
    assert_problem_shape(r.json(), 500)


async def test_starlette_debug_app_still_gets_problem_json() -> None:
    app = starlette_app(debug=True)
    app.add_middleware(ProblemDetailsMiddleware, debug=True)
    async with client(app) as c:
        r = await c.get("/boom", headers={"accept": "text/html"})
    assert r.status_code == 500
    assert r.headers["content-type"] == "application/problem+json"
    assert r.json()["detail"] == "database password is hunter2"


async def test_resilience_errors_and_problems_from_starlette_routes() -> None:
    app = starlette_app()
    app.add_middleware(ProblemDetailsMiddleware, type_base="https://example.com/p/")
    async with client(app) as c:
        r = await c.get("/overloaded")
        p = await c.get("/problem")
    assert (r.status_code, r.headers["retry-after"], r.json()["type"]) == (503, "3", "https://example.com/p/overloaded")
    assert p.json() == {
        "type": "https://example.com/p/payment-required",
        "title": "Payment Required",
        "status": 402,
        "detail": "Top up your balance",
        "balance": 0,
    }


async def test_cors_and_user_middleware_inside_decorate_a_mapped_500() -> None:
    app = starlette_app()
    app.add_middleware(TagMiddleware)
    app.add_middleware(CORSMiddleware, allow_origins=["https://front.example"])
    app.add_middleware(ProblemDetailsMiddleware)  # added last: outermost, CORS and TagMiddleware inside
    async with client(app) as c:
        r = await c.get("/boom", headers={"origin": "https://front.example"})
        r404 = await c.get("/not-found", headers={"origin": "https://front.example"})
    assert r.status_code == 500
    assert r.headers["access-control-allow-origin"] == "https://front.example"
    assert r.headers["x-tag"] == "seen"
    assert r404.headers["access-control-allow-origin"] == "https://front.example"
    assert_problem_shape(r.json(), 500)


async def test_user_registered_handlers_are_left_alone() -> None:
    async def mine(request: Request, exc: Exception) -> Response:
        return PlainTextResponse("mine", status_code=418)

    app = starlette_app(exception_handlers={HTTPException: mine, Exception: mine})
    app.add_middleware(ProblemDetailsMiddleware)
    async with client(app) as c:
        r = await c.get("/not-found")
    assert (r.status_code, r.text) == (418, "mine")
    # The app-level Exception handler belongs to Starlette's outermost ServerErrorMiddleware,
    # so an unknown error is not taken over by us inside; ours still answers from the outside.
    assert app.exception_handlers[Exception] is mine


async def test_starlette_app_wrapped_directly() -> None:
    app = ProblemDetailsMiddleware(starlette_app())
    async with client(app) as c:
        r = await c.get("/not-found")
    assert r.status_code == 404 and r.json()["detail"] == "No such order"


async def test_exception_in_streaming_body_after_start_reaches_the_server() -> None:
    app = starlette_app()
    app.add_middleware(ProblemDetailsMiddleware)
    h = ASGIHarness()
    # older Starlette releases raise it from a task group, wrapped in an ExceptionGroup
    with pytest.raises(Exception) as raised:
        await h.run(app, http_scope("GET", "/stream"))
    exc: BaseException = raised.value
    while len(getattr(exc, "exceptions", ())) == 1:
        exc = exc.exceptions[0]  # type: ignore[attr-defined]
    assert isinstance(exc, ValueError) and str(exc) == "generator broke"
    assert h.start_count == 1
    assert h.status == 200
    assert not h.complete


class Item(BaseModel):
    name: str
    price: float


def fastapi_app() -> FastAPI:
    app = FastAPI()
    router = APIRouter(prefix="/api")

    @router.post("/items")
    async def create(item: Item) -> dict[str, str]:
        return {"name": item.name}

    @router.get("/secret")
    async def secret() -> None:
        raise FastAPIHTTPException(403, detail="Not yours", headers={"WWW-Authenticate": "Bearer"})

    @router.get("/structured")
    async def structured() -> None:
        raise FastAPIHTTPException(400, detail={"code": "E12", "field": "name"})

    @router.get("/crash")
    async def crash() -> None:
        raise RuntimeError("secret internals")

    app.include_router(router)
    return app


async def test_fastapi_http_exception_and_validation_error() -> None:
    app = fastapi_app()
    app.add_middleware(ProblemDetailsMiddleware)
    async with client(app) as c:
        forbidden = await c.get("/api/secret")
        structured = await c.get("/api/structured")
        invalid = await c.post("/api/items", json={"name": 3, "price": "cheap", "password": "hunter2"})
        crash = await c.get("/api/crash")
        ok = await c.post("/api/items", json={"name": "pen", "price": 1.5})
    assert ok.status_code == 200 and ok.json() == {"name": "pen"}
    assert forbidden.status_code == 403
    assert forbidden.headers["www-authenticate"] == "Bearer"
    assert forbidden.json()["detail"] == "Not yours"
    assert structured.json()["data"] == {"code": "E12", "field": "name"}
    assert invalid.status_code == 422
    assert invalid.headers["content-type"] == "application/problem+json"
    body = invalid.json()
    assert body["type"] == "validation-error"
    locations = sorted(tuple(e["loc"]) for e in body["errors"])
    assert locations == [("body", "name"), ("body", "price")]
    assert all({"loc", "msg", "type"} <= set(e) for e in body["errors"])
    assert "hunter2" not in invalid.text and "cheap" not in invalid.text  # input is not echoed
    assert crash.status_code == 500 and "secret internals" not in crash.text
    for resp in (forbidden, structured, invalid, crash):
        assert_problem_shape(resp.json(), resp.status_code)


async def test_fastapi_validation_error_echoes_input_only_in_debug() -> None:
    app = fastapi_app()
    app.add_middleware(ProblemDetailsMiddleware, debug=True)
    async with client(app) as c:
        invalid = await c.post("/api/items", json={"name": "pen", "price": "cheap"})
    assert invalid.json()["errors"][0]["input"] == "cheap"

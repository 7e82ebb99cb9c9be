"""TimeoutMiddleware with Starlette and FastAPI: the decorator, sync endpoints, background tasks."""

from __future__ import annotations

import threading
import time
from typing import Any

import anyio
import httpx
import pytest
from fastapi import APIRouter, FastAPI
from starlette.applications import Starlette
from starlette.background import BackgroundTask
from starlette.requests import Request
from starlette.responses import PlainTextResponse, StreamingResponse
from starlette.routing import Route

from asgi_resilience import ConcurrencyLimitMiddleware, ConfigurationError, TimeoutMiddleware, remaining_time, timeout
from asgi_resilience.testing import ASGIHarness, http_scope
from asgi_resilience.timeouts import timeout as timeout_from_subpackage


def client(app: Any) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://testserver")


def test_decorator_is_the_same_function_at_both_import_paths() -> None:
    assert timeout is timeout_from_subpackage
    with pytest.raises(ConfigurationError):
        timeout(0)


async def test_decorator_overrides_the_default_and_none_exempts() -> None:
    @timeout(0.05)
    async def short(request: Request) -> PlainTextResponse:
        await anyio.sleep(5)
        return PlainTextResponse("late")  # pragma: no cover

    @timeout(None)
    async def exempt(request: Request) -> PlainTextResponse:
        return PlainTextResponse(repr(remaining_time()))

    async def default(request: Request) -> PlainTextResponse:
        remaining = remaining_time()
        assert remaining is not None
        return PlainTextResponse(f"{remaining:.0f}")

    app = Starlette(routes=[Route("/short", short), Route("/exempt", exempt), Route("/default", default)])
    app.add_middleware(TimeoutMiddleware, timeout=30.0, rules={"/short": 60.0})
    async with client(app) as c:
        response = await c.get("/short")
        assert response.status_code == 504
        assert response.headers["content-type"] == "application/problem+json"
        assert response.json()["type"] == "timeout"
        assert (await c.get("/exempt")).text == "None"
        assert (await c.get("/default")).text == "30"


async def test_decorator_on_a_fastapi_router_endpoint() -> None:
    router = APIRouter(prefix="/api")

    @router.get("/slow")
    @timeout(0.05)
    async def slow() -> dict[str, str]:
        await anyio.sleep(5)
        return {}  # pragma: no cover

    app = FastAPI()
    app.include_router(router)
    app.add_middleware(TimeoutMiddleware, timeout=30.0)
    async with client(app) as c:
        response = await c.get("/api/slow")
    assert response.status_code == 504


async def test_sync_endpoint_gets_its_504_on_time_and_its_thread_finishes() -> None:
    finished = threading.Event()

    def blocking(request: Request) -> PlainTextResponse:
        time.sleep(0.4)  # a thread cannot be cancelled
        finished.set()
        return PlainTextResponse("late")

    app = Starlette(routes=[Route("/", blocking)])
    mw = TimeoutMiddleware(app, timeout=0.1)
    h = ASGIHarness()
    sent_at: list[float] = []

    async def send(message: Any) -> None:
        sent_at.append(time.monotonic())
        await h.send(message)

    started = time.monotonic()
    await mw(http_scope(), h.receive, send)
    assert finished.is_set()  # the request's task ended only when the thread did
    assert h.types == ["http.response.start", "http.response.body"]  # the late 200 was dropped
    assert h.status == 504
    assert sent_at[0] - started < 0.3  # on time, not after the thread's 0.4 s


async def test_starlette_background_task_outlives_the_deadline() -> None:
    events: list[str] = []

    async def work() -> None:
        await anyio.sleep(0.15)
        events.append("done")

    async def endpoint(request: Request) -> PlainTextResponse:
        return PlainTextResponse("ok", background=BackgroundTask(work))

    app = Starlette(routes=[Route("/", endpoint)])
    h = await ASGIHarness().run(TimeoutMiddleware(app, timeout=0.05), http_scope(app=app))
    assert h.types == ["http.response.start", "http.response.body"]
    assert (h.status, h.body) == (200, b"ok")
    assert events == ["done"]


async def test_starlette_streaming_response_in_complete_mode_is_aborted_without_a_second_start() -> None:
    async def chunks() -> Any:
        yield b"a"
        await anyio.sleep(5)
        yield b"b"  # pragma: no cover

    async def endpoint(request: Request) -> StreamingResponse:
        return StreamingResponse(chunks())

    app = Starlette(routes=[Route("/", endpoint)])
    h = ASGIHarness()
    with pytest.raises(Exception) as info:
        await h.run(TimeoutMiddleware(app, timeout=0.05, mode="complete"), http_scope(app=app))
    assert "DeadlineExceeded" in repr(info.value)
    assert h.start_count == 1 and h.status == 200
    assert not h.complete


async def test_decorator_is_found_when_the_middleware_wraps_the_app_from_outside() -> None:
    @timeout(0.05)
    async def slow(request: Request) -> PlainTextResponse:
        await anyio.sleep(5)
        return PlainTextResponse("late")  # pragma: no cover

    app = Starlette(routes=[Route("/slow", slow)])
    wrapped = TimeoutMiddleware(ConcurrencyLimitMiddleware(app, max_concurrent=5), timeout=30.0)
    started = time.monotonic()
    async with client(wrapped) as c:
        response = await c.get("/slow")
    assert response.status_code == 504
    assert time.monotonic() - started < 5
    assert TimeoutMiddleware(lambda *a: None, timeout=1.0).limit_for(http_scope()) == 1.0  # type: ignore[arg-type]

"""Every endpoint decorator and every problem mapping, on Starlette, FastAPI, Litestar and Django.

Each framework serves the same endpoints (``@cache``, ``@timeout``, ``@rate_limit``, ``Problem``, a
``ResilienceError``, the framework's own not-found/forbidden/validation errors, an unknown exception,
an unmatched URL) behind ``resilient(app, ...)`` with its integration where it needs one.
"""

from __future__ import annotations

import asyncio
import time
import warnings
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Annotated, Any

import django
import httpx
import pytest
from django.conf import settings
from django.test.utils import override_settings
from fastapi import FastAPI
from fastapi import HTTPException as FastAPIHTTPException
from litestar import Controller, Litestar, get
from litestar.exceptions import NotFoundException, PermissionDeniedException
from litestar.params import QueryParameter
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from asgi_resilience import Overloaded, Problem, cache, rate_limit, resilient, timeout
from asgi_resilience.integrations.litestar import ResiliencePlugin

FRAMEWORKS = ["starlette", "fastapi", "litestar", "django"]


def starlette_app() -> Any:
    calls = {"n": 0}

    @cache(ttl=30)
    async def cached(request: Request) -> Response:
        calls["n"] += 1
        return JSONResponse({"calls": calls["n"]})

    @timeout(0.2)
    async def slow(request: Request) -> Response:
        await asyncio.sleep(3)
        return JSONResponse({})

    @rate_limit("2/minute")
    async def limited(request: Request) -> Response:
        return JSONResponse({"ok": True})

    async def problem(request: Request) -> Response:
        raise Problem(409, type="out-of-stock", detail="sold out", item=12)

    async def overloaded(request: Request) -> Response:
        raise Overloaded(retry_after=3)

    async def missing(request: Request) -> Response:
        raise HTTPException(404)

    async def forbidden(request: Request) -> Response:
        raise HTTPException(403)

    async def invalid(request: Request) -> Response:
        raise HTTPException(400, detail="count must be a whole number")

    async def boom(request: Request) -> Response:
        raise RuntimeError("secret database password")

    handlers = [cached, slow, limited, problem, overloaded, missing, forbidden, invalid, boom]
    return Starlette(routes=[Route(f"/{h.__name__}", h) for h in handlers])


def fastapi_app() -> Any:
    app = FastAPI()
    calls = {"n": 0}

    @app.get("/cached")
    @cache(ttl=30)
    async def cached() -> dict[str, int]:
        calls["n"] += 1
        return {"calls": calls["n"]}

    @app.get("/slow")
    @timeout(0.2)
    async def slow() -> dict[str, bool]:
        await asyncio.sleep(3)
        return {}

    @app.get("/limited")
    @rate_limit("2/minute")
    async def limited() -> dict[str, bool]:
        return {"ok": True}

    @app.get("/problem")
    async def problem() -> None:
        raise Problem(409, type="out-of-stock", detail="sold out", item=12)

    @app.get("/overloaded")
    async def overloaded() -> None:
        raise Overloaded(retry_after=3)

    @app.get("/missing")
    async def missing() -> None:
        raise FastAPIHTTPException(404)

    @app.get("/forbidden")
    async def forbidden() -> None:
        raise FastAPIHTTPException(403)

    @app.get("/invalid")
    async def invalid(count: int) -> dict[str, int]:
        return {"count": count}

    @app.get("/boom")
    async def boom() -> None:
        raise RuntimeError("secret database password")

    return app


def litestar_app(*, plugin: bool = True) -> Any:
    calls = {"n": 0, "controller": 0}

    @get("/cached")
    @cache(ttl=30)
    async def cached() -> dict[str, int]:
        calls["n"] += 1
        return {"calls": calls["n"]}

    @timeout(0.2)  # above @get: recorded in the route handler's opt
    @get("/slow")
    async def slow() -> dict[str, bool]:
        await asyncio.sleep(3)
        return {}

    @rate_limit("2/minute")
    @get("/limited")
    async def limited() -> dict[str, bool]:
        return {"ok": True}

    class Items(Controller):
        path = "/items"

        @get("/cached")
        @cache(ttl=30)
        async def cached_view(self) -> dict[str, int]:
            calls["controller"] += 1
            return {"calls": calls["controller"]}

    @get("/problem")
    async def problem() -> None:
        raise Problem(409, type="out-of-stock", detail="sold out", item=12)

    @get("/overloaded")
    async def overloaded() -> None:
        raise Overloaded(retry_after=3)

    @get("/missing")
    async def missing() -> None:
        raise NotFoundException()

    @get("/forbidden")
    async def forbidden() -> None:
        raise PermissionDeniedException()

    @get("/invalid")
    async def invalid(count: Annotated[int, QueryParameter()]) -> dict[str, int]:
        return {"count": count}

    @get("/boom")
    async def boom() -> None:
        raise RuntimeError("secret database password")

    handlers = [cached, slow, limited, Items, problem, overloaded, missing, forbidden, invalid, boom]
    return Litestar(route_handlers=handlers, plugins=[ResiliencePlugin()] if plugin else [])


DJANGO_MIDDLEWARE = ["asgi_resilience.integrations.django.ProblemDetailsMiddleware"]


@pytest.fixture(scope="module")
def django_project() -> Iterator[None]:
    if not settings.configured:
        settings.configure(
            DEBUG=False,
            SECRET_KEY="test-only",
            ALLOWED_HOSTS=["*"],
            ROOT_URLCONF="tests.integrations.django_views",
            MIDDLEWARE=DJANGO_MIDDLEWARE,
            INSTALLED_APPS=[],
        )
        django.setup()
    with override_settings(ROOT_URLCONF="tests.integrations.django_views", MIDDLEWARE=DJANGO_MIDDLEWARE):
        yield


def django_app() -> Any:
    from asgi_resilience.integrations.django import get_asgi_application

    return get_asgi_application()


FACTORIES: dict[str, Callable[[], Any]] = {
    "starlette": starlette_app,
    "fastapi": fastapi_app,
    "litestar": litestar_app,
    "django": django_app,
}


@pytest.fixture(params=FRAMEWORKS)
async def client(request: pytest.FixtureRequest) -> AsyncIterator[httpx.AsyncClient]:
    if request.param == "django":
        request.getfixturevalue("django_project")
    app = resilient(FACTORIES[request.param](), rate_limit=True, cache=True, timeout=5.0)
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as http:
        yield http


def problem_of(response: httpx.Response, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json"
    body: dict[str, Any] = response.json()
    assert body["status"] == status
    return body


async def test_cache_decorator_stores_the_response(client: httpx.AsyncClient) -> None:
    first = await client.get("/cached")
    second = await client.get("/cached")
    assert first.json() == second.json() == {"calls": 1}
    assert "age" in second.headers


@pytest.mark.parametrize("client", ["litestar", "django"], indirect=True)
async def test_cache_decorator_on_a_class_based_view(client: httpx.AsyncClient, request: pytest.FixtureRequest) -> None:
    path = {"litestar": "/items/cached", "django": "/cached-view"}[request.node.callspec.params["client"]]
    assert [(await client.get(path)).json()["calls"] for _ in range(3)] == [1, 1, 1]


async def test_timeout_decorator_cuts_the_endpoint_short(client: httpx.AsyncClient) -> None:
    started = time.monotonic()
    response = await client.get("/slow")
    elapsed = time.monotonic() - started
    problem_of(response, 504)
    assert elapsed < 2.0  # the endpoint's 0.2 s, not the stack's 5 s (nor the endpoint's 3 s sleep)


async def test_a_timed_out_django_view_is_cancelled(django_project: None) -> None:
    from tests.integrations.django_views import CALLS

    before = CALLS["slow_cancelled"]
    app = resilient(django_app(), timeout=5.0)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as http:
        problem_of(await http.get("/slow"), 504)
    assert CALLS["slow_cancelled"] == before + 1  # the view saw the cancellation, it is not left running


async def test_django_own_handler_or_missing_middleware_warns_at_startup(django_project: None) -> None:
    from django.core.asgi import get_asgi_application

    app = resilient(get_asgi_application(), timeout=5.0)
    with override_settings(MIDDLEWARE=[]), pytest.warns(RuntimeWarning) as record:
        with pytest.raises(ValueError, match="lifespan"):  # Django has no lifespan; servers carry on
            await run_lifespan(app)
    messages = " ".join(str(warning.message) for warning in record)
    assert "get_asgi_application()" in messages and "settings.MIDDLEWARE" in messages


async def test_rate_limit_decorator_limits_the_endpoint(client: httpx.AsyncClient) -> None:
    statuses = [(await client.get("/limited")).status_code for _ in range(3)]
    assert statuses == [200, 200, 429]
    limited = await client.get("/limited")
    problem_of(limited, 429)
    assert int(limited.headers["retry-after"]) > 0


async def test_problem_and_resilience_errors(client: httpx.AsyncClient) -> None:
    body = problem_of(await client.get("/problem"), 409)
    assert body["type"] == "out-of-stock" and body["detail"] == "sold out" and body["item"] == 12
    overloaded = await client.get("/overloaded")
    problem_of(overloaded, 503)
    assert overloaded.headers["retry-after"] == "3"


async def test_framework_not_found_and_forbidden(client: httpx.AsyncClient) -> None:
    problem_of(await client.get("/missing"), 404)
    problem_of(await client.get("/forbidden"), 403)
    problem_of(await client.get("/no/such/url"), 404)


async def test_validation_errors(client: httpx.AsyncClient, request: pytest.FixtureRequest) -> None:
    framework = request.node.callspec.params["client"]
    status = {"starlette": 400, "fastapi": 422, "litestar": 400, "django": 400}[framework]
    body = problem_of(await client.get("/invalid?count=abc"), status)
    if framework != "starlette":  # Starlette has no validation errors of its own
        assert body["type"] == "validation-error"
        assert body["errors"] and all("count" in error["loc"] for error in body["errors"])


async def test_unknown_exception_is_a_redacted_500(client: httpx.AsyncClient) -> None:
    with warnings.catch_warnings():
        response = await client.get("/boom")
    body = problem_of(response, 500)
    assert "secret" not in response.text and "Traceback" not in response.text
    assert body["title"] == "Internal Server Error"


async def run_lifespan(app: Any) -> list[dict[str, Any]]:
    messages: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "lifespan.startup"} if not messages else {"type": "lifespan.shutdown"}

    async def send(message: dict[str, Any]) -> None:
        messages.append(message)

    await app({"type": "lifespan", "asgi": {"version": "3.0"}, "state": {}}, receive, send)
    return messages


async def test_litestar_without_the_plugin_warns_once_at_startup() -> None:
    app = resilient(litestar_app(plugin=False), timeout=5.0)
    with pytest.warns(RuntimeWarning, match="ResiliencePlugin") as record:
        messages = await run_lifespan(app)
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as http:
            assert (await http.get("/cached")).status_code == 200
    assert len(record) == 1
    assert messages[0]["type"] == "lifespan.startup.complete"

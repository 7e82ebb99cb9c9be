"""ProblemDetailsMiddleware on raw ASGI apps, with exact message sequences."""

from __future__ import annotations

import builtins
import logging
from typing import Any

import pytest

from asgi_resilience import (
    ConfigurationError,
    Overloaded,
    Problem,
    ProblemDetails,
    ProblemDetailsMiddleware,
    RateLimitExceeded,
)
from asgi_resilience.testing import ASGIHarness, http_scope
from asgi_resilience.types import Receive, Scope, Send
from tests.errors.conftest import assert_problem_shape


def raising(exc: BaseException) -> Any:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        raise exc

    return app


async def ok_app(scope: Scope, receive: Receive, send: Send) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
    await send({"type": "http.response.body", "body": b"ok"})


class AppError(Exception):
    pass


class NotFoundError(AppError):
    pass


class GoneError(NotFoundError):
    pass


async def run(app: Any, **scope: Any) -> ASGIHarness:
    return await ASGIHarness().run(app, http_scope(**scope))


async def test_success_passes_through_untouched() -> None:
    h = await run(ProblemDetailsMiddleware(ok_app))
    assert h.types == ["http.response.start", "http.response.body"]
    assert (h.status, h.body) == (200, b"ok")


async def test_problem_raised_by_app_is_rendered_exactly() -> None:
    app = ProblemDetailsMiddleware(raising(Problem(409, type="out-of-stock", detail="sold out", item=12)))
    h = await run(app)
    assert h.types == ["http.response.start", "http.response.body"]
    assert h.status == 409
    assert h.header("content-type") == "application/problem+json"
    assert h.json() == {"type": "out-of-stock", "title": "Conflict", "status": 409, "detail": "sold out", "item": 12}
    assert_problem_shape(h.json(), 409)


async def test_mro_lookup_most_specific_class_wins() -> None:
    mapping = {AppError: 400, NotFoundError: 404}
    assert (await run(ProblemDetailsMiddleware(raising(GoneError()), mapping=mapping))).status == 404
    assert (await run(ProblemDetailsMiddleware(raising(NotFoundError()), mapping=mapping))).status == 404
    assert (await run(ProblemDetailsMiddleware(raising(AppError()), mapping=mapping))).status == 400
    h = await run(ProblemDetailsMiddleware(raising(KeyError("x")), mapping=mapping))
    assert h.status == 500
    assert_problem_shape(h.json(), 500)


async def test_user_mapping_can_override_a_resilience_error_subclass() -> None:
    app = ProblemDetailsMiddleware(raising(Overloaded()), mapping={Overloaded: 429})
    assert (await run(app)).status == 429
    # ...but a mapping of a base class does not beat our more specific built-in mapping
    app = ProblemDetailsMiddleware(raising(Overloaded()), mapping={Exception: 418})
    assert (await run(app)).status == 503


async def test_callable_handlers_sync_and_async() -> None:
    def sync_handler(exc: Exception) -> Problem:
        return Problem(404, type="missing", detail=f"no {exc.args[0]}")

    async def async_handler(exc: Exception) -> ProblemDetails:
        return ProblemDetails(status=410, title="Gone for good")

    h = await run(ProblemDetailsMiddleware(raising(KeyError("user")), mapping={KeyError: sync_handler}))
    assert h.json() == {"type": "missing", "title": "Not Found", "status": 404, "detail": "no user"}
    h = await run(ProblemDetailsMiddleware(raising(KeyError("user")), mapping={KeyError: async_handler}))
    assert h.json() == {"type": "about:blank", "title": "Gone for good", "status": 410}
    h = await run(ProblemDetailsMiddleware(raising(KeyError("user")), mapping={KeyError: lambda e: 451}))
    assert h.status == 451


async def test_failing_handler_falls_back_to_500(caplog: pytest.LogCaptureFixture) -> None:
    def broken(exc: Exception) -> Problem:
        raise RuntimeError("handler bug")

    h = await run(ProblemDetailsMiddleware(raising(KeyError("x")), mapping={KeyError: broken}))
    assert h.status == 500
    assert "handler bug" not in h.body.decode()
    assert "Problem handler for KeyError failed" in caplog.text


async def test_unknown_exception_is_redacted_and_logged_once(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.ERROR, logger="asgi_resilience.errors")
    h = await run(ProblemDetailsMiddleware(raising(ValueError("password=hunter2"))))
    body = h.body.decode()
    assert h.status == 500
    assert h.json() == {"type": "about:blank", "title": "Internal Server Error", "status": 500}
    assert "hunter2" not in body and "ValueError" not in body and "Traceback" not in body
    records = [r for r in caplog.records if r.name == "asgi_resilience.errors"]
    assert len(records) == 1
    assert records[0].exc_info is not None and records[0].exc_info[0] is ValueError


async def test_debug_shows_message_and_traceback() -> None:
    h = await run(ProblemDetailsMiddleware(raising(ValueError("password=hunter2")), debug=True))
    body = h.json()
    assert h.status == 500
    assert body["detail"] == "password=hunter2"
    assert body["exception"]["type"] == "builtins.ValueError"
    assert any("Traceback" in line for line in body["exception"]["traceback"])
    assert_problem_shape(body, 500)


async def test_retry_after_and_www_authenticate_headers_are_sent() -> None:
    h = await run(ProblemDetailsMiddleware(raising(RateLimitExceeded(retry_after=0.2, violated_policies=["w"]))))
    assert h.status == 429
    assert h.header("retry-after") == "1"
    assert h.json()["violated_policies"] == ["w"]
    assert h.json()["type"] == "rate-limited"
    h = await run(ProblemDetailsMiddleware(raising(Problem(401, headers={"WWW-Authenticate": "Bearer"}))))
    assert h.header("www-authenticate") == "Bearer"
    assert_problem_shape(h.json(), 401)


async def test_type_base_applies_to_slugs() -> None:
    app = ProblemDetailsMiddleware(raising(Overloaded()), type_base="https://example.com/problems")
    assert (await run(app)).json()["type"] == "https://example.com/problems/overloaded"


async def test_accept_json_still_gets_problem_json() -> None:
    h = await run(ProblemDetailsMiddleware(raising(ValueError())), headers=[("accept", "application/json")])
    assert h.header("content-type") == "application/problem+json"
    h = await run(ProblemDetailsMiddleware(raising(ValueError())), headers=[("accept", "text/html")])
    assert h.header("content-type") == "application/problem+json"


async def test_head_request_gets_headers_but_no_body() -> None:
    h = await run(ProblemDetailsMiddleware(raising(Problem(404))), method="HEAD")
    assert h.status == 404
    assert h.body == b""
    assert int(h.header("content-length") or 0) > 0


async def test_request_id_and_trace_id_extensions() -> None:
    from opentelemetry.sdk.trace import TracerProvider

    tracer = TracerProvider().get_tracer("test")
    app = ProblemDetailsMiddleware(raising(ValueError()))
    with tracer.start_as_current_span("request") as span:
        h = await run(app, headers=[("x-request-id", "req-42")])
        expected = format(span.get_span_context().trace_id, "032x")
    assert h.json()["trace_id"] == expected
    assert h.json()["request_id"] == "req-42"
    # no active span, and a request id with control characters is ignored
    h = await run(app, headers=[("x-request-id", "bad id\x01")])
    assert "trace_id" not in h.json() and "request_id" not in h.json()
    h = await run(
        ProblemDetailsMiddleware(raising(ValueError()), request_id_header=None), headers=[("x-request-id", "r")]
    )
    assert "request_id" not in h.json()


async def test_single_exception_groups_are_unwrapped_for_lookup() -> None:
    group_type: Any = getattr(builtins, "ExceptionGroup", None)
    if group_type is None:  # Python 3.10
        from exceptiongroup import ExceptionGroup as group_type
    group = group_type("tg", [group_type("inner", [NotFoundError("x")])])
    h = await run(ProblemDetailsMiddleware(raising(group), mapping={NotFoundError: 404}))
    assert h.status == 404


async def test_exception_after_response_start_is_reraised_with_one_start(caplog: pytest.LogCaptureFixture) -> None:
    async def streaming(scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"part", "more_body": True})
        raise ValueError("mid-stream")

    h = ASGIHarness()
    with pytest.raises(ValueError, match="mid-stream"):
        await h.run(ProblemDetailsMiddleware(streaming))
    assert h.start_count == 1
    assert h.types == ["http.response.start", "http.response.body"]
    assert not h.complete  # the response is cut short, not faked complete
    assert "after the response started" in caplog.text


async def test_cancellation_is_not_swallowed() -> None:
    import anyio

    async def slow(scope: Scope, receive: Receive, send: Send) -> None:
        await anyio.sleep(10)

    h = ASGIHarness()
    with anyio.move_on_after(0.05) as cancel_scope:
        await h.run(ProblemDetailsMiddleware(slow))
    assert cancel_scope.cancelled_caught
    assert h.messages == []


@pytest.mark.parametrize("kind", ["websocket", "lifespan"])
async def test_non_http_scopes_pass_through(kind: str) -> None:
    seen: list[str] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        seen.append(scope["type"])
        raise ValueError("not ours to map")

    with pytest.raises(ValueError):
        await ProblemDetailsMiddleware(app)({"type": kind}, ASGIHarness().receive, ASGIHarness().send)
    assert seen == [kind]


def test_configuration_is_checked_at_construction() -> None:
    with pytest.raises(ConfigurationError, match="Exception subclasses"):
        ProblemDetailsMiddleware(ok_app, mapping={"KeyError": 404})  # type: ignore[dict-item]
    with pytest.raises(ConfigurationError, match="400-599"):
        ProblemDetailsMiddleware(ok_app, mapping={KeyError: 200})
    with pytest.raises(ConfigurationError, match="HTTP status or a callable"):
        ProblemDetailsMiddleware(ok_app, mapping={KeyError: "404"})  # type: ignore[dict-item]
    with pytest.raises(ConfigurationError, match="absolute URI"):
        ProblemDetailsMiddleware(ok_app, type_base="problems/")


async def test_outbound_httpx_failures_are_gateway_problems() -> None:
    import httpx

    request = httpx.Request("GET", "http://internal-billing.local:8080/charge")
    h = await run(ProblemDetailsMiddleware(raising(httpx.ReadTimeout("timed out", request=request))))
    assert (h.status, h.json()["type"]) == (504, "upstream-timeout")
    h = await run(ProblemDetailsMiddleware(raising(httpx.ConnectError("refused", request=request))))
    assert (h.status, h.json()["type"]) == (502, "upstream-error")
    assert "internal-billing" not in h.body.decode()
    assert_problem_shape(h.json(), 502)
    # our own transport errors keep their own mapping (CircuitOpenError is also an httpx.TransportError)
    from asgi_resilience import CircuitOpenError

    h = await run(ProblemDetailsMiddleware(raising(CircuitOpenError(retry_after=2, origin="http://x"))))
    assert (h.status, h.json()["type"], h.header("retry-after")) == (503, "circuit-open", "2")

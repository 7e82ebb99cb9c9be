"""Sequencing with respx, hooks, per-request overrides, deadlines, validation, client helpers."""

from __future__ import annotations

import logging
import time
from typing import Any

import httpx
import pytest
import respx
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

from asgi_resilience import (
    AsyncCircuitBreakerTransport,
    AsyncResilientTransport,
    AsyncRetryTransport,
    BreakerPolicy,
    CircuitBreakerTransport,
    CircuitOpenError,
    ConfigurationError,
    ResilientTransport,
    RetryPolicy,
    RetryTransport,
    TimeoutMiddleware,
    async_resilient_client,
    resilient_client,
)
from asgi_resilience._deadline import deadline_scope
from asgi_resilience.client import BreakerTransition, RetryEvent

from .conftest import Served

FAST = RetryPolicy(backoff_initial=0.001, backoff_max=0.002, budget=None)
URL = "http://api.test/items"


@respx.mock
async def test_sequence_connect_timeout_503_200() -> None:
    route = respx.get(URL).mock(side_effect=[httpx.ConnectTimeout("t"), httpx.Response(503), httpx.Response(200)])
    async with httpx.AsyncClient(transport=AsyncResilientTransport(retry=FAST)) as client:
        response = await client.get(URL)
    assert response.status_code == 200 and route.call_count == 3
    assert [r.outcome for r in response.extensions["resilience"]] == ["timeout", "failure", "success"]


@respx.mock
def test_sync_sequence_and_read_timeout_rules() -> None:
    route = respx.get(URL).mock(side_effect=[httpx.ReadTimeout("t"), httpx.Response(200)])
    post = respx.post(URL).mock(side_effect=[httpx.ReadTimeout("t"), httpx.Response(200)])
    with httpx.Client(transport=RetryTransport(policy=FAST)) as client:
        assert client.get(URL).status_code == 200
        with pytest.raises(httpx.ReadTimeout):
            client.post(URL, content=b"x")
    assert route.call_count == 2 and post.call_count == 1


@respx.mock
async def test_fatal_errors_are_not_retried() -> None:
    route = respx.get(URL).mock(side_effect=httpx.UnsupportedProtocol("nope"))
    async with httpx.AsyncClient(transport=AsyncRetryTransport(policy=FAST)) as client:
        with pytest.raises(httpx.UnsupportedProtocol):
            await client.get(URL)
    assert route.call_count == 1


@respx.mock
async def test_per_request_overrides() -> None:
    route = respx.get(URL).mock(return_value=httpx.Response(503))
    async with httpx.AsyncClient(transport=AsyncRetryTransport(policy=FAST)) as client:
        await client.get(URL, extensions={"retry": False})
        assert route.call_count == 1
        await client.get(URL, extensions={"retry": 2})
        assert route.call_count == 3
        await client.get(URL, extensions={"retry": 5})  # more than the policy's 3: the request decides
        assert route.call_count == 8
        route.reset()
        await client.get(URL, extensions={"retry": RetryPolicy(attempts=4, backoff_initial=0, budget=None)})
        assert route.call_count == 4
        with pytest.raises(ConfigurationError, match=r'extensions\["retry"\]'):
            await client.get(URL, extensions={"retry": "yes"})
        with pytest.raises(ConfigurationError, match="total_timeout"):
            await client.get(URL, extensions={"total_timeout": -1})


@respx.mock
async def test_breaker_bypass_per_request() -> None:
    respx.get(URL).mock(return_value=httpx.Response(500))
    transport = AsyncCircuitBreakerTransport(policy=BreakerPolicy(minimum_calls=1))
    async with httpx.AsyncClient(transport=transport) as client:
        await client.get(URL)
        with pytest.raises(CircuitOpenError):
            await client.get(URL)
        assert (await client.get(URL, extensions={"circuit_breaker": False})).status_code == 500


@respx.mock
async def test_attempt_timeouts_are_pushed_into_extensions() -> None:
    seen: list[dict[str, Any]] = []

    def record(request: httpx.Request) -> httpx.Response:
        seen.append(request.extensions["timeout"])
        return httpx.Response(200)

    respx.get(URL).mock(side_effect=record)
    transport = AsyncRetryTransport(policy=FAST, total_timeout=20.0, attempt_timeout=2.0)
    async with httpx.AsyncClient(transport=transport, timeout=httpx.Timeout(5.0, connect=1.0)) as client:
        await client.get(URL)
        with deadline_scope(time.monotonic() + 0.5):
            await client.get(URL)
    assert seen[0] == {"connect": 1.0, "read": 2.0, "write": 2.0, "pool": 2.0}
    assert all(0 < v <= 0.5 for v in seen[1].values())


@respx.mock
async def test_inbound_deadline_already_passed_sends_nothing() -> None:
    route = respx.get(URL).mock(return_value=httpx.Response(200))
    async with httpx.AsyncClient(transport=AsyncRetryTransport(policy=FAST)) as client:
        with deadline_scope(time.monotonic() - 1), pytest.raises(httpx.ConnectTimeout, match="deadline"):
            await client.get(URL)
    assert route.call_count == 0


async def test_deadline_scope_caps_an_outbound_call(origin: Served) -> None:
    transport = AsyncResilientTransport(retry=FAST, total_timeout=30.0, attempt_timeout=10.0)
    async with httpx.AsyncClient(transport=transport, base_url=origin.url) as client:
        started = time.monotonic()
        with deadline_scope(time.monotonic() + 0.3), pytest.raises(httpx.TimeoutException):
            await client.get("/slow", params={"ms": 3000})
    assert time.monotonic() - started < 1.5


def test_deadline_scope_caps_a_sync_outbound_call(origin: Served) -> None:
    transport = ResilientTransport(retry=FAST, total_timeout=30.0, attempt_timeout=10.0)
    with httpx.Client(transport=transport, base_url=origin.url) as client:
        started = time.monotonic()
        with deadline_scope(time.monotonic() + 0.3), pytest.raises(httpx.TimeoutException):
            client.get("/slow", params={"ms": 3000})
    assert time.monotonic() - started < 1.5


async def test_timeout_middleware_deadline_caps_outbound_calls(origin: Served) -> None:
    """A handler under TimeoutMiddleware calls a slow origin: the call ends with the request."""
    durations: list[float] = []
    sync_client = httpx.Client(transport=ResilientTransport(retry=FAST), base_url=origin.url)
    async_client = httpx.AsyncClient(transport=AsyncResilientTransport(retry=FAST), base_url=origin.url)

    def threaded(request: Request) -> Response:  # threads cannot be cancelled: only the cap stops it
        started = time.monotonic()
        try:
            sync_client.get("/slow", params={"ms": 3000})
        except httpx.TimeoutException:
            return PlainTextResponse("degraded")
        finally:
            durations.append(time.monotonic() - started)
        return PlainTextResponse("done")  # pragma: no cover - the origin is slower than the deadline

    async def coroutine(request: Request) -> Response:
        started = time.monotonic()
        try:
            await async_client.get("/slow", params={"ms": 3000})
        finally:
            durations.append(time.monotonic() - started)
        return PlainTextResponse("done")  # pragma: no cover

    app = TimeoutMiddleware(Starlette(routes=[Route("/threaded", threaded), Route("/async", coroutine)]), timeout=0.4)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://svc") as client:
        started = time.monotonic()
        first = await client.get("/threaded")
        second = await client.get("/async")
        elapsed = time.monotonic() - started
    sync_client.close()  # noqa: ASYNC212 - nothing in flight any more
    await async_client.aclose()
    assert first.status_code in (200, 504) and second.status_code == 504
    assert len(durations) == 2 and all(d < 1.2 for d in durations), durations
    assert elapsed < 3.0


# -- hooks ---------------------------------------------------------------------------------------


@respx.mock
async def test_async_and_sync_hooks_and_failing_hooks_are_harmless(caplog: pytest.LogCaptureFixture) -> None:
    respx.get(URL).mock(side_effect=[httpx.Response(503), httpx.Response(503), httpx.Response(503)])
    seen: list[RetryEvent] = []

    async def on_retry(event: RetryEvent) -> None:
        seen.append(event)

    def on_give_up(event: RetryEvent) -> None:
        seen.append(event)
        raise RuntimeError("hook bug")

    transport = AsyncRetryTransport(policy=FAST, on_retry=on_retry, on_give_up=on_give_up)
    async with httpx.AsyncClient(transport=transport) as client:
        with caplog.at_level(logging.ERROR, logger="asgi_resilience.client"):
            response = await client.get(URL + "?secret=1")
    assert response.status_code == 503
    assert [(e.kind, e.attempt) for e in seen] == [("retry", 1), ("retry", 2), ("give_up", 3)]
    assert seen[-1].reason == "attempts" and seen[0].path == "/items" and seen[0].origin == "http://api.test:80"
    assert "hook" in caplog.text


@respx.mock
def test_default_logging_hooks(caplog: pytest.LogCaptureFixture) -> None:
    respx.get(URL).mock(return_value=httpx.Response(500))
    transport = ResilientTransport(
        retry=RetryPolicy(statuses={500}, backoff_initial=0, budget=None), breaker=BreakerPolicy(minimum_calls=3)
    )
    with httpx.Client(transport=transport) as client, caplog.at_level(logging.INFO, logger="asgi_resilience.client"):
        client.get(URL + "?token=abc")
    # only our records: httpx logs its own request line (query included) when something turned its INFO on
    ours = "\n".join(r.getMessage() for r in caplog.records if r.name.startswith("asgi_resilience"))
    assert "retrying GET http://api.test:80/items" in ours
    assert "circuit breaker for http://api.test:80: closed -> open" in ours
    assert "token" not in ours  # query strings are never logged


def test_async_hook_on_sync_transport_is_a_configuration_error() -> None:
    async def hook(event: object) -> None: ...

    with pytest.raises(ConfigurationError, match="synchronous"):
        RetryTransport(on_retry=hook)
    with pytest.raises(ConfigurationError, match="synchronous"):
        CircuitBreakerTransport(on_transition=hook)
    with pytest.raises(ConfigurationError, match="callable"):
        AsyncRetryTransport(on_give_up=42)  # type: ignore[arg-type]


@respx.mock
def test_sync_transition_hook() -> None:
    respx.get(URL).mock(return_value=httpx.Response(502))
    transitions: list[BreakerTransition] = []
    transport = CircuitBreakerTransport(policy=BreakerPolicy(minimum_calls=2), on_transition=transitions.append)
    with httpx.Client(transport=transport) as client:
        client.get(URL)
        client.get(URL)
        with pytest.raises(CircuitOpenError):
            client.get(URL)
    assert [(t.from_state.value, t.to_state.value, t.reason) for t in transitions] == [
        ("closed", "open", "failure_rate")
    ]


@respx.mock
async def test_body_read_failure_counts_for_the_breaker() -> None:
    class Broken(httpx.AsyncByteStream):
        async def __aiter__(self) -> Any:
            yield b"partial"
            raise httpx.ReadError("connection lost mid-body")

    respx.get(URL).mock(side_effect=lambda request: httpx.Response(200, stream=Broken()))
    transport = AsyncCircuitBreakerTransport(policy=BreakerPolicy(consecutive_failures=2))
    async with httpx.AsyncClient(transport=transport) as client:
        for _ in range(2):
            with pytest.raises(httpx.ReadError):
                await client.get(URL)
        with pytest.raises(CircuitOpenError):
            await client.get(URL)


# -- validation ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("cls", "kwargs", "match"),
    [
        (AsyncResilientTransport, {"total_timeout": 5.0, "attempt_timeout": 10.0}, "attempt_timeout"),
        (ResilientTransport, {"total_timeout": 0}, "total_timeout"),
        (ResilientTransport, {"total_timeout": None}, "total_timeout"),
        (AsyncResilientTransport, {"max_concurrent": 0}, "max_concurrent"),
        (AsyncResilientTransport, {"retry": 3}, "retry"),
        (ResilientTransport, {"breaker": "on"}, "breaker"),
        (AsyncRetryTransport, {"policy": BreakerPolicy()}, "RetryPolicy"),
        (CircuitBreakerTransport, {"policy": RetryPolicy()}, "BreakerPolicy"),
        (AsyncCircuitBreakerTransport, {"state": "memcached://x"}, "redis://"),
        (RetryTransport, {"attempt_timeout": float("inf")}, "attempt_timeout"),
    ],
)
def test_configuration_errors(cls: Any, kwargs: dict[str, Any], match: str) -> None:
    with pytest.raises(ConfigurationError, match=match):
        cls(**kwargs)


async def test_close_is_forwarded() -> None:
    closed: list[str] = []

    class Inner(httpx.AsyncBaseTransport):
        async def aclose(self) -> None:
            closed.append("async")

    class SyncInner(httpx.BaseTransport):
        def close(self) -> None:
            closed.append("sync")

    await AsyncResilientTransport(Inner()).aclose()
    await AsyncRetryTransport(Inner()).aclose()
    await AsyncCircuitBreakerTransport(Inner()).aclose()
    ResilientTransport(SyncInner()).close()
    RetryTransport(SyncInner()).close()
    CircuitBreakerTransport(SyncInner()).close()
    assert closed == ["async"] * 3 + ["sync"] * 3
    assert AsyncRetryTransport(Inner(), policy=FAST).policy is FAST
    assert RetryTransport(SyncInner(), policy=FAST).policy is FAST
    assert CircuitBreakerTransport(SyncInner()).policy == BreakerPolicy()
    assert AsyncCircuitBreakerTransport(Inner()).policy == BreakerPolicy()


# -- client helpers ------------------------------------------------------------------------------


async def test_async_resilient_client_keeps_client_options(origin: Served) -> None:
    client = async_resilient_client(
        base_url=origin.url,
        limits=httpx.Limits(max_connections=1),
        http2=False,
        verify=False,
        retry=FAST,
        headers={"x-app": "1"},
    )
    async with client:
        response = await client.get("/flaky", params={"key": "helper", "fail": 1})
    assert response.status_code == 200 and origin.log.hits["helper"] == 2
    assert isinstance(client._transport, AsyncResilientTransport)


def test_resilient_client_wraps_transport_and_mounts(origin: Served) -> None:
    with resilient_client(
        transport=httpx.HTTPTransport(retries=0),
        mounts={"http://localhost": httpx.HTTPTransport(), "http://blocked.test": None},
        retry=FAST,
        trust_env=False,
    ) as client:
        assert client.get(f"{origin.url}/flaky", params={"key": "m1", "fail": 1}).status_code == 200
        assert client.get(f"{origin.alias_url}/flaky", params={"key": "m2", "fail": 1}).status_code == 200
    assert origin.log.hits["m1"] == 2 and origin.log.hits["m2"] == 2
    with pytest.raises(TypeError, match="http2"):
        resilient_client(transport=httpx.HTTPTransport(), http2=True)
    with pytest.raises(TypeError, match="limits"):
        async_resilient_client(transport=httpx.AsyncHTTPTransport(), limits=httpx.Limits())


# -- pre-read responses (MockTransport, caches) and tracing ---------------------------------------


async def test_pre_read_responses_still_count_and_release() -> None:
    mock = httpx.MockTransport(lambda request: httpx.Response(503))
    transport = AsyncResilientTransport(
        mock, retry=None, breaker=BreakerPolicy(minimum_calls=3), max_concurrent=1, total_timeout=1, attempt_timeout=1
    )
    async with httpx.AsyncClient(transport=transport) as client:
        for _ in range(3):
            assert (await client.get(URL)).status_code == 503  # one slot: each was released
        with pytest.raises(CircuitOpenError):
            await client.get(URL)


def test_pre_read_responses_sync() -> None:
    mock = httpx.MockTransport(lambda request: httpx.Response(500))
    events: list[RetryEvent] = []
    transport = ResilientTransport(
        mock,
        retry=None,
        breaker=BreakerPolicy(minimum_calls=2),
        max_concurrent=1,
        total_timeout=1,
        attempt_timeout=1,
        on_give_up=events.append,
    )
    with httpx.Client(transport=transport) as client:
        client.get(URL)
        client.get(URL)
        with pytest.raises(CircuitOpenError):
            client.get(URL)
    assert events == []  # retries were off: nothing was given up


@respx.mock
async def test_resend_count_on_the_current_span() -> None:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.trace import use_span

    from asgi_resilience.observability import Telemetry

    respx.get(URL).mock(side_effect=[httpx.Response(503), httpx.Response(503), httpx.Response(200)])
    span = TracerProvider().get_tracer("test").start_span("outbound")
    transport = AsyncRetryTransport(policy=FAST, telemetry=Telemetry())
    async with httpx.AsyncClient(transport=transport) as client:
        with use_span(span, end_on_exit=True):
            await client.get(URL)
    assert span.attributes is not None and span.attributes["http.request.resend_count"] == 2


@pytest.mark.parametrize("anyio_backend", ["trio"])
async def test_async_transports_run_on_trio(anyio_backend: str, origin: Served) -> None:
    transport = AsyncResilientTransport(
        retry=FAST, breaker=BreakerPolicy(minimum_calls=5), total_timeout=0.8, attempt_timeout=0.5, max_concurrent=2
    )
    async with httpx.AsyncClient(transport=transport, base_url=origin.url) as client:
        assert (await client.get("/flaky", params={"key": "trio", "fail": 1})).status_code == 200
        with pytest.raises(httpx.ReadTimeout):
            await client.get("/drip", params={"chunks": 40, "gap_ms": 50})  # the deadline cuts the body
    assert origin.log.hits["trio"] == 2

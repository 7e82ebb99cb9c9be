"""Layers annotate the current server span (from opentelemetry-instrumentation-asgi) and add no spans."""

from __future__ import annotations

from typing import Any

import anyio
import pytest
from opentelemetry.instrumentation.asgi import OpenTelemetryMiddleware
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode

from asgi_resilience import ConfigurationError, ResilienceStack, Telemetry, resilient
from asgi_resilience.testing import ASGIHarness, http_scope
from asgi_resilience.types import Receive, Scope, Send


async def app(scope: Scope, receive: Receive, send: Send) -> None:
    if scope["path"] == "/slow":
        await anyio.sleep(5)
    headers = [(b"cache-control", b"public, max-age=60")] if scope["path"] == "/cached" else []
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": b"ok"})


def recording_provider() -> tuple[TracerProvider, InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return provider, exporter


def instrumentation_asgi(app: Any, provider: TracerProvider) -> Any:
    return OpenTelemetryMiddleware(app, tracer_provider=provider, exclude_spans=["receive", "send"])


def starlette_own(app: Any, provider: TracerProvider) -> Any:
    # newer Starlette releases ship their own; older ones (still supported by us) do not
    module = pytest.importorskip("starlette.middleware.opentelemetry", reason="this Starlette has no OTel middleware")
    StarletteOpenTelemetry = module.OpenTelemetryMiddleware

    return StarletteOpenTelemetry(app, tracer_provider=provider)


@pytest.mark.parametrize("instrument", [instrumentation_asgi, starlette_own])
async def test_stack_events_land_on_the_server_span_and_no_span_is_added(instrument: Any) -> None:
    provider, exporter = recording_provider()
    stack = resilient(app, rate_limit="1/minute", timeout=0.05, concurrency=4, telemetry=Telemetry())
    traced = instrument(stack, provider)

    assert (await ASGIHarness().run(traced, http_scope(path="/slow"))).status == 504
    assert (await ASGIHarness().run(traced, http_scope(path="/"))).status == 429
    spans = exporter.get_finished_spans()
    assert len(spans) == 2  # one server span per request, nothing else
    timed_out, limited = spans
    assert [e.name for e in timed_out.events] == ["asgi_resilience.timeout"]
    assert timed_out.events[0].attributes == {"phase": "before_start"}
    assert [e.name for e in limited.events] == ["asgi_resilience.rate_limit.limited"]
    for span in spans:
        for event in span.events:
            for value in (event.attributes or {}).values():
                assert "127.0.0.1" not in str(value)  # no client address in span events


def attributes(span: ReadableSpan) -> dict[str, Any]:
    return dict(span.attributes or {})


async def test_tracing_option_gives_every_request_a_server_span_the_layers_annotate() -> None:
    provider, exporter = recording_provider()
    wrapped = resilient(
        app, rate_limit="3/minute", cache=True, timeout=0.05, concurrency=4, telemetry=Telemetry(), tracing=provider
    )
    assert (await ASGIHarness().run(wrapped, http_scope(path="/cached"))).status == 200  # miss, stored
    hit = await ASGIHarness().run(wrapped, http_scope(path="/cached"))
    assert hit.status == 200 and "hit" in (hit.header("cache-status") or "")
    assert (await ASGIHarness().run(wrapped, http_scope(path="/slow"))).status == 504
    assert (await ASGIHarness().run(wrapped, http_scope(path="/"))).status == 429

    spans = exporter.get_finished_spans()
    assert len(spans) == 4  # one SERVER span per request: no per-message send/receive spans
    miss, cached, timed_out, limited = spans
    assert {span.kind.name for span in spans} == {"SERVER"}

    assert attributes(miss)["asgi_resilience.cache.result"] == "miss"
    assert attributes(cached)["asgi_resilience.cache.result"] == "hit"
    assert attributes(cached)["http.status_code"] == 200
    assert cached.status.status_code is StatusCode.UNSET and cached.events == ()

    assert attributes(timed_out)["http.status_code"] == 504
    assert attributes(timed_out)["asgi_resilience.timeout.phase"] == "before_start"
    assert timed_out.status.status_code is StatusCode.ERROR  # a 5xx is a server error
    assert [(e.name, dict(e.attributes or {})) for e in timed_out.events] == [
        ("asgi_resilience.timeout", {"phase": "before_start"})
    ]

    assert attributes(limited)["http.status_code"] == 429
    assert attributes(limited)["asgi_resilience.rate_limit.result"] == "limited"
    assert limited.status.status_code is StatusCode.UNSET  # a 4xx is the client's, not a server error
    assert [(e.name, dict(e.attributes or {})) for e in limited.events] == [
        ("asgi_resilience.rate_limit.limited", {"rules": "3/minute"})
    ]


async def test_tracing_is_outermost_and_validated() -> None:
    provider, _ = recording_provider()
    stack = ResilienceStack(rate_limit="1/minute", tracing=provider, telemetry=Telemetry())
    wrapped = stack.wrap(app)
    assert type(wrapped._outer).__name__ == "OpenTelemetryMiddleware"
    assert stack.snapshot()["layers"] == ["tracing", "problems", "rate_limit"]
    assert ResilienceStack(telemetry=Telemetry()).snapshot()["layers"] == ["problems"]
    with pytest.raises(ConfigurationError, match="tracing must be"):
        ResilienceStack(tracing="yes")  # type: ignore[arg-type]
    # lifespan passes through the tracing middleware untouched
    sent: list[Any] = []
    messages = iter([{"type": "lifespan.startup"}, {"type": "lifespan.shutdown"}])

    async def lifespan_app(scope: Scope, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            await send({"type": message["type"] + ".complete"})
            if message["type"] == "lifespan.shutdown":
                return

    async def receive() -> Any:
        return next(messages)

    async def send(message: Any) -> None:
        sent.append(message["type"])

    await stack.wrap(lifespan_app)({"type": "lifespan", "asgi": {"version": "3.0"}}, receive, send)
    assert sent == ["lifespan.startup.complete", "lifespan.shutdown.complete"]

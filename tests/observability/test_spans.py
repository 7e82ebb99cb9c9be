"""Layers annotate the current server span (from opentelemetry-instrumentation-asgi) and add no spans."""

from __future__ import annotations

from typing import Any

import anyio
import pytest
from opentelemetry.instrumentation.asgi import OpenTelemetryMiddleware
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from asgi_resilience import Telemetry, resilient
from asgi_resilience.testing import ASGIHarness, http_scope
from asgi_resilience.types import Receive, Scope, Send


async def app(scope: Scope, receive: Receive, send: Send) -> None:
    if scope["path"] == "/slow":
        await anyio.sleep(5)
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"ok"})


def instrumentation_asgi(app: Any, provider: TracerProvider) -> Any:
    return OpenTelemetryMiddleware(app, tracer_provider=provider, exclude_spans=["receive", "send"])


def starlette_own(app: Any, provider: TracerProvider) -> Any:
    from starlette.middleware.opentelemetry import OpenTelemetryMiddleware as StarletteOpenTelemetry

    return StarletteOpenTelemetry(app, tracer_provider=provider)


@pytest.mark.parametrize("instrument", [instrumentation_asgi, starlette_own])
async def test_stack_events_land_on_the_server_span_and_no_span_is_added(instrument: Any) -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    stack = resilient(app, rate_limit="1/minute", timeout=0.05, concurrency=4, telemetry=Telemetry())
    traced = instrument(stack, provider)

    assert (await ASGIHarness().run(traced, http_scope(path="/slow"))).status == 504
    assert (await ASGIHarness().run(traced, http_scope(path="/"))).status == 429
    spans = exporter.get_finished_spans()
    assert len(spans) == 2  # one server span per request, nothing else
    timed_out, limited = spans
    assert [e.name for e in timed_out.events] == ["asgi_resilience.timeout"]
    assert timed_out.events[0].attributes == {"phase": "before_start"}
    assert [e.name for e in limited.events] == ["rate_limit.limited"]
    for span in spans:
        for event in span.events:
            for value in (event.attributes or {}).values():
                assert "127.0.0.1" not in str(value)  # no client address in span events

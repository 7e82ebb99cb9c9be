"""Metric snapshot tests for every layer, through the OpenTelemetry SDK's in-memory reader.

For each layer: the exported names, units, instrument kinds and attribute sets are exactly those of
the published table (``METRICS``); no attribute value carries a client address, a raw path, a key or a
cache key; and active-style up-down counters go back to zero after success, exception, timeout,
disconnect and cancellation.
"""

from __future__ import annotations

from typing import Any

import anyio
import httpx
import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import Gauge, Histogram, InMemoryMetricReader, Sum
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from asgi_resilience import (
    CacheMiddleware,
    ConcurrencyLimitMiddleware,
    RateLimitMiddleware,
    Rule,
    Telemetry,
    TimeoutMiddleware,
    resilient,
)
from asgi_resilience.client import AsyncCircuitBreakerTransport, AsyncRetryTransport, BreakerPolicy, RetryPolicy
from asgi_resilience.observability import METRICS
from asgi_resilience.testing import ASGIHarness, http_scope
from asgi_resilience.types import Receive, Scope, Send

CLIENT_IP = "203.0.113.77"
SECRET_PATH = "/accounts/8812/secret-report"
API_KEY = "key-5f1d2c"

Point = tuple[dict[str, str], Any]


def sdk_telemetry() -> tuple[Telemetry, InMemoryMetricReader]:
    reader = InMemoryMetricReader()
    return Telemetry(meter_provider=MeterProvider(metric_readers=[reader])), reader


def exported(reader: InMemoryMetricReader) -> dict[str, tuple[Any, str, list[Point]]]:
    """name -> (data type, unit, [(attributes, value)]), checking every metric against the table."""
    out: dict[str, tuple[Any, str, list[Point]]] = {}
    data = reader.get_metrics_data()
    if data is None:
        return out
    for resource in data.resource_metrics:
        for scope in resource.scope_metrics:
            for metric in scope.metrics:
                points = []
                for point in metric.data.data_points:
                    value = point.count if isinstance(metric.data, Histogram) else point.value
                    points.append((dict(point.attributes or {}), value))
                out[metric.name] = (metric.data, metric.unit, points)
    for name, (kind, unit, points) in out.items():
        spec = METRICS[name]  # KeyError: a metric that is not in the published table
        assert unit == spec.unit, name
        expected_type = {"counter": Sum, "up_down_counter": Sum, "histogram": Histogram, "gauge": Gauge}[spec.kind]
        assert isinstance(kind, expected_type), name
        if spec.kind == "counter":
            assert kind.is_monotonic, name
        if spec.kind == "up_down_counter":
            assert not kind.is_monotonic, name
        for attributes, _ in points:
            assert set(attributes) == set(spec.attributes), (name, attributes)
            for value in attributes.values():
                assert CLIENT_IP not in value and API_KEY not in value and "secret-report" not in value, (name, value)
    return out


def values(data: dict[str, tuple[Any, str, list[Point]]], name: str) -> dict[tuple[tuple[str, str], ...], Any]:
    return {tuple(sorted(attrs.items())): value for attrs, value in data[name][2]}


def scope_for(path: str = SECRET_PATH, headers: list[tuple[str, str]] | None = None) -> Any:
    return http_scope(path=path, client=(CLIENT_IP, 40000), headers=[("X-API-Key", API_KEY), *(headers or [])])


async def ok(scope: Scope, receive: Receive, send: Send) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [(b"content-type", b"text/plain"), (b"cache-control", b"public, max-age=60")],
        }
    )
    await send({"type": "http.response.body", "body": b"ok"})


async def test_rate_limit_metrics() -> None:
    telemetry, reader = sdk_telemetry()
    app = RateLimitMiddleware(ok, rules=[Rule("2/minute", name="per-key", key="header:X-API-Key")], telemetry=telemetry)
    for _ in range(3):
        await ASGIHarness().run(app, scope_for())
    data = exported(reader)
    assert values(data, "asgi_resilience.rate_limit.requests") == {
        (("result", "allowed"), ("rule", "per-key")): 2,
        (("result", "limited"), ("rule", "per-key")): 1,
    }
    assert "asgi_resilience.rate_limit.duration" not in data  # in-process decisions make no round trip


@pytest.mark.redis
async def test_rate_limit_metrics_with_redis_time_each_round_trip(redis_url: str) -> None:
    telemetry, reader = sdk_telemetry()
    app = RateLimitMiddleware(
        ok, rules=[Rule("1/minute", name="global", key="global")], storage=redis_url, telemetry=telemetry
    )
    for _ in range(2):
        await ASGIHarness().run(app, scope_for())
    data = exported(reader)
    assert values(data, "asgi_resilience.rate_limit.requests") == {
        (("result", "allowed"), ("rule", "global")): 1,
        (("result", "limited"), ("rule", "global")): 1,
    }
    (durations,) = values(data, "asgi_resilience.rate_limit.duration").values()
    assert durations == 2
    await app.storage.aclose()  # the middleware built this client from the URL


async def test_cache_metrics() -> None:
    telemetry, reader = sdk_telemetry()
    app = CacheMiddleware(ok, telemetry=telemetry)
    for _ in range(2):
        await ASGIHarness().run(app, scope_for())
    await ASGIHarness().run(app, scope_for(headers=[("Cache-Control", "no-store")]))
    data = exported(reader)
    counts = values(data, "asgi_resilience.cache.requests")
    assert counts[(("result", "hit"),)] == 1
    assert counts[(("result", "miss"),)] >= 1
    assert set(counts) <= {(("result", r),) for r in ("hit", "miss", "stale", "bypass", "stored")}


async def test_timeout_metrics_by_phase() -> None:
    telemetry, reader = sdk_telemetry()

    async def slow(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["path"] == "/stream":
            await send({"type": "http.response.start", "status": 200, "headers": []})
            await send({"type": "http.response.body", "body": b"a", "more_body": True})
        await anyio.sleep(5)

    app = TimeoutMiddleware(slow, timeout=0.05, mode="complete", telemetry=telemetry)
    assert (await ASGIHarness().run(app, scope_for())).status == 504
    with pytest.raises(BaseException):  # noqa: B017 - the stream is aborted; how depends on the server
        await ASGIHarness().run(app, scope_for("/stream"))
    data = exported(reader)
    assert values(data, "asgi_resilience.timeouts") == {(("phase", "before_start"),): 1, (("phase", "after_start"),): 1}


async def test_concurrency_active_returns_to_zero_on_every_exit_path() -> None:
    telemetry, reader = sdk_telemetry()
    release = anyio.Event()

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        path = scope["path"]
        if path == "/boom":
            raise RuntimeError("boom")
        if path in ("/slow", "/hold"):
            await (release.wait() if path == "/hold" else anyio.sleep(5))
        if path == "/disconnect":
            await send({"type": "http.response.start", "status": 200, "headers": []})
            await send({"type": "http.response.body", "body": b"a", "more_body": True})
            await send({"type": "http.response.body", "body": b"b", "more_body": True})
            return
        await ok(scope, receive, send)

    limited = ConcurrencyLimitMiddleware(app, max_concurrent=1, max_queue=0, telemetry=telemetry)
    timed = TimeoutMiddleware(limited, timeout=0.05, telemetry=telemetry)

    def active() -> Any:
        data = exported(reader)
        return sum(v for _, v in data["asgi_resilience.concurrency.active"][2])

    assert (await ASGIHarness().run(timed, scope_for("/"))).status == 200  # success
    assert active() == 0
    with pytest.raises(RuntimeError):
        await ASGIHarness().run(limited, scope_for("/boom"))  # exception
    assert active() == 0
    assert (await ASGIHarness().run(timed, scope_for("/slow"))).status == 504  # timeout
    assert active() == 0
    try:
        await ASGIHarness(disconnect_after=1).run(limited, scope_for("/disconnect"))  # client disconnect
    except OSError:
        pass
    assert active() == 0
    with anyio.move_on_after(0.05):  # cancellation from outside (server shutdown)
        await ASGIHarness().run(limited, scope_for("/slow"))
    assert active() == 0

    async with anyio.create_task_group() as group:  # one slot taken, the next request is shed
        group.start_soon(ASGIHarness().run, limited, scope_for("/hold"))
        await anyio.sleep(0.02)
        assert active() == 1
        assert (await ASGIHarness().run(limited, scope_for("/"))).status == 503
        release.set()
    assert active() == 0
    data = exported(reader)
    assert values(data, "asgi_resilience.concurrency.rejected") == {
        (("partition", "default"), ("reason", "queue_full")): 1
    }
    assert sum(v for _, v in data.get("asgi_resilience.concurrency.queued", (None, "", []))[2]) == 0
    assert values(data, "asgi_resilience.concurrency.limit")[(("partition", "default"),)] == 1


async def test_client_metrics_and_resend_count_span_attribute() -> None:
    telemetry, reader = sdk_telemetry()
    statuses = iter([503, 503, 200, 503, 503, 503, 503, 503, 503, 503, 503, 503])

    async def origin(scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": next(statuses), "headers": []})
        await send({"type": "http.response.body", "body": b"x"})

    from asgi_resilience.testing import set_testing

    breaker = AsyncCircuitBreakerTransport(
        httpx.ASGITransport(app=origin),
        policy=BreakerPolicy(minimum_calls=4, failure_rate=0.5, break_duration=60.0),
        shared=False,
        telemetry=telemetry,
    )
    transport = AsyncRetryTransport(breaker, policy=RetryPolicy(attempts=3), telemetry=telemetry)
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    with set_testing(True):
        async with httpx.AsyncClient(transport=transport, base_url="http://origin.test") as client:
            with provider.get_tracer("t").start_as_current_span("server"):
                assert (await client.get("/first")).status_code == 200  # 503, 503, then 200
            for _ in range(4):
                try:
                    await client.get(f"/{CLIENT_IP}/{API_KEY}")
                except httpx.TransportError:
                    pass
    (span,) = exporter.get_finished_spans()
    assert span.attributes is not None and span.attributes["http.request.resend_count"] == 2
    data = exported(reader)
    attempts = values(data, "asgi_resilience.client.attempts")
    origin_name = "http://origin.test:80"
    assert attempts[(("origin", origin_name), ("outcome", "success"))] == 1
    # F, F, S, then one more F opens the breaker (3 of 4 failed); every later call is refused unsent
    assert attempts[(("origin", origin_name), ("outcome", "failure"))] == 3
    assert attempts[(("origin", origin_name), ("outcome", "rejected"))] >= 3
    assert values(data, "asgi_resilience.client.retries")[(("origin", origin_name),)] >= 2
    state = values(data, "asgi_resilience.circuit_breaker.state")
    assert state[(("origin", origin_name), ("state", "open"))] == 1
    assert state[(("origin", origin_name), ("state", "closed"))] == 0  # exactly one state is 1
    assert values(data, "asgi_resilience.circuit_breaker.transitions") == {
        (("from", "closed"), ("origin", origin_name), ("to", "open")): 1
    }


async def test_the_whole_stack_reports_through_one_telemetry() -> None:
    telemetry, reader = sdk_telemetry()
    app = resilient(ok, rate_limit="1/minute", cache=True, timeout=1.0, concurrency=2, telemetry=telemetry)
    for _ in range(2):
        await ASGIHarness().run(app, scope_for())
    data = exported(reader)
    assert {
        "asgi_resilience.rate_limit.requests",
        "asgi_resilience.cache.requests",
        "asgi_resilience.concurrency.active",
        "asgi_resilience.concurrency.limit",
    } <= set(data)
    assert sum(v for _, v in data["asgi_resilience.concurrency.active"][2]) == 0
    snapshot = app.stack.snapshot()
    assert {"rate_limit", "cache", "concurrency"} <= set(snapshot["components"])


async def test_breaker_state_and_transitions_stay_consistent_through_a_full_cycle() -> None:
    telemetry, reader = sdk_telemetry()
    healthy = False

    async def origin(scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": 200 if healthy else 503, "headers": []})
        await send({"type": "http.response.body", "body": b"x"})

    transport = AsyncCircuitBreakerTransport(
        httpx.ASGITransport(app=origin),
        policy=BreakerPolicy(minimum_calls=2, failure_rate=0.5, break_duration=0.05),
        shared=False,
        telemetry=telemetry,
    )
    origin_name = "http://cycle.test:80"
    async with httpx.AsyncClient(transport=transport, base_url="http://cycle.test") as client:
        for _ in range(3):
            try:
                await client.get("/")
            except httpx.TransportError:
                break
        state = values(exported(reader), "asgi_resilience.circuit_breaker.state")
        assert state[(("origin", origin_name), ("state", "open"))] == 1
        await anyio.sleep(0.1)  # past break_duration: the next call is the half-open probe
        healthy = True
        assert (await client.get("/")).status_code == 200
    data = exported(reader)
    state = values(data, "asgi_resilience.circuit_breaker.state")
    assert {key[1][1]: value for key, value in state.items()} == {"closed": 1, "open": 0, "half_open": 0}
    assert values(data, "asgi_resilience.circuit_breaker.transitions") == {
        (("from", "closed"), ("origin", origin_name), ("to", "open")): 1,
        (("from", "open"), ("origin", origin_name), ("to", "half_open")): 1,
        (("from", "half_open"), ("origin", origin_name), ("to", "closed")): 1,
    }

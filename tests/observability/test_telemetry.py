"""Telemetry glue: instruments from the published table, no-op mode, in-process totals."""

from __future__ import annotations

import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import TracerProvider

from asgi_resilience import ConfigurationError, ProblemDetailsMiddleware
from asgi_resilience.observability import METRICS, NOOP, Telemetry, default_telemetry, resolve_telemetry
from asgi_resilience.testing import ASGIHarness, http_scope
from asgi_resilience.types import Receive, Scope, Send


def collect(reader: InMemoryMetricReader) -> dict[str, list[tuple[dict[str, str], float, str]]]:
    out: dict[str, list[tuple[dict[str, str], float, str]]] = {}
    data = reader.get_metrics_data()
    if data is None:
        return out
    for rm in data.resource_metrics:
        for sm in rm.scope_metrics:
            for metric in sm.metrics:
                for point in metric.data.data_points:
                    value = getattr(point, "value", None)
                    if value is None:
                        value = point.count  # histogram
                    out.setdefault(metric.name, []).append((dict(point.attributes or {}), value, metric.unit))
    return out


def test_metric_table_names_and_units_follow_conventions() -> None:
    for name, spec in METRICS.items():
        assert name.startswith("asgi_resilience.") and name == name.lower()
        assert spec.unit in ("s", "By") or (spec.unit.startswith("{") and spec.unit.endswith("}"))  # UCUM
        for attribute in spec.attributes:
            assert attribute not in {"client", "ip", "path", "key", "url"}


def test_instruments_record_through_the_sdk_and_keep_totals() -> None:
    reader = InMemoryMetricReader()
    telemetry = Telemetry(meter_provider=MeterProvider(metric_readers=[reader]))
    counter = telemetry.instrument("asgi_resilience.cache.requests")
    assert telemetry.instrument("asgi_resilience.cache.requests") is counter
    counter.add(2, {"result": "hit"})
    counter.add(1, {"result": "miss"})
    telemetry.instrument("asgi_resilience.concurrency.limit").record(50, {"partition": "default"})
    telemetry.instrument("asgi_resilience.client.attempt.duration").record(0.5, {"origin": "o", "outcome": "success"})
    data = collect(reader)
    assert sorted(data["asgi_resilience.cache.requests"], key=lambda x: x[1]) == [
        ({"result": "miss"}, 1, "{request}"),
        ({"result": "hit"}, 2, "{request}"),
    ]
    assert data["asgi_resilience.concurrency.limit"] == [({"partition": "default"}, 50, "{request}")]
    snap = telemetry.snapshot()["metrics"]
    assert {"attributes": {"result": "hit"}, "value": 2} in snap["asgi_resilience.cache.requests"]
    assert snap["asgi_resilience.client.attempt.duration"] == [
        {"attributes": {"origin": "o", "outcome": "success"}, "value": (1, 0.5)}
    ]


def test_bound_series_and_lock_free_totals_keep_every_value_in_order() -> None:
    reader = InMemoryMetricReader()
    telemetry = Telemetry(meter_provider=MeterProvider(metric_readers=[reader]))
    active = telemetry.instrument("asgi_resilience.concurrency.active")
    attributes = {"partition": "default"}
    series = active.bind(attributes)
    attributes["partition"] = "changed later"  # a binding copies its attributes
    for _ in range(1000):  # more than one drain's worth, mixed with unbound calls of the same series
        series.add(1)
        active.add(-1, {"partition": "default"})
    series.add(1)
    gauge = telemetry.instrument("asgi_resilience.concurrency.limit")
    for limit in range(1, 600):
        gauge.record(limit, {"partition": "all"})
    assert active.totals == {(("partition", "default"),): 1}
    assert gauge.totals == {(("partition", "all"),): 599}  # the last value wins, in call order
    assert collect(reader)["asgi_resilience.concurrency.active"] == [({"partition": "default"}, 1, "{request}")]
    assert NOOP.instrument("asgi_resilience.concurrency.active").bind(attributes).add(1) is None


def test_observable_counters_read_the_components_own_totals_when_collected() -> None:
    reader = InMemoryMetricReader()
    telemetry = Telemetry(meter_provider=MeterProvider(metric_readers=[reader]))
    assert METRICS["asgi_resilience.circuit_breaker.refused"].observable
    refused = telemetry.instrument("asgi_resilience.circuit_breaker.refused")
    counts = {"llm": 0, "authz": 0}
    refused.observe({"policy": "llm"}, lambda: counts["llm"])
    refused.observe({"policy": "authz"}, lambda: counts["authz"])
    counts["llm"] = 3  # what a hot path does: bump its own integer, no call into the telemetry
    assert refused.totals == {(("policy", "llm"),): 3, (("policy", "authz"),): 0}
    points = collect(reader)["asgi_resilience.circuit_breaker.refused"]
    assert sorted(points, key=lambda p: p[1]) == [({"policy": "authz"}, 0, "{call}"), ({"policy": "llm"}, 3, "{call}")]
    counts["llm"] = 5
    assert telemetry.sample()[("asgi_resilience.circuit_breaker.refused", (("policy", "llm"),))] == 5
    assert {"attributes": {"policy": "llm"}, "value": 5} in telemetry.snapshot()["metrics"][
        "asgi_resilience.circuit_breaker.refused"
    ]
    assert ({"policy": "llm"}, 5, "{call}") in collect(reader)["asgi_resilience.circuit_breaker.refused"]
    refused.observe({"policy": "llm"}, lambda: 1)  # observing the same series again replaces the reader
    assert refused.totals[(("policy", "llm"),)] == 1
    assert NOOP.instrument("asgi_resilience.circuit_breaker.refused").observe({"policy": "x"}, lambda: 1) is None


def test_unknown_metric_name_is_a_configuration_error() -> None:
    with pytest.raises(ConfigurationError, match="published metric table"):
        Telemetry().instrument("asgi_resilience.nope")


def test_noop_records_nothing_and_snapshot_providers_are_guarded() -> None:
    NOOP.instrument("asgi_resilience.timeouts").add(1, {"phase": "before_start"})
    assert NOOP.snapshot() == {"metrics": {}, "components": {}, "events": {}}
    telemetry = Telemetry()

    def broken() -> dict[str, int]:
        raise RuntimeError("x")

    telemetry.register_snapshot("ok", lambda: {"n": 1})
    telemetry.register_snapshot("broken", broken)
    assert telemetry.snapshot()["components"] == {"ok": {"n": 1}, "broken": {"error": "RuntimeError"}}


def test_resolve_telemetry() -> None:
    assert resolve_telemetry(True) is default_telemetry()
    assert resolve_telemetry(False) is NOOP
    mine = Telemetry()
    assert resolve_telemetry(mine) is mine
    with pytest.raises(ConfigurationError):
        resolve_telemetry("yes")  # type: ignore[arg-type]


def test_span_helpers_touch_only_the_current_recording_span() -> None:
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    telemetry = Telemetry()
    telemetry.span_event("nothing happens without a span")
    with provider.get_tracer("t").start_as_current_span("server"):
        telemetry.span_attributes({"asgi_resilience.rate_limit.result": "allowed"})
        telemetry.span_event("circuit_breaker.state_change", {"to": "open"})
    (span,) = exporter.get_finished_spans()
    assert span.attributes == {"asgi_resilience.rate_limit.result": "allowed"}
    assert [e.name for e in span.events] == ["circuit_breaker.state_change"]


async def test_problem_middleware_counts_exceptions_by_result() -> None:
    reader = InMemoryMetricReader()
    telemetry = Telemetry(meter_provider=MeterProvider(metric_readers=[reader]))

    async def fail(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["path"] == "/late":
            await send({"type": "http.response.start", "status": 200, "headers": []})
        raise {"/key": KeyError, "/value": ValueError, "/late": ValueError}[scope["path"]]("x")

    app = ProblemDetailsMiddleware(fail, mapping={KeyError: 404}, telemetry=telemetry)
    await ASGIHarness().run(app, http_scope(path="/key"))
    await ASGIHarness().run(app, http_scope(path="/value"))
    with pytest.raises(ValueError):
        await ASGIHarness().run(app, http_scope(path="/late"))
    points = sorted((p[0]["error.type"], p[0]["result"], p[1]) for p in collect(reader)["asgi_resilience.exceptions"])
    assert points == [("KeyError", "handled", 1), ("ValueError", "skipped", 1), ("ValueError", "unhandled", 1)]


async def test_exception_type_attribute_is_the_public_name() -> None:
    from asgi_resilience import Overloaded, Problem

    reader = InMemoryMetricReader()
    telemetry = Telemetry(meter_provider=MeterProvider(metric_readers=[reader]))

    async def fail(scope: Scope, receive: Receive, send: Send) -> None:
        raise Problem(409) if scope["path"] == "/p" else Overloaded()

    app = ProblemDetailsMiddleware(fail, telemetry=telemetry)
    await ASGIHarness().run(app, http_scope(path="/p"))
    await ASGIHarness().run(app, http_scope(path="/o"))
    names = sorted(p[0]["error.type"] for p in collect(reader)["asgi_resilience.exceptions"])
    assert names == ["asgi_resilience.Overloaded", "asgi_resilience.Problem"]


def test_snapshot_merges_attribute_sets_given_in_different_orders() -> None:
    telemetry = Telemetry(enabled=True)
    counter = telemetry.instrument("asgi_resilience.rate_limit.requests")
    counter.add(1, {"rule": "a", "result": "allowed"})
    counter.add(2, {"result": "allowed", "rule": "a"})
    histogram = telemetry.instrument("asgi_resilience.concurrency.queue.duration")
    histogram.record(0.5, {"partition": "p"})
    histogram.record(1.5, {"partition": "p"})
    gauge = telemetry.instrument("asgi_resilience.concurrency.limit")
    gauge.record(3, {"partition": "p"})
    gauge.record(4, {"partition": "p"})
    snap = telemetry.snapshot()["metrics"]
    assert snap["asgi_resilience.rate_limit.requests"] == [
        {"attributes": {"result": "allowed", "rule": "a"}, "value": 3}
    ]
    assert snap["asgi_resilience.concurrency.queue.duration"] == [{"attributes": {"partition": "p"}, "value": (2, 2.0)}]
    assert snap["asgi_resilience.concurrency.limit"] == [{"attributes": {"partition": "p"}, "value": 4}]

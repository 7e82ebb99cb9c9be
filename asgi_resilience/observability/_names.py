"""The published metric table: every instrument asgi-resilience records.

Attributes are low-cardinality only: a rule or policy name, a result, a phase, an origin
(scheme://host:port of an outbound call), a route template. Never a client key, an IP address, a
raw path or a cache key.
"""

from __future__ import annotations

from typing import Literal, NamedTuple

__all__ = ["METRICS", "MetricSpec", "metric_table_markdown", "prometheus_name"]

Kind = Literal["counter", "up_down_counter", "histogram", "gauge"]


class MetricSpec(NamedTuple):
    name: str
    kind: Kind
    unit: str
    description: str
    attributes: tuple[str, ...]
    observable: bool = False
    """Read from totals the component keeps itself (``Instrument.observe``) when collected, so its hot
    path only bumps an integer; exported as an OpenTelemetry observable (asynchronous) instrument."""


_SPECS = [
    MetricSpec(
        "asgi_resilience.rate_limit.requests",
        "counter",
        "{request}",
        "Requests checked by a rate-limit rule, by result (allowed, limited, shadow_limited, store_error, "
        "callable_error).",
        ("rule", "result"),
    ),
    MetricSpec(
        "asgi_resilience.rate_limit.duration",
        "histogram",
        "s",
        "Time spent deciding a request against every matching rule (one storage round trip).",
        ("storage",),
    ),
    MetricSpec(
        "asgi_resilience.cache.requests",
        "counter",
        "{request}",
        "Requests seen by the response cache, by result (hit, miss, stale, bypass, stored).",
        ("result",),
    ),
    MetricSpec(
        "asgi_resilience.cache.errors",
        "counter",
        "{error}",
        "Cache backend failures answered as a miss.",
        ("operation",),
    ),
    MetricSpec(
        "asgi_resilience.cache.memory.usage",
        "up_down_counter",
        "By",
        "Bytes held by in-process cache stores, by tier (memory: the memory backend, l1: the L1 in front of "
        "a shared backend); bounded by max_bytes / l1_max_bytes.",
        ("tier",),
    ),
    MetricSpec(
        "asgi_resilience.timeouts",
        "counter",
        "{timeout}",
        "Requests that hit their deadline, by phase (before_start, after_start).",
        ("phase",),
    ),
    MetricSpec(
        "asgi_resilience.concurrency.active",
        "up_down_counter",
        "{request}",
        "Requests currently holding a concurrency slot.",
        ("partition",),
    ),
    MetricSpec(
        "asgi_resilience.concurrency.queued",
        "up_down_counter",
        "{request}",
        "Requests currently waiting for a concurrency slot.",
        ("partition",),
    ),
    MetricSpec(
        "asgi_resilience.concurrency.rejected",
        "counter",
        "{request}",
        "Requests shed with 503 by the concurrency limit, by reason (queue_full, queue_timeout).",
        ("partition", "reason"),
    ),
    MetricSpec(
        "asgi_resilience.concurrency.limit",
        "gauge",
        "{request}",
        "The current concurrency limit (changes when adaptive).",
        ("partition",),
    ),
    MetricSpec(
        "asgi_resilience.concurrency.queue.duration",
        "histogram",
        "s",
        "Time requests waited for a concurrency slot.",
        ("partition",),
    ),
    MetricSpec(
        "asgi_resilience.exceptions",
        "counter",
        "{exception}",
        "Exceptions seen by ProblemDetailsMiddleware, by type and result (handled, unhandled, skipped).",
        ("error.type", "result"),
    ),
    MetricSpec(
        "asgi_resilience.client.attempts",
        "counter",
        "{attempt}",
        "Outbound attempts by origin and outcome (success, failure, timeout, rejected).",
        ("origin", "outcome"),
    ),
    MetricSpec(
        "asgi_resilience.client.retries",
        "counter",
        "{retry}",
        "Outbound retries started, by origin.",
        ("origin",),
    ),
    MetricSpec(
        "asgi_resilience.client.attempt.duration",
        "histogram",
        "s",
        "Duration of each outbound attempt.",
        ("origin", "outcome"),
    ),
    MetricSpec(
        "asgi_resilience.retries",
        "counter",
        "{retry}",
        "Retries started by a retry policy on a function, by policy name.",
        ("policy",),
    ),
    MetricSpec(
        "asgi_resilience.fallbacks",
        "counter",
        "{fallback}",
        "Fallbacks taken, by policy name and kind (value, call, last_good, fail_open, fail_closed).",
        ("policy", "kind"),
    ),
    MetricSpec(
        "asgi_resilience.bulkhead.rejected",
        "counter",
        "{call}",
        "Calls refused by a bulkhead with Overloaded, by reason (queue_full, queue_timeout).",
        ("bulkhead", "reason"),
    ),
    MetricSpec(
        "asgi_resilience.bulkhead.queue.duration",
        "histogram",
        "s",
        "Time calls waited in a bulkhead's queue before they got a slot.",
        ("bulkhead",),
    ),
    MetricSpec(
        "asgi_resilience.hedge.started",
        "counter",
        "{attempt}",
        "Hedged attempts started (beyond the first), by policy name (the origin, for the httpx transports).",
        ("policy",),
    ),
    MetricSpec(
        "asgi_resilience.hedge.won",
        "counter",
        "{attempt}",
        "Calls whose first success came from a hedged attempt rather than the first one.",
        ("policy",),
    ),
    MetricSpec(
        "asgi_resilience.circuit_breaker.state",
        "up_down_counter",
        "{breaker}",
        "Circuit breakers per origin (or policy name) and state (closed, open, half_open): 1 for the current state.",
        ("origin", "state"),
    ),
    MetricSpec(
        "asgi_resilience.circuit_breaker.transitions",
        "counter",
        "{transition}",
        "Circuit breaker state transitions.",
        ("origin", "from", "to"),
    ),
    MetricSpec(
        "asgi_resilience.circuit_breaker.refused",
        "counter",
        "{call}",
        "Calls a named circuit breaker refused without making them (open, or half-open with its probes in "
        "flight), by policy name; the httpx transports count theirs as client.attempts with outcome rejected.",
        ("policy",),
        observable=True,
    ),
]

METRICS: dict[str, MetricSpec] = {spec.name: spec for spec in _SPECS}


_KIND_NAMES = {"counter": "Counter", "up_down_counter": "UpDownCounter", "histogram": "Histogram", "gauge": "Gauge"}


def prometheus_name(spec: MetricSpec) -> str:
    """The name a Prometheus exporter gives the metric (dots to underscores, unit and ``_total`` suffixes)."""
    name = spec.name.replace(".", "_")
    if spec.unit == "s":
        name += "_seconds"
    elif spec.unit == "By":
        name += "_bytes"
    if spec.kind == "counter":
        name += "_total"
    return name


def metric_table_markdown() -> str:
    """The README's metric table, generated from :data:`METRICS` (a test keeps the README in sync)."""
    lines = [
        "| Metric | Instrument | Unit | Attributes | Prometheus name | Description |",
        "|---|---|---|---|---|---|",
    ]
    for spec in METRICS.values():
        attributes = ", ".join(f"`{a}`" for a in spec.attributes) or "-"
        kind = ("Observable" if spec.observable else "") + _KIND_NAMES[spec.kind]
        lines.append(
            f"| `{spec.name}` | {kind} | `{spec.unit}` | {attributes} | "
            f"`{prometheus_name(spec)}` | {spec.description} |"
        )
    return "\n".join(lines) + "\n"

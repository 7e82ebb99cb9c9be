"""Observability: the published metric table and the OpenTelemetry glue (extra ``otel``)."""

from __future__ import annotations

from asgi_resilience.observability._names import METRICS, MetricSpec
from asgi_resilience.observability._telemetry import NOOP, Instrument, Telemetry, default_telemetry, resolve_telemetry

__all__ = ["METRICS", "NOOP", "Instrument", "MetricSpec", "Telemetry", "default_telemetry", "resolve_telemetry"]

"""Observability: the published metric table and the OpenTelemetry glue (extra ``otel``)."""

from __future__ import annotations

from asgi_resilience.observability._dashboard import DashboardApp, DashboardAuth, dashboard_app
from asgi_resilience.observability._grafana import grafana_dashboard
from asgi_resilience.observability._names import METRICS, MetricSpec, metric_table_markdown, prometheus_name
from asgi_resilience.observability._ratelog import RateLimitedLog
from asgi_resilience.observability._telemetry import NOOP, Instrument, Telemetry, default_telemetry, resolve_telemetry

__all__ = [
    "METRICS",
    "NOOP",
    "DashboardApp",
    "DashboardAuth",
    "Instrument",
    "MetricSpec",
    "RateLimitedLog",
    "Telemetry",
    "dashboard_app",
    "default_telemetry",
    "grafana_dashboard",
    "metric_table_markdown",
    "prometheus_name",
    "resolve_telemetry",
]

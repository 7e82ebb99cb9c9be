"""A Grafana dashboard over the published metrics, as Prometheus names them.

Write it to a file and import that in Grafana (Dashboards > New > Import)::

    import json
    from asgi_resilience.observability import grafana_dashboard

    Path("asgi-resilience.json").write_text(json.dumps(grafana_dashboard(datasource="prometheus")))

The live dashboard app shows one process; this one aggregates every worker and host that Prometheus
scrapes.
"""

from __future__ import annotations

from typing import Any

from asgi_resilience.observability._names import METRICS, prometheus_name

__all__ = ["grafana_dashboard"]


def _p(name: str) -> str:
    return prometheus_name(METRICS[name])


def _panel(
    title: str, exprs: list[tuple[str, str]], *, unit: str = "short", kind: str = "timeseries"
) -> dict[str, Any]:
    return {
        "type": kind,
        "title": title,
        "fieldConfig": {"defaults": {"unit": unit}, "overrides": []},
        "targets": [
            {"refId": chr(ord("A") + i), "expr": expr, "legendFormat": legend} for i, (expr, legend) in enumerate(exprs)
        ],
    }


def grafana_dashboard(*, datasource: str = "Prometheus", title: str = "asgi-resilience") -> dict[str, Any]:
    """A Grafana dashboard (JSON model) with one panel per concern, built from :data:`METRICS`.

    Args:
        datasource: the name (uid) of the Prometheus data source in Grafana.
        title: the dashboard title.
    """
    requests = _p("asgi_resilience.rate_limit.requests")
    cache = _p("asgi_resilience.cache.requests")
    attempts = _p("asgi_resilience.client.attempts")
    duration = _p("asgi_resilience.client.attempt.duration")
    wait = _p("asgi_resilience.bulkhead.queue.duration")
    panels = [
        _panel(
            "Rate limit decisions per second, by rule and result",
            [(f"sum by (rule, result) (rate({requests}[1m]))", "{{rule}} {{result}}")],
            unit="reqps",
        ),
        _panel(
            "Cache hit ratio",
            [
                (
                    f'sum(rate({cache}{{result=~"hit|stale"}}[5m])) / '
                    f'sum(rate({cache}{{result=~"hit|stale|miss"}}[5m]))',
                    "hit ratio",
                )
            ],
            unit="percentunit",
        ),
        _panel(
            "Cache results per second",
            [(f"sum by (result) (rate({cache}[1m]))", "{{result}}")],
            unit="reqps",
        ),
        _panel(
            "Timeouts per second, by phase",
            [(f"sum by (phase) (rate({_p('asgi_resilience.timeouts')}[1m]))", "{{phase}}")],
            unit="reqps",
        ),
        _panel(
            "Concurrency: in use, queued, limit",
            [
                (f"sum by (partition) ({_p('asgi_resilience.concurrency.active')})", "in use {{partition}}"),
                (f"sum by (partition) ({_p('asgi_resilience.concurrency.queued')})", "queued {{partition}}"),
                (f'sum by (partition) ({_p("asgi_resilience.concurrency.limit")}{{partition!="all"}})', "limit"),
            ],
        ),
        _panel(
            "Load shed per second",
            [(f"sum by (partition, reason) (rate({_p('asgi_resilience.concurrency.rejected')}[1m]))", "{{reason}}")],
            unit="reqps",
        ),
        _panel(
            "Circuit breakers open",
            [(f'max by (origin) ({_p("asgi_resilience.circuit_breaker.state")}{{state="open"}})', "{{origin}}")],
            kind="stat",
        ),
        _panel(
            "Breaker transitions per minute",
            [
                (
                    f"sum by (origin, from, to) (increase({_p('asgi_resilience.circuit_breaker.transitions')}[1m]))",
                    "{{origin}} {{from}} -> {{to}}",
                )
            ],
        ),
        _panel(
            "Outbound attempts per second, by origin and outcome",
            [(f"sum by (origin, outcome) (rate({attempts}[1m]))", "{{origin}} {{outcome}}")],
            unit="reqps",
        ),
        _panel(
            "Outbound failure rate",
            [
                (
                    f'sum by (origin) (rate({attempts}{{outcome=~"failure|timeout"}}[5m])) / '
                    f"sum by (origin) (rate({attempts}[5m]))",
                    "{{origin}}",
                )
            ],
            unit="percentunit",
        ),
        _panel(
            "Retries per second",
            [(f"sum by (origin) (rate({_p('asgi_resilience.client.retries')}[1m]))", "{{origin}}")],
            unit="reqps",
        ),
        _panel(
            "Outbound attempt duration p50 / p99",
            [
                (f"histogram_quantile(0.5, sum by (le) (rate({duration}_bucket[5m])))", "p50"),
                (f"histogram_quantile(0.99, sum by (le) (rate({duration}_bucket[5m])))", "p99"),
            ],
            unit="s",
        ),
        _panel(
            "Named circuit breakers: calls refused per second",
            [(f"sum by (policy) (rate({_p('asgi_resilience.circuit_breaker.refused')}[1m]))", "{{policy}}")],
            unit="reqps",
        ),
        _panel(
            "Bulkhead rejections per second, by bulkhead and reason",
            [
                (
                    f"sum by (bulkhead, reason) (rate({_p('asgi_resilience.bulkhead.rejected')}[1m]))",
                    "{{bulkhead}} {{reason}}",
                )
            ],
            unit="reqps",
        ),
        _panel(
            "Bulkhead queue wait p50 / p99",
            [
                (f"histogram_quantile(0.5, sum by (bulkhead, le) (rate({wait}_bucket[5m])))", "p50 {{bulkhead}}"),
                (f"histogram_quantile(0.99, sum by (bulkhead, le) (rate({wait}_bucket[5m])))", "p99 {{bulkhead}}"),
            ],
            unit="s",
        ),
        _panel(
            "Fallbacks, retries and hedges per second, by policy",
            [
                (
                    f"sum by (policy, kind) (rate({_p('asgi_resilience.fallbacks')}[1m]))",
                    "fallback {{policy}} {{kind}}",
                ),
                (f"sum by (policy) (rate({_p('asgi_resilience.retries')}[1m]))", "retry {{policy}}"),
                (f"sum by (policy) (rate({_p('asgi_resilience.hedge.started')}[1m]))", "hedge {{policy}}"),
                (f"sum by (policy) (rate({_p('asgi_resilience.hedge.won')}[1m]))", "hedge won {{policy}}"),
            ],
            unit="reqps",
        ),
        _panel(
            "Exceptions per second, by type and result",
            [
                (
                    f"sum by (error_type, result) (rate({_p('asgi_resilience.exceptions')}[1m]))",
                    "{{error_type}} {{result}}",
                )
            ],
            unit="reqps",
        ),
    ]
    for index, panel in enumerate(panels):
        panel["id"] = index + 1
        panel["datasource"] = {"type": "prometheus", "uid": datasource}
        panel["gridPos"] = {"h": 8, "w": 12, "x": 12 * (index % 2), "y": 8 * (index // 2)}
    return {
        "title": title,
        "uid": "asgi-resilience",
        "schemaVersion": 39,
        "version": 1,
        "editable": True,
        "refresh": "10s",
        "time": {"from": "now-1h", "to": "now"},
        "tags": ["asgi-resilience"],
        "panels": panels,
    }

"""The Grafana dashboard only queries published metrics, by their Prometheus names and labels."""

from __future__ import annotations

import json
import re

from asgi_resilience.observability import METRICS, grafana_dashboard, prometheus_name


def test_every_query_uses_published_metrics_and_labels() -> None:
    dashboard = grafana_dashboard(datasource="prom-uid", title="svc")
    assert json.loads(json.dumps(dashboard)) == dashboard
    assert dashboard["title"] == "svc"
    panels = dashboard["panels"]
    assert len({p["id"] for p in panels}) == len(panels)
    by_prometheus = {prometheus_name(spec): spec for spec in METRICS.values()}
    used: set[str] = set()
    for panel in panels:
        assert panel["datasource"] == {"type": "prometheus", "uid": "prom-uid"}
        for target in panel["targets"]:
            names = set(re.findall(r"asgi_resilience_[a-z_]+", target["expr"]))
            assert names, target["expr"]
            for name in names:
                base = name.removesuffix("_bucket")
                assert base in by_prometheus, name
                used.add(base)
                labels = {label.replace(".", "_") for label in by_prometheus[base].attributes} | {"le"}
                for grouped in re.findall(r"by \(([^)]*)\)", target["expr"]):
                    assert {g.strip() for g in grouped.split(",")} <= labels, (grouped, base)
    # every concern of the table has a panel
    assert {
        "asgi_resilience_rate_limit_requests_total",
        "asgi_resilience_cache_requests_total",
        "asgi_resilience_timeouts_total",
        "asgi_resilience_concurrency_active",
        "asgi_resilience_circuit_breaker_state",
        "asgi_resilience_client_retries_total",
        "asgi_resilience_exceptions_total",
        "asgi_resilience_circuit_breaker_refused_total",
        "asgi_resilience_bulkhead_rejected_total",
        "asgi_resilience_bulkhead_queue_duration_seconds",
        "asgi_resilience_fallbacks_total",
        "asgi_resilience_retries_total",
        "asgi_resilience_hedge_started_total",
        "asgi_resilience_hedge_won_total",
    } <= used

"""The docs publish the metric table exactly as the code defines it; the README runs the demo first."""

from __future__ import annotations

from pathlib import Path

from asgi_resilience.observability import METRICS, metric_table_markdown

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text(encoding="utf-8")
OBSERVABILITY = (ROOT / "docs" / "observability.md").read_text(encoding="utf-8")


def test_docs_metric_table_is_generated_from_the_code() -> None:
    table = metric_table_markdown()
    assert table in OBSERVABILITY, "regenerate the table in docs/observability.md with metric_table_markdown()"
    assert table.count("\n") == len(METRICS) + 2
    for name in METRICS:
        assert f"| `{name}` |" in table


def test_readme_first_command_runs_the_demo() -> None:
    setup = README[README.index("## Set up") :]
    first_block = setup[setup.index("```bash") : setup.index("```", setup.index("```bash") + 3)]
    assert first_block.strip().endswith("python -m asgi_resilience.demo")


def test_prometheus_names_follow_the_exporter_rules() -> None:
    from asgi_resilience.observability._names import prometheus_name

    names = {name: prometheus_name(spec) for name, spec in METRICS.items()}
    assert names["asgi_resilience.rate_limit.requests"] == "asgi_resilience_rate_limit_requests_total"
    assert names["asgi_resilience.rate_limit.duration"] == "asgi_resilience_rate_limit_duration_seconds"
    assert names["asgi_resilience.concurrency.active"] == "asgi_resilience_concurrency_active"
    assert names["asgi_resilience.concurrency.limit"] == "asgi_resilience_concurrency_limit"
    for name in names.values():
        assert "." not in name and f"`{name}`" in OBSERVABILITY

"""Failure storms: our own expected rejections are counted and logged once per interval per cause."""

from __future__ import annotations

import logging
from typing import Any

import pytest

from asgi_resilience import CircuitOpenError, ProblemDetailsMiddleware
from asgi_resilience.client._hooks import log_give_up
from asgi_resilience.client._http import RetryEvent
from asgi_resilience.observability import RateLimitedLog, Telemetry
from asgi_resilience.testing import ASGIHarness, ManualClock, http_scope
from asgi_resilience.types import Receive, Scope, Send


def test_one_line_per_interval_per_cause_with_the_count(caplog: pytest.LogCaptureFixture) -> None:
    clock = ManualClock()
    log = RateLimitedLog(logging.getLogger("test.ratelog"), interval=10.0, clock=clock)
    with caplog.at_level(logging.INFO, logger="test.ratelog"):
        assert log.log(logging.WARNING, "a", "event %s", "a") is True
        assert [log.log(logging.WARNING, "a", "event %s", "a") for _ in range(5)] == [False] * 5
        assert log.log(logging.WARNING, "b", "event %s", "b") is True  # another cause has its own line
        clock.advance(10.0)
        assert log.log(logging.WARNING, "a", "event %s", "a") is True
        assert log.log(logging.DEBUG, "c", "not enabled") is False
    assert [r.getMessage() for r in caplog.records] == [
        "event a",
        "event b",
        "event a (5 more like this in the last 10 s)",
    ]


def test_the_memory_of_causes_is_bounded() -> None:
    log = RateLimitedLog(logging.getLogger("test.ratelog"), max_causes=3)
    for cause in range(10):
        log.log(logging.WARNING, cause, "x")
    assert len(log._seen) <= 3


async def test_a_circuit_open_storm_is_counted_every_time_and_logged_once(caplog: pytest.LogCaptureFixture) -> None:
    async def upstream_down(scope: Scope, receive: Receive, send: Send) -> None:
        raise CircuitOpenError("open", origin="http://origin:8080")

    telemetry = Telemetry()
    mw = ProblemDetailsMiddleware(upstream_down, telemetry=telemetry)
    with caplog.at_level(logging.WARNING, logger="asgi_resilience"):
        for _ in range(200):
            assert (await ASGIHarness().run(mw, http_scope(path="/upstream"))).status == 503
    totals = telemetry.instrument("asgi_resilience.exceptions").totals
    assert sum(totals.values()) == 200
    assert len([r for r in caplog.records if "mapped to 503" in r.getMessage()]) == 1


async def test_unexpected_exceptions_keep_one_record_each(caplog: pytest.LogCaptureFixture) -> None:
    async def broken(scope: Scope, receive: Receive, send: Send) -> None:
        raise KeyError("bug")

    mw = ProblemDetailsMiddleware(broken, telemetry=False)
    with caplog.at_level(logging.ERROR, logger="asgi_resilience"):
        for _ in range(3):
            assert (await ASGIHarness().run(mw)).status == 500
    assert len([r for r in caplog.records if "Unhandled exception" in r.getMessage()]) == 3


def test_refused_retries_are_logged_once_per_interval(caplog: pytest.LogCaptureFixture) -> None:
    event: Any = RetryEvent(
        kind="give_up", origin="http://storm.example:80", method="GET", path="/x", attempt=1, delay=0.0, reason="budget"
    )
    with caplog.at_level(logging.WARNING, logger="asgi_resilience.client"):
        for _ in range(100):
            log_give_up(event)
    assert len([r for r in caplog.records if "giving up" in r.getMessage()]) == 1

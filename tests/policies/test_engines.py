"""The moved engines: Retry-After parsing over arbitrary Unicode, breaker eviction, metric cardinality."""

from __future__ import annotations

import httpx
import pytest
from hypothesis import given
from hypothesis import strategies as st

from asgi_resilience.client import AsyncRetryTransport, RetryPolicy, RetryTransport
from asgi_resilience.client._breaking import BreakerCore
from asgi_resilience.observability import Telemetry
from asgi_resilience.observability._telemetry import CARDINALITY_LIMIT, OVERFLOW
from asgi_resilience.policies import BreakerPolicy
from asgi_resilience.policies._breaker import BreakerRegistry, CircuitBreaker, Result, State
from asgi_resilience.policies._registry import uncount_evicted
from asgi_resilience.policies._retry import Outcome, Phase, parse_retry_after
from asgi_resilience.testing import set_testing

NOW = 1_700_000_000.0


@given(st.text())
def test_retry_after_parser_never_raises_on_any_unicode(value: str) -> None:
    result = parse_retry_after(value, now_epoch=NOW)
    assert result is None or result >= 0.0
    if result is not None and value.strip(" \t").isdigit():
        assert value.strip(" \t").isascii()  # RFC 5234 DIGIT is %x30-39 only


@pytest.mark.parametrize("value", ["²", "¹", "³", "٣", "１２", "1²", "߀"])
def test_non_ascii_digits_are_not_a_delay(value: str) -> None:
    assert parse_retry_after(value, now_epoch=NOW) is None


def test_absurdly_long_delays_are_capped_not_crashing() -> None:
    assert parse_retry_after("9" * 5000, now_epoch=NOW) == 1e12  # int() would raise past 4300 digits


def test_decide_with_a_non_ascii_retry_after_falls_back_to_backoff() -> None:
    decision = RetryPolicy(jitter="none", backoff_initial=0.5).decide(
        Outcome(Phase.RESPONSE, 503, "²"),
        method="GET",
        has_idempotency_key=False,
        attempt=1,
        remaining=10.0,
        random=0.0,
        now_epoch=NOW,
    )
    assert decision.retry and decision.delay == 0.5


class _Stream(httpx.SyncByteStream, httpx.AsyncByteStream):
    def __init__(self) -> None:
        self.closed = False

    def __iter__(self):  # type: ignore[no-untyped-def]
        yield b"busy"

    async def __aiter__(self):  # type: ignore[no-untyped-def]
        yield b"busy"

    def close(self) -> None:
        self.closed = True

    async def aclose(self) -> None:
        self.closed = True


@pytest.mark.anyio
async def test_a_non_ascii_retry_after_is_retried_not_a_500() -> None:
    calls = 0

    def handler(request: httpx.Request) -> httpx.Response:
        nonlocal calls
        calls += 1
        return httpx.Response(503 if calls == 1 else 200, headers=[(b"Retry-After", "²".encode())])

    with set_testing():
        async with httpx.AsyncClient(transport=AsyncRetryTransport(httpx.MockTransport(handler))) as client:
            response = await client.get("http://origin.test/")
    assert response.status_code == 200 and calls == 2


class _Broken(RetryPolicy):
    __slots__ = ()

    def decide(self, *args: object, **kwargs: object):  # type: ignore[no-untyped-def, override]
        raise RuntimeError("a bug while deciding")


@pytest.mark.anyio
async def test_a_response_dropped_by_an_error_while_deciding_is_closed_async() -> None:
    stream = _Stream()
    transport = AsyncRetryTransport(httpx.MockTransport(lambda r: httpx.Response(503, stream=stream)), policy=_Broken())
    with pytest.raises(RuntimeError):
        await transport.handle_async_request(httpx.Request("GET", "http://origin.test/"))
    assert stream.closed


def test_a_response_dropped_by_an_error_while_deciding_is_closed_sync() -> None:
    stream = _Stream()
    transport = RetryTransport(httpx.MockTransport(lambda r: httpx.Response(503, stream=stream)), policy=_Broken())
    with pytest.raises(RuntimeError):
        transport.handle_request(httpx.Request("GET", "http://origin.test/"))
    assert stream.closed


def _open(breaker: CircuitBreaker) -> None:
    for _ in range(breaker.policy.minimum_calls):
        admission = breaker.admit(0.0)
        breaker.record(admission, Result.FAILURE, 0.01, 0.0)
    assert breaker.state is State.OPEN


def test_registry_evicts_closed_breakers_before_open_ones() -> None:
    evicted: list[str] = []
    registry = BreakerRegistry(3, on_evict=lambda b: evicted.append(b.origin))
    policy = BreakerPolicy(consecutive_failures=1, minimum_calls=1, window=1)
    failing, _ = registry.get(policy, "http://failing:80")
    _open(failing)
    for i in range(1024):
        registry.get(policy, f"http://ok{i}:80")
    assert failing in registry.breakers()  # the failing origin is not called again
    assert "http://failing:80" not in evicted and len(evicted) == 1022


def test_every_breaker_open_evicts_the_oldest() -> None:
    registry = BreakerRegistry(2)
    policy = BreakerPolicy(consecutive_failures=1, minimum_calls=1, window=1)
    for name in ("a", "b", "c"):
        breaker, _ = registry.get(policy, name)
        _open(breaker)
    assert [b.origin for b in registry.breakers()] == ["b", "c"]  # "c" was closed when added, yet kept


def test_state_metric_is_decremented_on_eviction() -> None:
    telemetry = Telemetry()
    core = BreakerCore(
        policy=BreakerPolicy(), state=None, shared=False, on_transition=None, telemetry=telemetry, asynchronous=True
    )
    core.registry = BreakerRegistry(2, on_evict=uncount_evicted)
    for i in range(5):
        core.breaker(httpx.Request("GET", f"http://host{i}.test/"))
    rows = telemetry.snapshot()["metrics"]["asgi_resilience.circuit_breaker.state"]
    assert sum(row["value"] for row in rows) == 2  # two breakers live, not five
    live = {row["attributes"]["origin"] for row in rows if row["value"]}
    assert live == {"http://host3.test:80", "http://host4.test:80"}


def test_metric_series_collapse_to_an_overflow_series() -> None:
    telemetry = Telemetry()
    attempts = telemetry.instrument("asgi_resilience.client.attempts")
    duration = telemetry.instrument("asgi_resilience.client.attempt.duration")
    for i in range(CARDINALITY_LIMIT + 500):
        attributes = {"origin": f"http://h{i}.test:80", "outcome": "success"}
        attempts.add(1, attributes)
        duration.record(0.01, attributes)
    assert len(attempts.totals) == CARDINALITY_LIMIT + 1
    assert attempts.totals[OVERFLOW] == 500 and duration.totals[OVERFLOW] == (500, pytest.approx(5.0))
    attempts.add(1, {"origin": "http://h0.test:80", "outcome": "success"})  # an existing series still counts
    assert attempts.totals[(("origin", "http://h0.test:80"), ("outcome", "success"))] == 2

"""Policies composed: the validated order, the LLM pipeline, and problems at the HTTP edge."""

from __future__ import annotations

import time

import anyio
import httpx
import pytest

from asgi_resilience import (
    CircuitOpenError,
    ConfigurationError,
    ProblemDetailsMiddleware,
    TimeLimitExceeded,
    remaining_time,
    timeout,
)
from asgi_resilience.policies import (
    bulkhead,
    circuit_breaker,
    fail_closed,
    fallback,
    hedge,
    pipeline,
    retry,
    time_limit,
)
from asgi_resilience.types import Receive, Scope, Send

pytestmark = pytest.mark.anyio


class LLMError(Exception):
    pass


async def test_the_llm_pipeline_retries_inside_its_total_time_limit() -> None:
    llm = pipeline(
        time_limit(2),
        retry(attempts=3, on=LLMError, wait_initial=0.001, budget=None),
        circuit_breaker("llm", minimum_calls=100),
        bulkhead("llm", 10),
    )
    calls = 0
    seen_deadline: list[float | None] = []

    @llm
    async def call_llm(prompt: str) -> str:
        nonlocal calls
        calls += 1
        seen_deadline.append(remaining_time())
        if calls < 3:
            raise LLMError
        return prompt.upper()

    assert await call_llm("hi") == "HI" and calls == 3
    assert all(d is not None and d <= 2 for d in seen_deadline)  # the total limit is every attempt's deadline
    assert bulkhead("llm").active == 0


async def test_attempt_time_limits_are_retried_and_count_against_the_breaker() -> None:
    breaker = circuit_breaker("slow", consecutive_failures=2, minimum_calls=100, break_duration=30)
    slow = pipeline(retry(on=TimeLimitExceeded, attempts=2, wait_initial=0, budget=None), breaker, time_limit(0.02))
    calls = 0

    @slow
    async def call() -> None:
        nonlocal calls
        calls += 1
        await anyio.sleep(5)

    with anyio.fail_after(2), pytest.raises(TimeLimitExceeded):
        await call()
    assert calls == 2 and breaker.state == "open"
    with pytest.raises(CircuitOpenError):
        await call()  # refused: the default retry predicate is not used here and open is not TimeLimitExceeded


async def test_fallback_outermost_also_covers_the_total_time_limit() -> None:
    @pipeline(fallback(True), time_limit(0.02))
    async def can_read() -> bool:
        await anyio.sleep(5)
        return False

    with anyio.fail_after(2):
        assert await can_read() is True


async def test_hedge_in_a_pipeline() -> None:
    calls = 0

    @pipeline(
        retry(on=LLMError, attempts=2, wait_initial=0, budget=None), hedge(idempotent=True, delay=0.01, budget=None)
    )
    async def read() -> int:
        nonlocal calls
        calls += 1
        await anyio.sleep(0.05 if calls == 1 else 0.0)
        return calls

    assert await read() == 2


@pytest.mark.parametrize(
    "build",
    [
        lambda: pipeline(circuit_breaker("o1"), retry()),  # retry inside the breaker trips late
        lambda: pipeline(bulkhead("o2", 1), circuit_breaker("o3")),  # bulkhead outside the breaker
        lambda: pipeline(retry(), fallback(0)),  # fallback inside retry: retry never fires
        lambda: pipeline(retry(), time_limit(1), circuit_breaker("o4")),  # attempt limit outside the breaker
        lambda: pipeline(retry(), retry()),
        lambda: pipeline(time_limit(1), retry(), time_limit(5)),  # per attempt longer than total
        lambda: pipeline(),
    ],
)
def test_pipeline_rejects_a_wrong_order(build: object) -> None:
    with pytest.raises(ConfigurationError):
        build()  # type: ignore[operator]


def test_the_route_timeout_marker_is_not_a_policy() -> None:
    with pytest.raises(ConfigurationError, match="time_limit"):
        pipeline(timeout(30), retry())  # type: ignore[arg-type]

    @timeout(0.5)
    async def endpoint() -> None:
        pass

    assert endpoint.__name__ == "endpoint"  # the route decorator still returns the endpoint itself


async def _asgi(app: object, path: str = "/") -> httpx.Response:
    transport = httpx.ASGITransport(app=app)  # type: ignore[arg-type]
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        return await client.get(path)


@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_overloaded_bulkhead_and_fail_closed_become_503_problems() -> None:
    limit = bulkhead("edge", 1, retry_after=3)

    @fail_closed
    async def is_admin(user: str) -> bool:
        raise ConnectionError("authz at 10.1.2.3 refused")

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["path"] == "/admin":
            await is_admin("ann")
        async with limit:
            async with limit:  # the second entry finds the only slot taken and no queue
                pass

    wrapped = ProblemDetailsMiddleware(app)
    response = await _asgi(wrapped)
    assert response.status_code == 503 and response.headers["retry-after"] == "3"
    assert response.headers["content-type"] == "application/problem+json"
    assert response.json()["type"].endswith("overloaded")
    response = await _asgi(wrapped, "/admin")
    assert response.status_code == 503 and response.json()["type"].endswith("dependency-unavailable")
    assert "10.1.2.3" not in response.text
    assert limit.active == 0


def test_time_bound_of_a_sync_pipeline() -> None:
    @pipeline(retry(on=LLMError, attempts=3, wait_initial=0, budget=None), circuit_breaker("sync-pipe"))
    def call() -> float:
        return time.monotonic()

    assert call() > 0

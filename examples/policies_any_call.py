"""Protect any call, not only HTTP: an LLM call, a fail-open authorization check and a fail-closed
admin check, with stand-in clients that can be made slow, failing or down.

    python examples/policies_any_call.py

Bulkhead sizes and time limits per resource are configuration, not code: the same could come
from ``ASGI_RESILIENCE__BULKHEAD__LLM__MAX_CONCURRENT=10`` and
``ASGI_RESILIENCE__TIME_LIMIT__LLM=30`` in the environment.
"""

from __future__ import annotations

import anyio

from asgi_resilience import (
    CircuitOpenError,
    DependencyUnavailable,
    TimeLimitExceeded,
    bulkhead,
    circuit_breaker,
    configure_policies,
    fail_closed,
    pipeline,
    retry,
    time_limit,
)


class LLMError(Exception):
    """What the stand-in LLM SDK raises on a failed completion."""


class StandIn:
    """A dependency whose behaviour the example (and the tests) switch: ok, slow, failing or down."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.mode = "ok"
        self.calls = 0
        self.delay = 0.5  # seconds, when slow

    async def call(self, value: object) -> object:
        self.calls += 1
        if self.mode == "slow":
            await anyio.sleep(self.delay)
        elif self.mode == "failing" and self.calls % 2:
            raise LLMError(f"{self.name}: transient failure")
        elif self.mode == "down":
            raise ConnectionError(f"{self.name} is down")
        return value


llm_client = StandIn("llm")
authz_client = StandIn("authz")

# Per resource type, in one place (start-up): bulkheads and time limits by name.
configure_policies(
    {
        "bulkhead": {"llm": {"max_concurrent": 10, "max_queue": 20}},
        "time_limit": {"llm": 2.0, "auth": 0.2},
        "circuit_breaker": {"llm": {"consecutive_failures": 3, "break_duration": 0.2}},
    }
)

# 1. A protected LLM call: total time limit, retries of LLM errors, a breaker and a bulkhead.
llm = pipeline(
    time_limit("llm"),
    retry(attempts=3, on=(LLMError, ConnectionError), wait_initial=0.01, wait_max=0.05, name="llm"),
    circuit_breaker("llm"),
    bulkhead("llm"),
)


@llm
async def call_llm(prompt: str) -> str:
    return str(await llm_client.call(f"answer to {prompt!r}"))


# 2. Authorization that fails open: while the authorization service is down (or slow), reads pass.
@circuit_breaker("authz", fallback=lambda *args, **kwargs: True, consecutive_failures=2, break_duration=0.2)
@time_limit("auth")
async def can_read(user: str, doc: str) -> bool:
    return bool(await authz_client.call(user != "mallory"))


# 3. An admin check that fails closed: when authorization is down, deny with a 503 problem.
@fail_closed
@time_limit("auth")
async def is_admin(user: str) -> bool:
    return bool(await authz_client.call(user == "root"))


async def main() -> None:
    llm_client.mode = authz_client.mode = "ok"
    print(await call_llm("hello"))
    assert await can_read("ann", "doc-1") and not await can_read("mallory", "doc-1")
    assert await is_admin("root") and not await is_admin("ann")

    llm_client.mode = "failing"  # every other call fails: the retry absorbs it
    print(await call_llm("still there?"))

    llm_client.mode = "down"  # retries run out, the breaker opens, then it refuses at once
    for _ in range(2):
        try:
            await call_llm("anyone?")
        except (ConnectionError, CircuitOpenError) as exc:
            print("llm:", type(exc).__name__)
    print("llm breaker:", circuit_breaker("llm").state)

    authz_client.mode = "down"
    print("can_read while authz is down:", await can_read("mallory", "doc-1"))  # fails open
    try:
        await is_admin("root")
    except DependencyUnavailable as exc:
        print("is_admin while authz is down:", exc.status, exc.type)  # fails closed: 503

    authz_client.mode = "slow"  # slowness is a failure too: the time limit, then the same answers
    try:
        await is_admin("root")
    except DependencyUnavailable as exc:
        assert isinstance(exc.__cause__, TimeLimitExceeded)

    llm_client.mode = authz_client.mode = "ok"  # recovery: after the break the breakers probe and close
    await anyio.sleep(0.25)
    print(await call_llm("back?"), circuit_breaker("llm").state)


if __name__ == "__main__":
    anyio.run(main)

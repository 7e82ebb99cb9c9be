"""``pipeline``: policies composed in one validated order (outermost first).

    fallback -> time_limit (total) -> retry -> hedge -> circuit_breaker -> bulkhead -> time_limit (per attempt)

Why this order (Polly v8's and Microsoft's standard handler, failsafe-go's composition):

* **fallback outermost**: it answers for every failure below it, a total timeout included (a
  fail-open check must answer when its dependency is slow, not only when it errors).
* **total time limit outside retry**: one bound for the caller, waits included; it is published
  as the deadline, so retry never sleeps past it.
* **retry (and hedge) outside the breaker**: the breaker sees every attempt, so it trips on time;
  an open breaker's refusal carries ``retry_after``, which retry honours or gives up on.
* **bulkhead inside the breaker**: a refused call never queues; the slot is held only while an
  attempt runs, never through a retry's backoff.
* **per-attempt time limit innermost**: inside the breaker, so timeouts count as failures.

Anything else raises :class:`ConfigurationError` naming the misplaced policy, as does a per-attempt
limit longer than the total one or two policies of the same kind.
"""

from __future__ import annotations

from typing import Any, ClassVar

from asgi_resilience.errors import ConfigurationError
from asgi_resilience.policies._agen_run import AsyncGenFn
from asgi_resilience.policies._base import AsyncFn, Policy, SyncFn
from asgi_resilience.policies._time_limit import TimeLimit

__all__ = ["Pipeline", "pipeline"]

ORDER = ("fallback", "time_limit (total)", "retry", "hedge", "circuit_breaker", "bulkhead", "time_limit (per attempt)")


class Pipeline(Policy):
    """Policies applied in order, outermost first; see :func:`pipeline`."""

    kind: ClassVar[str] = "pipeline"

    def __init__(self, policies: tuple[Policy, ...]) -> None:
        self.policies = policies
        self.async_only = any(p.async_only for p in policies)  # type: ignore[misc]

    def bind_async(self, inner: AsyncFn) -> AsyncFn:
        for policy in reversed(self.policies):
            inner = policy.bind_async(inner)
        return inner

    def bind_sync(self, inner: SyncFn) -> SyncFn:
        for policy in reversed(self.policies):
            inner = policy.bind_sync(inner)
        return inner

    def bind_asyncgen(self, inner: AsyncGenFn) -> AsyncGenFn:
        for policy in reversed(self.policies):
            inner = policy.bind_asyncgen(inner)
        return inner

    def __repr__(self) -> str:
        return f"pipeline({', '.join(type(p).__name__ for p in self.policies)})"


def _describe(item: Any) -> str:
    if getattr(item, "__qualname__", "").startswith("timeout.<locals>"):
        return (
            "asgi_resilience.timeout() marks an HTTP route for TimeoutMiddleware; for a time limit on a call "
            "use time_limit(seconds)"
        )
    return f"pipeline() takes policies (time_limit, retry, hedge, circuit_breaker, bulkhead, fallback), got {item!r}"


def pipeline(*policies: Policy) -> Pipeline:
    """Compose policies, outermost first, in the validated order::

        llm = pipeline(time_limit(30), retry(attempts=3, on=LLMError), circuit_breaker("llm"), bulkhead("llm", 10))

        @llm
        async def call_llm(prompt: str) -> str: ...

    The order is ``fallback -> time_limit (total) -> retry -> hedge -> circuit_breaker -> bulkhead
    -> time_limit (per attempt)``; each step is optional. A ``time_limit`` before the retry,
    hedge, breaker and bulkhead bounds the whole call; one after them bounds each attempt.
    """
    if not policies:
        raise ConfigurationError("pipeline() needs at least one policy")
    ranks: list[int] = []
    seen_inner = False
    for item in policies:
        if isinstance(item, Pipeline):
            raise ConfigurationError("pipeline() takes policies, not another pipeline: list its policies instead")
        if not isinstance(item, Policy):
            raise ConfigurationError(_describe(item))
        rank = item.rank
        if isinstance(item, TimeLimit):
            rank = 6 if seen_inner else 1
        elif rank in (2, 3, 4, 5):
            seen_inner = True
        ranks.append(rank)
    for i in range(1, len(ranks)):
        if ranks[i] == ranks[i - 1] or ranks[i] < ranks[i - 1]:
            raise ConfigurationError(
                f"pipeline(): {ORDER[ranks[i]]} cannot come after {ORDER[ranks[i - 1]]}; the order is "
                f"{' -> '.join(ORDER)} (outermost first), each at most once"
            )
    limits = [p for p, r in zip(policies, ranks, strict=True) if isinstance(p, TimeLimit)]
    if len(limits) == 2 and limits[1].seconds > limits[0].seconds:
        raise ConfigurationError(
            f"pipeline(): the per-attempt time_limit ({limits[1].seconds:g} s) must not exceed the total one "
            f"({limits[0].seconds:g} s)"
        )
    return Pipeline(tuple(policies))

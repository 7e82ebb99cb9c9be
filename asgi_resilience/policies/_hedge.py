"""Hedging: for idempotent calls, a second attempt when the first is slow; first success wins.

One engine (:class:`HedgeEngine`) races the attempts, for the ``hedge`` policy on any async
function and for the httpx transports (``hedge=HedgePolicy(...)``). A hedged attempt starts after
the delay (seconds, or ``"p95"``: the 95th percentile of recent successful latencies) or at once
when an attempt fails; the first success is returned and every other attempt is cancelled and
awaited before the call returns, so nothing keeps running behind the caller's back. A loser that
had already produced a result (an HTTP response) is discarded (its response closed). Each hedged
attempt is taken from the same retry budget as retries, so hedging cannot multiply the load on a
struggling dependency. A call that is not idempotent is never hedged.
"""

from __future__ import annotations

import math
import threading
import time
from bisect import insort
from collections import deque
from collections.abc import Awaitable, Callable, Collection
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, ClassVar, Generic, TypeVar

import anyio

from asgi_resilience.errors import ConfigurationError
from asgi_resilience.observability import Telemetry, resolve_telemetry
from asgi_resilience.policies._base import AsyncFn, Policy, SyncFn
from asgi_resilience.policies._budget import BudgetState, RetryBudget
from asgi_resilience.policies._durations import seconds
from asgi_resilience.policies._registry import BUDGETS

__all__ = ["IDEMPOTENT_METHODS", "Hedge", "HedgeEngine", "HedgePolicy", "hedge"]

T = TypeVar("T")

_SAMPLES = 200
_MIN_SAMPLES = 20
_UNTIL_KNOWN = 0.1
"""The delay of an adaptive (percentile) policy until ``_MIN_SAMPLES`` calls succeeded."""

IDEMPOTENT_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE"})


def _parse_delay(delay: Any, what: str) -> tuple[float, float | None]:
    """``(fixed delay, percentile or None)`` from seconds or ``"p95"``."""
    if isinstance(delay, str):
        digits = delay[1:]
        if not (delay.startswith("p") and digits.isascii() and digits.isdigit() and 0 < int(digits) < 100):
            raise ConfigurationError(f"{what} must be seconds or a percentile such as 'p95', got {delay!r}")
        return _UNTIL_KNOWN, int(digits) / 100
    return seconds(delay, what, allow_zero=True), None


def _check_max_hedges(max_hedges: Any, what: str) -> None:
    if isinstance(max_hedges, bool) or not isinstance(max_hedges, int) or max_hedges < 1:
        raise ConfigurationError(f"{what} must be an int >= 1, got {max_hedges!r}")


@dataclass(frozen=True, slots=True, kw_only=True)
class HedgePolicy:
    """Hedging for the async httpx transports (``AsyncRetryTransport(hedge=HedgePolicy())``).

    A request whose method is in ``methods`` and whose body is in memory gets another attempt
    after ``delay`` if no response has arrived; the first acceptable response wins (one whose
    status the retry policy would not retry), the other attempts are cancelled and their
    responses closed. Each hedged attempt is taken from the retry budget of the origin.

    Args:
        delay: seconds, or a percentile of this origin's recent latencies (``"p95"``; 0.1 s
            until 20 calls succeeded).
        max_hedges: extra attempts at most, per attempt of the retry policy.
        methods: the methods that may be hedged (idempotent ones by default; never add one
            whose repetition has an effect, such as POST without an idempotency key).

    .. versionadded:: 0.1.0
    """

    delay: float | timedelta | str = 0.1
    max_hedges: int = 1
    methods: Collection[str] = IDEMPOTENT_METHODS

    def __post_init__(self) -> None:
        _parse_delay(self.delay, "HedgePolicy delay")
        _check_max_hedges(self.max_hedges, "HedgePolicy max_hedges")
        if isinstance(self.methods, str) or not all(isinstance(m, str) for m in self.methods):
            raise ConfigurationError(f"HedgePolicy methods must be a collection of method names, got {self.methods!r}")
        object.__setattr__(self, "methods", frozenset(m.upper() for m in self.methods))


class _Latencies:
    """The last ``_SAMPLES`` successful durations, for an adaptive delay."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._recent: deque[float] = deque(maxlen=_SAMPLES)

    def add(self, value: float) -> None:
        with self._lock:
            self._recent.append(value)

    def percentile(self, fraction: float) -> float | None:
        with self._lock:
            if len(self._recent) < _MIN_SAMPLES:
                return None
            ordered: list[float] = []
            for value in self._recent:
                insort(ordered, value)
        return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


class HedgeEngine(Generic[T]):
    """Races the attempts of one call; one engine per policy (or per origin in a transport)."""

    def __init__(self, *, delay: float | timedelta | str, max_hedges: int, telemetry: Telemetry, label: str) -> None:
        self.delay, self.percentile = _parse_delay(delay, "hedge delay")
        _check_max_hedges(max_hedges, "hedge max_hedges")
        self.max_hedges = max_hedges
        self._latencies = _Latencies()
        self._started = telemetry.instrument("asgi_resilience.hedge.started")
        self._won = telemetry.instrument("asgi_resilience.hedge.won")
        self._label = {"policy": label}

    def current_delay(self) -> float:
        if self.percentile is None:
            return self.delay
        found = self._latencies.percentile(self.percentile)
        return self.delay if found is None else found

    async def race(
        self,
        attempt: Callable[[], Awaitable[T]],
        *,
        budget: BudgetState | None,
        accept: Callable[[T], bool] | None = None,
        discard: Callable[[T], Awaitable[None]] | None = None,
    ) -> T:
        """The first accepted result of ``attempt()`` run up to ``1 + max_hedges`` times.

        ``accept`` (default: every result) tells a result that counts as a failure (an HTTP 503)
        from a success; such a result launches the next attempt at once, like an error, and is
        returned if no attempt succeeds and it came last. ``discard`` releases a result that is
        not returned (closes a response); it runs shielded from cancellation.
        """
        winner: list[tuple[int, T]] = []
        outcomes: list[tuple[bool, Any]] = []  # (is_error, exception or rejected result), in order
        spare: list[T] = []  # results to discard: rejected ones and late successes
        running = 0
        changed = anyio.Event()

        async def one(index: int) -> None:
            nonlocal running
            started = time.monotonic()
            try:
                value = await attempt()
            except Exception as exc:
                outcomes.append((True, exc))
            else:
                if winner:
                    spare.append(value)  # a loser that finished before it could be cancelled
                elif accept is not None and not accept(value):
                    outcomes.append((False, value))
                    spare.append(value)
                else:
                    winner.append((index, value))
                    self._latencies.add(time.monotonic() - started)
                    group.cancel_scope.cancel()  # the losers are cancelled and awaited by the group
            finally:
                running -= 1
                changed.set()

        try:
            async with anyio.create_task_group() as group:
                group.start_soon(one, 0)
                running = launched = 1
                while not winner:
                    more = launched <= self.max_hedges
                    if running:
                        # wake on a result (a failure launches the next attempt at once) or at the delay
                        with anyio.move_on_after(self.current_delay() if more else math.inf):
                            await changed.wait()
                        changed = anyio.Event()
                        if winner:
                            break
                    if not more:
                        if running:
                            continue
                        break  # every attempt failed
                    if budget is not None and not budget.try_withdraw(time.monotonic()):
                        launched = self.max_hedges + 1  # no budget: no more attempts, wait for the running ones
                        continue
                    self._started.add(1, self._label)
                    group.start_soon(one, launched)
                    running += 1
                    launched += 1
        except BaseException:
            if winner:
                spare.append(winner[0][1])
            await self._discard(spare, discard)
            raise
        if winner:
            await self._discard(spare, discard)
            index, value = winner[0]
            if index:
                self._won.add(1, self._label)
            return value
        is_error, last = outcomes[-1]
        await self._discard([v for v in spare if v is not last], discard)
        if is_error:
            raise last
        return last  # type: ignore[no-any-return]

    @staticmethod
    async def _discard(values: list[T], discard: Callable[[T], Awaitable[None]] | None) -> None:
        if discard is None or not values:
            return
        with anyio.CancelScope(shield=True):
            for value in values:
                try:
                    await discard(value)
                except Exception:  # closing a losing attempt must not fail the call
                    pass


class Hedge(Policy):
    """A hedging policy; see :func:`hedge`."""

    kind: ClassVar[str] = "hedge"
    rank: ClassVar[int] = 3
    async_only: ClassVar[bool] = True

    def __init__(
        self,
        *,
        idempotent: bool | Callable[..., bool],
        delay: float | str,
        max_hedges: int,
        budget: RetryBudget | None,
        name: str | None,
        telemetry: Telemetry | bool,
    ) -> None:
        if not (isinstance(idempotent, bool) or callable(idempotent)):
            raise ConfigurationError(
                f"hedge idempotent= must be a bool or a predicate (*args, **kwargs), got {idempotent!r}"
            )
        self.idempotent = idempotent
        self.engine: HedgeEngine[Any] = HedgeEngine(
            delay=delay, max_hedges=max_hedges, telemetry=resolve_telemetry(telemetry), label=name or "anonymous"
        )
        self.delay = self.engine.delay
        self.percentile = self.engine.percentile
        self.max_hedges = max_hedges
        self.name = name
        self._budget: BudgetState | None = BUDGETS.get(f"retry:{name}", budget) if budget is not None else None

    def current_delay(self) -> float:
        return self.engine.current_delay()

    def _hedges_allowed(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> bool:
        if self.idempotent is True:
            return True
        if self.idempotent is False:
            return False
        return bool(self.idempotent(*args, **kwargs))

    def bind_sync(self, inner: SyncFn) -> SyncFn:  # pragma: no cover - decorate() refuses sync functions
        raise ConfigurationError("hedge needs an async function")

    def bind_async(self, inner: AsyncFn) -> AsyncFn:
        engine = self.engine

        async def call(*args: Any, **kwargs: Any) -> Any:
            if not self._hedges_allowed(args, kwargs):
                return await inner(*args, **kwargs)
            budget = self._budget
            if budget is not None:
                budget.record_request(time.monotonic())
            return await engine.race(lambda: inner(*args, **kwargs), budget=budget)

        return call


def hedge(
    *,
    idempotent: bool | Callable[..., bool],
    delay: float | str = 0.1,
    max_hedges: int = 1,
    budget: RetryBudget | None = RetryBudget(),
    name: str | None = None,
    telemetry: Telemetry | bool = True,
) -> Hedge:
    """Hedge an idempotent async call: start another attempt after ``delay``; first success wins.

    ``idempotent`` is required, and a call it rejects runs exactly once: re-running a
    non-idempotent call (a payment, an insert) must be a decision, never a default. ``delay`` is
    seconds or a percentile of recent latencies (``"p95"``; 0.1 s until 20 calls succeeded). At
    most ``max_hedges`` extra attempts run; each is taken from the retry ``budget`` of ``name``
    (shared with ``retry(name=...)``). Losing attempts are cancelled and awaited. For HTTP calls
    made with httpx, the transports hedge by method: see :class:`HedgePolicy`.
    """
    return Hedge(
        idempotent=idempotent, delay=delay, max_hedges=max_hedges, budget=budget, name=name, telemetry=telemetry
    )

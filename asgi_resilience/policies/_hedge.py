"""``hedge``: for idempotent async calls, a second attempt when the first is slow; first success wins.

The hedged attempt starts after ``delay`` (seconds, or ``"p95"``: the 95th percentile of this
policy's recent successful latencies) or at once when an attempt fails; the first success is
returned and every other attempt is cancelled and awaited before the call returns, so nothing
keeps running behind the caller's back. Each hedged attempt is taken from the same retry budget
as retries, so hedging cannot multiply the load on a struggling dependency. A call that is not
idempotent (``idempotent=False``, or the predicate says so for these arguments) is never hedged.
"""

from __future__ import annotations

import math
import threading
import time
from bisect import insort
from collections import deque
from collections.abc import Callable
from typing import Any, ClassVar

import anyio

from asgi_resilience.errors import ConfigurationError
from asgi_resilience.observability import Telemetry, resolve_telemetry
from asgi_resilience.policies._base import AsyncFn, Policy, SyncFn
from asgi_resilience.policies._budget import BudgetState, RetryBudget
from asgi_resilience.policies._durations import seconds
from asgi_resilience.policies._registry import BUDGETS

__all__ = ["Hedge", "hedge"]

_SAMPLES = 200
_MIN_SAMPLES = 20


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
        self.percentile: float | None = None
        self.delay = 0.0
        if isinstance(delay, str):
            if not (delay.startswith("p") and delay[1:].isdigit() and delay[1:].isascii() and 0 < int(delay[1:]) < 100):
                raise ConfigurationError(f"hedge delay must be seconds or a percentile such as 'p95', got {delay!r}")
            self.percentile = int(delay[1:]) / 100
            self.delay = 0.1  # until enough latencies are known
        else:
            self.delay = seconds(delay, "hedge delay", allow_zero=True)
        if isinstance(max_hedges, bool) or not isinstance(max_hedges, int) or max_hedges < 1:
            raise ConfigurationError(f"hedge max_hedges must be an int >= 1, got {max_hedges!r}")
        self.max_hedges = max_hedges
        self.name = name
        self._budget: BudgetState | None = BUDGETS.get(f"retry:{name}", budget) if budget is not None else None
        self._latencies = _Latencies()
        telemetry = resolve_telemetry(telemetry)
        self._started = telemetry.instrument("asgi_resilience.hedge.started")
        self._won = telemetry.instrument("asgi_resilience.hedge.won")
        self._label = {"policy": name or "anonymous"}

    def current_delay(self) -> float:
        if self.percentile is None:
            return self.delay
        found = self._latencies.percentile(self.percentile)
        return self.delay if found is None else found

    def _hedges_allowed(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> bool:
        if self.idempotent is True:
            return True
        if self.idempotent is False:
            return False
        return bool(self.idempotent(*args, **kwargs))

    def bind_sync(self, inner: SyncFn) -> SyncFn:  # pragma: no cover - decorate() refuses sync functions
        raise ConfigurationError("hedge needs an async function")

    def bind_async(self, inner: AsyncFn) -> AsyncFn:
        async def call(*args: Any, **kwargs: Any) -> Any:
            if not self._hedges_allowed(args, kwargs):
                return await inner(*args, **kwargs)
            return await self._race(inner, args, kwargs)

        return call

    async def _race(self, inner: AsyncFn, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        now = time.monotonic()
        if self._budget is not None:
            self._budget.record_request(now)
        winner: list[tuple[int, Any]] = []
        errors: list[Exception] = []
        running = 0
        changed = anyio.Event()

        async def attempt(index: int) -> None:
            nonlocal running, changed
            started = time.monotonic()
            try:
                value = await inner(*args, **kwargs)
            except Exception as exc:
                errors.append(exc)
            else:
                if not winner:
                    winner.append((index, value))
                    self._latencies.add(time.monotonic() - started)
                    group.cancel_scope.cancel()  # the losers are cancelled and awaited by the group
            finally:
                running -= 1
                changed.set()

        async with anyio.create_task_group() as group:
            group.start_soon(attempt, 0)
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
                if self._budget is not None and not self._budget.try_withdraw(time.monotonic()):
                    launched = self.max_hedges + 1  # no budget: no more attempts, wait for the running ones
                    continue
                self._started.add(1, self._label)
                group.start_soon(attempt, launched)
                running += 1
                launched += 1
        if winner:
            index, value = winner[0]
            if index:
                self._won.add(1, self._label)
            return value
        raise errors[-1]


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
    (shared with ``retry(name=...)``). Losing attempts are cancelled and awaited.
    """
    return Hedge(
        idempotent=idempotent, delay=delay, max_hedges=max_hedges, budget=budget, name=name, telemetry=telemetry
    )

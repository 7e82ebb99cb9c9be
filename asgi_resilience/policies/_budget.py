"""The retry budget: retries are a bounded fraction of recent calls (Finagle ``RetryBudget``,
Envoy ``retry_budget``). Shared by the httpx retry transport, the ``retry`` policy and hedging.
"""

from __future__ import annotations

import math
import threading
from collections import OrderedDict, deque
from collections.abc import Hashable
from dataclasses import dataclass
from datetime import timedelta

from asgi_resilience.errors import ConfigurationError
from asgi_resilience.policies._durations import seconds

__all__ = ["BudgetRegistry", "BudgetState", "RetryBudget"]


@dataclass(frozen=True, slots=True, kw_only=True)
class RetryBudget:
    """Retries per origin are at most ``ratio`` of recent requests, with a floor for low traffic.

    A retry is allowed while the retries of the last ``ttl`` seconds stay below ``ratio`` times the
    requests of that window, or while the retries of the last second stay below ``min_per_second``
    (so a quiet client can still retry). Under a storm where every call fails, the origin sees at
    most ``(1 + ratio)`` times the offered load once the offered load passes
    ``min_per_second / ratio`` requests per second. An exhausted budget returns the original
    outcome (response or error) and counts it.

    Args:
        ratio: the fraction of recent requests that may be retries (0.2 = 20 %).
        min_per_second: retries allowed every second whatever the ratio.
        ttl: how long a request counts as recent, in seconds.

    .. versionadded:: 0.1.0
    """

    ratio: float = 0.2
    min_per_second: float = 10.0
    ttl: float | timedelta = 10.0

    def __post_init__(self) -> None:
        if isinstance(self.ratio, bool) or not isinstance(self.ratio, (int, float)) or not 0 <= self.ratio <= 10:
            raise ConfigurationError(f"RetryBudget ratio must be a number in [0, 10], got {self.ratio!r}")
        if (
            isinstance(self.min_per_second, bool)
            or not isinstance(self.min_per_second, (int, float))
            or not 0 <= self.min_per_second < math.inf
        ):
            raise ConfigurationError(f"RetryBudget min_per_second must be >= 0, got {self.min_per_second!r}")
        object.__setattr__(self, "ttl", seconds(self.ttl, "RetryBudget ttl", allow_zero=False))


class BudgetState:
    """Live counters of one :class:`RetryBudget` for one origin (thread-safe, O(1) amortised)."""

    __slots__ = ("_lock", "_requests", "_retries", "budget", "exhausted", "total_requests", "total_retries")

    def __init__(self, budget: RetryBudget) -> None:
        self.budget = budget
        self._lock = threading.Lock()
        self._requests: deque[float] = deque()
        self._retries: deque[float] = deque()
        self.total_requests = 0
        self.total_retries = 0
        self.exhausted = 0

    def _trim(self, now: float) -> None:
        horizon = now - float(self.budget.ttl)  # type: ignore[arg-type]
        while self._requests and self._requests[0] <= horizon:
            self._requests.popleft()
        while self._retries and self._retries[0] <= horizon:
            self._retries.popleft()

    def record_request(self, now: float) -> None:
        """Count a logical call (its first attempt), before it is sent."""
        with self._lock:
            self._trim(now)
            self._requests.append(now)
            self.total_requests += 1

    def try_withdraw(self, now: float) -> bool:
        """Take one retry from the budget; False (and counted) when it is exhausted."""
        with self._lock:
            self._trim(now)
            retries = len(self._retries)
            allowed = retries < self.budget.ratio * len(self._requests)
            if not allowed and self.budget.min_per_second > 0:
                last_second = 0  # counted from the newest, stopping early: O(min_per_second)
                for t in reversed(self._retries):
                    if t <= now - 1.0 or last_second >= self.budget.min_per_second:
                        break
                    last_second += 1
                allowed = last_second < self.budget.min_per_second
            if allowed:
                self._retries.append(now)
                self.total_retries += 1
            else:
                self.exhausted += 1
            return allowed

    def snapshot(self) -> dict[str, int]:
        return {"requests": self.total_requests, "retries": self.total_retries, "budget_exhausted": self.exhausted}


class BudgetRegistry:
    """Budget state per (origin, budget), bounded LRU so dynamic hosts cannot grow it forever."""

    def __init__(self, max_size: int = 1024) -> None:
        self.max_size = max_size
        self._lock = threading.Lock()
        self._states: OrderedDict[Hashable, BudgetState] = OrderedDict()

    def get(self, origin: str, budget: RetryBudget) -> BudgetState:
        key = (origin, budget)
        with self._lock:
            state = self._states.get(key)
            if state is None:
                state = self._states[key] = BudgetState(budget)
                while len(self._states) > self.max_size:
                    self._states.popitem(last=False)
            else:
                self._states.move_to_end(key)
            return state

    def items(self) -> list[tuple[str, BudgetState]]:
        with self._lock:
            return [(key[0], state) for key, state in self._states.items()]  # type: ignore[index]

    def clear(self) -> None:
        with self._lock:
            self._states.clear()

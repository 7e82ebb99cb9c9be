"""The process-wide registries and live tables of every policy: one place, one metric table.

Per-origin breakers and budgets (used by the httpx transports) and named breakers, bulkheads and
budgets (used by the decorators) all live here, so the dashboard shows them side by side and
tests reset them in one call (:func:`reset_registries`).
"""

from __future__ import annotations

import threading
import time
import weakref
from collections import OrderedDict
from typing import Any

from asgi_resilience.observability import Telemetry
from asgi_resilience.policies._breaker import BreakerRegistry, CircuitBreaker
from asgi_resilience.policies._budget import BudgetRegistry

__all__ = [
    "BREAKERS",
    "BUDGETS",
    "NAMED",
    "breakers_snapshot",
    "origin_stats",
    "register_private",
    "register_snapshots",
    "retries_snapshot",
    "uncount_evicted",
]


def uncount_evicted(breaker: CircuitBreaker) -> None:
    if breaker.on_evicted is not None:
        breaker.on_evicted(breaker)


BREAKERS = BreakerRegistry(on_evict=uncount_evicted)
"""Per-origin breakers shared by every httpx transport of the process (``shared=True``)."""
BUDGETS = BudgetRegistry()
"""Retry budget state per (origin or policy name, budget)."""
_PRIVATE_REGISTRIES: weakref.WeakSet[BreakerRegistry] = weakref.WeakSet()

_STATS_LOCK = threading.Lock()
_STATS: OrderedDict[str, list[int]] = OrderedDict()  # origin -> [calls, retries, gave_up, budget_exhausted]
_STATS_MAX = 1024


class _Named:
    """Named breakers, bulkheads and hedges of the decorators (``circuit_breaker("llm")``)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.breakers: dict[str, Any] = {}
        self.bulkheads: dict[str, Any] = {}

    def clear(self) -> None:
        with self.lock:
            for shared in self.breakers.values():
                if shared.state is not None:
                    shared.state.close()  # the sync client of state=; an asyncio one belongs to its loop
            self.breakers.clear()
            self.bulkheads.clear()


NAMED = _Named()


def register_private(registry: BreakerRegistry) -> None:
    """Show a transport's own registry (``shared=False``) in the snapshots while it lives."""
    _PRIVATE_REGISTRIES.add(registry)


def origin_stats(origin: str) -> list[int]:
    """The live ``[calls, retries, gave_up, budget_exhausted]`` counters of ``origin`` (bounded LRU)."""
    with _STATS_LOCK:
        found = _STATS.get(origin)
        if found is None:
            found = _STATS[origin] = [0, 0, 0, 0]
            while len(_STATS) > _STATS_MAX:
                _STATS.popitem(last=False)
        return found


def retries_snapshot() -> dict[str, dict[str, int]]:
    with _STATS_LOCK:
        return {
            origin: {"calls": s[0], "retries": s[1], "gave_up": s[2], "budget_exhausted": s[3]}
            for origin, s in _STATS.items()
        }


def breakers_snapshot() -> list[dict[str, Any]]:
    """Every breaker: per origin (``"kind": "origin"``) and named (``"kind": "named"``)."""
    now = time.monotonic()
    registries = [BREAKERS, *list(_PRIVATE_REGISTRIES)]
    rows = [{**breaker.snapshot(now), "kind": "origin"} for registry in registries for breaker in registry.breakers()]
    with NAMED.lock:
        named = list(NAMED.breakers.values())
    rows.extend({**handle.breaker.snapshot(now), "kind": "named", "refused": handle.refusals} for handle in named)
    return rows


def bulkheads_snapshot() -> list[dict[str, Any]]:
    with NAMED.lock:
        named = list(NAMED.bulkheads.values())
    return [bulkhead.snapshot() for bulkhead in named]


def register_snapshots(telemetry: Telemetry) -> None:
    telemetry.register_snapshot("circuit_breakers", breakers_snapshot)
    telemetry.register_snapshot("client_retries", retries_snapshot)
    telemetry.register_snapshot("bulkheads", bulkheads_snapshot)


def reset_registries() -> None:
    """Forget every breaker, budget and bulkhead (for tests)."""
    BREAKERS.clear()
    BUDGETS.clear()
    NAMED.clear()

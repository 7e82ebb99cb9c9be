"""The breaker driver of the httpx transports: per-origin breakers from the shared registry,
their metrics, refusals and shared-state writes; the transports only send and call hooks.
"""

from __future__ import annotations

import time
from typing import Any

import httpx

from asgi_resilience.client._hooks import Hook, check_hooks, log_transition
from asgi_resilience.client._http import origin_of
from asgi_resilience.client._shared import SharedState
from asgi_resilience.errors import CircuitOpenError, ConfigurationError
from asgi_resilience.observability import Telemetry, resolve_telemetry
from asgi_resilience.policies._breaker import (
    Admission,
    BreakerPolicy,
    BreakerRegistry,
    BreakerTransition,
    CircuitBreaker,
    State,
)
from asgi_resilience.policies._registry import BREAKERS, register_private, register_snapshots, uncount_evicted

__all__ = ["BreakerCore"]


class BreakerCore:
    """Options, registry and instruments of one breaker transport."""

    def __init__(
        self,
        *,
        policy: BreakerPolicy,
        state: str | Any | None,
        shared: bool,
        on_transition: Hook | None,
        telemetry: Telemetry | bool,
        asynchronous: bool,
    ) -> None:
        if not isinstance(policy, BreakerPolicy):
            raise ConfigurationError(f"policy must be a BreakerPolicy, got {policy!r}")
        check_hooks(asynchronous, on_transition=on_transition)
        self.policy = policy
        if shared:
            self.registry = BREAKERS
        else:
            self.registry = BreakerRegistry(on_evict=uncount_evicted)
            register_private(self.registry)
        self.shared_state = SharedState(state, asynchronous=asynchronous) if state is not None else None
        self._local: dict[str, CircuitBreaker] = {}
        self.on_transition: Hook = on_transition if on_transition is not None else log_transition
        self.telemetry = resolve_telemetry(telemetry)
        self.state_metric = self.telemetry.instrument("asgi_resilience.circuit_breaker.state")
        self.transitions = self.telemetry.instrument("asgi_resilience.circuit_breaker.transitions")
        register_snapshots(self.telemetry)

    def breaker(self, request: httpx.Request) -> CircuitBreaker:
        origin = origin_of(request.url)
        breaker = self._local.get(origin)
        if breaker is not None:
            return breaker  # fast path; the registry keeps the shared, bounded truth
        breaker, created = self.registry.get(self.policy, origin)
        if created:
            self.state_metric.add(1, {"origin": breaker.origin, "state": State.CLOSED.value})
            breaker.on_evicted = self._evicted
        if len(self._local) >= 256:
            self._local.clear()
        self._local[origin] = breaker
        return breaker

    def _evicted(self, breaker: CircuitBreaker) -> None:
        self.state_metric.add(-1, {"origin": breaker.origin, "state": breaker.state.value})

    def count(self, transitions: tuple[BreakerTransition, ...]) -> None:
        for t in transitions:
            self.state_metric.add(-1, {"origin": t.origin, "state": t.from_state.value})
            self.state_metric.add(1, {"origin": t.origin, "state": t.to_state.value})
            self.transitions.add(1, {"origin": t.origin, "from": t.from_state.value, "to": t.to_state.value})
            self.telemetry.span_event(
                "circuit_breaker.transition", {"origin": t.origin, "from": t.from_state.value, "to": t.to_state.value}
            )

    def rejection(self, admission: Admission, breaker: CircuitBreaker, request: httpx.Request) -> CircuitOpenError:
        state = "half-open, a probe is in flight" if admission.state is State.HALF_OPEN else "open"
        return CircuitOpenError(
            f"circuit breaker for {breaker.origin} is {state} (see retry_after)",
            retry_after=max(0.0, admission.retry_after),
            origin=breaker.origin,
            request=request,
        )

    def shared_ops(
        self, breaker: CircuitBreaker, transitions: tuple[BreakerTransition, ...], probe_epoch: float
    ) -> list[tuple[str, float]]:
        """The shared-state writes a set of transitions asks for: ``("open", seconds)`` / ``("close", epoch)``."""
        if self.shared_state is None:
            return []
        ops: list[tuple[str, float]] = []
        for t in transitions:
            if t.to_state is State.OPEN and t.reason != "shared":
                ops.append(("open", breaker.open_remaining(time.monotonic())))
            elif t.to_state is State.CLOSED:
                ops.append(("close", probe_epoch))
        return ops

"""``circuit_breaker``: a named breaker (the same state machine as the httpx transports) around any call."""

from __future__ import annotations

import inspect
import logging
import time
from collections.abc import Callable
from contextvars import ContextVar
from types import TracebackType
from typing import Any, ClassVar

from asgi_resilience.errors import CircuitOpenError, ConfigurationError, Overloaded
from asgi_resilience.observability import Telemetry, resolve_telemetry
from asgi_resilience.policies import _agen_run, _async_run, _sync_run
from asgi_resilience.policies._base import AsyncFn, Policy, SyncFn
from asgi_resilience.policies._breaker import (
    Admission,
    BreakerPolicy,
    BreakerTransition,
    CircuitBreaker,
    Result,
    State,
)
from asgi_resilience.policies._named import configured, mark_created
from asgi_resilience.policies._registry import NAMED, register_snapshots

__all__ = ["Breaker", "circuit_breaker"]

logger = logging.getLogger("asgi_resilience.policies")

Failures = type[BaseException] | tuple[type[BaseException], ...] | Callable[[BaseException], bool]
Listener = Callable[[BreakerTransition], None]


def _classifier(on: Failures) -> Callable[[BaseException], bool]:
    if isinstance(on, type) and issubclass(on, BaseException):
        return lambda exc: isinstance(exc, on)
    if isinstance(on, tuple) and all(isinstance(t, type) and issubclass(t, BaseException) for t in on):
        return lambda exc: isinstance(exc, on)
    if callable(on) and not isinstance(on, type):
        return on
    raise ConfigurationError(f"circuit_breaker on= must be exception classes or a predicate, got {on!r}")


class _Shared:
    """The state behind every handle of one name: the engine, its listeners and instruments."""

    def __init__(self, name: str, policy: BreakerPolicy, clock: Callable[[], float], telemetry: Telemetry) -> None:
        self.policy = policy
        self.breaker = CircuitBreaker(policy, name)
        self.clock = clock
        self.listeners: list[Listener] = []
        self.telemetry = telemetry
        self.state_metric = telemetry.instrument("asgi_resilience.circuit_breaker.state")
        self.transitions = telemetry.instrument("asgi_resilience.circuit_breaker.transitions")
        self.state_metric.add(1, {"origin": name, "state": State.CLOSED.value})
        register_snapshots(telemetry)


class Breaker(Policy):
    """A handle on the named breaker ``name``; see :func:`circuit_breaker`."""

    kind: ClassVar[str] = "circuit_breaker"
    rank: ClassVar[int] = 4

    def __init__(self, shared: _Shared, *, on: Failures, fallback: Callable[..., Any] | None) -> None:
        if fallback is not None and not callable(fallback):
            raise ConfigurationError(
                f"circuit_breaker fallback= must be a callable (*args, **kwargs), got {fallback!r}"
            )
        self._shared = shared
        self.breaker = shared.breaker
        self.clock = shared.clock
        self.name = shared.breaker.origin
        self.on = on
        self._failed = _classifier(on)
        self.fallback = fallback
        self._fallbacks = shared.telemetry.instrument("asgi_resilience.fallbacks")
        self._open_message = f"circuit breaker {self.name!r} is open"
        self._half_open_message = f"circuit breaker {self.name!r} is half-open, a probe is in flight"

    # -- state ---------------------------------------------------------------------------------
    @property
    def state(self) -> str:
        """``closed``, ``open`` or ``half_open``."""
        return self.breaker.state.value

    def add_listener(self, listener: Listener) -> None:
        """Call ``listener(transition)`` on every state change (its exceptions are logged, never raised)."""
        self._shared.listeners.append(listener)

    def reset(self) -> None:
        """Forget every result and close the breaker (for tests)."""
        breaker = self.breaker
        with breaker._lock:
            if breaker.state is not State.CLOSED:
                self.report((breaker._move(State.CLOSED, self.clock(), "reset"),))
            breaker._window.reset()

    # -- the engine, driven by _async_run / _sync_run -------------------------------------------
    def report(self, transitions: tuple[BreakerTransition, ...]) -> None:
        shared = self._shared
        for t in transitions:
            shared.state_metric.add(-1, {"origin": t.origin, "state": t.from_state.value})
            shared.state_metric.add(1, {"origin": t.origin, "state": t.to_state.value})
            shared.transitions.add(1, {"origin": t.origin, "from": t.from_state.value, "to": t.to_state.value})
            level = logging.WARNING if t.to_state is State.OPEN else logging.INFO
            logger.log(
                level, "circuit breaker %s: %s -> %s (%s)", t.origin, t.from_state.value, t.to_state.value, t.reason
            )
            for listener in list(shared.listeners):
                try:
                    listener(t)
                except Exception:
                    logger.exception("circuit breaker %s: listener %r failed", t.origin, listener)

    def refusal(self, admission: Admission) -> CircuitOpenError:
        message = self._half_open_message if admission.state is State.HALF_OPEN else self._open_message
        return CircuitOpenError(message, retry_after=max(0.0, admission.retry_after), origin=self.name)

    def record_error(
        self, admission: Admission, exc: BaseException, started: float, *, duration: float | None = None
    ) -> bool:
        """Count an error; True when it is a failure of the protected dependency."""
        if not isinstance(exc, Exception) or isinstance(exc, (CircuitOpenError, Overloaded)):
            result = Result.IGNORED  # cancellation, or our own refusal from an inner policy
        else:
            result = Result.FAILURE if self._failed(exc) else Result.SUCCESS
        now = self.clock()
        transitions = self.breaker.record(admission, result, now - started if duration is None else duration, now)
        if transitions:
            self.report(transitions)
        return result is Result.FAILURE

    def record_success(self, admission: Admission, started: float, *, duration: float | None = None) -> None:
        now = self.clock()
        transitions = self.breaker.record(
            admission, Result.SUCCESS, now - started if duration is None else duration, now
        )
        if transitions:
            self.report(transitions)

    async def fall_back(self, exc: BaseException, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        self._fallbacks.add(1, {"policy": self.name, "kind": "call"})
        value = self.fallback(*args, **kwargs)  # type: ignore[misc]
        return await value if inspect.isawaitable(value) else value

    def fall_back_sync(self, exc: BaseException, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        self._fallbacks.add(1, {"policy": self.name, "kind": "call"})
        return self.fallback(*args, **kwargs)  # type: ignore[misc]

    def bind_async(self, inner: AsyncFn) -> AsyncFn:
        return _async_run.bind_breaker(self, inner)

    def bind_asyncgen(self, inner: _agen_run.AsyncGenFn) -> _agen_run.AsyncGenFn:
        if self.fallback is not None:
            raise ConfigurationError(
                f"circuit_breaker {self.name!r} with fallback= cannot decorate the async generator "
                f"{getattr(inner, '__qualname__', inner)!r}: {_agen_run.REFUSALS['fallback']}"
            )
        return _agen_run.bind_breaker(self, inner)

    def bind_sync(self, inner: SyncFn) -> SyncFn:
        if self.fallback is not None and inspect.iscoroutinefunction(self.fallback):
            raise ConfigurationError(f"circuit_breaker {self.name!r}: an async fallback cannot serve a sync function")
        return _sync_run.bind_breaker(self, inner)

    # -- context manager: fails fast when open, counts the block's outcome -----------------------
    def _enter(self) -> tuple[Admission, float]:
        admission = self.breaker.admit(self.clock())
        if admission.transitions:
            self.report(admission.transitions)
        if not admission.allowed:
            raise self.refusal(admission)
        return admission, self.clock()

    def __enter__(self) -> Breaker:
        _PERMITS.set((*_PERMITS.get(), self._enter()))
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        stack = _PERMITS.get()
        _PERMITS.set(stack[:-1])
        admission, started = stack[-1]
        if exc is None:
            self.record_success(admission, started)
        else:
            self.record_error(admission, exc, started)

    async def __aenter__(self) -> Breaker:
        return self.__enter__()

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.__exit__(exc_type, exc, tb)


_PERMITS: ContextVar[tuple[tuple[Admission, float], ...]] = ContextVar("asgi_resilience_breaker_permits", default=())
"""The permits of the ``with`` blocks open in this task or thread, innermost last."""


_UNSET: Any = object()


def circuit_breaker(
    name: str,
    /,
    *,
    on: Failures = Exception,
    fallback: Callable[..., Any] | None = None,
    window: float | int = _UNSET,
    minimum_calls: int = _UNSET,
    failure_rate: float = _UNSET,
    slow_call_duration: float | None = _UNSET,
    slow_call_rate: float = _UNSET,
    consecutive_failures: int | None = _UNSET,
    break_duration: float = _UNSET,
    max_break_duration: float = _UNSET,
    half_open_probes: int = _UNSET,
    probe_timeout: float = _UNSET,
    clock: Callable[[], float] = time.monotonic,
    telemetry: Telemetry | bool = True,
) -> Breaker:
    """The circuit breaker called ``name``: the same one anywhere in the process.

    ``@circuit_breaker("llm")`` on an async or sync function, ``async with`` / ``with`` around a
    block (entering fails fast with :class:`CircuitOpenError` while open), or a step of
    :func:`pipeline`. The state machine is the transports' (rate and slow-call windows,
    consecutive mode, exactly ``half_open_probes`` probes at once, doubling break duration); the
    breaker options are :class:`BreakerPolicy`'s, set by the first use of the name or by
    :func:`configure_policies` / environment variables. Passing different options for an
    existing name raises :class:`ConfigurationError`.

    Args:
        on: exceptions that count as failures (a class, a tuple, or a predicate); any other
            exception counts as a success (the dependency answered). Cancellation and our own
            refusals from inner policies are not counted.
        fallback: called with the function's arguments, its result returned instead, when the
            breaker refuses the call or the call fails (``lambda *a, **k: True`` fails open).
        clock: the monotonic clock (``ManualClock`` in tests).
    """
    if not isinstance(name, str) or not name:
        raise ConfigurationError(f"circuit_breaker needs a name (a non-empty str), got {name!r}")
    given = {
        key: value
        for key, value in {
            "window": window,
            "minimum_calls": minimum_calls,
            "failure_rate": failure_rate,
            "slow_call_duration": slow_call_duration,
            "slow_call_rate": slow_call_rate,
            "consecutive_failures": consecutive_failures,
            "break_duration": break_duration,
            "max_break_duration": max_break_duration,
            "half_open_probes": half_open_probes,
            "probe_timeout": probe_timeout,
        }.items()
        if value is not _UNSET
    }
    with NAMED.lock:
        shared = NAMED.breakers.get(name)
        if shared is None:
            options = configured("circuit_breaker", name, given)
            try:
                policy = BreakerPolicy(**options)
            except TypeError as exc:
                raise ConfigurationError(f"circuit_breaker {name!r}: {exc}") from None
            shared = NAMED.breakers[name] = _Shared(name, policy, clock, resolve_telemetry(telemetry))
            mark_created("circuit_breaker", name)
        elif given:
            wanted = BreakerPolicy(**configured("circuit_breaker", name, given))
            if wanted != shared.policy:
                raise ConfigurationError(
                    f"circuit_breaker {name!r} already exists with other options ({shared.policy}); configure a "
                    "name once (configure_policies) and use circuit_breaker(name) elsewhere"
                )
    return Breaker(shared, on=on, fallback=fallback)

"""``circuit_breaker``: a named breaker (the same state machine as the httpx transports) around any call."""

from __future__ import annotations

import asyncio
import inspect
import logging
import threading
import time
from collections.abc import Callable
from contextvars import ContextVar
from types import TracebackType
from typing import Any, ClassVar

from asgi_resilience._optional import import_optional
from asgi_resilience._redis import is_redis_url
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
from asgi_resilience.policies._shared import SharedState

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


class NamedState:
    """The Redis side of one named breaker (key ``named:<name>``): a sync client and an asyncio
    client, each made on first use by a function of that flavour. A client object serves the
    functions of its own flavour only; async functions share state on asyncio (redis-py's asyncio
    client), and a new event loop gets a new client."""

    def __init__(self, target: str | Any) -> None:
        if isinstance(target, str):
            if not is_redis_url(target):
                raise ConfigurationError(
                    f"circuit_breaker state= must be a redis://, rediss:// or unix:// URL or a Redis client, "
                    f"got {target!r}"
                )
            import_optional("redis", extra="redis", feature="Shared circuit breaker state")
            self.asynchronous: bool | None = None  # both flavours
        else:
            self.asynchronous = inspect.iscoroutinefunction(getattr(target, "pttl", None))
        self.target = target
        self._lock = threading.Lock()
        self._sync: SharedState | None = None
        self._async: SharedState | None = None
        self._loop: Any = None

    def for_sync(self) -> SharedState | None:
        if self.asynchronous is True:
            return None
        if self._sync is None:
            with self._lock:
                if self._sync is None:
                    self._sync = SharedState(self.target, asynchronous=False)
        return self._sync

    def for_async(self) -> SharedState | None:
        if self.asynchronous is False:
            return None
        loop = asyncio._get_running_loop()
        if loop is None:
            return None  # trio: redis-py's asyncio client needs asyncio; the breaker stays local
        if self._async is None or (self.asynchronous is None and self._loop is not loop):
            with self._lock:
                if self._async is None or (self.asynchronous is None and self._loop is not loop):
                    self._async = SharedState(self.target, asynchronous=True)  # the old loop's client is dropped
                    self._loop = loop
        return self._async

    def close(self) -> None:
        if self._sync is not None:
            self._sync.close()
        self._sync = None

    async def aclose(self) -> None:
        self.close()
        if self._async is not None and (self.asynchronous or self._loop is asyncio._get_running_loop()):
            await self._async.aclose()
        self._async = None


class _Shared:
    """The state behind every handle of one name: the engine, its listeners and instruments."""

    def __init__(
        self,
        name: str,
        policy: BreakerPolicy,
        clock: Callable[[], float],
        telemetry: Telemetry,
        state: NamedState | None = None,
    ) -> None:
        self.policy = policy
        self.state = state
        self.breaker = CircuitBreaker(policy, name)
        self.clock = clock
        self.listeners: list[Listener] = []
        self.telemetry = telemetry
        self.state_metric = telemetry.instrument("asgi_resilience.circuit_breaker.state")
        self.transitions = telemetry.instrument("asgi_resilience.circuit_breaker.transitions")
        # a refusal only bumps this integer (the open path takes no lock and stays cheap); the metric reads it
        self.refusals = 0
        telemetry.instrument("asgi_resilience.circuit_breaker.refused").observe({"policy": name}, self._refusals)
        self.state_metric.add(1, {"origin": name, "state": State.CLOSED.value})
        register_snapshots(telemetry)

    def _refusals(self) -> int:
        return self.refusals


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
        self.shared_state = shared.state
        self._key = f"named:{shared.breaker.origin}"
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

    def close(self) -> None:
        """Close the Redis client ``state=`` made for sync functions (at shutdown; made again if used)."""
        if self.shared_state is not None:
            self.shared_state.close()

    async def aclose(self) -> None:
        """Close the Redis clients ``state=`` made (at shutdown, in the event loop that used them)."""
        if self.shared_state is not None:
            await self.shared_state.aclose()

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
        self._shared.refusals += 1
        message = self._half_open_message if admission.state is State.HALF_OPEN else self._open_message
        return CircuitOpenError._quick(message, max(0.0, admission.retry_after), self.name)

    def refuse_open(self, left: float) -> CircuitOpenError:
        """The refusal of an open breaker with ``left`` seconds to go (the message is precomputed)."""
        self._shared.refusals += 1
        return CircuitOpenError._quick(self._open_message, left, self.name)

    def classify(self, exc: BaseException) -> Result:
        """What an error says about the dependency (``on=``); cancellation and our own refusals: nothing."""
        if not isinstance(exc, Exception) or isinstance(exc, (CircuitOpenError, Overloaded)):
            return Result.IGNORED  # cancellation, or our own refusal from an inner policy
        return Result.FAILURE if self._failed(exc) else Result.SUCCESS

    def record(
        self, admission: Admission, result: Result, started: float, *, duration: float | None = None
    ) -> tuple[BreakerTransition, ...]:
        """Count one outcome; returns (and reports) the transitions it caused."""
        now = self.clock()
        transitions = self.breaker.record(admission, result, now - started if duration is None else duration, now)
        if transitions:
            self.report(transitions)
        return transitions

    def record_error(
        self, admission: Admission, exc: BaseException, started: float, *, duration: float | None = None
    ) -> bool:
        """Count an error; True when it is a failure of the protected dependency."""
        result = self.classify(exc)
        self.record(admission, result, started, duration=duration)
        return result is Result.FAILURE

    def record_success(self, admission: Admission, started: float, *, duration: float | None = None) -> None:
        self.record(admission, Result.SUCCESS, started, duration=duration)

    # -- shared state (``state=``): read before admitting, written on transitions -----------------
    def _shared_open(self, seconds: float | None) -> None:
        if seconds:
            forced = self.breaker.force_open(self.clock(), seconds, "shared")
            if forced is not None:
                self.report((forced,))

    def _writes(self, transitions: tuple[BreakerTransition, ...], started: float) -> list[tuple[bool, float]]:
        """``(True, seconds open)`` / ``(False, probe start as epoch)`` for the shared key."""
        writes: list[tuple[bool, float]] = []
        for t in transitions:
            if t.to_state is State.OPEN and t.reason != "shared":
                writes.append((True, self.breaker.open_remaining(self.clock())))
            elif t.to_state is State.CLOSED:
                writes.append((False, time.time() - (self.clock() - started)))
        return writes

    async def async_shared_check(self) -> None:
        state = self.shared_state.for_async() if self.shared_state is not None else None
        if state is not None and state.due(self._key, time.monotonic()):
            self._shared_open(await state.acheck(self._key))

    def sync_shared_check(self) -> None:
        state = self.shared_state.for_sync() if self.shared_state is not None else None
        if state is not None and state.due(self._key, time.monotonic()):
            self._shared_open(state.check(self._key))

    async def async_publish(self, transitions: tuple[BreakerTransition, ...], started: float) -> None:
        state = self.shared_state.for_async() if self.shared_state is not None else None
        if state is None:
            return
        for opened, value in self._writes(transitions, started):
            if opened:
                await state.aopened(self._key, value)
            else:
                await state.aclosed(self._key, value)

    def sync_publish(self, transitions: tuple[BreakerTransition, ...], started: float) -> None:
        state = self.shared_state.for_sync() if self.shared_state is not None else None
        if state is None:
            return
        for opened, value in self._writes(transitions, started):
            if opened:
                state.opened(self._key, value)
            else:
                state.closed(self._key, value)

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

    def _exit(self, exc: BaseException | None) -> tuple[tuple[BreakerTransition, ...], float]:
        stack = _PERMITS.get()
        _PERMITS.set(stack[:-1])
        admission, started = stack[-1]
        result = Result.SUCCESS if exc is None else self.classify(exc)
        return self.record(admission, result, started), started

    def __enter__(self) -> Breaker:
        if self.shared_state is not None:
            self.sync_shared_check()
        _PERMITS.set((*_PERMITS.get(), self._enter()))
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        transitions, started = self._exit(exc)
        if transitions and self.shared_state is not None:
            self.sync_publish(transitions, started)

    async def __aenter__(self) -> Breaker:
        if self.shared_state is not None:
            await self.async_shared_check()
        _PERMITS.set((*_PERMITS.get(), self._enter()))
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        transitions, started = self._exit(exc)
        if transitions and self.shared_state is not None:
            await self.async_publish(transitions, started)


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
    state: str | Any | None = _UNSET,
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
        state: ``"redis://..."`` (or a Redis client) to share this breaker's open state between
            processes, as the transports' ``state=`` does: a process that opens it publishes
            "open for N s", the others open too (read at most every 0.25 s) and then probe on
            their own; a Redis failure falls back to the local breaker, never fails a call. Sync
            functions use a sync client and async ones (on asyncio) an asyncio client; a client
            object serves its own flavour only. Configurable per name like the other options.
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
            "state": state,
        }.items()
        if value is not _UNSET
    }
    with NAMED.lock:
        shared = NAMED.breakers.get(name)
        if shared is None:
            options = configured("circuit_breaker", name, given)
            target = options.pop("state", None)
            try:
                policy = BreakerPolicy(**options)
            except TypeError as exc:
                raise ConfigurationError(f"circuit_breaker {name!r}: {exc}") from None
            named_state = NamedState(target) if target is not None else None
            shared = NAMED.breakers[name] = _Shared(name, policy, clock, resolve_telemetry(telemetry), named_state)
            mark_created("circuit_breaker", name)
        elif given:
            options = configured("circuit_breaker", name, given)
            target = options.pop("state", None)
            wanted = BreakerPolicy(**options)
            if wanted != shared.policy or target != (shared.state.target if shared.state is not None else None):
                raise ConfigurationError(
                    f"circuit_breaker {name!r} already exists with other options ({shared.policy}); configure a "
                    "name once (configure_policies) and use circuit_breaker(name) elsewhere"
                )
    return Breaker(shared, on=on, fallback=fallback)

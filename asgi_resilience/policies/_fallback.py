"""``fallback``, ``last_good``, ``fail_open`` and ``fail_closed``: what a call answers when it fails."""

from __future__ import annotations

import inspect
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Coroutine, Hashable
from datetime import timedelta
from typing import Any, ClassVar, Generic, TypeVar, overload

from asgi_resilience.errors import ConfigurationError, DependencyUnavailable
from asgi_resilience.observability import Telemetry, resolve_telemetry
from asgi_resilience.policies import _async_run, _sync_run
from asgi_resilience.policies._base import AsyncFn, P, Policy, R, SyncFn, decorate
from asgi_resilience.policies._durations import seconds

__all__ = ["Fallback", "fail_closed", "fail_open", "fallback", "last_good"]

F = TypeVar("F")
Trigger = type[BaseException] | tuple[type[BaseException], ...] | Callable[[BaseException], bool]
_MISSING: Any = object()


def _trigger(on: Trigger) -> Callable[[BaseException], bool]:
    if isinstance(on, type) and issubclass(on, BaseException):
        return lambda exc: isinstance(exc, on)
    if isinstance(on, tuple) and on and all(isinstance(t, type) and issubclass(t, BaseException) for t in on):
        return lambda exc: isinstance(exc, on)
    if callable(on) and not isinstance(on, type):
        return on
    raise ConfigurationError(f"fallback on= must be exception classes or a predicate, got {on!r}")


class Fallback(Policy, Generic[F]):
    """What a failed call answers instead; see :func:`fallback`. ``F`` is the fallback's type."""

    kind: ClassVar[str] = "fallback"
    rank: ClassVar[int] = 0

    def __init__(
        self,
        *,
        kind: str,
        value: Any = _MISSING,
        call: Callable[..., Any] | None = None,
        error: Callable[[BaseException], BaseException] | None = None,
        on: Trigger = Exception,
        max_entries: int = 0,
        max_age: float = 0.0,
        name: str | None = None,
        telemetry: Telemetry | bool = True,
    ) -> None:
        self.label = kind
        self.value = value
        self.call = call
        self.error = error
        self.handles = _trigger(on)
        self.name = name
        self.max_entries = max_entries
        self.max_age = max_age
        self._good: OrderedDict[Hashable, tuple[float, Any]] = OrderedDict()
        self._lock = threading.Lock()
        self._taken = resolve_telemetry(telemetry).instrument("asgi_resilience.fallbacks")

    @overload  # type: ignore[override]
    def __call__(self, fn: Callable[P, Coroutine[Any, Any, R]]) -> Callable[P, Coroutine[Any, Any, R | F]]: ...
    @overload
    def __call__(self, fn: Callable[P, R]) -> Callable[P, R | F]: ...
    def __call__(self, fn: Callable[P, Any]) -> Callable[P, Any]:
        if self.name is None:
            self.name = getattr(fn, "__qualname__", None)
        return decorate(self, fn)

    def bind_async(self, inner: AsyncFn) -> AsyncFn:
        return _async_run.bind_fallback(self, inner)

    def bind_sync(self, inner: SyncFn) -> SyncFn:
        if self.call is not None and inspect.iscoroutinefunction(self.call):
            raise ConfigurationError("an async fallback cannot serve a sync function")
        return _sync_run.bind_fallback(self, inner)

    # -- last good results ---------------------------------------------------------------------
    @staticmethod
    def _key(args: tuple[Any, ...], kwargs: dict[str, Any]) -> Hashable | None:
        key = (args, tuple(sorted(kwargs.items()))) if kwargs else args
        try:
            hash(key)
        except TypeError:
            return None  # unhashable arguments: nothing remembered, nothing served
        return key

    def remember(self, args: tuple[Any, ...], kwargs: dict[str, Any], result: Any, now: float) -> None:
        if not self.max_entries:
            return
        key = self._key(args, kwargs)
        if key is None:
            return
        with self._lock:
            self._good[key] = (now, result)
            self._good.move_to_end(key)
            while len(self._good) > self.max_entries:
                self._good.popitem(last=False)

    def _stale(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        key = self._key(args, kwargs)
        if key is None:
            return _MISSING
        with self._lock:
            found = self._good.get(key)
        if found is None or time.monotonic() - found[0] > self.max_age:
            return _MISSING
        return found[1]

    # -- taking the fallback -------------------------------------------------------------------
    def _counted(self) -> None:
        self._taken.add(1, {"policy": self.name or "anonymous", "kind": self.label})

    def _answer(self, exc: BaseException, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        if self.max_entries:
            stale = self._stale(args, kwargs)
            if stale is _MISSING:
                if self.value is _MISSING and self.call is None:
                    raise exc
            else:
                self._counted()
                return stale
        if self.error is not None:
            self._counted()
            raise self.error(exc) from exc
        self._counted()
        if self.call is not None:
            return self.call(*args, **kwargs)
        return self.value

    async def fall_back(self, exc: BaseException, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        value = self._answer(exc, args, kwargs)
        return await value if self.call is not None and inspect.isawaitable(value) else value

    def fall_back_sync(self, exc: BaseException, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        return self._answer(exc, args, kwargs)


@overload
def fallback(value: F, /, *, on: Trigger = Exception, name: str | None = None) -> Fallback[F]: ...
@overload
def fallback(
    *, call: Callable[..., Coroutine[Any, Any, F]], on: Trigger = Exception, name: str | None = None
) -> Fallback[F]: ...
@overload
def fallback(*, call: Callable[..., F], on: Trigger = Exception, name: str | None = None) -> Fallback[F]: ...
def fallback(
    value: Any = _MISSING,
    /,
    *,
    call: Callable[..., Any] | None = None,
    on: Trigger = Exception,
    name: str | None = None,
    telemetry: Telemetry | bool = True,
) -> Fallback[Any]:
    """Answer ``value`` (or ``call(*args, **kwargs)``, sync or async) when the call raises ``on``.

    The decorated function's return type becomes ``R | F``. Every fallback taken is counted
    (``asgi_resilience.fallbacks``, by ``name``, the function's qualified name by default).
    """
    if (value is _MISSING) == (call is None):
        raise ConfigurationError("fallback takes a value or call=, exactly one")
    if call is not None and not callable(call):
        raise ConfigurationError(f"fallback call= must be a callable (*args, **kwargs), got {call!r}")
    return Fallback(
        kind="value" if call is None else "call", value=value, call=call, on=on, name=name, telemetry=telemetry
    )


def last_good(
    *,
    max_entries: int = 1024,
    max_age: float | timedelta = 300.0,
    on: Trigger = Exception,
    name: str | None = None,
    telemetry: Telemetry | bool = True,
) -> Fallback[Any]:
    """Serve the last good result for the same arguments while the call fails (a stale read).

    Results are remembered per arguments (hashable ones only), at most ``max_entries`` of them
    and for ``max_age`` seconds; a failure with no fresh-enough result re-raises.
    """
    if isinstance(max_entries, bool) or not isinstance(max_entries, int) or max_entries < 1:
        raise ConfigurationError(f"last_good max_entries must be an int >= 1, got {max_entries!r}")
    age = seconds(max_age, "last_good max_age", allow_zero=False)
    return Fallback(kind="last_good", on=on, max_entries=max_entries, max_age=age, name=name, telemetry=telemetry)


def fail_open(value: F, /, *, on: Trigger = Exception, name: str | None = None) -> Fallback[F]:
    """Answer ``value`` (for example ``True``: allow) when the dependency is down.

    For checks whose failure must not lock users out (an authorization service that is down lets
    reads through); every answer given this way is counted as ``kind="fail_open"``.
    """
    return Fallback(kind="fail_open", value=value, on=on, name=name)


def _unavailable(exc: BaseException) -> BaseException:
    return DependencyUnavailable("a dependency this request needs is unavailable")


@overload
def fail_closed(fn: Callable[P, R], /) -> Callable[P, R]: ...
@overload
def fail_closed(*, on: Trigger = Exception, name: str | None = None) -> Fallback[Any]: ...
def fail_closed(fn: Any = None, /, *, on: Trigger = Exception, name: str | None = None) -> Any:
    """Deny when the dependency is down: raise :class:`DependencyUnavailable` (a 503 problem).

    ``@fail_closed`` or ``@fail_closed(on=AuthzError)``: for checks that must never pass by
    accident (an admin check). The original error is the ``__cause__``; the problem document
    tells the client nothing about it.
    """
    policy: Fallback[Any] = Fallback(kind="fail_closed", error=_unavailable, on=on, name=name)
    if fn is None:
        return policy
    return policy(fn)
